"""Smoke tests of benchmarks.benchmark on a one-layer model (no timing
claims)."""

import dataclasses
import importlib.util
import json
import platform
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import benchmark
from benchmarks import jax_side
from benchmarks import protocol
from tests import helpers
from vit_jax.models import precision
from vit_jax import sharding

# A one-layer ViT-Ti at 32 px: compiles in seconds.
_TINY = dict(model='ViT-Ti_16', batch_size=2, image_size=32, num_classes=10,
             steps=2, warmup=2, peak_matmul_size=128, num_layers=1)


def _check_consistent(result, batch_size):
  for key in ('images_per_sec', 'step_time_ms', 'cpu_time_ms', 'params',
              'gflops_per_image', 'achieved_tflops', 'matmul_peak_tflops',
              'fraction_of_peak', 'xla_peak_memory_mb', 'max_rss_mb'):
    assert result[key] > 0, key
  assert result['images_per_sec'] * result['step_time_ms'] / 1e3 == (
      pytest.approx(batch_size))
  assert result['step_time_ms_min'] <= result['step_time_ms'] <= (
      result['step_time_ms_max'])
  assert result['fraction_of_peak'] == pytest.approx(
      result['achieved_tflops'] / result['matmul_peak_tflops'])
  flops_per_step = result['gflops_per_image'] * 1e9 * batch_size
  assert result['achieved_tflops'] == pytest.approx(
      flops_per_step / (result['step_time_ms'] / 1e3) / 1e12)
  json.dumps(result)  # JSON-ready


@pytest.fixture(scope='module')
def inference():
  # Split over two devices: the FLOPs must still count the whole batch.
  return protocol.run_benchmark(mode='inference', dtype='float32',
                                host_devices=2, **_TINY)


@pytest.fixture(scope='module')
def train():
  return protocol.run_benchmark(mode='train', dtype='bfloat16',
                                host_devices=1, **_TINY)


@pytest.mark.slow
@pytest.mark.parametrize('mode,dtype', [('inference', 'float32'),
                                        ('train', 'bfloat16')])
def test_fields_positive_and_consistent(request, mode, dtype):
  result = request.getfixturevalue(mode)
  _check_consistent(result, _TINY['batch_size'])
  assert result['host_devices'] == {'inference': 2, 'train': 1}[mode]
  assert (result['mode'], result['dtype']) == (mode, dtype)


@pytest.mark.slow
def test_train_counts_backward_flops(inference, train):
  # Forward + backward is about 3x the forward pass (whose FLOPs, counted
  # per device, must have been scaled by the 2 devices).
  assert 2 < train['gflops_per_image'] / inference['gflops_per_image'] < 4
  assert train['params'] == inference['params']


@pytest.mark.slow
def test_every_token_flops_add_the_last_blocks_other_tokens():
  # timm is rated on every_token_flops: our token-head step skips the last
  # block's other tokens, a 'gap' one cannot. On two devices, where the
  # compiled step's per-device FLOPs are scaled up (one device is the
  # `train` fixture's case).
  images, labels = protocol.synthetic_batch(2, 32, 10)
  mesh = sharding.make_mesh(1, sharding.first_devices(2))

  def flops(mode, **overrides):
    _, info = jax_side.build_step(
        'ViT-Ti_16', 32, 10, mode, np.float32, mesh, images, labels,
        dict(num_layers=1, **overrides))
    return info['flops'], info['every_token_flops']

  for mode in ('inference', 'train'):
    token_flops, token_every = flops(mode)
    assert token_every > 1.5 * token_flops  # the one block is the last
    gap_flops, gap_every = flops(mode, classifier='gap')
    assert gap_every == pytest.approx(gap_flops, rel=0.01)


def test_rejects_short_warmup_and_indivisible_batch():
  with pytest.raises(ValueError, match='warmup'):
    protocol.run_benchmark(**dict(_TINY, warmup=1))
  with pytest.raises(ValueError, match='divisible'):
    protocol.run_benchmark(host_devices=2,
                           **dict(_TINY, batch_size=3))


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ('torch', 'timm')),
    reason='the optional torch and timm are not installed')
