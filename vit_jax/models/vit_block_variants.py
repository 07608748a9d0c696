"""Encoder-block variants of timm's VisionTransformer: post-norm and parallel
blocks, differential attention, RMSNorm.

`vit_blocks.EncoderBlock` is the pre-LN block of the paper. With its options
(`vit.VisionTransformer.block`, `differential_attention`, `norm_layer`) it
hands its computation to one of the functions of `BLOCKS`, which build the
same sublayers under the same names (`LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`,
`LayerScale_{0,1}`) and wire them differently:

  'pre_norm'   x + A(LN0(x)), then x + M(LN1(x))        (the paper's)
  'post_norm'  x + LN0(A(x)), then x + LN1(M(x))        (timm's ResPostBlock,
                                                         Xiong et al. 2020)
  'parallel'   x + LS0(A(LN0(x)) + M(LN0(x)))           (ViT-22B's parallel
                 block, Dehghani et al. 2023, arXiv:2302.05442; timm's
                 ParallelScalingBlock, whose fused in/out projections are the
                 same maps)

Differential attention (Ye et al. 2024, "Differential Transformer",
arXiv:2410.05258; timm's DiffAttention) replaces the attention sublayer.
This module must not import `vit_blocks` (which imports it); the sublayers
come from the block (`_attention_layer`, `_mlp_layer`, `_norm`, `_branch`).
Shape letters as in `vit_blocks`.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers

Dtype = Any

NORM_LAYERS = ('layer_norm', 'rms_norm')
# timm's DiffAttention normalises each head's output with an RmsNorm of this
# fixed epsilon (timm/layers/diff_attention.py).
_SUB_NORM_EPSILON = 1e-5
_xavier = nn.initializers.xavier_uniform()


def norm_layer(kind: str, name: str, param_dtype: Dtype,
               epsilon: float) -> nn.Module:
  """A LayerNorm (`scale`, `bias`) or an RMSNorm (`scale` only: x /
  sqrt(mean(x^2) + epsilon) * scale; Zhang and Sennrich 2019), statistics
  and output in float32 whatever the compute dtype."""
  if kind == 'rms_norm':
    return nn.RMSNorm(epsilon=epsilon, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name)
  if kind != 'layer_norm':
    raise ValueError(f'unknown norm_layer {kind!r}; expected one of '
                     f'{NORM_LAYERS}')
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name)


def lambda_init(layer_index: int) -> float:
  """The differential attention's fixed part of lambda at a depth (the
  paper's 0.8 - 0.6 exp(-0.3 l), l counted from 0 as timm does)."""
  return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class DifferentialAttention(nn.Module):
  """Differential attention: per head, softmax(Q1 K1) - lambda softmax(Q2 K2)
  applied to V, RMS-normalised and scaled by 1 - lambda_init.

  Parameters: `query`, `key` (D, 2A, E/2) (head a's two halves are heads 2a
  and 2a + 1, as timm's reshape reads its fused qkv), `value` (D, A, E),
  `out` (A, E, D), `lambda_q1`, `lambda_k1`, `lambda_q2`, `lambda_k2`
  (E/2,), `sub_norm/scale` (E,). lambda = exp(q1.k1) - exp(q2.k2) +
  lambda_init(layer_index). Computed with einsums in float32 softmax (no
  fused kernel: the two maps are subtracted before V is applied).
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  qkv_bias: bool = True
  layer_index: int = 0

  @nn.compact
  def __call__(self, x_BND, *, train: bool, capture_weights: bool = False,
               num_queries: Optional[int] = None):
    hidden = x_BND.shape[-1]
    if hidden % (2 * self.num_heads):
      raise ValueError(f'hidden size {hidden} is not divisible by twice '
                       f'{self.num_heads} heads (differential attention)')
    half = hidden // self.num_heads // 2
    projection = lambda heads, width, name: nn.DenseGeneral(
        (heads, width), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, use_bias=self.qkv_bias,
        dot_general=layers.dot_general(self.dtype), name=name)
    q_BQHE = projection(2 * self.num_heads, half, 'query')(
        x_BND[:, :num_queries])
    k_BKHE = projection(2 * self.num_heads, half, 'key')(x_BND)
    v_BKAE = projection(self.num_heads, 2 * half, 'value')(x_BND)
    logits_BHQK = layers.einsum('bqhe,bkhe->bhqk', q_BQHE, k_BKHE, self.dtype)
    weights_BHQK = jax.nn.softmax(
        logits_BHQK * jnp.float32(1 / half**0.5), axis=-1)
    batch, _, queries, keys = weights_BHQK.shape
    weights_BA2QK = weights_BHQK.reshape(batch, self.num_heads, 2, queries,
                                         keys)
    weights_BAQK = (weights_BA2QK[:, :, 0]
                    - self._lambda(half) * weights_BA2QK[:, :, 1])
    if capture_weights:
      self.sow('intermediates', 'attention_weights', weights_BAQK)
    weights_BAQK = nn.Dropout(self.dropout_rate)(
        weights_BAQK, deterministic=not (train and self.dropout_rate > 0))
    out_BQAE = layers.einsum('baqk,bkae->bqae', weights_BAQK, v_BKAE,
                             self.dtype)
    out_BQAE = nn.RMSNorm(epsilon=_SUB_NORM_EPSILON, dtype=jnp.float32,
                          param_dtype=self.param_dtype, name='sub_norm')(
                              out_BQAE)
    out_BQAE = out_BQAE * (1 - lambda_init(self.layer_index))
    return nn.DenseGeneral(
        hidden, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, dot_general=layers.dot_general(self.dtype),
        name='out')(out_BQAE)

  def _lambda(self, half: int):
    init = nn.initializers.normal(stddev=0.1)
    vector = lambda name: self.param(name, init, (half,), self.param_dtype
                                     ).astype(jnp.float32)
    return (jnp.exp(jnp.sum(vector('lambda_q1') * vector('lambda_k1')))
            - jnp.exp(jnp.sum(vector('lambda_q2') * vector('lambda_k2')))
            + lambda_init(self.layer_index))


# ------------------------------------------------------------------ blocks --
# Each takes the `vit_blocks.EncoderBlock` being called, its input and its
# drop-path rate, and honours its `query_tokens` (the first outputs only).

def _attend(block, y_BND):
  return block._attention_layer()(  # pylint: disable=protected-access
      y_BND, train=block.train, capture_weights=block.capture_attention,
      num_queries=block.query_tokens)


def _dropout(block, y):
  return nn.Dropout(block.dropout_rate)(y, deterministic=not block.train)


def pre_norm_block(block, x_BND, rate):
  """The paper's block with another attention sublayer."""
  # pylint: disable=protected-access
  y = _dropout(block, _attend(block, block._norm('LayerNorm_0')(x_BND)))
  x_BND = x_BND[:, :block.query_tokens] + block._branch(y, 0, rate)
  y = block._mlp_layer()(block._norm('LayerNorm_1')(x_BND), train=block.train)
  return x_BND + block._branch(y, 1, rate)


def post_norm_block(block, x_BND, rate):
  """timm's ResPostBlock: each branch is normalised after it, not before."""
  # pylint: disable=protected-access
  y = block._norm('LayerNorm_0')(_dropout(block, _attend(block, x_BND)))
  x_BND = x_BND[:, :block.query_tokens] + block._branch(y, 0, rate)
  y = block._norm('LayerNorm_1')(
      block._mlp_layer()(x_BND, train=block.train))
  return x_BND + block._branch(y, 1, rate)


def parallel_block(block, x_BND, rate):
  """Attention and MLP of one normalised input, summed into one branch."""
  # pylint: disable=protected-access
  y_BND = block._norm('LayerNorm_0')(x_BND)
  attended = _dropout(block, _attend(block, y_BND))
  mlp = block._mlp_layer()(y_BND[:, :block.query_tokens], train=block.train)
  return x_BND[:, :block.query_tokens] + block._branch(attended + mlp, 0, rate)


BLOCKS = {'pre_norm': pre_norm_block, 'post_norm': post_norm_block,
          'parallel': parallel_block}
