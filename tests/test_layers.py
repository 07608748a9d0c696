"""layers: bf16 operands and float32 products, both ways (mixed_dot_general,
conv)."""

import functools
import re

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import layers
from vit_jax.models import vit
from vit_jax.models import vit_blocks


def _bf16_exact(x):
  """x rounded to bf16, as float64: what the bf16 matmul units multiply."""
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32),
                    np.float64)


# (lhs shape, rhs shape, dimension numbers, einsum of the product): the
# layouts the ViT uses. Dense, the qkv projection (several rhs free axes),
# the attention output (two contracting axes, in swapped order here) and the
# attention einsums with batch axes.
CASES = [
    ((2, 5, 8), (8, 6), (((2,), (0,)), ((), ())), 'bnk,ko->bno'),
    ((2, 5, 8), (8, 3, 4), (((2,), (0,)), ((), ())), 'bnk,khd->bnhd'),
    ((2, 5, 3, 4), (4, 3, 6), (((2, 3), (1, 0)), ((), ())),
     'bnhd,dho->bno'),
    ((2, 3, 5, 4), (2, 3, 7, 4), (((3,), (3,)), ((0, 1), (0, 1))),
     'bhqd,bhkd->bhqk'),
    # Attention weights times values: the rhs batch axes are not leading.
    ((2, 3, 5, 7), (2, 7, 3, 4), (((3,), (1,)), ((0, 1), (0, 2))),
     'bhqk,bkhd->bhqd'),
]


@pytest.mark.parametrize('lhs_shape,rhs_shape,dims,spec', CASES)
def test_gradients_equal_float64_products_of_bf16_operands(
    lhs_shape, rhs_shape, dims, spec):
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.normal(size=lhs_shape), jnp.bfloat16)
  rhs = jnp.asarray(rng.normal(size=rhs_shape), jnp.bfloat16)
  out_shape = np.einsum(spec, np.zeros(lhs_shape), np.zeros(rhs_shape)).shape
  cotangent = rng.normal(size=out_shape).astype(np.float32)

  product, vjp = jax.vjp(
      lambda a, b: layers.mixed_dot_general(a, b, dims), lhs, rhs)
  d_lhs, d_rhs = vjp(jnp.asarray(cotangent))

  lhs64, rhs64 = _bf16_exact(lhs), _bf16_exact(rhs)
  assert product.dtype == jnp.float32
  np.testing.assert_allclose(product, np.einsum(spec, lhs64, rhs64),
                             rtol=1e-5, atol=1e-5)
  # Cotangents: the float32 cotangent is rounded to bf16 before it meets a
  # bf16 operand (as PyTorch autocast does); the sums stay float32.
  inputs, output = spec.split('->')
  lhs_spec, rhs_spec = inputs.split(',')
  cot64 = _bf16_exact(cotangent)
  expected_d_lhs = np.einsum(f'{output},{rhs_spec}->{lhs_spec}', cot64, rhs64)
  expected_d_rhs = np.einsum(f'{lhs_spec},{output}->{rhs_spec}', lhs64, cot64)
  # Both come back in the operand dtype (bf16): compare at bf16 precision.
  assert d_lhs.dtype == d_rhs.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(d_lhs, np.float64), expected_d_lhs,
                             rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(np.asarray(d_rhs, np.float64), expected_d_rhs,
                             rtol=1e-2, atol=1e-2)


