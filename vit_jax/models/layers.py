"""Matmul and convolution primitives shared by the ViT and ResNet modules.

Mixed precision policy: `dtype` is the dtype of the *operands* of every matmul
and convolution. Products always accumulate and come out in float32
(`preferred_element_type`), and normalisation, softmax and activations run in
float32. Bfloat16 operands with float32 accumulation is what both TPUs/GPUs and
CPUs with bf16 matrix units execute fastest; a bf16 *result* makes XLA:CPU
convert back and forth and runs slower than plain float32.

On XLA:CPU the backward pass follows the same policy (`mixed_dot_general`):
JAX's own rule would multiply the float32 cotangent with the bf16 operand,
which promotes the whole product to float32 and halves the speed of
training there. That custom gradient (and the bf16 rounding of the
cotangent it implies) was measured on XLA:CPU only, so it is the default on
CPU alone (`bf16_gradients=None`); other backends keep JAX's own gradient
of the float32-accumulating product unless asked for it.
"""

import functools
from typing import Any, Optional, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def _free_axes(ndim: int, contracting: Sequence[int],
               batch: Sequence[int]) -> Tuple[int, ...]:
  return tuple(d for d in range(ndim)
               if d not in contracting and d not in batch)


def _operand_cotangent(cotangent, other, operand_ndim: int, operand_dims,
                       other_dims, cotangent_other_axes, precision):
  """Cotangent of one operand of `dot_general(operand, other)`.

  Args:
    cotangent: cotangent of the product, axes (batch, lhs free, rhs free).
    other: the other operand.
    operand_ndim: rank of the operand whose cotangent is wanted.
    operand_dims: its (contracting, batch) axes.
    other_dims: the other operand's (contracting, batch) axes.
    cotangent_other_axes: axes of `cotangent` that are the other operand's
      free axes (they are contracted away).
    precision: passed on to lax.dot_general.

  Returns:
    Float32 array shaped like the operand.
  """
  (contracting, batch), (other_contracting, other_batch) = (operand_dims,
                                                             other_dims)
  product = lax.dot_general(
      cotangent, other,
      ((cotangent_other_axes,
        _free_axes(other.ndim, other_contracting, other_batch)),
       (tuple(range(len(batch))), other_batch)),
      precision, preferred_element_type=jnp.float32)
  # The product's axes: batch, the operand's free axes, then the other's
  # contracting axes in increasing order, which pair with ours.
  by_other_axis = np.argsort(other_contracting)
  source_axes = (list(batch) + list(_free_axes(operand_ndim, contracting,
                                               batch))
                 + [contracting[i] for i in by_other_axis])
  return lax.transpose(product, tuple(np.argsort(source_axes)))


def _weight_cotangent(lhs, cotangent, lhs_contracting, rhs_contracting,
                      rhs_ndim, precision):
  """d(rhs) of a batch-free dot_general as one canonical bf16 matmul.

  XLA:CPU has bf16 kernels only for a plain (M, K) x (K, N) product, so the
  lhs is laid out as (K, M) explicitly (a copy, cheap next to the product)
  and kept so by an optimization barrier: folded back into the dot, the
  transpose would give the layout XLA:CPU cannot run in bf16.
  """
  lhs_free = _free_axes(lhs.ndim, lhs_contracting, ())
  free_size = int(np.prod([lhs.shape[d] for d in lhs_free]))
  contracted_shape = [lhs.shape[d] for d in lhs_contracting]
  lhs_km = lax.transpose(lhs, tuple(lhs_contracting) + lhs_free).reshape(
      -1, free_size)
  lhs_km = lax.optimization_barrier(lhs_km)
  rhs_free_shape = cotangent.shape[len(lhs_free):]
  product = lax.dot_general(
      lhs_km, cotangent.reshape(free_size, -1), (((1,), (0,)), ((), ())),
      precision, preferred_element_type=jnp.float32)
  product = product.reshape(contracted_shape + list(rhs_free_shape))
  source_axes = (list(rhs_contracting)
                 + list(_free_axes(rhs_ndim, rhs_contracting, ())))
  return lax.transpose(product, tuple(np.argsort(source_axes)))


