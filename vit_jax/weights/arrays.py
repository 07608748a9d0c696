"""What every weight format checks of the arrays it reads, and arrays known
by their header before their values are read.

One rule for all formats (`npz`, `timm_hub`'s safetensors):
  * an array is stored as float16, bfloat16, float32 or float64 (bfloat16
    also as the 2-byte numpy void that some writers fall back to), and is
    read as float32; integers, booleans, float8 and anything else are
    refused by name, whatever the container (`float_dtype`);
  * every value read is finite: a NaN or infinity is refused by name, since
    a model with one computes NaN everywhere downstream (`to_float32`).

A `StoredArray` is an array whose shape its file's header gave: readers
hand these out so that keys and shapes are checked against the model before
any data is read, and members the model does not use are never read.
"""

from typing import Callable, Optional, Tuple, Union

import jax
import ml_dtypes
import numpy as np

# What weights may be stored as; all are read as float32.
ACCEPTED_DTYPES = tuple(np.dtype(d) for d in (
    np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
_ACCEPTED_NAMES = 'float16, bfloat16, float32 or float64'


def float_dtype(stored: Union[np.dtype, str], name: str,
                where: str) -> np.dtype:
  """The dtype to view an array stored as `stored` with, once checked.

  Args:
    stored: the dtype the file declares, or the container's own name for
      one numpy lacks (e.g. a safetensors 'F8_E4M3').
    name: the array's key in the file, for the message.
    where: the file, for the message.

  Returns:
    `stored`, with a 2-byte void read as bfloat16.

  Raises:
    ValueError: it is not one of `ACCEPTED_DTYPES`.
  """
  if isinstance(stored, np.dtype):
    if stored.kind == 'V' and stored.itemsize == 2 and stored.names is None:
      stored = np.dtype(ml_dtypes.bfloat16)  # bf16 saved without its dtype.
    if stored in ACCEPTED_DTYPES:
      return stored
  raise ValueError(
      f'{where}: array {name!r} is stored as {stored}, but weights must be '
      f'floating point ({_ACCEPTED_NAMES}): vit_jax does not dequantise or '
      'reinterpret other types; write the weights as float32')


def to_float32(values: np.ndarray, name: str, where: str) -> np.ndarray:
  """`values` as float32, once their dtype and finiteness are checked.

  Args:
    values: an array as stored.
    name: its key in the file, for messages.
    where: the file, for messages.

  Returns:
    A new float32 array (writable, even when `values` is a read-only view
    of a file's bytes).

  Raises:
    ValueError: its dtype breaks `float_dtype`'s rule, or it holds a NaN
      or an infinity.
  """
  values = values.view(float_dtype(values.dtype, name, where))
  values = values.astype(np.float32)
  finite = np.isfinite(values)
  if not finite.all():
    bad = values.size - int(np.count_nonzero(finite))
    raise ValueError(
        f'{where}: array {name!r} holds {bad} NaN or infinite value(s) of '
        f'{values.size}: the weights are damaged (saved from a diverged run, '
        'or corrupted); use an earlier or a freshly downloaded checkpoint')
  return values


def check_size(shape: Tuple[int, ...], dtype: np.dtype, available: int,
               name: str, where: str) -> None:
  """Refuses a header whose shape needs other than the `available` bytes
  that follow it, before anything of that size is allocated.

  Raises:
    ValueError: naming the array, its claimed shape and the bytes there are.
  """
  needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
  if needed != available:
    raise ValueError(
        f'{where}: array {name!r} claims shape {tuple(shape)} of {dtype} '
        f'({_bytes(needed)}) but its file holds {_bytes(available)} for it: '
        'the file is damaged or forged (truncated or corrupt download?)')


def _bytes(count: int) -> str:
  for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB'):
    if count < 1024 or unit == 'TiB':
      return f'{count} {unit}' if unit == 'bytes' else f'{count:.1f} {unit}'
    count /= 1024


class StoredArray:
  """A float32 array known by its file's header: its shape now, its values
  when first asked for (`np.asarray`), read and checked (`to_float32`) then.

  Readers return these so that a model's keys and shapes are checked before
  any data is read; `read_values` turns what remains into numpy arrays.
  Values are read each time they are asked for, never kept.
  """
  dtype = np.dtype(np.float32)

  def __init__(self, shape: Tuple[int, ...],
               read: Callable[[], np.ndarray]):
    """`read` returns the values (float32, checked) with this shape."""
    self.shape = tuple(int(size) for size in shape)
    self._read = read

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def reshape(self, *shape) -> 'StoredArray':
    """The same values in another shape, still unread."""
    # A broadcast scalar works the new shape out (with -1) and costs nothing.
    new_shape = np.broadcast_to(np.float32(0), self.shape).reshape(*shape).shape
    return StoredArray(new_shape, lambda: self._read().reshape(new_shape))

  def __array__(self, dtype=None, copy: Optional[bool] = None) -> np.ndarray:
    del copy  # The values are read afresh: always a new array.
    values = self._read()
    return values if dtype is None else values.astype(dtype, copy=False)

  def __getitem__(self, index) -> np.ndarray:
    return np.asarray(self)[index]

  def __repr__(self) -> str:
    return f'StoredArray(shape={self.shape}, dtype=float32)'


def read_values(tree):
  """`tree` with every `StoredArray` leaf read into a numpy array."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) if isinstance(x, StoredArray) else x, tree)
