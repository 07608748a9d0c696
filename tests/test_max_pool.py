"""max_pool: flax's forward; XLA's select-and-scatter gradient, from views."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import max_pool


def _tie_heavy(shape, seed):
  """Small integers: most windows hold their maximum more than once."""
  return jnp.asarray(np.random.default_rng(seed).integers(0, 3, shape),
                     jnp.float32)


def _numpy_pool_gradient(x, cotangent, window, strides, pads):
  """Each output cell's cotangent to the first maximum of its window."""
  x = np.pad(np.asarray(x, np.float64),
             ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
  grad = np.zeros_like(x)
  n, rows, cols, channels = cotangent.shape
  for b, r, c, ch in np.ndindex(n, rows, cols, channels):
    cells = x[b, r * strides[0]:r * strides[0] + window[0],
              c * strides[1]:c * strides[1] + window[1], ch]
    i, j = np.unravel_index(np.argmax(cells), cells.shape)  # first maximum
    grad[b, r * strides[0] + i, c * strides[1] + j, ch] += cotangent[
        b, r, c, ch]
  height, width = x.shape[1] - sum(pads[0]), x.shape[2] - sum(pads[1])
  return grad[:, pads[0][0]:pads[0][0] + height,
              pads[1][0]:pads[1][0] + width]


# (input shape, window, strides, padding): the hybrids' root pool, odd sizes,
# overlapping and tiling windows, both paddings.
CASES = [
    ((2, 14, 14, 4), (3, 3), (2, 2), 'SAME'),
    ((2, 15, 13, 3), (3, 3), (2, 2), 'SAME'),
    ((1, 9, 9, 2), (3, 3), (1, 1), 'SAME'),
    ((2, 8, 10, 3), (2, 2), (2, 2), 'VALID'),
    ((1, 11, 7, 2), (3, 2), (2, 1), 'VALID'),
]


@pytest.mark.parametrize('shape,window,strides,padding', CASES)
def test_forward_and_gradient_equal_flax_and_a_numpy_reference(
    shape, window, strides, padding):
  x = _tie_heavy(shape, 0)
  ours, ours_vjp = jax.vjp(
      lambda x: max_pool.max_pool(x, window, strides, padding), x)
  flax, flax_vjp = jax.vjp(
      lambda x: nn.max_pool(x, window, strides=strides, padding=padding), x)
  np.testing.assert_array_equal(ours, flax)
  cotangent = jnp.asarray(
      np.random.default_rng(1).normal(size=ours.shape), jnp.float32)
  pads = jax.lax.padtype_to_pads(shape[1:3], window, strides, padding)
  expected = _numpy_pool_gradient(x, np.asarray(cotangent), window, strides,
                                  pads)
  # Overlapping windows add into one input in another order: float32 sums.
  np.testing.assert_allclose(ours_vjp(cotangent)[0], expected, atol=1e-6)
  np.testing.assert_allclose(flax_vjp(cotangent)[0], expected, atol=1e-6)


def test_padding_is_never_the_maximum():
  x = -jnp.ones((1, 4, 4, 1))  # every real cell is below the zero padding
  pooled, vjp = jax.vjp(lambda x: max_pool.max_pool(x, (3, 3), (2, 2),
                                                    'SAME'), x)
  np.testing.assert_array_equal(pooled, -np.ones((1, 2, 2, 1)))
  grad = vjp(jnp.ones_like(pooled))[0]
  assert float(grad.sum()) == 4.0 and float(grad.min()) == 0.0


def test_the_cpu_gradient_is_the_view_based_one():
  # conftest runs the tests on the CPU backend: the compiled gradient has no
  # select-and-scatter (XLA:CPU's slow lowering of it is the point).
  x = _tie_heavy((2, 14, 14, 4), 2)
  grad = jax.jit(jax.grad(
      lambda x: max_pool.max_pool(x, (3, 3), (2, 2), 'SAME').sum()))
  hlo = grad.lower(x).as_text()
  assert 'select_and_scatter' not in hlo
  assert 'select_and_scatter' in jax.jit(jax.grad(
      lambda x: nn.max_pool(x, (3, 3), (2, 2), 'SAME').sum())).lower(
          x).as_text()
