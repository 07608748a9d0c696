"""The core tier (`pip install .`) runs without TensorFlow.

Fast: importing the core in a fresh interpreter loads none of the extras'
modules, though this environment has them all. Slow, and only with
VIT_JAX_FRESH_ENV_TEST=1 (it needs the package index and a few minutes):
`pip install .` into a new virtual environment at requirements.lock's
versions installs no extra, and there a model is built, saved, loaded and
classifies an image file, and the programs of the core start:

  VIT_JAX_FRESH_ENV_TEST=1 .venv/bin/python -m pytest -q \\
      tests/test_install_tiers.py
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests import test_layout

REPO = pathlib.Path(__file__).resolve().parent.parent
CORE_MODULES = ('vit_jax', 'vit_jax.models', 'vit_jax.weights',
                'vit_jax.weights.zoo', 'vit_jax.weights.timm_hub',
                'vit_jax.analysis.measures', 'vit_jax.analysis.plots',
                'vit_jax.data.image_file', 'vit_jax.cli.predict',
                'vit_jax.cli.visualize', 'vit_jax.cli.weights')
# Prints the extras' modules that importing the core loaded, one a line.
_LOADED_EXTRAS = textwrap.dedent(f"""
    import sys
    import {', '.join(CORE_MODULES)}
    extras = {test_layout.EXTRAS_MODULES!r}
    print('\\n'.join(sorted({{name.split('.')[0] for name in sys.modules
                             if name.split('.')[0] in extras}})))
""")


def test_importing_the_core_loads_no_extra():
  result = subprocess.run(
      [sys.executable, '-c', _LOADED_EXTRAS], cwd=REPO, check=True,
      capture_output=True, text=True,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.stdout.split() == []


def test_the_probe_sees_an_extra_when_one_is_loaded():
  probe = _LOADED_EXTRAS.replace('import sys\n', 'import sys, clu\n', 1)
  result = subprocess.run(
      [sys.executable, '-c', probe], cwd=REPO, check=True,
      capture_output=True, text=True,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.stdout.split() == ['clu']


# In the fresh environment: the quick start's library calls on a saved model,
# then the core programs' --help.
_USE_THE_CORE = textwrap.dedent("""
    import importlib.util, subprocess, sys
    import jax
    import numpy as np
    from PIL import Image
    from vit_jax import models
    from vit_jax.data import image_file
    from vit_jax.weights import pretrained
    for extra in ('tensorflow', 'tensorflow_datasets', 'clu', 'tensorboard',
                  'jax2onnx', 'onnxruntime', 'notebook', 'torch'):
      assert importlib.util.find_spec(extra) is None, extra + ' installed'
    model = models.create_model('ViT-S_16', num_classes=3, num_layers=1)
    params = models.init_params(model, jax.random.PRNGKey(0), (32, 32))
    pretrained.save_npz(params, 'model.npz', model=model, image_size=32,
                        class_names=['cat', 'dog', 'owl'])
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3))
    Image.fromarray(pixels.astype(np.uint8)).save('image.png')
    loaded = pretrained.load('model.npz')
    image = image_file.load_image('image.png', loaded.image_size,
                                  loaded.preprocessing)
    logits = pretrained.predict_logits(loaded.model, loaded.params,
                                       image[None])
    assert logits.shape == (1, 3) and np.isfinite(logits).all(), logits
    for program in ('predict', 'visualize', 'weights'):
      # absl's --help exits with status 1; a missing module is a traceback.
      run = subprocess.run([sys.executable, '-m', 'vit_jax.cli.' + program,
                            '--help'], capture_output=True, text=True)
      assert 'Traceback' not in run.stderr, run.stderr
      assert 'Try --helpfull' in run.stdout + run.stderr, program
    print('core ok')
""")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get('VIT_JAX_FRESH_ENV_TEST') != '1',
                    reason='builds a virtual environment from the package '
                    'index (minutes): set VIT_JAX_FRESH_ENV_TEST=1')
def test_the_core_installs_and_runs_in_a_fresh_environment(tmp_path):
  # A copy of the sources: building in the checkout would leave build/ there.
  source = tmp_path / 'source'
  source.mkdir()
  shutil.copytree(REPO / 'vit_jax', source / 'vit_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('setup.py', 'requirements.lock'):
    shutil.copy(REPO / name, source / name)
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  subprocess.run([python, '-m', 'pip', 'install', '-q',
                  '--disable-pip-version-check', '-c', 'requirements.lock',
                  '.'], cwd=source, check=True)
  work = tmp_path / 'work'  # Neither the checkout nor the sources on the path.
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([python, '-c', _USE_THE_CORE], cwd=work, env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[-2:] == ['core', 'ok']
