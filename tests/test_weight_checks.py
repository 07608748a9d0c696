"""Weights are checked before they are trusted, in every format
(`vit_jax.weights.arrays`): non-finite values and non-float dtypes are
refused by name, sizes are checked from the headers before anything is
allocated, and arrays the model does not use are never read."""

import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from tests import timm_fixtures
from vit_jax import models
from vit_jax import weights
from vit_jax.models import vit_family
from vit_jax.weights import arrays
from vit_jax.weights import npz
from vit_jax.weights import safetensors_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'
TIMM_KERNEL = 'blocks.0.mlp.fc1.weight'
FLOAT_RULE = ('but weights must be floating point (float16, bfloat16, '
              'float32 or float64): vit_jax does not dequantise or '
              'reinterpret other types; write the weights as float32')


@pytest.fixture(scope='module')
def tiny():
  """A tiny ViT to fine-tune, and its initial parameters."""
  model = helpers.tiny_model(num_classes=3)
  return model, helpers.random_params(model, helpers.TINY_IMAGE_SIZE, seed=1)


@pytest.fixture(scope='module')
def released():
  """A tiny ViT in the released layout (ViT-paper block numbering)."""
  params = helpers.random_params(helpers.tiny_model(), helpers.TINY_IMAGE_SIZE)
  return vit_family.FAMILY.to_released(params)

SIZE = (helpers.TINY_IMAGE_SIZE,) * 2


def _with(flat, key, change):
  flat = dict(flat)
  flat[key] = change(np.array(flat[key]))
  return flat


def _nan_at_first(x):
  x.flat[0] = np.nan
  return x


def _write_npz(path, flat):
  np.savez(path, **flat)
  return path


def _npy_bytes(value) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, value)
  return buffer.getvalue()


def _timm_dir(directory, change=None):
  spec = timm_fixtures.FAMILIES['deit']
  state = timm_fixtures.state_dict(spec)
  if change:
    state = change(state)
  return timm_fixtures.write_hub_dir(directory, timm_fixtures.config(spec),
                                     state)


def _message(error) -> str:
  message = str(error.value)
  assert '\n' not in message
  return message


# ------------------------------------------------------------ non-finite --

def test_nan_in_our_npz_is_refused_naming_the_array(tmp_path, released):
  path = _write_npz(tmp_path / 'm.npz', _with(released, KERNEL, _nan_at_first))
  with pytest.raises(ValueError) as error:
    weights.load(path)
  assert _message(error) == (
      f'{path}: array {KERNEL!r} holds 1 NaN or infinite value(s) of 2048: '
      'the weights are damaged (saved from a diverged run, or corrupted); '
      'use an earlier or a freshly downloaded checkpoint')


def test_inf_in_a_released_layout_npz_names_the_key_as_stored(
    tmp_path, released):
  """The Google files' layout: a container prefix, old block numbering."""
  flat = {f'opt/target/{key}': value for key, value in
          _with(released, 'embedding/bias', lambda x: x + np.inf).items()}
  path = _write_npz(tmp_path / 'released.npz', flat)
  for read in (weights.load, npz.read_npz, weights.load_params):
    with pytest.raises(ValueError, match=(
        r"released.npz: array 'opt/target/embedding/bias' holds 32 NaN or "
        r'infinite value\(s\) of 32')):
      read(path)


def test_nan_in_safetensors_is_refused_naming_the_tensor(tmp_path):
  directory = _timm_dir(tmp_path, lambda state: _with(
      state, TIMM_KERNEL, _nan_at_first))
  with pytest.raises(ValueError) as error:
    weights.load(directory)
  assert _message(error).startswith(
      f'{directory / "model.safetensors"}: array {TIMM_KERNEL!r} holds 1 NaN '
      'or infinite value(s) of ')


def test_fine_tuning_never_reads_the_replaced_head(tmp_path, released, tiny):
  """A damaged head is no matter when the head is new; a damaged backbone
  array is refused."""
  model, init = tiny
  path = _write_npz(tmp_path / 'head.npz',
                    _with(released, 'head/kernel', _nan_at_first))
  loaded = weights.load_for_fine_tuning(path, model, init, image_size=SIZE)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(loaded))
  np.testing.assert_array_equal(loaded['embedding']['bias'],
                                released['embedding/bias'])
  path = _write_npz(tmp_path / 'body.npz',
                    _with(released, KERNEL, _nan_at_first))
  with pytest.raises(ValueError, match=f'{KERNEL!r} holds 1 NaN'):
    weights.load_for_fine_tuning(path, model, init, image_size=SIZE)


