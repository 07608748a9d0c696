"""Checkpoint integrity: manifests written after each save, damaged steps
skipped (and moved aside) on resume, other models' checkpoints refused."""

import gc
import hashlib
import json
import os
import shutil
import time

import jax
import numpy as np
import pytest

from vit_jax import sharding
from vit_jax.training import checkpoints as train_checkpoints

MANIFEST = train_checkpoints.MANIFEST_NAME


def _state(step):
  """A small train-state-like tree whose values tell the step apart."""
  rng = np.random.default_rng(step)
  return {'params': {'w': rng.standard_normal((64, 32)).astype(np.float32),
                     'b': rng.standard_normal(32).astype(np.float32)},
          'step': np.int32(step)}


def _shardings(tree):
  """'w' split over the 8 devices' data axis, the rest replicated."""
  mesh = sharding.make_mesh()
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (sharding.batch_sharding(mesh)
                       if sharding.path_string(path) == 'params/w'
                       else sharding.replicated(mesh)), tree)


def _abstract(tree):
  return sharding.abstract_arrays(tree, _shardings(tree))


def _on_devices(tree):
  return jax.device_put(tree, _shardings(tree))


def _save_steps(workdir, steps, keep=5):
  checkpointer = train_checkpoints.Checkpointer(workdir, keep)
  for step in steps:
    checkpointer.save(_on_devices(_state(step)), step)
  checkpointer.close()


@pytest.fixture(scope='module')
def saved_workdir(tmp_path_factory):
  """A workdir holding the checkpoints of steps 1, 2 and 3, saved once for
  the module (orbax's saves are what costs here)."""
  workdir = tmp_path_factory.mktemp('saved')
  _save_steps(workdir, [1, 2, 3])
  return workdir


@pytest.fixture
def saved(saved_workdir, tmp_path):
  """Returns `copy(steps)`: tmp_path made a copy of `saved_workdir` holding
  the checkpoints of `steps` (a subset of 1, 2, 3), as `_save_steps` would
  have left it."""

  def copy(steps):
    source = saved_workdir / 'checkpoints'
    for step in steps:
      shutil.copytree(source / str(step),
                      tmp_path / 'checkpoints' / str(step))
    return tmp_path

  return copy


def _restore_intact(workdir, abstract=None):
  checkpointer = train_checkpoints.Checkpointer(workdir, keep=5)
  try:
    return checkpointer.restore_intact(abstract or _abstract(_state(0)))
  finally:
    checkpointer.close()


def _assert_state_equal(restored, expected):
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
      restored, expected)


def _files(step_dir):
  return sorted(
      os.path.relpath(os.path.join(root, name), step_dir)
      for root, _, names in os.walk(step_dir) for name in names)


def _largest_data_file(step_dir):
  """The biggest of the array data files (the ocdbt 'd/' chunks)."""
  data = [name for name in _files(step_dir) if '/d/' in f'/{name}']
  return max(data, key=lambda name: os.path.getsize(step_dir / name))


def _flip_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _checkpoints(workdir):
  return sorted(os.listdir(workdir / 'checkpoints'), key=int)


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
  _save_steps(tmp_path, [1, 2, 3], keep=2)
  assert _checkpoints(tmp_path) == ['2', '3']  # Orbax still drops step 1.
  for step in (2, 3):
    step_dir = tmp_path / 'checkpoints' / str(step)
    manifest = json.loads((step_dir / MANIFEST).read_text())['files']
    files = [name for name in _files(step_dir) if name != MANIFEST]
    assert sorted(manifest) == files
    assert {'_CHECKPOINT_METADATA', 'commit_success.txt',
            'default/_METADATA'} <= set(files)
    for name in files:
      content = (step_dir / name).read_bytes()
      assert manifest[name] == {
          'size': len(content),
          'sha256': hashlib.sha256(content).hexdigest()}
    assert train_checkpoints.find_damage(step_dir) is None


