"""The sublayers of a ViT encoder block: attention, MLP, LayerScale.

`MultiHeadAttention` (fused kernel or einsums; options: rotary embeddings,
an inner norm, no q/k/v bias), `MlpBlock` (plain or gated; an inner norm)
and `LayerScale`, with the tables their options choose from (activations,
attention implementations). `vit_blocks` assembles them into encoder blocks
and the MAP head under the released checkpoints' names. Shape letters as in
`vit_blocks`.
"""

from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import rope as rope_lib

Dtype = Any

LAYER_NORM_EPSILON = 1e-6
# MultiHeadAttention's `implementation` (config.model.attention).
ATTENTION_IMPLEMENTATIONS = ('auto', 'fused', 'einsum')
# The MLP's nonlinearity. The released models use the tanh approximation of
# GELU (Hendrycks and Gimpel 2016); timm's ports the exact (erf) one; OpenAI's
# CLIP (Radford et al. 2021) the sigmoid approximation x * sigmoid(1.702 x).
ACTIVATIONS = {
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
    'gelu_erf': lambda x: nn.gelu(x, approximate=False),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    # Gates of gated MLPs (SwiGLU: Shazeer 2020, arXiv:2002.05202; GLU).
    'silu': jax.nn.silu,
    'sigmoid': jax.nn.sigmoid,
}

_xavier = nn.initializers.xavier_uniform()


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError naming `field` when `value` is not one of `choices`."""
  if value not in choices:
    raise ValueError(f'unknown {field} {value!r}; expected one of '
                     f'{tuple(choices)}')


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The function of an `activation` name (see ACTIVATIONS)."""
  check_choice('activation', name, tuple(ACTIVATIONS))
  return ACTIVATIONS[name]