# ---------------------------------------------------------------- dtypes --

def test_integer_weights_get_one_rule_in_npz_and_safetensors(
    tmp_path, released):
  path = _write_npz(tmp_path / 'int.npz', _with(
      released, 'embedding/bias', lambda x: x.astype(np.int32)))
  with pytest.raises(ValueError) as error:
    weights.load(path)
  assert _message(error) == (
      f"{path}: array 'embedding/bias' is stored as int32, {FLOAT_RULE}")
  directory = _timm_dir(tmp_path / 'hub', lambda state: _with(
      state, TIMM_KERNEL, lambda x: x.astype(np.int32)))
  with pytest.raises(ValueError) as error:
    weights.load(directory)
  assert _message(error) == (
      f'{directory / "model.safetensors"}: array {TIMM_KERNEL!r} is stored '
      f'as int32, {FLOAT_RULE}')


@pytest.mark.parametrize('dtype', ['bool', 'uint8', 'complex64', 'float8'])
def test_other_non_float_dtypes_are_refused(dtype):
  stored = {'float8': 'F8_E4M3'}.get(dtype) or np.dtype(dtype)
  with pytest.raises(ValueError, match=f"array 'w' is stored as "
                     f'{stored}, but weights must be floating point'):
    arrays.float_dtype(stored, 'w', 'f.npz')


def test_half_precision_floats_are_read_as_float32(tmp_path, released):
  half = {key: value.astype(np.float16) for key, value in released.items()}
  loaded = npz.read_npz(_write_npz(tmp_path / 'half.npz', half))
  for key, value in half.items():
    assert loaded[key].dtype == np.float32
    np.testing.assert_array_equal(loaded[key], value.astype(np.float32))
  timm_fixtures.write_hub_dir(
      tmp_path, {}, {'a': np.arange(6, dtype=np.float16).reshape(2, 3)})
  tensor = safetensors_file.open_safetensors(tmp_path / 'model.safetensors')
  assert tensor['a'].shape == (2, 3)
  np.testing.assert_array_equal(
      np.asarray(tensor['a']), np.arange(6, dtype=np.float32).reshape(2, 3))


# ----------------------------------------------------- sizes from headers --

