"""The ViT's building blocks: encoder block, encoder, MAP head.

Numerics and module names follow the released checkpoints: pre-LN blocks,
LayerNorm epsilon 1e-6, tanh-GELU, query scaled by 1/sqrt(head_dim). Parameter
names are the ones newer Flax code writes (`LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0` inside each
`encoderblock_{i}`); `vit_layout` maps the older global numbering. The
sublayers (attention, MLP, LayerScale) live in `vit_sublayers`, timm's block
variants in `vit_block_variants`; the model that assembles the blocks is
`vit.VisionTransformer`.

Shape letters in array names: B batch, H/W image height/width, N tokens, D
token width, M MLP width, Q query tokens, K key tokens, A attention heads,
E width per head, C classes, P prefix tokens. (x_BND is a (batch, tokens,
width) array.)
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import posemb
from vit_jax.models import rope as rope_lib
from vit_jax.models import stochastic_depth
from vit_jax.models import vit_block_variants
from vit_jax.models import vit_sublayers

Dtype = Any

# Logical names of the (B, N, D) activation axes, for sharding rules.
ACTIVATION_AXES = ('batch', 'tokens', 'embed')


class EncoderBlock(nn.Module):
  """Pre-LN block: x + Drop(MHA(LN(x))), then x + MLP(LN(x)).

  With the options, each branch is y -> LayerScale(y) -> DropPath(y) before
  it is added (timm's order). `train` and `capture_attention` are
  attributes, not call arguments, so nn.remat and nn.scan see a block of
  one array argument (plus the scanned drop-path rate).
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
  # Only the first `query_tokens` outputs are wanted (the last block under
  # the 'token' classifier: the class token, and the distillation token):
  # their queries, attention output and MLP run on those tokens alone (7%
  # of ViT-B/16's FLOPs saved) and the block returns (B, query_tokens, D).
  # Keys and values still come from every token. None: every token.
  query_tokens: Optional[int] = None
  qkv_bias: bool = True
  activation: str = 'gelu_tanh'
  layer_norm_epsilon: float = vit_sublayers.LAYER_NORM_EPSILON
  layer_scale_init: Optional[float] = None
  drop_path_rate: float = 0.0
  # Options of timm's Eva blocks (see vit_sublayers' MultiHeadAttention and
  # MlpBlock).
  rope: Optional[rope_lib.Rope] = None
  rope_grid: Tuple[int, int] = (0, 0)
  num_prefix_tokens: int = 0
  attention_norm: bool = False
  mlp_gated: bool = False
  mlp_norm: bool = False
  # timm's block variants (vit_block_variants; see vit.VisionTransformer).
  norm_layer: str = 'layer_norm'
  block: str = 'pre_norm'
  differential_attention: bool = False
  layer_index: int = 0  # Differential attention's lambda depends on it.

  @nn.compact
  def __call__(self, x_BND, drop_path_rate=None):
    """`drop_path_rate` (a scanned per-layer scalar) overrides the field."""
    train = self.train
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    # A no-op unless the caller maps logical axes to a mesh (vit_jax.sharding).
    x_BND = nn.with_logical_constraint(x_BND, ACTIVATION_AXES)
    if self.block != 'pre_norm' or self.differential_attention:
      return vit_block_variants.BLOCKS[self.block](self, x_BND, rate)
    y = self._norm('LayerNorm_0')(x_BND)
    y = self._attention_layer()(
        y, train=train, capture_weights=self.capture_attention,
        num_queries=self.query_tokens)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x_BND = x_BND[:, :self.query_tokens] + self._branch(y, 0, rate)
    y = self._norm('LayerNorm_1')(x_BND)
    y = self._mlp_layer()(y, train=train)
    return x_BND + self._branch(y, 1, rate)

  def _norm(self, name: str) -> nn.Module:
    return vit_block_variants.norm_layer(self.norm_layer, name,
                                         self.param_dtype,
                                         self.layer_norm_epsilon)

  def _attention_layer(self) -> nn.Module:
    """The attention sublayer (differential, with RoPE or an inner norm, as
    the options say)."""
    if self.differential_attention:
      return vit_block_variants.DifferentialAttention(
          self.num_heads, self.attention_dropout_rate, self.dtype,
          self.param_dtype, self.qkv_bias, self.layer_index,
          name='MultiHeadDotProductAttention_0')
    return vit_sublayers.MultiHeadAttention(
        self.num_heads, self.attention_dropout_rate, self.dtype,
        self.param_dtype, self.attention, self.qkv_bias, rope=self.rope,
        rope_grid=self.rope_grid, num_prefix_tokens=self.num_prefix_tokens,
        inner_norm=self.attention_norm,
        layer_norm_epsilon=self.layer_norm_epsilon,
        name='MultiHeadDotProductAttention_0')

  def _mlp_layer(self) -> nn.Module:
    """The MLP sublayer (gated, with an inner norm, as the options say)."""
    return vit_sublayers.MlpBlock(
        self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
        self.activation, gated=self.mlp_gated, inner_norm=self.mlp_norm,
        layer_norm_epsilon=self.layer_norm_epsilon, name='MlpBlock_0')

  def _branch(self, y, index: int, rate):
    """A residual branch's output as it is added: scaled, maybe dropped."""
    if self.layer_scale_init is not None:
      y = vit_sublayers.LayerScale(self.layer_scale_init, self.param_dtype,
                                   name=f'LayerScale_{index}')(y)
    return stochastic_depth.drop_path(self, y, rate, self.train)


class ScanStepBlock(EncoderBlock):
  """EncoderBlock as an nn.scan body: (x, rate) -> (block(x), None); `rate`
  is the layer's drop-path rate, or None without stochastic depth."""

  def __call__(self, x_BND, rate):  # pytype: disable=signature-mismatch
    return super().__call__(x_BND, rate), None


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
  """Adds the position embedding of `kind` (see vit.VisionTransformer.posemb).

  'learned': a (1, N, D) `pos_embedding` over every token, class included,
  or, with `covers_prefix=False`, a (1, rows*cols, D) one over the patch
  tokens only. 'sincos2d': the fixed `posemb.sincos_2d` of the patch grid;
  prefix tokens get none. 'none': nothing.
  """
  kind: str = 'learned'
  covers_prefix: bool = True
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BND, *, grid: Tuple[int, int], num_prefix_tokens: int):
    if self.kind == 'none':
      return x_BND
    covered = self.kind == 'learned' and self.covers_prefix
    skip = 0 if covered else num_prefix_tokens  # Tokens left without one.
    if self.kind == 'learned':
      pos_embedding_1ND = self.param(
          'pos_embedding', nn.initializers.normal(stddev=0.02),
          (1, x_BND.shape[1] - skip, x_BND.shape[2]), self.param_dtype)
    else:
      pos_embedding_1ND = posemb.sincos_2d(grid, x_BND.shape[2])
    pos_embedding_1ND = pos_embedding_1ND.astype(x_BND.dtype)
    if not skip:
      return x_BND + pos_embedding_1ND
    return jnp.concatenate(
        [x_BND[:, :skip], x_BND[:, skip:] + pos_embedding_1ND], axis=1)


