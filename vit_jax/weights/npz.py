"""The `.npz` checkpoint container: read and write.

What every family's released files share: arrays keyed by parameter paths
joined with '/', possibly under a 'params/' or 'opt/target/' prefix, float32
or bfloat16 (sometimes stored as 2-byte numpy void). Which keys a family
writes, and its legacy variations, are the family's business
(`vit_jax.models.family.ModelFamily.from_released`); the `npz` weight
format (`vit_jax.weights.formats`) puts the two together.

Files are opened through etils.epath (the file layer of TFDS and orbax), so
local paths, gs:// and other fsspec/gfile paths all work where reachable.
Archives are never unpickled, and writes are atomic.
"""

import io
import zipfile
from typing import Any, Dict, Mapping

from etils import epath
import ml_dtypes
import numpy as np

from vit_jax import atomic
from vit_jax.models import family
from vit_jax.models import merge

Params = Dict[str, Any]
FlatParams = Dict[str, np.ndarray]

_PREFIXES = ('opt/target/', 'params/')

# Defined beside the families (which raise them too); kept here for callers.
CheckpointMismatchError = family.CheckpointMismatchError
merge_strict = merge.merge_strict


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
