"""vit_jax: the Vision Transformer in JAX/Flax.

Version ranges here; the exact, tested set is requirements.lock (used by
scripts/bootstrap.sh). Install tiers: docs/install.md.
"""

import setuptools

# The tiers (docs/install.md). `pip install .` is the core: build, load and
# run any model, predict, the analyses, released and hub checkpoints; it
# needs no TensorFlow (tests/test_layout.py holds its imports to it).
CORE = [
    'absl-py>=2.1,<3',
    'etils[epath]>=1.7,<2',
    'flax>=0.12.6,<0.13',
    # timm / Hugging Face hub checkpoints (vit_jax.weights.timm_hub).
    'huggingface_hub>=1.0,<3',
    'importlib_resources>=6,<8',
    'jax>=0.9.2,<0.11',
    'matplotlib>=3.8,<4',
    'ml-collections>=1.0,<2',
    'ml_dtypes>=0.5,<1',
    'numpy>=1.26,<3',
    # Decodes image files for predict (vit_jax.data.image_file).
    'pillow>=10,<14',
    'safetensors>=0.5,<1',
    'scipy>=1.11,<2',
]
# `python -m vit_jax.main`, few-shot evaluation: tf.data, TFDS, orbax
# checkpoints, TensorBoard logs.
TRAIN = [
    'clu>=0.0.12,<0.1',
    'optax>=0.2.4,<0.3',
    'orbax-checkpoint>=0.11,<0.13',
    'tensorboard>=2.18,<3',
    'tensorflow-cpu>=2.18,<2.22',
    'tensorflow-datasets>=4.9.7,<4.10',
]
# `python -m vit_jax.export`: TensorFlow writes the SavedModel and TFLite
# files, jax2onnx the ONNX one, and each file is checked in its runtime.
# jax2onnx stays below 0.14: later releases cap orbax-checkpoint below
# 0.11.37.
EXPORT = ['tensorflow-cpu>=2.18,<2.22', 'jax2onnx>=0.13,<0.14',
          'onnx>=1.20,<2', 'onnxruntime>=1.24,<2', 'ai-edge-litert>=2.1,<3']
# notebooks/vit_jax.ipynb: a Jupyter front-end and kernel; the notebook
# trains a small model, so the training tier too.
NOTEBOOK = [*TRAIN, 'notebook>=7.2,<8', 'ipykernel>=6.29,<8']
# The tests run every tier, and the notebook in a Jupyter kernel.
TEST = [*TRAIN, *EXPORT, 'pytest>=8,<10', 'pytest-xdist>=3.5,<4',
        'nbclient>=0.10,<0.12', 'nbformat>=5.10,<6', 'ipykernel>=6.29,<8']
# `benchmarks.benchmark` (training steps) and its `--compare=timm`, and the
# tests against timm. Install torch and torchvision from PyTorch's CPU index
# first, then timm with --no-deps: PyPI's torchvision is a CUDA build. Not in
# requirements.lock.
# onnxscript: torch.onnx.export(dynamo=True), timm's ONNX file that
# `--mode=exported --compare=timm_onnx` times ours against.
BENCHMARK = [*TRAIN, 'torch>=2.6,<2.15', 'timm>=1.0.15,<1.1',
             'torchvision>=0.21,<0.30', 'onnxscript>=0.5,<0.8']


def _union(*tiers):
  return sorted(set().union(*tiers))


setuptools.setup(
    name='vit_jax',
    version='0.1.0',
    description='Vision Transformer (ViT) and R+ViT hybrids in JAX/Flax: '
    'released checkpoints, pre-training, fine-tuning and analysis.',
    # Only vit_jax: the repository's configs/ and benchmarks/ are run from
    # the repository root (`python -m` puts the working directory on
    # sys.path), so no other top-level name lands in site-packages.
    packages=setuptools.find_packages(include=['vit_jax', 'vit_jax.*']),
    # timm's architecture definitions as data (scripts/timm_table.py).
    package_data={'vit_jax.models': ['timm_architectures.json'],
                  'vit_jax.weights': ['timm_state_dicts.json.gz']},
    python_requires='>=3.10',
    # `vit-jax PROGRAM ...`: each program as `python -m` runs it.
    entry_points={
        'console_scripts': ['vit-jax=vit_jax.cli.console:main'],
    },
    install_requires=CORE,
    extras_require={
        'train': TRAIN,
        'export': EXPORT,
        'notebook': NOTEBOOK,
        'benchmark': BENCHMARK,
        'test': TEST,
        # Everything requirements.lock pins: every tier but the benchmark's
        # torch.
        'all': _union(TRAIN, EXPORT, NOTEBOOK, TEST),
    },
)