class Encoder(nn.Module):
  """Position embedding, dropout, [pre_norm], `num_layers` blocks, final
  LayerNorm (none with `final_norm=False`: the model's fc_norm).

  With `scan_layers` the blocks are one nn.scan over a block whose params
  carry a leading layer axis (`encoderblock`, compiled once); otherwise they
  are `encoderblock_{i}`. `vit_layout` converts between the two, and
  the released `.npz` layout is always per block. The scanned encoder gets
  each layer's drop-path rate as its scanned input.
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
  qkv_bias: bool = True
  activation: str = 'gelu_tanh'
  layer_norm_epsilon: float = vit_sublayers.LAYER_NORM_EPSILON
  layer_scale_init: Optional[float] = None
  drop_path_rate: float = 0.0
  posemb: str = 'learned'
  posemb_covers_prefix: bool = True
  pre_norm: bool = False
  final_norm: bool = True
  rope: Optional[rope_lib.Rope] = None
  attention_norm: bool = False
  mlp_gated: bool = False
  mlp_norm: bool = False
  norm_layer: str = 'layer_norm'
  block: str = 'pre_norm'
  differential_attention: bool = False

  @nn.compact
  def __call__(self, x_BND, *, train: bool, grid: Tuple[int, int] = (0, 0),
               num_prefix_tokens: int = 0,
               capture_attention: Sequence[int] = (),
               capture_block_outputs: bool = False,
               head_tokens: Optional[int] = None):
    """Encodes (B, N, D) tokens: `num_prefix_tokens` then a (rows, cols)
    `grid` of patches.

    `head_tokens`: the caller reads only the first `head_tokens` tokens.
    Unless the last block is looked at (its attention weights, the block
    outputs), the unrolled encoder then computes that block for those
    tokens alone and returns (B, head_tokens, D). The scanned one has one
    body for all blocks and returns every token.
    """
    if head_tokens and (capture_block_outputs
                        or self.num_layers - 1 in capture_attention):
      head_tokens = None
    x_BND = AddPositionEmbedding(self.posemb, self.posemb_covers_prefix,
                                 self.param_dtype, name='posembed_input')(
                                     x_BND, grid=grid,
                                     num_prefix_tokens=num_prefix_tokens)
    x_BND = nn.Dropout(self.dropout_rate)(x_BND, deterministic=not train)
    if self.pre_norm:
      x_BND = self._norm('pre_norm')(x_BND)
    block_kwargs = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype, train=train, attention=self.attention,
        qkv_bias=self.qkv_bias, activation=self.activation,
        layer_norm_epsilon=self.layer_norm_epsilon,
        layer_scale_init=self.layer_scale_init,
        attention_norm=self.attention_norm, mlp_gated=self.mlp_gated,
        mlp_norm=self.mlp_norm, norm_layer=self.norm_layer,
        block=self.block, differential_attention=self.differential_attention)
    if self.rope is not None:
      block_kwargs.update(rope=self.rope, rope_grid=tuple(grid),
                          num_prefix_tokens=num_prefix_tokens)
    rates = stochastic_depth.rates(self.drop_path_rate, self.num_layers)
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
      rates_L = (jnp.asarray(rates, jnp.float32) if self.drop_path_rate
                 else None)
      x_BND, _ = blocks(**block_kwargs, name='encoderblock')(x_BND, rates_L)
    else:
      block_class = _maybe_remat(EncoderBlock, self.remat_policy,
                                 prevent_cse=True)
      for layer in range(self.num_layers):
        last = layer == self.num_layers - 1
        x_BND = block_class(
            **block_kwargs, capture_attention=layer in capture_attention,
            query_tokens=head_tokens if last else None,
            drop_path_rate=rates[layer], layer_index=layer,
            name=f'encoderblock_{layer}')(x_BND)
        if capture_block_outputs:
          self.sow('intermediates', 'block_outputs', x_BND)
    if not self.final_norm:
      return x_BND
    return self._norm('encoder_norm')(x_BND)

  def _norm(self, name: str) -> nn.Module:
    return vit_block_variants.norm_layer(self.norm_layer, name,
                                         self.param_dtype,
                                         self.layer_norm_epsilon)


class MAPHead(nn.Module):
  """Multi-head attention pooling (Zhai et al. 2022, "Scaling Vision
  Transformers"; the pooling head of SigLIP, Zhai et al. 2023).

  A learned `probe` (1, 1, D) attends to every token; then y + MLP(LN(y)).
  Names and shapes as big_vision's MAPHead; q/k/v keep their biases.
  Returns (B, D).
  """
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = 'auto'
  activation: str = 'gelu_tanh'
  layer_norm_epsilon: float = vit_sublayers.LAYER_NORM_EPSILON
  norm_layer: str = 'layer_norm'

  @nn.compact
  def __call__(self, x_BND):
    batch, _, hidden = x_BND.shape
    probe_11D = self.param('probe', nn.initializers.xavier_uniform(),
                           (1, 1, hidden), self.param_dtype)
    probe_B1D = jnp.broadcast_to(probe_11D.astype(x_BND.dtype),
                                 (batch, 1, hidden))
    y_B1D = vit_sublayers.MultiHeadAttention(
        self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        implementation=self.attention, name='MultiHeadDotProductAttention_0')(
            x_BND, train=False, queries_BQD=probe_B1D)
    z_B1D = vit_block_variants.norm_layer(
        self.norm_layer, 'LayerNorm_0', self.param_dtype,
        self.layer_norm_epsilon)(y_B1D)
    y_B1D = y_B1D + vit_sublayers.MlpBlock(
        self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        activation=self.activation, name='MlpBlock_0')(z_B1D, train=False)
    return y_B1D[:, 0]