def test_the_manifest_follows_the_save_without_waiting_for_close(tmp_path):
  """A run killed between checkpoints keeps its newest one."""
  checkpointer = train_checkpoints.Checkpointer(tmp_path, keep=5)
  checkpointer.save(_on_devices(_state(1)), 1)
  manifest = tmp_path / 'checkpoints' / '1' / MANIFEST
  deadline = time.monotonic() + 60
  while not manifest.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  try:
    assert manifest.exists()
    assert train_checkpoints.find_damage(manifest.parent) is None
  finally:
    checkpointer.close()


def test_restore_intact_returns_the_newest_step_and_keeps_it_intact(
    saved, tmp_path):
  saved([1, 2])
  state, step = _restore_intact(tmp_path)
  assert step == 2
  _assert_state_equal(state, _state(2))
  assert state['params']['w'].sharding.is_equivalent_to(
      _shardings(_state(0))['params']['w'], 2)
  # Restoring wrote nothing into the step directory.
  assert train_checkpoints.find_damage(tmp_path / 'checkpoints/2') is None


def test_no_checkpoint_restores_to_none(tmp_path):
  assert _restore_intact(tmp_path) is None


def _flip_largest_data_file(step_dir):
  name = _largest_data_file(step_dir)
  _flip_byte(step_dir / name)
  return f'changed bytes in {name}'


def _delete_largest_data_file(step_dir):
  name = _largest_data_file(step_dir)
  os.remove(step_dir / name)
  return f'missing file {name}'


def _delete_manifest(step_dir):
  os.remove(step_dir / MANIFEST)
  return 'it has no integrity manifest (the run stopped while saving it)'


def _truncate_metadata(step_dir):
  path = step_dir / '_CHECKPOINT_METADATA'
  size = os.path.getsize(path)
  os.truncate(path, size - 1)
  return f'_CHECKPOINT_METADATA has {size - 1} bytes instead of {size}'


def _add_file(step_dir):
  (step_dir / 'default' / 'stray').write_text('x')
  return 'unexpected file default/stray'


@pytest.mark.parametrize('damage', [
    _flip_largest_data_file, _delete_largest_data_file, _delete_manifest,
    _truncate_metadata, _add_file])
def test_a_damaged_newest_step_is_skipped_and_moved_aside(saved, tmp_path,
                                                          caplog, damage):
  saved([1, 2, 3])
  step_dir = tmp_path / 'checkpoints' / '3'
  reason = damage(step_dir)

  state, step = _restore_intact(tmp_path)

  assert step == 2
  _assert_state_equal(state, _state(2))
  assert (f'checkpoint step 3 ({step_dir}) is damaged: {reason}; resuming '
          'from step 2') in caplog.text
  assert _checkpoints(tmp_path) == ['1', '2']
  assert os.listdir(tmp_path / 'damaged_checkpoints') == ['3']


def test_several_damaged_steps_fall_back_to_the_newest_intact(
    saved, tmp_path, caplog):
  saved([1, 2, 3])
  _flip_largest_data_file(tmp_path / 'checkpoints' / '3')
  _delete_manifest(tmp_path / 'checkpoints' / '2')
  state, step = _restore_intact(tmp_path)
  assert step == 1
  _assert_state_equal(state, _state(1))
  assert 'checkpoint step 2' in caplog.text
  assert 'checkpoint step 3' in caplog.text
  assert sorted(os.listdir(tmp_path / 'damaged_checkpoints')) == ['2', '3']


def test_no_intact_step_is_an_error_and_moves_nothing(saved, tmp_path):
  saved([1, 2])
  _flip_largest_data_file(tmp_path / 'checkpoints' / '1')
  reason = _flip_largest_data_file(tmp_path / 'checkpoints' / '2')
  step_dir = tmp_path / 'checkpoints' / '2'
  with pytest.raises(ValueError) as error:
    _restore_intact(tmp_path)
  message = str(error.value)
  assert message == (
      f'no intact checkpoint in {tmp_path / "checkpoints"}: step 2 '
      f'({step_dir}): {reason}; move {tmp_path / "checkpoints"} away to '
      'start over, or use a fresh --workdir')
  assert '\n' not in message
  assert _checkpoints(tmp_path) == ['1', '2']
  assert not os.path.exists(tmp_path / 'damaged_checkpoints')


