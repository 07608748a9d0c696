"""Vision Transformer (Dosovitskiy et al., 2021) and its R+ViT hybrids.

Numerics and module names follow the released checkpoints: pre-LN blocks,
LayerNorm epsilon 1e-6, tanh-GELU, query scaled by 1/sqrt(head_dim). Parameter
names are the ones newer Flax code writes (`LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0` inside each
`encoderblock_{i}`); `vit_family` maps the older global numbering.

Shape letters in array names: B batch, H/W image height/width, N tokens, D
token width, M MLP width, Q query tokens, K key tokens, A attention heads,
E width per head, C classes. (x_BND is a (batch, tokens, width) array.)

Looking inside: pass `capture_attention=(layer, ...)` and/or
`capture_block_outputs=True` to `__call__` and apply with
`mutable=['intermediates']` (see `vit_jax.models.apply_with_intermediates`).
Without them the forward pass stores nothing.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import layers
from vit_jax.models import resnet

Dtype = Any

LAYER_NORM_EPSILON = 1e-6
CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled')
# Logical names of the (B, N, D) activation axes, for sharding rules.
ACTIVATION_AXES = ('batch', 'tokens', 'embed')
# MultiHeadAttention's `implementation` (config.model.attention).
ATTENTION_IMPLEMENTATIONS = ('auto', 'fused', 'einsum')
# Classifiers that prepend a learned class token at index 0.
TOKEN_CLASSIFIERS = ('token', 'token_unpooled')

_xavier = nn.initializers.xavier_uniform()


def layer_norm(name: str, param_dtype: Dtype) -> nn.LayerNorm:
  # Statistics and output in float32 whatever the compute dtype (see layers).
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
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
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str = 'auto'

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
               num_queries: Optional[int] = None):
    """Attends from the first `num_queries` tokens (default: all) to all."""
    hidden = x_BND.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(f'hidden size {hidden} is not divisible by '
                       f'{self.num_heads} heads')
    head_dim = hidden // self.num_heads
    projection = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=_xavier,
        dot_general=layers.dot_general(self.dtype), name=name)
    q_BQAE = projection('query')(x_BND[:, :num_queries])
    k_BKAE = projection('key')(x_BND)
    v_BKAE = projection('value')(x_BND)

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

    return nn.DenseGeneral(
        hidden, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, dot_general=layers.dot_general(self.dtype),
        name='out')(out_BQAE)


class MlpBlock(nn.Module):
  """Dense -> tanh-GELU -> dropout -> Dense -> dropout."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, bias_init=nn.initializers.normal(stddev=1e-6),
        dot_general=layers.dot_general(self.dtype), name=name)
    y = dense(self.mlp_dim, 'Dense_0')(x)
    y = nn.gelu(y, approximate=True)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + Drop(MHA(LN(x))), then x + MLP(LN(x)).

  `train` and `capture_attention` are attributes, not call arguments, so
  nn.remat and nn.scan see a block of one array argument.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  train: bool = False
  capture_attention: bool = False
  attention: str = 'auto'
  # Only the class token's output is wanted (the last block under the
  # 'token' classifier): its query, attention output and MLP run on that
  # token alone (7% of ViT-B/16's FLOPs saved) and the block returns
  # (B, 1, D). Keys and values still come from every token.
  class_token_only: bool = False

  @nn.compact
  def __call__(self, x_BND):
    train = self.train
    # A no-op unless the caller maps logical axes to a mesh (vit_jax.sharding).
    x_BND = nn.with_logical_constraint(x_BND, ACTIVATION_AXES)
    y = layer_norm('LayerNorm_0', self.param_dtype)(x_BND)
    num_queries = 1 if self.class_token_only else None
    y = MultiHeadAttention(
        self.num_heads, self.attention_dropout_rate, self.dtype,
        self.param_dtype, self.attention,
        name='MultiHeadDotProductAttention_0')(
            y, train=train, capture_weights=self.capture_attention,
            num_queries=num_queries)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x_BND = x_BND[:, :num_queries] + y
    y = layer_norm('LayerNorm_1', self.param_dtype)(x_BND)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                 name='MlpBlock_0')(y, train=train)
    return x_BND + y


class ScanStepBlock(EncoderBlock):
  """EncoderBlock as an nn.scan body: (x, None) -> (block(x), None)."""

  def __call__(self, x_BND, _):  # pytype: disable=signature-mismatch
    return super().__call__(x_BND), None


# What the backward pass may keep instead of recomputing (config remat_policy).
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_saveable,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _maybe_remat(block_class, remat_policy: str, prevent_cse: bool):
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'unknown remat_policy {remat_policy!r}; expected one of '
                     f'{sorted(REMAT_POLICIES)}')
  if remat_policy == 'none':
    return block_class
  return nn.remat(block_class, policy=REMAT_POLICIES[remat_policy],
                  prevent_cse=prevent_cse)


class AddPositionEmbedding(nn.Module):
  """Adds a learned (1, N, D) `pos_embedding` to every token, class included."""
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BND):
    pos_embedding_1ND = self.param(
        'pos_embedding', nn.initializers.normal(stddev=0.02),
        (1, *x_BND.shape[1:]), self.param_dtype)
    return x_BND + pos_embedding_1ND.astype(x_BND.dtype)


