"""Max-pooling (NHWC) whose gradient XLA:CPU computes quickly.

JAX differentiates `reduce_window` max through XLA's select-and-scatter.
XLA:CPU lowers that to a variadic reduce-window carrying one index array per
input axis plus a scatter: for the hybrids' 3x3 stride-2 root pool that was
about a quarter of the default config's whole training step (profiled with
jax.profiler). `max_pool` keeps the same forward computation and, on the
CPU backend, takes its gradient from the window views instead: one strided
slice per window offset, compared with the pooled output. Every output
cell sends its cotangent to the first input of its window (row-major
order) that equals its maximum, as select-and-scatter does, so both
gradients agree up to the order in which overlapping windows add into one
input.
"""

import functools
from typing import Sequence, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

Padding = Union[str, Sequence[Tuple[int, int]]]


def max_pool(x, window: Sequence[int], strides: Sequence[int],
             padding: Padding = 'VALID'):
  """Max over (kh, kw) windows of (N, H, W, C) `x`, as `flax.linen.max_pool`.

  Args:
    x: (N, H, W, C) array.
    window: (kh, kw).
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)); padded
      cells are never the maximum.

  Returns:
    (N, OH, OW, C) maxima.
  """
  window, strides = tuple(window), tuple(strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  padding = tuple(tuple(p) for p in padding)
  if jax.default_backend() == 'cpu':
    return _pool_with_view_gradient(x, window, strides, padding)
  return _pool(x, window, strides, padding)


def _pool(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1),
                           (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def _window_offsets(window):
  """(i, j) of every window cell in row-major order."""
  return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _padded(x, padding, value):
  return lax.pad(x, jnp.array(value, x.dtype),
                 ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _view(x_padded, offset, strides, out_hw):
  """The padded input cells at window `offset` of every output cell."""
  (i, j), (sh, sw), (oh, ow) = offset, strides, out_hw
  n, _, _, c = x_padded.shape
  return lax.slice(x_padded, (0, i, j, 0),
                   (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                   (1, sh, sw, 1))


def _unview(values, offset, strides, padded_hw):
  """Transpose of `_view`: `values` placed at their cells, zeros elsewhere."""
  (i, j), (sh, sw), (hp, wp) = offset, strides, padded_hw
  (oh, ow) = values.shape[1:3]
  zero = jnp.array(0, values.dtype)
  return lax.pad(values, zero, (
      (0, 0, 0),
      (i, hp - i - (sh * (oh - 1) + 1), sh - 1),
      (j, wp - j - (sw * (ow - 1) + 1), sw - 1),
      (0, 0, 0)))


# window, strides and padding are static (tuples).
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _pool_with_view_gradient(x, window, strides, padding):
  return _pool(x, window, strides, padding)


def _pool_fwd(x, window, strides, padding):
  pooled = _pool(x, window, strides, padding)
  return pooled, (x, pooled)


def _pool_bwd(window, strides, padding, residuals, cotangent):
  x, pooled = residuals
  x_padded = _padded(x, padding, -jnp.inf)
  out_hw, padded_hw = pooled.shape[1:3], x_padded.shape[1:3]
  taken = jnp.zeros(pooled.shape, bool)
  gradient = jnp.zeros(x_padded.shape, cotangent.dtype)
  for offset in _window_offsets(window):
    # The first cell equal to the maximum takes the whole cotangent.
    takes = (_view(x_padded, offset, strides, out_hw) == pooled) & ~taken
    taken = taken | takes
    gradient = gradient + _unview(jnp.where(takes, cotangent, 0), offset,
                                  strides, padded_hw)
  (top, _), (left, _) = padding
  height, width = x.shape[1:3]
  return (gradient[:, top:top + height, left:left + width],)


_pool_with_view_gradient.defvjp(_pool_fwd, _pool_bwd)