def _forged_npz(path, flat, key, shape, data=b'\0' * 64):
  """`flat`, plus a member `key` whose header claims `shape` (float32)."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {'descr': '<f4', 'fortran_order': False, 'shape': shape})
  with zipfile.ZipFile(path, 'w') as archive:
    for name, value in flat.items():
      if name != key:
        archive.writestr(f'{name}.npy', _npy_bytes(value))
    archive.writestr(f'{key}.npy', header.getvalue() + data)
  return path


@pytest.mark.parametrize('key', ['junk', KERNEL])
def test_a_header_claiming_a_trillion_elements_allocates_nothing(
    tmp_path, released, key):
  path = _forged_npz(tmp_path / 'forged.npz', released, key,
                     (1_000_000, 1_000_000))
  tracemalloc.start()
  try:
    with pytest.raises(ValueError) as error:
      weights.load(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert _message(error) == (
      f'{path}: array {key!r} claims shape (1000000, 1000000) of float32 '
      '(3.6 TiB) but its file holds 64 bytes for it: the file is damaged or '
      'forged (truncated or corrupt download?)')
  assert peak < 100 * 2**20


@pytest.mark.parametrize('entry,data_bytes', [
    # A shape of 4 TB in 8 bytes.
    ({'dtype': 'F32', 'shape': [10**6, 10**6], 'data_offsets': [0, 8]}, 8),
    # Offsets past the end of the file.
    ({'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]}, 8),
])
def test_a_safetensors_header_that_does_not_fit_its_file_is_refused(
    tmp_path, entry, data_bytes):
  header = json.dumps({'w': entry}).encode()
  path = tmp_path / 'model.safetensors'
  path.write_bytes(struct.pack('<Q', len(header)) + header +
                   b'\0' * data_bytes)
  tracemalloc.start()
  try:
    with pytest.raises(ValueError, match=(
        f'{path} is not a readable safetensors file .truncated or corrupt '
        'download.*: Error while deserializing header')):
      safetensors_file.open_safetensors(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 100 * 2**20


def test_a_damaged_member_is_refused_when_read(tmp_path):
  path = _write_npz(tmp_path / 'm.npz', {'a': np.ones(1000, np.float32)})
  data = bytearray(path.read_bytes())
  data[data.find(np.float32(1).tobytes()) + 2000] ^= 1
  path.write_bytes(bytes(data))
  stored = npz.open_npz(path)  # The header is intact.
  with pytest.raises(ValueError) as error:
    np.asarray(stored['a'])
  assert _message(error) == (
      f'{path} is not a readable .npz checkpoint (truncated or corrupt '
      "download?): member 'a.npy': Bad CRC-32 for file 'a.npy'")


# ------------------------------------------- unused arrays are never read --

HUGE_ELEMENTS = 16 * 2**20  # 64 MiB of float32 zeros, ~64 KiB deflated.


def _npz_with_huge_extra(path, flat):
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
    for name, value in flat.items():
      archive.writestr(f'{name}.npy', _npy_bytes(value))
    with archive.open('junk/huge.npy', 'w') as member:
      np.lib.format.write_array_header_1_0(
          member, {'descr': '<f4', 'fortran_order': False,
                   'shape': (HUGE_ELEMENTS,)})
      for _ in range(HUGE_ELEMENTS * 4 // 2**22):
        member.write(bytes(2**22))
  return path


def test_an_extra_huge_member_is_refused_without_reading_it(
    tmp_path, released, tiny):
  path = _npz_with_huge_extra(tmp_path / 'extra.npz', released)
  assert os.path.getsize(path) < 2**20
  model, init = tiny
  loads = (lambda: weights.load(path),
           lambda: weights.load(path, 'ViT-Ti_16', **helpers.TINY_VIT),
           lambda: weights.load_for_fine_tuning(path, model, init,
                                                image_size=SIZE))
  for load in loads:
    tracemalloc.start()
    try:
      with pytest.raises(models.CheckpointMismatchError) as error:
        load()
      peak = tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()
    assert '1 not in the model:\n    junk/huge\n' in str(error.value)
    assert peak < HUGE_ELEMENTS * 4 // 8


def test_members_are_read_only_once_keys_and_shapes_are_checked(
    tmp_path, released, monkeypatch):
  path = _write_npz(tmp_path / 'm.npz', released)
  reads = []
  real_to_float32 = arrays.to_float32
  monkeypatch.setattr(arrays, 'to_float32', lambda values, name, where: (
      reads.append(name), real_to_float32(values, name, where))[1])
  with pytest.raises(models.CheckpointMismatchError, match='num layers 2 but'):
    weights.load(path, 'ViT-Ti_16', **{**helpers.TINY_VIT, 'num_layers': 3})
  assert not reads
  loaded = weights.load(path)
  assert sorted(reads) == sorted(released)
  np.testing.assert_array_equal(loaded.params['embedding']['bias'],
                                released['embedding/bias'])


# ------------------------------------------------------------- programs --

@pytest.mark.slow
def test_predict_on_nan_weights_prints_one_error_line(tmp_path):
  model = models.create_model('ViT-S_16', num_classes=4, num_layers=1)
  flat = vit_family.FAMILY.to_released(helpers.random_params(model, 32))
  path = _write_npz(tmp_path / 'nan.npz', _with(flat, KERNEL, _nan_at_first))
  image = str(tmp_path / 'image.png')
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
  started = time.monotonic()
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.predict', f'--checkpoint={path}',
       image], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  assert 'nan%' not in result.stdout
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error:')]
  assert errors == [f'error: {path}: array {KERNEL!r} holds 1 NaN or '
                    'infinite value(s) of 589824: the weights are damaged '
                    '(saved from a diverged run, or corrupted); use an '
                    'earlier or a freshly downloaded checkpoint']
  assert result.stderr.rstrip().endswith(errors[0])
  assert time.monotonic() - started < 120
