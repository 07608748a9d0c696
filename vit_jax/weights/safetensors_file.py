"""The safetensors container, read from its header: an array's bytes are
read only when its values are needed.

A `.safetensors` file (github.com/huggingface/safetensors, its README's
"Format") is an 8-byte little-endian header length N, N bytes of JSON
mapping each tensor's name to {"dtype", "shape", "data_offsets": [begin,
end]} (plus an optional "__metadata__"), then the data, the offsets
counting from its start. The header alone gives every array's dtype and
shape; each is checked here as every format's are (`arrays`) before any
data is read, and a tensor a model does not use is never read.
Files are opened through etils.epath, so remote paths work too.
"""

import json
import struct
from typing import Any, Dict, Mapping, Tuple

from etils import epath
import ml_dtypes
import numpy as np

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
_LENGTH_BYTES = 8
# The format's own limit on the JSON header (the reference reader's).
_MAX_HEADER_BYTES = 100_000_000


def open_safetensors(path) -> Dict[str, arrays.StoredArray]:
  """The tensors of a `.safetensors` file by name, known by its header.

  Every entry's dtype (`arrays.float_dtype`) and size (its offsets against
  its shape, within the file) are checked now; its bytes are read, and
  checked finite, only when its values are asked for.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable safetensors file, or an entry
      breaks the rules above (the message names it).
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist')
  with path.open('rb') as f:
    file_size = f.seek(0, 2)
    f.seek(0)
    header_size, header = _read_header(f, file_size, path)
  data_start = _LENGTH_BYTES + header_size
  return {name: _open_tensor(path, name, entry, data_start,
                             file_size - data_start)
          for name, entry in header.items() if name != '__metadata__'}


def _unreadable(path, problem: str) -> ValueError:
  return ValueError(f'{path} is not a readable safetensors file (truncated '
                    f'or corrupt download?): {problem}')


def _read_header(f, file_size: int, path) -> Tuple[int, Dict[str, Any]]:
  """(its size in bytes, the JSON header)."""
  length_bytes = f.read(_LENGTH_BYTES)
  if len(length_bytes) < _LENGTH_BYTES:
    raise _unreadable(path, f'it has only {file_size} bytes')
  (length,) = struct.unpack('<Q', length_bytes)
  if length > min(_MAX_HEADER_BYTES, file_size - _LENGTH_BYTES):
    raise _unreadable(path, f'its header claims {length} bytes')
  try:
    header = json.loads(f.read(length))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise _unreadable(path, f'its header is not JSON ({e})') from e
  if not isinstance(header, dict):
    raise _unreadable(path, 'its header is not a JSON object')
  return length, header


def _open_tensor(path, name: str, entry: Mapping[str, Any], data_start: int,
                 data_size: int) -> arrays.StoredArray:
  """One header entry, checked; its bytes are read when asked for."""
  try:
    stored_as = entry['dtype']
    shape = tuple(entry['shape'])
    begin, end = entry['data_offsets']
    if not (all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end))
            and isinstance(stored_as, str) and begin <= end <= data_size):
      raise ValueError
  except (KeyError, TypeError, ValueError):
    raise _unreadable(path, f'its header entry for {name!r} is malformed: '
                      f'{entry!r}') from None
  dtype = np.dtype(_DTYPES[stored_as]) if stored_as in _DTYPES else stored_as
  read_as = arrays.float_dtype(dtype, name, str(path))
  arrays.check_size(shape, read_as, end - begin, name, str(path))

  def read() -> np.ndarray:
    with path.open('rb') as f:
      f.seek(data_start + begin)
      data = f.read(end - begin)
    if len(data) != end - begin:
      raise _unreadable(path, f'{name!r} ends past the end of the file')
    values = np.frombuffer(data, read_as).reshape(shape)
    return arrays.to_float32(values, name, str(path))

  return arrays.StoredArray(shape, read)
