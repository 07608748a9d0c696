"""The `.npz` checkpoint container: read, write, merge strictly.

What every family's released files share: arrays keyed by parameter paths
joined with '/', possibly under a 'params/' or 'opt/target/' prefix, float32
or bfloat16 (sometimes stored as 2-byte numpy void). Which keys a family
writes, and its legacy variations, are the family's business
(`vit_jax.models.family.ModelFamily.from_released`); `vit_jax.weights.pretrained`
puts the two together.

Files are opened through etils.epath (the file layer of TFDS and orbax), so
local paths, gs:// and other fsspec/gfile paths all work where reachable.
Archives are never unpickled, and writes are atomic.
"""

import io
import re
import zipfile
from typing import Any, Dict, Mapping, Sequence

from etils import epath
import flax
import ml_dtypes
import numpy as np

from vit_jax import atomic

Params = Dict[str, Any]
FlatParams = Dict[str, np.ndarray]

_PREFIXES = ('opt/target/', 'params/')
# Lists in error messages are cut here; the count is always given.
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
  """The checkpoint's parameters do not fit the model."""


def read_npz(path) -> FlatParams:
  """Reads a `.npz` into a flat {'a/b/c': float32 array} dict, without the
  container prefix ('params/', 'opt/target/') some files have.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable, pickle-free npz archive.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  data = path.read_bytes()
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
      flat = {key: archive[key] for key in archive.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(
        f'{path} is not a readable .npz checkpoint (truncated or corrupt '
        f'download?): {e}') from e
  if not flat:
    raise ValueError(f'{path} holds no arrays')
  return _strip_prefix({key: _to_float32(key, value)
                        for key, value in flat.items()})


def _to_float32(key: str, value: np.ndarray) -> np.ndarray:
  if value.dtype.kind == 'V' and value.dtype.itemsize == 2:
    value = value.view(ml_dtypes.bfloat16)  # bf16 saved without its dtype.
  if value.dtype.kind not in 'fiu' and value.dtype != ml_dtypes.bfloat16:
    raise ValueError(f'checkpoint array {key!r} has unsupported dtype '
                     f'{value.dtype}')
  return np.asarray(value, np.float32)


def _strip_prefix(flat: Mapping[str, np.ndarray]) -> FlatParams:
  for prefix in _PREFIXES:
    if all(key.startswith(prefix) for key in flat):
      return {key[len(prefix):]: value for key, value in flat.items()}
  return dict(flat)


def write_npz(flat: Mapping[str, np.ndarray], path) -> None:
  """Writes flat arrays atomically (temp file + rename), so an interrupted
  write never leaves a half-written checkpoint."""
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  atomic.write_bytes(path, buffer.getvalue())  # Overwrites an older export.


def merge_strict(init_params: Params, loaded_params: Params, *,
                 dont_load: Sequence[str] = ()) -> Params:
  """Returns `loaded_params` checked key by key against `init_params`.

  Args:
    init_params: the model's freshly initialised parameters (the reference
      for the key set and shapes).
    loaded_params: parameters read from a checkpoint, in the model's layout.
    dont_load: regular expressions (re.fullmatch on '/'-joined keys); matching
      keys keep their init value, and matching checkpoint keys are dropped.

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape
      mismatches, with how to proceed.
  """
  init = flax.traverse_util.flatten_dict(flax.core.unfreeze(init_params),
                                         sep='/')
  loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded_params),
                                           sep='/')
  skip = lambda key: any(re.fullmatch(p, key) for p in dont_load)
  missing = sorted(k for k in init if k not in loaded and not skip(k))
  extra = sorted(k for k in loaded if k not in init and not skip(k))
  mismatched = sorted(
      f'{k}: checkpoint {tuple(loaded[k].shape)} vs model '
      f'{tuple(init[k].shape)}'
      for k in init
      if k in loaded and not skip(k) and loaded[k].shape != init[k].shape)
  if missing or extra or mismatched:
    raise CheckpointMismatchError(_mismatch_message(missing, extra, mismatched))
  merged = {k: (init[k] if skip(k) else loaded[k]) for k in init}
  return flax.traverse_util.unflatten_dict(merged, sep='/')


def _mismatch_message(missing, extra, mismatched) -> str:
  lines = ['the checkpoint does not match the model.']
  for title, keys in (('missing from the checkpoint', missing),
                      ('not in the model', extra),
                      ('shape mismatch', mismatched)):
    if keys:
      lines.append(f'  {len(keys)} {title}:')
      lines += [f'    {k}' for k in keys[:_MAX_LISTED]]
      if len(keys) > _MAX_LISTED:
        lines.append(f'    ... and {len(keys) - _MAX_LISTED} more')
  lines.append('Is it the right model name / classifier for this file? To '
               'keep the model\'s own values for chosen keys, pass their '
               'patterns as dont_load (e.g. "head/.*").')
  return '\n'.join(lines)
