"""Train-state checkpoints with orbax: asynchronous, keep-last-N, resharding,
verified before they are trusted.

A checkpoint holds the whole TrainState (step, params, optimizer state, EMA
params, rng). Restoring takes the target shardings, so a run saved on 8
devices resumes on 1 or 64. Orbax coordinates multi-process saves: every
process calls `save`, each writes its shards once.

Orbax restores whatever bytes it finds: a flipped bit in a data file becomes
a silently wrong weight, a lost file a cryptic tree-structure error. So once
orbax has finalised a step, process 0 writes an integrity manifest into the
step directory (every file's size and sha256), and `restore_intact` resumes
from the newest step that still matches its manifest, moving damaged steps
aside to `workdir/damaged_checkpoints/` rather than deleting them.
"""

from concurrent import futures
import hashlib
import json
import os
import shutil
from typing import Any, Dict, Iterator, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from vit_jax import atomic

# Written by us inside each step directory, next to orbax's own files. Not
# `manifest.ocdbt`-like and not `_`-prefixed, so no orbax name is shadowed.
MANIFEST_NAME = 'integrity_manifest.json'
_MANIFEST_FORMAT = 'vit_jax checkpoint integrity manifest v1'
DAMAGED_DIRECTORY = 'damaged_checkpoints'
# The manifest and its staging file, which it cannot list.
_MANIFEST_FILES = (MANIFEST_NAME,
                   atomic.temporary_path(MANIFEST_NAME).name)


def _file_sizes(step_dir: epath.Path) -> Dict[str, int]:
  """Size in bytes of every file under `step_dir`, by '/'-joined relative
  path; the manifest (and its temporary file) excluded, as it cannot list
  itself."""
  sizes = {}
  for root, _, files in step_dir.walk():
    for name in files:
      relative = os.fspath((root / name).relative_to(step_dir))
      if relative not in _MANIFEST_FILES:
        sizes[relative] = (root / name).stat().length
  return sizes


def _sha256(path: epath.Path) -> str:
  with path.open('rb') as f:
    try:
      return hashlib.file_digest(f, 'sha256').hexdigest()
    except ValueError:  # A file object without readinto (e.g. tf.io.gfile).
      digest = hashlib.sha256()
      while chunk := f.read(1 << 24):
        digest.update(chunk)
      return digest.hexdigest()


def write_manifest(step_dir) -> None:
  """Writes `step_dir`'s integrity manifest: every file's size and sha256.

  Call only once orbax has finalised the step (it writes commit_success.txt
  and updates _CHECKPOINT_METADATA last). The manifest appears whole or not
  at all (temporary file, then rename), so a run killed while writing it
  leaves a step without a manifest, which `find_damage` reports.

  Args:
    step_dir: a finalised step directory, e.g. workdir/checkpoints/300.
  """
  step_dir = epath.Path(step_dir)
  files = {name: {'size': size, 'sha256': _sha256(step_dir / name)}
           for name, size in sorted(_file_sizes(step_dir).items())}
  atomic.write_text(step_dir / MANIFEST_NAME, json.dumps(
      {'format': _MANIFEST_FORMAT, 'files': files}, indent=1))


def _damage(step_dir: epath.Path) -> Iterator[str]:
  """Yields what differs from the manifest: the cheap checks (file names and
  sizes) first, then the bytes file by file, so a caller that stops at the
  first difference hashes no more than it must."""
  manifest = step_dir / MANIFEST_NAME
  if not manifest.exists():
    yield 'it has no integrity manifest (the run stopped while saving it)'
    return
  try:
    expected = json.loads(manifest.read_text())['files']
  except (ValueError, KeyError, TypeError):
    yield f'its {MANIFEST_NAME} is unreadable'
    return
  actual = _file_sizes(step_dir)
  for name in sorted(expected.keys() - actual.keys()):
    yield f'missing file {name}'
  for name in sorted(actual.keys() - expected.keys()):
    yield f'unexpected file {name}'
  common = sorted(expected.keys() & actual.keys())
  for name in common:
    if actual[name] != expected[name]['size']:
      yield (f'{name} has {actual[name]} bytes instead of '
             f'{expected[name]["size"]}')
  for name in common:
    if (actual[name] == expected[name]['size'] and
        _sha256(step_dir / name) != expected[name]['sha256']):
      yield f'changed bytes in {name}'


def find_damage(step_dir) -> Optional[str]:
  """Why `step_dir` cannot be trusted (the first difference from its
  manifest, or a missing manifest), or None when it is intact."""
  return next(_damage(epath.Path(step_dir)), None)