class Encoder(nn.Module):
  """Position embedding, dropout, `num_layers` blocks, final LayerNorm.

  With `scan_layers` the blocks are one nn.scan over a block whose params
  carry a leading layer axis (`encoderblock`, compiled once); otherwise they
  are `encoderblock_{i}`. `vit_family` converts between the two, and
  the released `.npz` layout is always per block.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = False
  remat_policy: str = 'none'
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x_BND, *, train: bool,
               capture_attention: Sequence[int] = (),
               capture_block_outputs: bool = False,
               class_token_only: bool = False):
    """Encodes (B, N, D) tokens.

    `class_token_only`: the caller reads only the class token. Unless the
    last block is looked at (its attention weights, the block outputs), the
    unrolled encoder then computes that block for the class token alone and
    returns (B, 1, D). The scanned one has one body for all blocks and
    returns every token.
    """
    last_block_for_class_token = (
        class_token_only and not capture_block_outputs
        and self.num_layers - 1 not in capture_attention)
    x_BND = AddPositionEmbedding(self.param_dtype, name='posembed_input')(x_BND)
    x_BND = nn.Dropout(self.dropout_rate)(x_BND, deterministic=not train)
    block_args = (self.num_heads, self.mlp_dim, self.dropout_rate,
                  self.attention_dropout_rate, self.dtype, self.param_dtype)
    if self.scan_layers:
      if capture_attention or capture_block_outputs:
        raise ValueError('a scanned encoder cannot capture per-layer '
                         'intermediates; use models.apply_with_intermediates, '
                         'which runs the unrolled model')
      blocks = nn.scan(
          _maybe_remat(ScanStepBlock, self.remat_policy, prevent_cse=False),
          variable_axes={'params': 0}, split_rngs={'params': True,
                                                   'dropout': True},
          length=self.num_layers)
      x_BND, _ = blocks(*block_args, train=train, attention=self.attention,
                        name='encoderblock')(x_BND, None)
    else:
      block_class = _maybe_remat(EncoderBlock, self.remat_policy,
                                 prevent_cse=True)
      for layer in range(self.num_layers):
        x_BND = block_class(
            *block_args, train=train,
            capture_attention=layer in capture_attention,
            attention=self.attention,
            class_token_only=(last_block_for_class_token
                              and layer == self.num_layers - 1),
            name=f'encoderblock_{layer}')(x_BND)
        if capture_block_outputs:
          self.sow('intermediates', 'block_outputs', x_BND)
    return layer_norm('encoder_norm', self.param_dtype)(x_BND)


class VisionTransformer(nn.Module):
  """ViT classifier; with `resnet_units` set, an R+ViT hybrid.

  Attributes:
    num_classes: classes of the `head`; 0 or None returns the features
      (after `pre_logits` when `representation_size` is set).
    patch_size: (ph, pw) of the `embedding` conv, on the stem output for
      hybrids.
    classifier: one of CLASSIFIERS.
    representation_size: width of the tanh `pre_logits` layer, or None.
    resnet_units: units per ResNet stage for hybrids, () for the root only,
      None for a pure ViT.
    head_bias_init: constant init of the head bias (-10 for sigmoid
      pre-training, 0 for fine-tuning).
    scan_layers: one scanned block instead of num_layers unrolled ones
      (faster compiles; params stacked under `encoderblock`).
    remat_policy: one of REMAT_POLICIES: recompute activations in the
      backward pass instead of storing them.
    attention: MultiHeadAttention's `implementation` ('auto', 'fused' or
      'einsum').
  """
  num_classes: Optional[int]
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  classifier: str = 'token'
  representation_size: Optional[int] = None
  resnet_units: Optional[Sequence[int]] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  head_bias_init: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = False
  remat_policy: str = 'none'
  attention: str = 'auto'

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False,
               capture_attention: Sequence[int] = (),
               capture_block_outputs: bool = False):
    """Classifies images in [-1, 1].

    Args:
      images_BHWC: float images, NHWC, values in [-1, 1].
      train: enables dropout (needs a 'dropout' rng).
      capture_attention: layer indices whose attention weights
        (B, heads, tokens, tokens) are sown into 'intermediates'.
      capture_block_outputs: sow every block's output (B, tokens, D).

    Returns:
      Logits (B, num_classes), (B, N, num_classes) for the unpooled
      classifiers, or the features when num_classes is 0/None.
    """
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'unknown classifier {self.classifier!r}; '
                       f'expected one of {CLASSIFIERS}')
    x = images_BHWC
    if self.resnet_units is not None:
      x = resnet.resnet_stem(x, self.resnet_units, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
    x = nn.Conv(self.hidden_size, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding='VALID',
                dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=layers.conv_general_dilated(self.dtype),
                name='embedding')(x)
    batch, rows, cols, hidden = x.shape
    x_BND = jnp.reshape(x, (batch, rows * cols, hidden))  # row-major patches

    if self.classifier in TOKEN_CLASSIFIERS:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, hidden),
                       self.param_dtype)
      cls = jnp.broadcast_to(cls.astype(x_BND.dtype), (batch, 1, hidden))
      x_BND = jnp.concatenate([cls, x_BND], axis=1)

    x_BND = Encoder(
        self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate,
        self.attention_dropout_rate, self.dtype, self.param_dtype,
        self.scan_layers, self.remat_policy, self.attention,
        name='Transformer')(
            x_BND, train=train, capture_attention=tuple(capture_attention),
            capture_block_outputs=capture_block_outputs,
            class_token_only=self.classifier == 'token')

    if self.classifier == 'token':
      x = x_BND[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x_BND, axis=1)
    else:  # 'unpooled', 'token_unpooled': every token goes through the head.
      x = x_BND

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   param_dtype=self.param_dtype,
                   dot_general=layers.dot_general(self.dtype),
                   name='pre_logits')(x)
      x = jnp.tanh(x)
    # Named apart from the 'pre_logits' layer: a sow may not reuse its scope.
    self.sow('intermediates', 'features', x)
    if not self.num_classes:
      return x
    return nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.head_bias_init),
        dot_general=layers.dot_general(self.dtype), name='head')(x)
