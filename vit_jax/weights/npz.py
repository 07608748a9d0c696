"""The `.npz` checkpoint container: read and write.

What every family's released files share: arrays keyed by parameter paths
joined with '/', possibly under a 'params/' or 'opt/target/' prefix, float32
or bfloat16 (sometimes stored as 2-byte numpy void). Which keys a family
writes, and its legacy variations, are the family's business
(`vit_jax.models.family.ModelFamily.from_released`); the `npz` weight
format (`vit_jax.weights.formats`) puts the two together.

Files are opened through etils.epath (the file layer of TFDS and orbax), so
local paths, gs:// and other fsspec/gfile paths all work where reachable.
Archives are never unpickled, a member is read only when its values are
needed (its header is checked before: `open_npz`), every array read is
checked as every format's are (`vit_jax.weights.arrays`), and writes are
atomic.
"""

import io
import zipfile
import zlib
from typing import Any, Dict, Mapping

from etils import epath
import numpy as np

from vit_jax import atomic
from vit_jax.models import family
from vit_jax.models import merge
from vit_jax.weights import arrays

Params = Dict[str, Any]
FlatParams = Dict[str, np.ndarray]

_PREFIXES = ('opt/target/', 'params/')

# Defined beside the families (which raise them too); kept here for callers.
CheckpointMismatchError = family.CheckpointMismatchError
merge_strict = merge.merge_strict


def open_npz(path) -> Dict[str, arrays.StoredArray]:
  """The arrays of a `.npz` by key, without the container prefix
  ('params/', 'opt/target/') some files have, known by their headers.

  Every member's header is checked now (its dtype by `arrays.float_dtype`,
  the size its shape claims against the bytes the archive holds for it);
  its data is read, and checked finite, only when its values are asked for
  (`arrays.StoredArray`), so members a model does not use are never read.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable, pickle-free npz archive, or a
      member breaks the rules above (the message names it).
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  # Kept in memory (as compressed as the file) until the arrays are read:
  # remote files are fetched once, and no file handle outlives this call.
  try:
    archive = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
  except zipfile.BadZipFile as e:
    raise _unreadable(path, e) from e
  stored = {_key(info.filename): _open_member(archive, info, path)
            for info in archive.infolist()}
  if not stored:
    raise ValueError(f'{path} holds no arrays')
  return _strip_prefix(stored)


def read_npz(path) -> FlatParams:
  """Reads a `.npz` into a flat {'a/b/c': float32 array} dict: every array
  of `open_npz(path)`, read.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: as `open_npz`, or an array holds a NaN or an infinity.
  """
  return {key: np.asarray(value) for key, value in open_npz(path).items()}


def _key(member_name: str) -> str:
  """np.savez stores array 'a/b' as member 'a/b.npy'."""
  return member_name[:-4] if member_name.endswith('.npy') else member_name


def _unreadable(path, error) -> ValueError:
  return ValueError(f'{path} is not a readable .npz checkpoint (truncated or '
                    f'corrupt download?): {error}')


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
# What a damaged or forged member raises from zipfile, zlib or numpy's
# header parser.
_DAMAGE = (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error,
           NotImplementedError)


def _open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 path) -> arrays.StoredArray:
  """One member, from its `.npy` header alone (no data is read)."""
  key = _key(info.filename)
  try:
    with archive.open(info) as stream:
      version = np.lib.format.read_magic(stream)
      if version not in _HEADER_READERS:
        raise ValueError(f'.npy format version {version} is not supported')
      shape, fortran_order, dtype = _HEADER_READERS[version](stream)
      header_size = stream.tell()
  except _DAMAGE as e:
    raise _unreadable(path, f'member {info.filename!r}: {e}') from e
  if dtype.hasobject:
    raise _unreadable(path, f'array {key!r} holds pickled (object) data, '
                      'which is never loaded')
  read_as = arrays.float_dtype(dtype, key, str(path))
  arrays.check_size(shape, dtype, info.file_size - header_size, key,
                    str(path))

  def read() -> np.ndarray:
    try:
      with archive.open(info) as stream:
        stream.read(header_size)
        data = stream.read(info.file_size - header_size)
        stream.read(1)  # Reading to the end makes zipfile check the CRC.
    except _DAMAGE as e:
      raise _unreadable(path, f'member {info.filename!r}: {e}') from e
    if len(data) != info.file_size - header_size:
      raise _unreadable(path, f'member {info.filename!r} is shorter than '
                        'the archive says')
    values = np.frombuffer(data, read_as)
    values = (values.reshape(shape[::-1]).T if fortran_order else
              values.reshape(shape))
    return arrays.to_float32(values, key, str(path))

  return arrays.StoredArray(shape, read)


def _strip_prefix(flat: Mapping[str, Any]) -> Dict[str, Any]:
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