def _as_bmk(x, batch: Sequence[int], m: Sequence[int], k: Sequence[int]):
  """x with its axes grouped as (batch, m, k), flattened to rank 3.

  The flattening reshape is what makes XLA:CPU keep a bf16 batched product
  in bf16: an operand that is merely a transposed view (a non-default
  layout) makes it upcast the whole product to float32 instead.
  """
  sizes = [int(np.prod([x.shape[a] for a in axes]))
           for axes in (batch, m, k)]
  return lax.transpose(x, tuple(batch) + tuple(m) + tuple(k)).reshape(sizes)


def _batched_cotangent(cotangent, cotangent_m_axes, cotangent_n_axes, other,
                       other_dims, operand_dims, operand_free, precision):
  """Cotangent of one operand of a dot_general with batch axes.

  Computed as one bf16 (B, M, N) x (B, N, K) product of row-major arrays,
  which XLA:CPU runs on its bf16 kernels.

  Args:
    cotangent: cotangent of the product (bf16), batch axes leading.
    cotangent_m_axes: its axes that are the operand's free axes.
    cotangent_n_axes: its axes that are the other operand's free axes.
    other: the other operand.
    other_dims: the other operand's (contracting, batch) axes.
    operand_dims: the operand's (contracting, batch) axes.
    operand_free: the operand's free axes.
    precision: passed on to lax.dot_general.

  Returns:
    Float32 array shaped like the operand.
  """
  (other_contracting, other_batch), (contracting, batch) = (other_dims,
                                                             operand_dims)
  other_free = _free_axes(other.ndim, other_contracting, other_batch)
  num_batch = len(batch)
  product = lax.dot_general(
      _as_bmk(cotangent, range(num_batch), cotangent_m_axes,
              cotangent_n_axes),
      _as_bmk(other, other_batch, other_free, other_contracting),
      (((2,), (1,)), ((0,), (0,))), precision,
      preferred_element_type=jnp.float32)
  product = product.reshape(
      [cotangent.shape[a] for a in range(num_batch)]
      + [cotangent.shape[a] for a in cotangent_m_axes]
      + [other.shape[a] for a in other_contracting])
  # The other operand's contracting axes pair with ours in listed order.
  source_axes = list(batch) + list(operand_free) + list(contracting)
  return lax.transpose(product, tuple(np.argsort(source_axes)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_dot(lhs, rhs, dimension_numbers, precision):
  return lax.dot_general(lhs, rhs, dimension_numbers, precision,
                         preferred_element_type=jnp.float32)


def _mixed_dot_fwd(lhs, rhs, dimension_numbers, precision):
  return _mixed_dot(lhs, rhs, dimension_numbers, precision), (lhs, rhs)


def _mixed_dot_bwd(dimension_numbers, precision, residuals, cotangent):
  lhs, rhs = residuals
  (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = (
      dimension_numbers)
  num_batch = len(lhs_batch)
  lhs_free = _free_axes(lhs.ndim, lhs_contracting, lhs_batch)
  rhs_free = _free_axes(rhs.ndim, rhs_contracting, rhs_batch)
  # The cotangent's axes: batch, then the lhs's free axes, then the rhs's.
  cotangent_lhs_axes = tuple(range(num_batch, num_batch + len(lhs_free)))
  cotangent_rhs_axes = tuple(range(num_batch + len(lhs_free), cotangent.ndim))
  lhs_dims = (lhs_contracting, lhs_batch)
  rhs_dims = (rhs_contracting, rhs_batch)
  bf16_on_cpu = (lhs.dtype != jnp.float32
                 and jax.default_backend() == 'cpu')
  bf16_cotangent = cotangent.astype(lhs.dtype)
  if lhs_batch and bf16_on_cpu:
    # Attention's activation products: XLA:CPU would run either cotangent
    # in float32 (see _batched_cotangent).
    d_lhs = _batched_cotangent(bf16_cotangent, cotangent_lhs_axes,
                               cotangent_rhs_axes, rhs, rhs_dims, lhs_dims,
                               lhs_free, precision)
    d_rhs = _batched_cotangent(bf16_cotangent, cotangent_rhs_axes,
                               cotangent_lhs_axes, lhs, lhs_dims, rhs_dims,
                               rhs_free, precision)
    return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)
  # d(lhs) contracts the cotangent's trailing axes: a plain product that
  # runs with bf16 operands, as in the forward pass.
  d_lhs = _operand_cotangent(bf16_cotangent, rhs, lhs.ndim, lhs_dims,
                             rhs_dims, cotangent_rhs_axes, precision)
  # d(rhs) (the weight gradient of a Dense layer) contracts the leading
  # (token) axes of both. As a dot_general XLA:CPU has no bf16 kernel for
  # that layout ("Unsupported element type for DotThunk"), so it is
  # rewritten as a plain matmul (`_weight_cotangent`). Other backends (not
  # measured yet) keep the float32 product.
  if bf16_on_cpu:
    d_rhs = _weight_cotangent(lhs, bf16_cotangent, lhs_contracting,
                              rhs_contracting, rhs.ndim, precision)
  else:
    d_rhs = _operand_cotangent(cotangent, lhs.astype(jnp.float32), rhs.ndim,
                               rhs_dims, lhs_dims, cotangent_lhs_axes,
                               precision)
  return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def mixed_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type=None, **unused_kwargs):
  """`lax.dot_general` with a float32 result, forward and backward.

  The operands keep their (bf16) dtype; the product and both operand
  cotangents are accumulated in float32. Unlike JAX's default gradient, the
  cotangent is cast to the operand dtype before it multiplies the other
  operand into d(lhs), so that product runs on the bf16 matrix units too
  (PyTorch autocast rounds its gradients the same way).

  Args:
    lhs: left operand.
    rhs: right operand.
    dimension_numbers: as for lax.dot_general.
    precision: as for lax.dot_general.
    preferred_element_type: must be None or float32 (the result dtype).
    **unused_kwargs: extra keywords jnp.einsum passes (e.g. out_sharding).

  Returns:
    The float32 product.
  """
  del unused_kwargs
  if preferred_element_type not in (None, jnp.float32):
    raise ValueError(f'mixed_dot_general returns float32, not '
                     f'{preferred_element_type}')
  # Hashable dimension numbers: they are a static argument of the VJP.
  (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = (
      dimension_numbers)
  dimension_numbers = ((tuple(lhs_contracting), tuple(rhs_contracting)),
                       (tuple(lhs_batch), tuple(rhs_batch)))
  return _mixed_dot(lhs, rhs, dimension_numbers, precision)


def use_bf16_gradients(bf16_gradients: Optional[bool] = None) -> bool:
  """Whether reduced-precision products get `mixed_dot_general`'s gradient:
  as asked, or by default on the CPU backend (where it was measured)."""
  if bf16_gradients is None:
    return jax.default_backend() == 'cpu'
  return bf16_gradients


def _float32_result_dot(lhs, rhs, dimension_numbers, precision=None,
                        preferred_element_type=None, **kwargs):
  """`lax.dot_general` with a float32 result and JAX's own gradient."""
  if preferred_element_type not in (None, jnp.float32):
    raise ValueError(f'the product is float32, not {preferred_element_type}')
  return lax.dot_general(lhs, rhs, dimension_numbers, precision,
                         preferred_element_type=jnp.float32, **kwargs)


def dot_general(dtype: Dtype, bf16_gradients: Optional[bool] = None
                ) -> Optional[Any]:
  """The `dot_general` to hand to flax Dense layers for operand `dtype`.

  Args:
    dtype: the operand dtype.
    bf16_gradients: see `use_bf16_gradients` (None: on CPU only).
  """
  if jnp.dtype(dtype) == jnp.float32:
    return None  # flax's default: float32 in, float32 out.
  if use_bf16_gradients(bf16_gradients):
    return mixed_dot_general
  return _float32_result_dot


def conv_general_dilated(dtype: Dtype) -> Optional[Any]:
  """The `conv_general_dilated` to hand to flax Conv layers for `dtype`:
  `conv` for plain NHWC convolutions, lax's otherwise."""
  if jnp.dtype(dtype) == jnp.float32:
    return None

  def convolve(lhs, rhs, window_strides, padding, lhs_dilation=None,
               rhs_dilation=None, dimension_numbers=None,
               feature_group_count=1, precision=None):
    plain = (feature_group_count == 1 and precision is None
             and set(lhs_dilation or (1,)) == {1}
             and set(rhs_dilation or (1,)) == {1}
             and lhs.ndim == 4 and dimension_numbers == _NHWC_HWIO(lhs.shape))
    if plain:
      return conv(lhs, rhs, window_strides, padding, dtype)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, precision=precision,
        preferred_element_type=jnp.float32)
  return convolve


def _NHWC_HWIO(shape):  # pylint: disable=invalid-name
  return lax.conv_dimension_numbers(shape, shape,
                                    ('NHWC', 'HWIO', 'NHWC'))


def einsum(subscripts: str, a, b, dtype: Dtype,
           bf16_gradients: Optional[bool] = None):
  """`jnp.einsum` with operands cast to `dtype` and a float32 result; the
  gradient as for `dot_general`."""
  a, b = a.astype(dtype), b.astype(dtype)
  if (jnp.dtype(dtype) == jnp.float32
      or not use_bf16_gradients(bf16_gradients)):
    return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)
  # flax's own einsum layers hand jnp.einsum a dot_general the same way.
  return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32,
                    _dot_general=mixed_dot_general)


