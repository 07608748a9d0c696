"""Matmul and convolution primitives shared by the ViT and ResNet modules.

Mixed precision policy: `dtype` is the dtype of the *operands* of every matmul
and convolution. Products always accumulate and come out in float32
(`preferred_element_type`), and normalisation, softmax and activations run in
float32. Bfloat16 operands with float32 accumulation is what both TPUs/GPUs and
CPUs with bf16 matrix units execute fastest; a bf16 *result* makes XLA:CPU
convert back and forth and runs slower than plain float32.
"""

import functools
from typing import Any, Optional, Sequence

from jax import lax
import jax.numpy as jnp

Dtype = Any


def dot_general(dtype: Dtype) -> Optional[Any]:
  """The `dot_general` to hand to flax Dense layers for operand `dtype`."""
  if jnp.dtype(dtype) == jnp.float32:
    return None  # flax's default: float32 in, float32 out.
  return functools.partial(lax.dot_general, preferred_element_type=jnp.float32)


def conv_general_dilated(dtype: Dtype) -> Optional[Any]:
  """The `conv_general_dilated` to hand to flax Conv layers for `dtype`."""
  if jnp.dtype(dtype) == jnp.float32:
    return None
  return functools.partial(lax.conv_general_dilated,
                           preferred_element_type=jnp.float32)


def einsum(subscripts: str, a, b, dtype: Dtype):
  """`jnp.einsum` with operands cast to `dtype` and a float32 result."""
  return jnp.einsum(subscripts, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=jnp.float32)


def conv(x, kernel, strides: Sequence[int], padding: str, dtype: Dtype):
  """NHWC/HWIO convolution with operands in `dtype`, float32 result."""
  return lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=tuple(strides),
      padding=padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      preferred_element_type=jnp.float32)