def test_float32_operands_keep_float32_gradients():
  rng = np.random.default_rng(1)
  lhs = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  rhs = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  dims = (((1,), (0,)), ((), ()))
  ours = jax.grad(lambda a, b: layers.mixed_dot_general(a, b, dims).sum(),
                  argnums=(0, 1))(lhs, rhs)
  plain = jax.grad(lambda a, b: lax.dot_general(a, b, dims).sum(),
                   argnums=(0, 1))(lhs, rhs)
  for got, want in zip(ours, plain, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_rejects_a_non_float32_result_type():
  with pytest.raises(ValueError, match='returns float32'):
    layers.mixed_dot_general(jnp.ones((2, 2), jnp.bfloat16),
                             jnp.ones((2, 2), jnp.bfloat16),
                             (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.bfloat16)


def _dot_operand_types(hlo_text):
  """Element types of the operands of every dot in optimized HLO text."""
  types = []
  for computation in hlo_text.split('\n\n'):
    shapes = dict(re.findall(r'%([\w.\-]+) = (\w+)\[', computation))
    for lhs, rhs in re.findall(r' dot\(%([\w.\-]+), %([\w.\-]+)\)',
                               computation):
      types.append((shapes[lhs], shapes[rhs]))
  return types


def _cpu_has_bf16_matmul_instructions():
  try:
    with open('/proc/cpuinfo') as f:
      flags = set(f.read().split())
  except OSError:
    return False
  return bool(flags & {'avx512_bf16', 'amx_bf16', 'bf16'})


@pytest.mark.slow
@pytest.mark.skipif(not _cpu_has_bf16_matmul_instructions(),
                    reason='checked only where XLA:CPU has bf16 matrix '
                    'instructions to use; elsewhere it may upcast by design')
def test_bf16_encoder_block_gradient_keeps_every_product_in_bf16():
  # XLA:CPU silently upcasts a bf16 product to float32 when an operand is a
  # transposed view; that halves the speed of training. Both the Dense and
  # the attention products must reach the compiled program in bf16. (Tiny
  # products run in float32 whatever their layout: heads of 64 here.)
  block = vit_blocks.EncoderBlock(num_heads=2, mlp_dim=256,
                                  dtype=jnp.bfloat16)
  x = jnp.ones((2, 50, 128), jnp.float32)
  # Only the shapes: the program is compiled, never run.
  params = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  loss = lambda params, x: block.apply(params, x).sum()
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
      params, x).compile().as_text()
  types = _dot_operand_types(hlo)
  # 6 Dense forward + 12 backward, 2 + 4 attention products; XLA may merge
  # products that share an operand (the q, k and v projections).
  assert 20 <= len(types) <= 24, types
  assert set(types) == {('bf16', 'bf16')}, types


def test_bf16_gradients_are_the_cpu_default_and_can_be_switched_off():
  # conftest runs the tests on the CPU backend.
  assert layers.use_bf16_gradients() and layers.use_bf16_gradients(True)
  assert not layers.use_bf16_gradients(False)
  assert layers.dot_general(jnp.bfloat16) is layers.mixed_dot_general
  assert layers.dot_general(jnp.float32) is None
  assert layers.dot_general(jnp.bfloat16, bf16_gradients=False) is not (
      layers.mixed_dot_general)


@pytest.mark.parametrize('lhs_shape,rhs_shape,dims,spec', CASES)
def test_without_bf16_gradients_the_gradient_is_jaxs_own(
    lhs_shape, rhs_shape, dims, spec):
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.normal(size=lhs_shape), jnp.bfloat16)
  rhs = jnp.asarray(rng.normal(size=rhs_shape), jnp.bfloat16)
  cotangent = jnp.asarray(rng.normal(size=jnp.einsum(spec, lhs, rhs).shape),
                          jnp.float32)

  def grads(product):
    return jax.grad(lambda a, b: (product(a, b) * cotangent).sum(),
                    argnums=(0, 1))(lhs, rhs)

  plain = grads(lambda a, b: lax.dot_general(
      a, b, dims, preferred_element_type=jnp.float32))
  switched_off = grads(lambda a, b: layers.dot_general(
      jnp.bfloat16, bf16_gradients=False)(a, b, dims))
  einsum_off = grads(lambda a, b: layers.einsum(spec, a, b, jnp.bfloat16,
                                                bf16_gradients=False))
  rounded = grads(lambda a, b: layers.mixed_dot_general(a, b, dims))
  for got in (switched_off, einsum_off):
    for g, want in zip(got, plain, strict=True):
      np.testing.assert_array_equal(np.asarray(g, np.float32),
                                    np.asarray(want, np.float32))
  # The CPU default differs from it: its cotangent is rounded to bf16.
  assert any(not np.array_equal(np.asarray(g, np.float32),
                                np.asarray(w, np.float32))
             for g, w in zip(rounded, plain, strict=True))