def layer_norm(name: str, param_dtype: Dtype,
               epsilon: float = LAYER_NORM_EPSILON) -> nn.LayerNorm:
  """A LayerNorm whose statistics and output are float32 whatever the compute
  dtype (see layers)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name)


class MultiHeadAttention(nn.Module):
  """Self-attention with q/k/v kernels (D, heads, D/heads), out (heads, ., D).

  `implementation`:
    'fused': `jax.nn.dot_product_attention` (cuDNN's fused kernel on GPU,
      XLA's elsewhere);
    'einsum': two einsums around a float32 softmax, the same computation
      written out: it can sow and drop out the weights, and XLA:CPU runs it
      faster (no grouped-query vmap, no bf16 round trip of the
      probabilities);
    'auto' (default): 'fused', except on CPU and whenever the weights are
      wanted or attention dropout is active.
  `qkv_bias`: False drops the query, key and value biases (timm's
  `qkv_bias=False` models); `out` keeps its bias.
  `rope`: rotary embeddings of the queries' and keys' patch tokens (the
  `rope_grid` after `num_prefix_tokens`), see `vit_jax.models.rope`; its
  'mixed' kind learns `rope_freqs` (2, heads, head_dim / 2).
  `inner_norm`: a LayerNorm `LayerNorm_0` (scale and bias (heads,
  head_dim)) on the attention output before `out` (timm's
  `scale_attn_inner` / `scale_attn_norm`; NormFormer, Shleifer et al.
  2021, arXiv:2110.09456).
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str = 'auto'
  qkv_bias: bool = True
  rope: Optional[rope_lib.Rope] = None
  rope_grid: Tuple[int, int] = (0, 0)
  num_prefix_tokens: int = 0
  inner_norm: bool = False
  layer_norm_epsilon: float = LAYER_NORM_EPSILON

  def _use_fused(self, capture_weights: bool, use_dropout: bool) -> bool:
    if self.implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f'unknown attention implementation '
                       f'{self.implementation!r}')
    if capture_weights or use_dropout:
      return False
    if self.implementation == 'auto':
      return jax.default_backend() != 'cpu'
    return self.implementation == 'fused'

  @nn.compact
  def __call__(self, x_BND, *, train: bool, capture_weights: bool = False,
               num_queries: Optional[int] = None, queries_BQD=None):
    """Attends from the first `num_queries` tokens (default: all) to all;
    from `queries_BQD` instead when given (attention pooling)."""
    hidden = x_BND.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(f'hidden size {hidden} is not divisible by '
                       f'{self.num_heads} heads')
    head_dim = hidden // self.num_heads
    projection = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=_xavier,
        use_bias=self.qkv_bias, dot_general=layers.dot_general(self.dtype),
        name=name)
    if queries_BQD is None:
      queries_BQD = x_BND[:, :num_queries]
    q_BQAE = projection('query')(queries_BQD)
    k_BKAE = projection('key')(x_BND)
    v_BKAE = projection('value')(x_BND)
    if self.rope is not None:
      q_BQAE, k_BKAE = self._rotate(q_BQAE, k_BKAE, head_dim)

    use_dropout = train and self.dropout_rate > 0
    if self._use_fused(capture_weights, use_dropout):
      out_BQAE = jax.nn.dot_product_attention(
          q_BQAE.astype(self.dtype), k_BKAE.astype(self.dtype),
          v_BKAE.astype(self.dtype)).astype(jnp.float32)
    else:
      logits_BAQK = layers.einsum('bqae,bkae->baqk', q_BQAE, k_BKAE,
                                  self.dtype)
      logits_BAQK = logits_BAQK * jnp.float32(1 / head_dim**0.5)
      weights_BAQK = jax.nn.softmax(logits_BAQK, axis=-1)
      if capture_weights:
        self.sow('intermediates', 'attention_weights', weights_BAQK)
      weights_BAQK = nn.Dropout(self.dropout_rate)(
          weights_BAQK, deterministic=not use_dropout)
      out_BQAE = layers.einsum('baqk,bkae->bqae', weights_BAQK, v_BKAE,
                               self.dtype)
    if self.inner_norm:
      out_BQAE = nn.LayerNorm(
          epsilon=self.layer_norm_epsilon, dtype=jnp.float32,
          param_dtype=self.param_dtype, reduction_axes=(-2, -1),
          feature_axes=(-2, -1), name='LayerNorm_0')(out_BQAE)

    return nn.DenseGeneral(
        hidden, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, dot_general=layers.dot_general(self.dtype),
        name='out')(out_BQAE)

  def _rotate(self, q_BQAE, k_BKAE, head_dim: int):
    """The queries and keys with their patch tokens rotated."""
    self.rope.check(head_dim)
    freqs_2AF = None
    if self.rope.kind == 'mixed':
      freqs_2AF = self.param(
          'rope_freqs', rope_lib.mixed_freqs_init(self.rope.temperature),
          (2, self.num_heads, head_dim // 2), self.param_dtype)
    sin_NAE, cos_NAE = rope_lib.sin_cos(self.rope, self.rope_grid, head_dim,
                                        freqs_2AF)
    rotate = lambda x: rope_lib.apply(
        x, sin_NAE, cos_NAE, num_prefix_tokens=self.num_prefix_tokens,
        rotate_half=self.rope.rotate_half)
    return rotate(q_BQAE), rotate(k_BKAE)


class MlpBlock(nn.Module):
  """Dense -> activation (tanh-GELU) -> dropout -> Dense -> dropout.

  `gated`: a gated linear unit (Shazeer 2020, "GLU Variants Improve
  Transformer", arXiv:2002.05202): activation(Dense_0(x)) * Dense_value(x)
  replaces activation(Dense_0(x)) (SwiGLU with activation 'silu').
  `inner_norm`: a LayerNorm `LayerNorm_0` on the hidden units before
  Dense_1 (timm's `scale_mlp` / `scale_mlp_norm`).
  """
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  activation: str = 'gelu_tanh'
  gated: bool = False
  inner_norm: bool = False
  layer_norm_epsilon: float = LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, bias_init=nn.initializers.normal(stddev=1e-6),
        dot_general=layers.dot_general(self.dtype), name=name)
    y = dense(self.mlp_dim, 'Dense_0')(x)
    y = activation_fn(self.activation)(y)
    if self.gated:
      y = y * dense(self.mlp_dim, 'Dense_value')(x)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    if self.inner_norm:
      y = layer_norm('LayerNorm_0', self.param_dtype,
                     self.layer_norm_epsilon)(y).astype(y.dtype)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class LayerScale(nn.Module):
  """Multiplies each channel by a learned `scale` (D,) initialised to
  `init_value` (Touvron et al. 2021, "Going deeper with image transformers"):
  a small init lets deep models start near the identity."""
  init_value: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale_D = self.param('scale', nn.initializers.constant(self.init_value),
                         (x.shape[-1],), self.param_dtype)
    return x * scale_D.astype(x.dtype)

