"""A `.safetensors` file's tensors, known by its header and read one by one.

The safetensors library (`safe_open`) validates the whole header (every
tensor's dtype, shape and offsets against the file's size) before any data
is read, and reads a tensor only when asked for. Here every tensor's dtype
is also checked as every format's are (`arrays.float_dtype`) before any
data is read, and its values are checked finite when read
(`arrays.to_float32`): a tensor a model does not use is never read.
Remote paths (gs://...) are read whole, as the library maps local files
only.
"""

import os
from typing import Callable, Dict, Optional

from etils import epath
import ml_dtypes
import numpy as np
import safetensors
import safetensors.flax

from vit_jax.weights import arrays

# The format's dtype names that numpy (with ml_dtypes) has; others are
# refused under their own name (`arrays.float_dtype`).
_DTYPES = {
    'BOOL': np.bool_, 'U8': np.uint8, 'I8': np.int8, 'U16': np.uint16,
    'I16': np.int16, 'U32': np.uint32, 'I32': np.int32, 'U64': np.uint64,
    'I64': np.int64, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'F32': np.float32, 'F64': np.float64,
    'F8_E4M3': ml_dtypes.float8_e4m3fn, 'F8_E5M2': ml_dtypes.float8_e5m2,
}


def open_safetensors(path, skip: Optional[Callable[[str], bool]] = None
                     ) -> Dict[str, arrays.StoredArray]:
  """The tensors of a `.safetensors` file by name, known by its header.

  Every entry's dtype is checked now (`arrays.float_dtype`); its bytes are
  read, and checked finite, only when its values are asked for. Entries
  whose name `skip` accepts are left out, unchecked.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable safetensors file (a header
      whose shapes and offsets do not fit the file among them), or an entry
      is not stored as a float (the message names it).
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist')
  if '://' in str(path):
    return _read_whole(path, skip)
  try:
    with safetensors.safe_open(os.fspath(path), framework='flax') as f:
      headers = {name: f.get_slice(name) for name in f.keys()
                 if skip is None or not skip(name)}
      tensors = {name: _stored(path, name, tuple(header.get_shape()),
                               header.get_dtype(), _reader(path, name))
                 for name, header in headers.items()}
  except safetensors.SafetensorError as e:
    raise _unreadable(path, e) from None
  return tensors


def _stored(path: epath.Path, name: str, shape, stored_as: str,
            read: Callable[[], np.ndarray]) -> arrays.StoredArray:
  """A header entry whose dtype is checked, read (and checked) on demand."""
  dtype = np.dtype(_DTYPES[stored_as]) if stored_as in _DTYPES else stored_as
  arrays.float_dtype(dtype, name, str(path))
  return arrays.StoredArray(
      shape, lambda: arrays.to_float32(read(), name, str(path)))


def _reader(path: epath.Path, name: str) -> Callable[[], np.ndarray]:
  def read() -> np.ndarray:
    try:
      with safetensors.safe_open(os.fspath(path), framework='flax') as f:
        return np.asarray(f.get_tensor(name))
    except safetensors.SafetensorError as e:
      raise _unreadable(path, e) from None
  return read


def _read_whole(path: epath.Path, skip: Optional[Callable[[str], bool]]
                ) -> Dict[str, arrays.StoredArray]:
  try:
    loaded = safetensors.flax.load(path.read_bytes())
  except safetensors.SafetensorError as e:
    raise _unreadable(path, e) from None
  return {name: _stored(path, name, value.shape,
                        _name_of(np.asarray(value).dtype),
                        lambda value=value: np.asarray(value))
          for name, value in loaded.items()
          if skip is None or not skip(name)}


def _name_of(dtype: np.dtype) -> str:
  names = {np.dtype(numpy_type): name for name, numpy_type in _DTYPES.items()}
  return names.get(dtype, str(dtype))


def _unreadable(path, error: Exception) -> ValueError:
  return ValueError(f'{path} is not a readable safetensors file (truncated '
                    f'or corrupt download?): {error}')