def conv(x, kernel, strides: Sequence[int], padding, dtype: Dtype):
  """NHWC/HWIO convolution with operands in `dtype`, float32 result.

  XLA:CPU runs a bfloat16 convolution in float32 (it converts both
  operands), and JAX's gradient of it is float32 too. On the CPU backend, a
  reduced-precision convolution whose windows tile the image (stride equal
  to the window: patch embeddings, 1x1 convolutions) is therefore computed
  as what it is, a product of the reshaped image with the kernel, which
  stays in bf16 forward and backward (`einsum`). Overlapping windows stay
  XLA convolutions: as a product of concatenated window views, the
  hybrids' 7x7 root conv made the default config's training step slower.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C, F).
    strides: (sh, sw).
    padding: 'SAME' (TensorFlow's: the extra pad bottom/right), 'VALID' or
      ((top, bottom), (left, right)).
    dtype: operand dtype.
  """
  window = tuple(kernel.shape[:2])
  if (tuple(strides) == window and jnp.dtype(dtype) != jnp.float32
      and jax.default_backend() == 'cpu'):
    return einsum('nhwk,kf->nhwf', tiles(x, window, padding),
                  kernel.reshape(-1, kernel.shape[-1]), dtype)
  return lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=tuple(strides),
      padding=padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      preferred_element_type=jnp.float32)


def tiles(x, window: Sequence[int], padding):
  """(N, H, W, C) -> (N, H / kh, W / kw, kh * kw * C): the image cut into
  (kh, kw) tiles, each flattened in the order of an HWIO kernel's first
  three axes; rows and columns past the last whole tile are dropped, as a
  'VALID' convolution drops them."""
  kh, kw = window
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, window, padding)
  (top, bottom), (left, right) = padding
  x = lax.pad(x, jnp.array(0, x.dtype),
              ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  n, height, width, channels = x.shape
  rows, cols = height // kh, width // kw
  x = x[:, :rows * kh, :cols * kw]
  x = x.reshape(n, rows, kh, cols, kw, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, rows, cols, kh * kw * channels)