def test_a_skipped_step_can_be_saved_again_and_restored(saved, tmp_path):
  saved([1, 2, 3])
  _flip_largest_data_file(tmp_path / 'checkpoints' / '3')
  checkpointer = train_checkpoints.Checkpointer(tmp_path, keep=5)
  _, step = checkpointer.restore_intact(_abstract(_state(0)))
  assert (step, checkpointer.latest_step()) == (2, 2)
  redone = _state(30)
  checkpointer.save(_on_devices(redone), 3)
  checkpointer.close()

  state, step = _restore_intact(tmp_path)
  assert step == 3
  _assert_state_equal(state, redone)

  # Damaged again: the second copy goes next to the first.
  _flip_largest_data_file(tmp_path / 'checkpoints' / '3')
  _, step = _restore_intact(tmp_path)
  assert step == 2
  assert sorted(os.listdir(tmp_path / 'damaged_checkpoints')) == ['3', '3.1']


@pytest.mark.parametrize('other, detail', [
    ({'params': {'w': np.zeros((64, 32), np.float32)}, 'step': np.int32(0)},
     'params/b is only in the checkpoint'),
    ({'params': {'w': np.zeros((64, 32), np.float32),
                 'b': np.zeros(32, np.float32), 'c': np.zeros(1, np.float32)},
      'step': np.int32(0)},
     'params/c is not in the checkpoint'),
    ({'params': {'w': np.zeros((64, 16), np.float32),
                 'b': np.zeros(32, np.float32)}, 'step': np.int32(0)},
     'params/w is (64, 32) in the checkpoint, (64, 16) here'),
], ids=['fewer_leaves', 'more_leaves', 'shapes'])
# Orbax leaves its shape-mismatch read coroutines unawaited; the test
# collects them itself, so their warnings are not blamed on a later test.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_another_models_checkpoint_is_refused_not_called_damaged(
    saved, tmp_path, other, detail):
  saved([1, 2])
  with pytest.raises(ValueError) as error:
    _restore_intact(tmp_path, _abstract(other))
  message = str(error.value)
  assert 'different model' in message
  assert detail in message
  assert 'use a fresh --workdir' in message
  assert '\n' not in message
  assert _checkpoints(tmp_path) == ['1', '2']
  assert not os.path.exists(tmp_path / 'damaged_checkpoints')
  del error
  gc.collect()


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(
    saved, tmp_path, monkeypatch):
  saved([1])
  state_bytes = train_checkpoints.state_bytes(_state(2))
  monkeypatch.setattr(train_checkpoints, '_free_bytes',
                      lambda directory: state_bytes // 2)
  checkpointer = train_checkpoints.Checkpointer(tmp_path, keep=5)
  with pytest.raises(train_checkpoints.CheckpointSaveError,
                     match='cannot save checkpoint step 2: .* MiB free, a '
                     'checkpoint needs .*; free space and rerun to resume '
                     'from step 1'):
    checkpointer.save(_on_devices(_state(2)), 2)
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']


def test_a_failed_background_save_stops_the_next_step(tmp_path, monkeypatch):
  checkpointer = train_checkpoints.Checkpointer(tmp_path, keep=5)
  checkpointer.save(_on_devices(_state(1)), 1)

  def failed():
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.w"\nmore')

  monkeypatch.setattr(checkpointer._manager, 'check_for_errors', failed)
  with pytest.raises(train_checkpoints.CheckpointSaveError,
                     match=r'saving checkpoint step 1 in .* failed '
                     r'\(RESOURCE_EXHAUSTED: Error writing "params.w"\); the '
                     'run stopped at step 3'):
    checkpointer.check_saves(3)
  monkeypatch.undo()
  checkpointer.close()
