"""benchmarks.memory_report on a tiny ViT over the 8 fake devices of
conftest."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import memory_measure
from benchmarks import memory_report
from tests import helpers
from vit_jax.training import setup as setup_lib
from vit_jax.training import run_spec

_NUM_DEVICES = 8
_NUM_CLASSES = 10
_BATCH_SIZE = 32  # 4 images per device


def _tiny_config(*, fsdp=True, remat_policy='full', optimizer='adam'):
  config = memory_measure.pretrain_config(
      'ViT-Ti_16', batch_size=_BATCH_SIZE, grad_accum_steps=1,
      remat_policy=remat_policy, image_size=helpers.TINY_IMAGE_SIZE)
  for key, value in helpers.TINY_VIT.items():
    config.model[key] = value
  config.model.representation_size = helpers.TINY_VIT['hidden_size']
  # No dropout: its random-bit graph would double the compile time here.
  config.model.dropout_rate = 0.0
  config.fsdp = fsdp
  config.optimizer = optimizer
  return config


def _measure(**kwargs):
  return memory_measure.measure(_tiny_config(**kwargs), _NUM_CLASSES,
                               _NUM_DEVICES)


@pytest.fixture(scope='module')
def fsdp_full():
  return _measure()


@pytest.fixture(scope='module')
def fsdp_none():
  return _measure(remat_policy='none')


def _state_bytes(fsdp, num_devices=_NUM_DEVICES):
  """memory_measure.state_bytes_per_device, without compiling a step."""
  devices = jax.devices()[:num_devices]
  spec = run_spec.from_config(_tiny_config(fsdp=fsdp),
                              num_devices=num_devices)
  setup = setup_lib.make_setup(spec, _NUM_CLASSES, devices=devices)
  state = setup.init_state.eval_shape(jax.random.PRNGKey(0))
  return memory_measure.state_bytes_per_device(state, setup.state_shardings)


def _param_shapes():
  """Every param shape of the tiny model, from an independent init."""
  spec = run_spec.from_config(_tiny_config(), num_devices=1)
  setup = setup_lib.make_setup(spec, _NUM_CLASSES, devices=jax.devices()[:1])
  state = setup.init_state.eval_shape(jax.random.PRNGKey(0))
  return [x.shape for x in jax.tree_util.tree_leaves(state.params)]


def _hand_param_bytes(fsdp):
  """float32 params; with FSDP an array with a dimension that 8 divides
  keeps 1/8 of itself on each device, any other is whole everywhere."""
  total = 0
  for shape in _param_shapes():
    size = int(np.prod(shape))
    split = fsdp and any(d % _NUM_DEVICES == 0 for d in shape)
    total += 4 * (size // _NUM_DEVICES if split else size)
  return total


@pytest.mark.parametrize('fsdp', [True, False])
def test_state_bytes_equal_a_hand_computation(fsdp):
  state = _state_bytes(fsdp)
  assert state['params'] == _hand_param_bytes(fsdp)
  # Adam: mu and nu shaped like the params, plus int32 step counts (Adam's
  # and the schedule's).
  assert state['opt_state'] == 2 * state['params'] + 2 * 4
  assert state['ema_params'] == 0  # the recipe has no EMA
  assert state['other'] == 4 + 2 * 4  # step (int32) and rng (2 x uint32)
  assert state['total'] == sum(
      state[k] for k in ('params', 'opt_state', 'ema_params', 'other'))


@pytest.mark.slow
def test_fsdp_holds_less_per_device_than_replication(fsdp_full):
  fsdp, whole = fsdp_full['state_bytes'], _state_bytes(fsdp=False)
  assert fsdp == _state_bytes(fsdp=True)
  assert fsdp['total'] < whole['total'] / 4
  # Replicated, every device holds all the float32 params.
  assert whole['params'] == 4 * fsdp_full['params']


@pytest.mark.slow
def test_compiled_analysis_is_present_and_consistent(fsdp_full):
  step = fsdp_full['step_bytes']
  for key in ('argument', 'output', 'temp', 'peak'):
    assert step[key] > 0, key
  # Arguments are the state's shards plus this device's rows of images and
  # labels (jit drops the mask, which the train step does not read).
  image_bytes = 4 * helpers.TINY_IMAGE_SIZE**2 * 3
  rows = _BATCH_SIZE // _NUM_DEVICES
  assert step['argument'] == (fsdp_full['state_bytes']['total']
                              + rows * (image_bytes + 4))
  # The state is donated: its outputs reuse the argument buffers.
  assert step['alias'] >= fsdp_full['state_bytes']['total']
  assert step['peak'] == (step['argument'] + step['temp'] + step['output']
                          - step['alias'])
  assert fsdp_full['compile_s'] > 0
  # Scan + FSDP: each device computes attention for its own rows only (the
  # activation constraint of vit_jax.sharding), not for the whole batch.
  assert fsdp_full['attention_images_per_device'] == [rows]
  assert fsdp_full['activations_sharded'] is True
  json.dumps(fsdp_full)


@pytest.mark.slow
def test_full_remat_needs_no_more_temp_than_none(fsdp_full, fsdp_none):
  assert fsdp_full['step_bytes']['temp'] <= fsdp_none['step_bytes']['temp']


def test_attention_batch_sizes_reads_the_per_device_images():
  hlo = ('%a = f32[4,2,17,17]{3,2,1,0} dot(...)\n'
         '%b = bf16[4,2,17,17]{3,2,1,0} convert(%a)\n'
         '%c = f32[32,2,17,17]{3,2,1,0} fusion(...)\n'
         '%d = f32[4,2,17,16]{3,2,1,0} dot(...)\n')
  assert memory_measure.attention_batch_sizes(hlo, 2, 17) == [4, 32]
  assert memory_measure.attention_batch_sizes(hlo, 3, 17) == []


@pytest.mark.parametrize('batch_size,devices,expected', [
    (4096, 8, 16),  # 512 per device: 16 micro-batches of 32 per device
    (4096, 64, 2),  # 64 per device: 2 of 32
    (256, 8, 1),  # 32 per device already
    (320, 8, 2),  # 40 per device: 2 of 20
])
def test_auto_grad_accum_steps(batch_size, devices, expected):
  assert memory_measure.auto_grad_accum_steps(batch_size, devices) == expected


def test_auto_grad_accum_steps_rejects_an_unsplittable_batch():
  with pytest.raises(ValueError, match='splits'):
    memory_measure.auto_grad_accum_steps(100, 8)


@pytest.mark.slow
def test_format_report_gives_a_verdict_and_the_caveat(fsdp_full):
  text = memory_report.format_report(fsdp_full)
  assert 'verdict: FITS in 16 GiB' in text
  assert memory_measure.CAVEAT in text
  assert 'train state, exact' in text


@pytest.mark.slow
def test_command_line_makes_its_own_device_count():
  # This process has 8 devices; the command asks for 16 before jax starts.
  # A batch of 40 rows cannot split over them: the error, raised by the
  # config's checks before anything compiles, names the 16.
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.memory_report', '--model=Ti/16',
       '--num_devices=16', '--image_size=32', '--batch_size=40',
       '--grad_accum_steps=1', '--num_classes=10'],
      cwd=helpers.REPO, capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'over 16 data-parallel devices' in result.stderr
  assert 'Traceback' not in result.stderr