# (input shape, kernel shape, strides, padding): a patch embedding whose
# patches do not divide the image, a 1x1 conv, a strided 1x1 'SAME' conv
# (the hybrids' projection shortcut) and an overlapping 7x7 root conv.
CONV_CASES = [
    ((2, 14, 13, 3), (4, 4, 3, 8), (4, 4), 'VALID'),
    ((2, 7, 7, 16), (1, 1, 16, 8), (1, 1), 'SAME'),
    ((2, 9, 8, 4), (1, 1, 4, 6), (2, 2), 'SAME'),
    ((2, 28, 28, 3), (7, 7, 3, 8), (2, 2), 'SAME'),
]


@pytest.mark.parametrize('x_shape,kernel_shape,strides,padding', CONV_CASES)
def test_bf16_conv_equals_xlas_convolution(x_shape, kernel_shape, strides,
                                           padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)

  def xla(x, kernel):
    return lax.conv_general_dilated(
        x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), strides,
        padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        preferred_element_type=jnp.float32)

  ours, ours_vjp = jax.vjp(
      lambda x, k: layers.conv(x, k, strides, padding, jnp.bfloat16),
      x, kernel)
  want, want_vjp = jax.vjp(xla, x, kernel)
  assert ours.dtype == jnp.float32 and ours.shape == want.shape
  # The same bf16 products, summed in float32 in another order.
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=ours.shape), jnp.float32)
  # Ours rounds the cotangent to bf16 before the products (mixed_dot_general).
  for got, expected in zip(ours_vjp(cotangent), want_vjp(cotangent),
                           strict=True):
    np.testing.assert_allclose(np.asarray(got, np.float32), expected,
                               rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_flax_conv_hook_tiles_plain_convs_and_leaves_the_rest_to_xla():
  convolve = layers.conv_general_dilated(jnp.bfloat16)
  assert layers.conv_general_dilated(jnp.float32) is None
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  for groups in (1, 2):
    module = nn.Conv(6, (2, 2), strides=(2, 2), padding='VALID',
                     feature_group_count=groups, dtype=jnp.bfloat16,
                     conv_general_dilated=convolve)
    params = module.init(jax.random.PRNGKey(0), x)
    plain = nn.Conv(6, (2, 2), strides=(2, 2), padding='VALID',
                    feature_group_count=groups, dtype=jnp.bfloat16,
                    conv_general_dilated=functools.partial(
                        lax.conv_general_dilated,
                        preferred_element_type=jnp.float32))
    hlo = jax.jit(module.apply).lower(params, x).as_text()
    # Grouped convolutions are not tiled: XLA's convolution does them.
    assert ('convolution' in hlo) == (groups == 2)
    np.testing.assert_allclose(module.apply(params, x),
                               plain.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bf16_vit_training_gradient_has_no_convolution_on_cpu():
  # XLA:CPU would run a bf16 patch embedding in float32; tiled, it is a
  # bf16 product (conftest runs the tests on the CPU backend).
  model = vit.VisionTransformer(
      num_classes=3, patch_size=(4, 4), hidden_size=16, num_layers=1,
      num_heads=2, mlp_dim=32, dtype=jnp.bfloat16)
  images = jnp.zeros((2, 16, 16, 3))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  loss = lambda params: model.apply(params, images).sum()
  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  assert ' convolution(' not in hlo
  assert set(_dot_operand_types(hlo)) <= {('bf16', 'bf16'), ('f32', 'f32')}
