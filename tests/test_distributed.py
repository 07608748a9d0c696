"""Two processes on loopback, 4 CPU devices each, against one 8-device process.

Each process reads its own half of the data, so the rows of a global batch
come from different places in the two runs. With the global batch equal to
the whole (augmentation-free) training split, every step still sees exactly
the same examples, so the losses must agree: what is tested is the global
batch assembly, the cross-process gradient reduction, and that metrics,
checkpoints and the export are written once.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests import helpers

pytestmark = pytest.mark.slow  # Training runs in subprocesses.

TRAIN_EXAMPLES, TEST_EXAMPLES = 24, 15


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder')
  rng = np.random.default_rng(0)
  for split, count in (('train', TRAIN_EXAMPLES), ('test', TEST_EXAMPLES)):
    for i in range(count):
      label = i % 3
      os.makedirs(root / split / f'class{label}', exist_ok=True)
      image = rng.integers(0, 120, (16, 16, 3))
      image[..., label] += 120
      Image.fromarray(image.astype(np.uint8)).save(
          root / split / f'class{label}' / f'{i}.png')
  return str(root)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(data_dir, workdir):
  overrides = dict(
      dataset='imagefolder', data_dir=data_dir, image_size=16,
      batch_size=TRAIN_EXAMPLES, eval_batch_size=8, total_steps=5,
      warmup_steps=1, log_every=1, eval_every=5, checkpoint_every=5,
      # SGD: Adam's m/sqrt(v) turns reduction-order noise in near-zero
      # gradients into lr-sized differences, hiding real ones.
      optimizer='sgd', lr=0.1,
      shuffle_buffer=64, train_augment='resize', crop_padding=0,
      random_flip=False,
      model_name='ViT-Ti_16', cpu_devices=1,  # The devices XLA_FLAGS gives.
      **{f'model.{key}': value for key, value in helpers.TINY_VIT.items()},
      **{'model.dtype': 'float32'})
  # The pure-ViT config: the default one's ResNet unit would stay on.
  return [sys.executable, '-m', 'vit_jax.main',
          '--config=configs/fashion_mnist_vit.py', f'--workdir={workdir}'
          ] + [f'--config.{k}={v}' for k, v in overrides.items()]


def _env(devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _assert_same_metrics(got, want):
  """The same records: steps, keys, and the values of the training and
  evaluation metrics (each logged at least once)."""
  assert [r['step'] for r in got] == [r['step'] for r in want]
  for a, b in zip(want, got, strict=True):
    assert sorted(b) == sorted(a), a['step']
  for key in ('train_loss', 'train_grad_norm', 'top1_accuracy', 'loss',
              'num_examples'):
    pairs = [(a[key], b[key]) for a, b in zip(want, got, strict=True)
             if key in a]
    assert pairs, f'{key} was never logged'
    wanted, values = zip(*pairs)
    np.testing.assert_allclose(values, wanted, rtol=1e-5, err_msg=key)


def test_two_processes_match_one_process(image_folder, tmp_path):
  # The one process has a single device from XLA_FLAGS and asks for 8 with
  # config.cpu_devices (the two processes take theirs from XLA_FLAGS).
  single = str(tmp_path / 'single')
  result = subprocess.run(
      _command(image_folder, single) + ['--config.cpu_devices=8'],
      cwd=helpers.REPO, env=_env(1), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '8 local / 8 global devices' in result.stderr
  final = _records(single)[-1]
  assert (f'Final test top-1 accuracy: {final["top1_accuracy"]:.4f} '
          f'({int(final["num_examples"])} examples)') in result.stdout

  multi = str(tmp_path / 'multi')
  port = _free_port()
  processes = [
      subprocess.Popen(
          _command(image_folder, multi) + [
              f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}'],
          cwd=helpers.REPO, env=_env(4), stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, stderr) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, stderr[-3000:]
  assert 'Process 1 of 2; 4 local / 8 global devices' in outputs[1][1]

  # Written once: one record per step, not one per process.
  _assert_same_metrics(_records(multi), _records(single))
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['5']
  single_params = np.load(os.path.join(single, 'model.npz'))
  multi_params = np.load(os.path.join(multi, 'model.npz'))
  assert sorted(single_params.files) == sorted(multi_params.files)
  for key in single_params.files:
    np.testing.assert_allclose(multi_params[key], single_params[key],
                               rtol=1e-4, atol=1e-6, err_msg=key)