def test_compare_with_timm():
  # find_spec, not importorskip: timm imports only through the benchmark's
  # torchvision stand-in where torchvision is missing.
  result = protocol.run_benchmark(
      mode='inference', dtype='bfloat16', host_devices=1, compare='timm',
      **_TINY)
  timm = result['timm']
  assert timm['params'] == result['params']  # the same architecture
  assert timm['images_per_sec'] > 0
  assert result['ratio_vs_timm'] == pytest.approx(
      result['images_per_sec'] / timm['images_per_sec'])
  # Rated on the every-token work it does, more than our token-head step.
  assert timm['gflops_per_image'] > result['gflops_per_image']
  assert timm['achieved_tflops'] == pytest.approx(
      timm['gflops_per_image'] * _TINY['batch_size'] / timm['step_time_ms'])
  assert 'ours/timm' in benchmark.format_result(result)


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ('torch', 'timm')),
    reason='the optional torch and timm are not installed')
def test_timm_train_step_updates_the_weights():
  from benchmarks import timm_side  # pylint: disable=g-import-not-at-top
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  variant = dataclasses.replace(models.VARIANTS['ViT-Ti_16'], num_layers=1)
  rng = np.random.default_rng(0)
  step = timm_side.TimmStep(
      variant, image_size=32, num_classes=10, mode='train',
      dtype='bfloat16', images_nhwc=rng.uniform(-1, 1, (2, 32, 32, 3)),
      labels=np.array([1, 2]))
  head = step._model.head.weight.detach().clone()  # pylint: disable=protected-access
  step.step()
  assert not (step._model.head.weight == head).all()  # pylint: disable=protected-access


def test_default_host_devices_split_only_float32_inference():
  assert benchmark.default_host_devices('train', 'float32', 8) == 1
  assert benchmark.default_host_devices('inference', 'bfloat16', 8) == 1
  assert benchmark.default_host_devices('inference', 'float32', 7) == 1


def _imported_modules(importtime_log):
  """The modules `python -X importtime` logged ("import time: ... | name")."""
  return {line.rsplit('|', 1)[-1].strip()
          for line in importtime_log.splitlines()
          if line.startswith('import time:')}


@pytest.mark.slow
def test_command_line_writes_json_keeps_freed_memory_and_needs_no_torch(
    tmp_path):
  out = tmp_path / 'bench.json'
  # -X importtime logs every import of the run to stderr: one process shows
  # both the program's results and that it never loads torch.
  run = subprocess.run(
      [sys.executable, '-X', 'importtime', '-m', 'benchmarks.benchmark',
       '--model=ViT-Ti_16', '--batch_size=2', '--image_size=32',
       '--num_classes=10', '--steps=2', '--mode=train', '--dtype=bfloat16',
       f'--json_out={out}'],
      cwd=helpers.REPO, check=True, capture_output=True, text=True)
  imported = _imported_modules(run.stderr)
  assert {'benchmarks', 'jax', 'absl.app'} <= imported
  assert not {name for name in imported
              if name == 'torch' or name.startswith('torch.')}
  result = json.loads(out.read_text())
  assert (result['model'], result['mode'], result['dtype']) == (
      'ViT-Ti_16', 'train', 'bfloat16')
  _check_consistent(result, batch_size=2)
  # Set by the program before JAX starts (glibc only; see host_memory).
  assert result['keeps_freed_memory'] == (
      sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc')


@pytest.mark.slow
def test_a_config_is_timed_with_the_training_loops_own_step(tmp_path):
  from configs import default  # pylint: disable=g-import-not-at-top
  from tests import data_helpers  # pylint: disable=g-import-not-at-top
  data_helpers.write_image_folder(tmp_path, {'train': 2, 'test': 1}, 3, 8)
  config = default.get_config()
  config.update(dataset='imagefolder', data_dir=str(tmp_path), image_size=8,
                batch_size=8, mixup_alpha=0.2)
  config.model.update(num_layers=1, hidden_size=16, mlp_dim=16, num_heads=2)
  result = protocol.run_benchmark(
      config=config, mode='train', steps=2, warmup=2, peak_matmul_size=128,
      host_devices=1)
  _check_consistent(result, batch_size=8)
  # The default config's dtype is 'auto': the one this machine runs fastest.
  assert (result['model'], result['batch_size'], result['image_size'],
          result['dtype'], result['num_classes']) == (
              'R+ViT-Ti_16', 8, 8, precision.resolve_dtype('auto'), 3)
  with pytest.raises(ValueError, match='--compare'):
    protocol.run_benchmark(config=config, compare='timm')
