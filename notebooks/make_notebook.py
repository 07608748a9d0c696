"""Writes notebooks/vit_jax.ipynb (nbformat 4.5) from the cells below.

  python notebooks/make_notebook.py

The cells live here as plain text so that changes review as code; the
notebook is regenerated from them, outputs empty. tests/test_notebook.py
checks the two agree and runs every code cell in order.
"""

import json
import os

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'vit_jax.ipynb')

CELLS = [
    ('markdown', r'''
# Vision Transformer in JAX: load, classify, fine-tune, look inside

This notebook walks through `vit_jax` the way the paper's fine-tuning Colab
does, small enough to run top to bottom on a laptop CPU in about a minute:

1. load a checkpoint in the released `.npz` layout,
2. classify images with it,
3. fine-tune it with the library's training loop (`vit_jax.training.loop`),
4. classify again, and
5. look at what the model attends to (attention rollout).

It needs no network. Released checkpoints (e.g. `ViT-B_16.npz`, see
`checkpoints/README.md`) cannot be downloaded here, so step 1 writes a small
stand-in file with the same layout. Step 3 classifies with the default run's
model (`runs/default/model.npz`, trained by the set-up) when it exists. The
data is the real Fashion-MNIST when Debian's `dataset-fashion-mnist` is
installed, else a generated image folder. Open it from the repository root:

    .venv/bin/jupyter notebook notebooks/vit_jax.ipynb

(Jupyter comes with the `notebook` extra). Everything it writes goes to a
temporary directory, removed by the last cell (or when the kernel stops).
'''),
    ('code', r'''
import json
import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Quiet TensorFlow.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
try:
  import configs  # pylint: disable=unused-import
  import vit_jax  # pylint: disable=unused-import
except ImportError:  # Started in notebooks/: the repository is one level up.
  sys.path.insert(0, os.path.abspath('..'))

import jax
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import tensorflow_datasets as tfds

from configs import common
from vit_jax.analysis import measures
from vit_jax.analysis import plots
from vit_jax.data.datasets import fashion_mnist_local
from vit_jax import models
from vit_jax.training import loop
from vit_jax.training import run_spec
from vit_jax.weights import pretrained

# Progress bars need Jupyter widgets; without them each prints a warning.
tfds.disable_progress_bar()
# Removed by the last cell, or when the kernel stops.
scratch = tempfile.TemporaryDirectory(prefix='vit_jax_notebook_')
WORKDIR = scratch.name
print('devices:', jax.devices())
print('files go to', WORKDIR)


def to_picture(image):
  """A model input in [-1, 1] -> RGB in [0, 1] for imshow."""
  return np.clip((np.asarray(image) + 1) / 2, 0, 1)
'''),
    ('markdown', r'''
## 1. A checkpoint

A released file is a plain `numpy.savez` archive whose keys are parameter
paths (`embedding/kernel`, `Transformer/encoderblock_0/...`, `head/kernel`).
As a stand-in we initialise a small ViT (the ViT-Ti/16 variant with 7-pixel
patches, width 64 and 4 layers, at 28x28 pixels: a 4x4 grid of patches plus
the class token) and save it with `pretrained.save_npz`, which writes exactly
that layout. With a real file, skip this cell and point `CHECKPOINT` at it (and
`MODEL` at its name, e.g. `ViT-B_16`, with `ARCHITECTURE = {}`, for the
fine-tuning config below).
'''),
    ('code', r'''
MODEL = 'ViT-Ti_16'
ARCHITECTURE = dict(patch_size=7, hidden_size=64, mlp_dim=128, num_heads=4,
                    num_layers=4)
IMAGE_SIZE = 28

stand_in = models.create_model(MODEL, num_classes=10, **ARCHITECTURE)
stand_in_params = models.init_params(stand_in, jax.random.PRNGKey(0),
                                     (IMAGE_SIZE, IMAGE_SIZE))
CHECKPOINT = os.path.join(WORKDIR, 'stand_in_for_a_released_file.npz')
pretrained.save_npz(stand_in_params, CHECKPOINT)
with np.load(CHECKPOINT) as archive:
  keys = sorted(archive.files)
print(f'{len(keys)} arrays, {models.count_params(stand_in_params):,} '
      f'parameters in {os.path.basename(CHECKPOINT)}, e.g.')
for key in keys[:3] + keys[-4:]:
  print(f'  {key}')
'''),
    ('markdown', r'''
`pretrained.load` builds the model the file describes (patch size, width,
heads, depth and class count from the array shapes, class token or not,
native resolution from the position embedding) and loads it strictly: a
missing, extra or misshapen array is an error that lists them. A model name
is optional; given, the file must fit it. Files our training exports carry a
sidecar (`model.json`) with what arrays cannot say: the pixel normalisation,
the class names, options without parameters.
'''),
    ('code', r'''
loaded = pretrained.load(CHECKPOINT)
model, params, image_size = loaded.model, loaded.params, loaded.image_size
print(f'{model.num_classes} classes, {model.num_layers} layers of width '
      f'{model.hidden_size}, {model.patch_size} patches, classifier '
      f'{model.classifier!r}, native resolution {image_size} px')
'''),
    ('markdown', r'''
## 2. Data

The training loop reads any prepared TFDS dataset or an image folder
(`ROOT/<split>/<class>/*.png`). Fashion-MNIST comes through the
`fashion_mnist_local` TFDS builder, which reads Debian's idx files and is
prepared on first use (about 10 s). Without them, we write a small image
folder: ten colours, one per class.
'''),
    ('code', r'''
USE_FASHION_MNIST = (os.path.isdir(fashion_mnist_local.source_dir()) and
                     os.environ.get('VIT_JAX_NOTEBOOK_DATA') != 'generated')


def write_colour_folder(root, per_split, num_classes=10, size=IMAGE_SIZE):
  """ROOT/<split>/class_<k>/<i>.png: noisy images, one hue per class."""
  rng = np.random.default_rng(0)
  for split, count in per_split.items():
    for label in range(num_classes):
      folder = os.path.join(root, split, f'class_{label}')
      os.makedirs(folder, exist_ok=True)
      angle = 2 * np.pi * label / num_classes
      colour = 128 + 90 * np.cos(angle - np.array([0, 2, 4]) * np.pi / 3)
      for i in range(count):
        pixels = colour + rng.normal(0, 25, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f'{i}.png'))


if USE_FASHION_MNIST:
  DATA = dict(dataset='fashion_mnist_local',
              data_dir=os.path.join(WORKDIR, 'tfds'),
              train_split='train[:10000]', eval_split='test[:2000]')
  CLASS_NAMES = fashion_mnist_local.CLASS_NAMES
  FEWSHOT_SPLITS = ('train[50000:52000]', 'test[2000:3000]')
else:
  DATA = dict(dataset='imagefolder', data_dir=os.path.join(WORKDIR, 'images'),
              train_split='train', eval_split='test')
  write_colour_folder(DATA['data_dir'], {'train': 60, 'test': 20})
  CLASS_NAMES = tuple(f'class_{k}' for k in range(10))
  FEWSHOT_SPLITS = ('train', 'test')
print('data:', DATA)
'''),
    ('markdown', r'''
The fine-tuning config starts from `configs/common.py`, which declares every
key with its default; the result is locked, so a misspelt key fails. Adam for
400 steps of 64 images at lr 1e-3 (the paper's Table 4 uses SGD with momentum
at 384 px for thousands of steps; this is the CPU-sized version). Few-shot
linear evaluation of the pre-logits features runs at the end too
(`config.fewshot_every`).
'''),
    ('code', r'''
config = common.get_config()
config.model_name = MODEL
config.model.update(ARCHITECTURE)
config.update(DATA)
config.update(dict(
    pretrained_path=CHECKPOINT, image_size=IMAGE_SIZE,
    train_augment='resize', random_flip=True, shuffle_buffer=5000,
    batch_size=64, eval_batch_size=500, total_steps=400, warmup_steps=40,
    optimizer='adam', lr=1e-3, grad_clip_norm=1.0, log_every=25,
    eval_every=400, checkpoint_every=400, keep_checkpoints=1,
    fewshot_every=400, fewshot_dataset=DATA['dataset'],
    fewshot_train_split=FEWSHOT_SPLITS[0],
    fewshot_test_split=FEWSHOT_SPLITS[1], fewshot_shots=(1, 5, 10)))
config = common.lock(config)

# The first evaluation batch, without the padding rows (mask 0) that fill up
# the last batch of a split.
data = run_spec.data_spec(config)
eval_batch = next(iter(data.eval_batches(data.source())))
real = eval_batch['mask'] > 0
eval_images, eval_labels = eval_batch['image'][real], eval_batch['label'][real]
fig, axes = plt.subplots(1, 8, figsize=(10, 1.8))
for axis, image, label in zip(axes, eval_images, eval_labels):
  axis.imshow(to_picture(image))
  axis.set_title(CLASS_NAMES[label], fontsize=8)
  axis.axis('off')
plt.show()
'''),
    ('markdown', r'''
## 3. Classify with the checkpoint

A released ImageNet checkpoint would name the objects right away. The stand-in
is untrained and its head is zero-initialised, as heads are: every class gets
the same probability. Fine-tuning below gives it something to say.
'''),
    ('code', r'''
def top_classes(model, params, images, k=3):
  """(class index, probability) of the k most likely classes per image."""
  logits = pretrained.predict_logits(model, params, images)
  probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
  best = np.argsort(-probabilities, axis=-1)[:, :k]
  return [[(int(c), float(p[c])) for c in row]
          for row, p in zip(best, probabilities)]


def show_guesses(model, params, images, labels):
  for label, guesses in zip(labels, top_classes(model, params, images)):
    print(f'true {CLASS_NAMES[label]:12s} guesses:',
          ', '.join(f'{CLASS_NAMES[c]} ({p:.2f})' for c, p in guesses))


print('the stand-in:')
show_guesses(model, params, eval_images[:3], eval_labels[:3])
'''),
    ('markdown', r'''
The default run (`bash scripts/run_default.sh`, part of the set-up) trains
a small hybrid ViT on Fashion-MNIST at 32 px. When its `model.npz` is there,
it names the images (resized to its resolution) without fine-tuning.
'''),
    ('code', r'''
# Relative to the repository root, where the notebook is opened (or to
# notebooks/, one level below).
DEFAULT_RUN = next((path for path in ('runs/default/model.npz',
                                      '../runs/default/model.npz')
                    if os.path.isfile(path)), None)
if DEFAULT_RUN:
  print(f"the default run's model ({DEFAULT_RUN}):")
  default_run = pretrained.load(DEFAULT_RUN)
  size = default_run.image_size
  # Back to [0, 255], resized as predict resizes, normalised as it expects.
  pixels = jax.image.resize(to_picture(eval_images[:3]) * 255,
                            (3, size, size, 3), 'bilinear', antialias=False)
  norm = default_run.preprocessing
  show_guesses(default_run.model, default_run.params,
               (pixels - np.asarray(norm.mean)) / np.asarray(norm.std),
               eval_labels[:3])
else:
  print('no runs/default/model.npz (the set-up trains it): the stand-in '
        'only')
'''),
    ('markdown', r'''
## 4. Fine-tune

`loop.train_and_evaluate` is the whole job `python -m vit_jax.main` runs:
it loads the checkpoint for fine-tuning (a fresh zero head for the dataset's
classes, the position embedding resized if the resolution differs), trains
with one jitted step, evaluates every example exactly once, writes orbax
checkpoints, TensorBoard logs and `metrics.jsonl`, and exports `model.npz` in
the released layout.
'''),
    ('code', r'''
workdir = os.path.join(WORKDIR, 'fine_tune')
record = loop.train_and_evaluate(config, workdir)
print(f"test top-1 {record['top1_accuracy']:.3f} on "
      f"{int(record['num_examples'])} images")

with open(os.path.join(workdir, 'metrics.jsonl')) as f:
  metrics = [json.loads(line) for line in f]
losses = [(m['step'], m['train_loss']) for m in metrics if 'train_loss' in m]
fewshot_record = next(m for m in metrics if 'fewshot_5shot_top1' in m)
print('few-shot top-1:', {k: round(v, 3) for k, v in fewshot_record.items()
                          if k.startswith('fewshot')})
plt.figure(figsize=(4, 2.5))
plt.plot(*zip(*losses))
plt.xlabel('step')
plt.ylabel('training loss')
plt.show()
'''),
    ('markdown', r'''
## 5. Classify with the fine-tuned model

The exported `model.npz` loads like any released file.
'''),
    ('code', r'''
tuned_loaded = pretrained.load(os.path.join(workdir, 'model.npz'))
tuned, tuned_params = tuned_loaded.model, tuned_loaded.params
guesses = top_classes(tuned, tuned_params, eval_images[:8], k=1)
fig, axes = plt.subplots(1, 8, figsize=(10, 2))
for axis, image, label, [(guess, p)] in zip(axes, eval_images, eval_labels,
                                            guesses):
  axis.imshow(to_picture(image))
  axis.set_title(f'{CLASS_NAMES[guess]}\n{p:.2f}', fontsize=8,
                 color='green' if guess == label else 'red')
  axis.axis('off')
plt.show()
predicted = pretrained.predict_logits(tuned, tuned_params,
                                      eval_images).argmax(-1)
print(f'top-1 on these {len(eval_labels)} images: '
      f'{np.mean(predicted == eval_labels):.3f}')
'''),
    ('markdown', r'''
## 6. Attention rollout

Which pixels does the class token draw on? Attention rollout (Abnar & Zuidema
2020, the paper's Figure 6) averages each layer's attention over heads, adds
the identity for the residual connection, renormalises and multiplies through
the layers; the class token's row over the patches is the map.
`models.apply_with_intermediates` returns the attention weights of the layers
asked for.
'''),
    ('code', r'''
images = eval_images[:4]
_, inside = models.apply_with_intermediates(
    tuned, tuned_params, images,
    attention_layers=range(tuned.num_layers))
rollout = measures.attention_rollout(inside['attention_weights'],
                                     has_class_token=True)
grid = (IMAGE_SIZE // ARCHITECTURE['patch_size'],) * 2
maps = rollout.class_token_map(grid)  # (images, 4, 4)
print('rollout maps', maps.shape, '- each row of the rollout sums to 1:',
      np.allclose(rollout.matrix_BNN.sum(-1), 1.0, atol=1e-5))

fig, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 4.4))
for column, (image, attention_map) in enumerate(zip(images, maps)):
  picture = to_picture(image)
  axes[0, column].imshow(picture)
  axes[1, column].imshow(picture)
  heat = plots.upsample_map(attention_map, *picture.shape[:2])
  axes[1, column].imshow(heat, cmap='jet', alpha=0.5)
  for axis in axes[:, column]:
    axis.axis('off')
axes[0, 0].set_title('input', fontsize=8, loc='left')
axes[1, 0].set_title('rollout overlay', fontsize=8, loc='left')
plt.show()
'''),
    ('markdown', r'''
## Where next

* Real checkpoints and datasets: `python -m vit_jax.main
  --config=configs/vit.py:ViT-B_16,cifar10` (paper Table 4),
  `configs/vtab.py:ViT-B_16,<task>` (VTAB-1k), `config.extra_evals` for
  ImageNet-ReaL and ImageNet-v2.
* More analyses (mean attention distance, position-embedding similarity,
  patch-embedding filters): `python -m vit_jax.cli.visualize`.
* Few-shot evaluation of any checkpoint: `python -m vit_jax.cli.fewshot`.
'''),
    ('code', r'''
scratch.cleanup()  # The temporary directory: data, checkpoints, logs.
print('removed', WORKDIR)
'''),
]


def _source_lines(text):
  lines = text.strip('\n').split('\n')
  return [line + '\n' for line in lines[:-1]] + lines[-1:]


def _cell(index, kind, text):
  cell = {'cell_type': kind, 'id': f'cell-{index:02d}', 'metadata': {},
          'source': _source_lines(text)}
  if kind == 'code':
    cell.update(execution_count=None, outputs=[])
  return cell


def notebook():
  """The notebook as a JSON-ready dict."""
  return {
      'cells': [_cell(i, kind, text) for i, (kind, text) in enumerate(CELLS)],
      'metadata': {
          'kernelspec': {'display_name': 'Python 3', 'language': 'python',
                         'name': 'python3'},
          'language_info': {'name': 'python'},
      },
      'nbformat': 4,
      'nbformat_minor': 5,
  }


def render() -> str:
  return json.dumps(notebook(), indent=1, ensure_ascii=False) + '\n'


if __name__ == '__main__':
  with open(NOTEBOOK, 'w') as f:
    f.write(render())
  print(f'wrote {NOTEBOOK}')