def tree_difference(stored, wanted) -> Optional[str]:
  """The first leaf path that only one of two trees has, or whose shapes
  differ, e.g. 'params/head/kernel is (768, 10) in the checkpoint, (768, 100)
  here'; None when names and shapes all match.

  Args:
    stored: a checkpoint's tree metadata (orbax ArrayMetadata leaves).
    wanted: the tree to restore into (arrays or ShapeDtypeStructs).
  """
  stored = ocp.tree.to_flat_dict(stored, sep='/')
  wanted = ocp.tree.to_flat_dict(wanted, sep='/')
  for path in sorted(stored.keys() | wanted.keys()):
    if path not in wanted:
      return f'{path} is only in the checkpoint'
    if path not in stored:
      return f'{path} is not in the checkpoint'
    there, here = (tuple(getattr(leaf, 'shape', ()))
                   for leaf in (stored[path], wanted[path]))
    if there != here:
      return f'{path} is {there} in the checkpoint, {here} here'
  return None


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (a full disk, a lost bucket, ...)."""


# Room asked for beyond the state's bytes: orbax's metadata and file slack.
_SPACE_MARGIN = 1.1


def _free_bytes(directory: epath.Path) -> Optional[int]:
  """Free bytes on the local file system of `directory` (or its nearest
  existing parent); None for remote storage, which reports none."""
  if '://' in str(directory):
    return None
  path = os.fspath(directory)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def state_bytes(state) -> int:
  """Bytes of every array of `state`, as a checkpoint stores them."""
  return sum(leaf.nbytes for leaf in jax.tree.leaves(state)
             if hasattr(leaf, 'nbytes'))


class Checkpointer:
  """The workdir's `checkpoints/` directory."""

  def __init__(self, workdir, keep: int):
    directory = epath.Path(workdir) / 'checkpoints'
    if '://' not in str(directory):
      # Orbax refuses relative paths (e.g. the README's runs/default).
      directory = epath.Path(os.path.abspath(directory))
    self._directory = directory
    self._damaged_directory = directory.parent / DAMAGED_DIRECTORY
    # Orbax's AsyncOptions.post_finalization_callback cannot write the
    # manifest: it is told no step and runs before orbax writes
    # commit_success.txt and the commit time into _CHECKPOINT_METADATA. So
    # our own thread waits for orbax's finalisation, then hashes; training
    # goes on meanwhile, and the next save or close waits for it.
    self._manifest_writer = futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='checkpoint_manifest')
    self._pending_manifest: Optional[futures.Future] = None
    self._closed = False
    self._saving_step: Optional[int] = None
    self._manager = ocp.CheckpointManager(
        directory,
        # Named, so that item_metadata can read a step's tree and shapes.
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True,
            create=True))

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()

  def step_dir(self, step: int) -> epath.Path:
    """Where orbax keeps `step` (its default step name: the bare number)."""
    return self._directory / str(step)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def check_space(self, state, step: Optional[int] = None) -> None:
    """Raises CheckpointSaveError, before anything is written, when the
    checkpoint of `state` (at `step`; None: before the first step) cannot fit
    on the local disk: a save that fills the disk fails in orbax's threads,
    after the run has gone on."""
    needed = int(state_bytes(state) * _SPACE_MARGIN)
    free = _free_bytes(self._directory)
    if free is None or free >= needed:
      return
    room = (f'{self._directory} has {free / 2**20:,.0f} MiB free, a '
            f'checkpoint needs {needed / 2**20:,.0f} MiB')
    if step is None:
      raise CheckpointSaveError(
          f'{room}; free space or choose another --workdir')
    raise CheckpointSaveError(
        f'cannot save checkpoint step {step}: {room}; free space and rerun '
        f'to resume from step {self.latest_step() or 0}')

  def check_saves(self, step: int) -> None:
    """Raises CheckpointSaveError, in one line, if a background save has
    failed: the run stops at `step` instead of training on unsaved."""
    try:
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e, f'the run stopped at step {step}; fix the '
                              'storage and rerun') from e

  def _save_failed(self, error: Exception, advice: str
                   ) -> CheckpointSaveError:
    return CheckpointSaveError(
        f'saving checkpoint step {self._saving_step} in {self._directory} '
        f'failed ({_first_line(error)}); {advice} to resume from step '
        f'{self.latest_step() or 0}')

  def save(self, state, step: int) -> None:
    """Starts writing `state` in the background (`close` waits for it); its
    manifest follows once orbax has finalised it."""
    self._wait_for_manifest()
    self.check_saves(step)
    self.check_space(state, step)
    self._saving_step = step
    saved = self._manager.save(step, args=ocp.args.StandardSave(state))
    if saved and jax.process_index() == 0:
      self._pending_manifest = self._manifest_writer.submit(
          self._write_manifest_when_finalised, step)

  def _write_manifest_when_finalised(self, step: int) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      # A failed save gets no manifest; orbax raises the error again in
      # the main thread's next save or close.
      return
    write_manifest(self.step_dir(step))

  def _wait_for_manifest(self) -> None:
    """Raises here, in the caller's thread, what writing the manifest hit."""
    pending, self._pending_manifest = self._pending_manifest, None
    if pending is not None:
      pending.result()

  def restore(self, abstract_state, step: Optional[int] = None):
    """Restores into the shapes, dtypes and shardings of `abstract_state`
    (a tree of jax.ShapeDtypeStruct with .sharding, as
    `sharding.abstract_arrays` makes), unverified."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))

  def restore_intact(self, abstract_state) -> Optional[Tuple[Any, int]]:
    """Restores the newest checkpoint that matches its manifest.

    Damaged newer steps are logged and moved to workdir/damaged_checkpoints/
    (nothing is deleted, and the step can be saved again later). Only
    process 0 verifies and moves; it tells the others which step to load.

    Args:
      abstract_state: as for `restore`.

    Returns:
      (state, step), or None when there is no checkpoint at all.

    Raises:
      ValueError: no step is intact (all are left in place), or the intact
        step holds a different train state (tree structure or shapes) than
        `abstract_state`.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    step, problem = (self._intact_step_moving_damaged_aside(steps)
                     if jax.process_index() == 0 else (-1, ''))
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
    self._manager.reload()  # Forgets the steps moved aside.
    if step < 0:
      raise ValueError(problem or f'no intact checkpoint in {self._directory}'
                       ' (process 0 logs why)')
    # The bytes are as written, so a tree or shape mismatch means another
    # model, optimizer or config wrote this workdir. Checked on the metadata
    # first: a restore that fails leaves orbax's other reads running, whose
    # tracebacks then bury the error.
    difference = tree_difference(self._manager.item_metadata(step),
                                 abstract_state)
    if difference is not None:
      raise ValueError(
          f'{self.step_dir(step)} holds a checkpoint of a different model or '
          f'train state ({difference}); use a fresh --workdir')
    state = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))
    return state, step

  def _intact_step_moving_damaged_aside(self, steps) -> Tuple[int, str]:
    """Verifies `steps` (newest first) up to the first intact one.

    Returns:
      (that step, ''), having moved the damaged newer ones aside; or
      (-1, the error to raise) when none is intact, with every step left in
      place: moving them all would make a rerun silently start over.
    """
    damaged = []
    for step in steps:
      problem = find_damage(self.step_dir(step))
      if problem is None:
        for bad_step, bad_problem in damaged:
          moved_to = self._move_aside(bad_step)
          logging.warning(
              'checkpoint step %d (%s) is damaged: %s; resuming from step %d; '
              'moved it to %s', bad_step, self.step_dir(bad_step),
              bad_problem, step, moved_to)
        return step, ''
      damaged.append((step, problem))
    for bad_step, bad_problem in damaged:
      logging.warning('checkpoint step %d (%s) is damaged: %s', bad_step,
                      self.step_dir(bad_step), bad_problem)
    newest, problem = damaged[0]
    return -1, (f'no intact checkpoint in {self._directory}: step {newest} '
                f'({self.step_dir(newest)}): {problem}; move '
                f'{self._directory} away to start over, or use a fresh '
                '--workdir')

  def _move_aside(self, step: int) -> epath.Path:
    """Moves the step directory to damaged_checkpoints/<step> (<step>.1,
    ... when an earlier damaged copy of that step is already there)."""
    self._damaged_directory.mkdir(parents=True, exist_ok=True)
    target = self._damaged_directory / str(step)
    copy = 0
    while target.exists():
      copy += 1
      target = self._damaged_directory / f'{step}.{copy}'
    return self.step_dir(step).rename(target)

  def close(self) -> None:
    """Waits for pending writes and stops orbax's threads; again: nothing.

    Every path out of a run must close: an open manager's threads print
    event-loop tracebacks when the interpreter ends, burying the run's
    error line.
    """
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e, 'rerun') from e
    finally:
      self._wait_for_manifest()
      self._manifest_writer.shutdown()
      self._manager.close()


def _first_line(error: BaseException, limit: int = 300) -> str:
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return line if len(line) <= limit else line[:limit] + '...'

