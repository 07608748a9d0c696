"""Vision Transformer (Dosovitskiy et al., 2021), its R+ViT hybrids and the
options of its follow-ups.

Numerics and module names follow the released checkpoints: pre-LN blocks,
LayerNorm epsilon 1e-6, tanh-GELU, query scaled by 1/sqrt(head_dim). Parameter
names are the ones newer Flax code writes (`LayerNorm_0`,
`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0` inside each
`encoderblock_{i}`); `vit_family` maps the older global numbering.

Options (fields of `VisionTransformer`, documented there with their papers)
are all off by default: the default model is the released one, parameter
for parameter and logit for logit. The parameters they add: `reg_token`
(1, R, D) and `dist_token` (1, 1, D) (token order: [cls] [dist] [registers]
patches), `head_dist`, `LayerScale_0/scale` and `LayerScale_1/scale` (D,)
in every block, `Transformer/pre_norm`, `fc_norm` (which replaces
`Transformer/encoder_norm`) and `MAPHead_0` (`probe`,
`MultiHeadDotProductAttention_0`, `LayerNorm_0`, `MlpBlock_0`: big_vision's
names). `qkv_bias=False` drops the q/k/v biases; posemb 'sincos2d' or
'none' drops `pos_embedding`, which `posemb_covers_prefix=False` shortens to
the patch tokens.

Shape letters in array names: B batch, H/W image height/width, N tokens, D
token width, M MLP width, Q query tokens, K key tokens, A attention heads,
E width per head, C classes, P prefix tokens. (x_BND is a (batch, tokens,
width) array.)

Looking inside: pass `capture_attention=(layer, ...)` and/or
`capture_block_outputs=True` to `__call__` and apply with
`mutable=['intermediates']` (see `vit_jax.models.apply_with_intermediates`).
Without them the forward pass stores nothing.
"""

from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import posemb
from vit_jax.models import resnet
from vit_jax.models import stochastic_depth

Dtype = Any

LAYER_NORM_EPSILON = 1e-6
CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled', 'map')
# Logical names of the (B, N, D) activation axes, for sharding rules.
ACTIVATION_AXES = ('batch', 'tokens', 'embed')
# MultiHeadAttention's `implementation` (config.model.attention).
ATTENTION_IMPLEMENTATIONS = ('auto', 'fused', 'einsum')
# Classifiers that prepend a learned class token at index 0.
TOKEN_CLASSIFIERS = ('token', 'token_unpooled')
POSEMB_KINDS = ('learned', 'sincos2d', 'none')
# The `layer_scale_init` of a model built to load LayerScale weights (read
# off a file, ours or timm's): the loaded scales replace it, so any value
# builds the same tree.
LOADED_LAYER_SCALE_INIT = 1.0
# The MLP's nonlinearity. The released models use the tanh approximation of
# GELU (Hendrycks and Gimpel 2016); timm's ports the exact (erf) one; OpenAI's
# CLIP (Radford et al. 2021) the sigmoid approximation x * sigmoid(1.702 x).
ACTIVATIONS = {
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
    'gelu_erf': lambda x: nn.gelu(x, approximate=False),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
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
  # Statistics and output in float32 whatever the compute dtype (see layers).
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
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str = 'auto'
  qkv_bias: bool = True

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
  """Dense -> activation (tanh-GELU) -> dropout -> Dense -> dropout."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  activation: str = 'gelu_tanh'

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_xavier, bias_init=nn.initializers.normal(stddev=1e-6),
        dot_general=layers.dot_general(self.dtype), name=name)
    y = dense(self.mlp_dim, 'Dense_0')(x)
    y = activation_fn(self.activation)(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
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
  layer_norm_epsilon: float = LAYER_NORM_EPSILON
  layer_scale_init: Optional[float] = None
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x_BND, drop_path_rate=None):
    """`drop_path_rate` (a scanned per-layer scalar) overrides the field."""
    train = self.train
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    # A no-op unless the caller maps logical axes to a mesh (vit_jax.sharding).
    x_BND = nn.with_logical_constraint(x_BND, ACTIVATION_AXES)
    y = self._norm('LayerNorm_0')(x_BND)
    y = MultiHeadAttention(
        self.num_heads, self.attention_dropout_rate, self.dtype,
        self.param_dtype, self.attention, self.qkv_bias,
        name='MultiHeadDotProductAttention_0')(
            y, train=train, capture_weights=self.capture_attention,
            num_queries=self.query_tokens)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x_BND = x_BND[:, :self.query_tokens] + self._branch(y, 0, rate)
    y = self._norm('LayerNorm_1')(x_BND)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                 self.activation, name='MlpBlock_0')(y, train=train)
    return x_BND + self._branch(y, 1, rate)

  def _norm(self, name: str) -> nn.LayerNorm:
    return layer_norm(name, self.param_dtype, self.layer_norm_epsilon)

  def _branch(self, y, index: int, rate):
    """A residual branch's output as it is added: scaled, maybe dropped."""
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, self.param_dtype,
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
  """Adds the position embedding of `kind` (see VisionTransformer.posemb).

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
  are `encoderblock_{i}`. `vit_family` converts between the two, and
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
  layer_norm_epsilon: float = LAYER_NORM_EPSILON
  layer_scale_init: Optional[float] = None
  drop_path_rate: float = 0.0
  posemb: str = 'learned'
  posemb_covers_prefix: bool = True
  pre_norm: bool = False
  final_norm: bool = True

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
        layer_scale_init=self.layer_scale_init)
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
            drop_path_rate=rates[layer], name=f'encoderblock_{layer}')(x_BND)
        if capture_block_outputs:
          self.sow('intermediates', 'block_outputs', x_BND)
    if not self.final_norm:
      return x_BND
    return self._norm('encoder_norm')(x_BND)

  def _norm(self, name: str) -> nn.LayerNorm:
    return layer_norm(name, self.param_dtype, self.layer_norm_epsilon)


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
  layer_norm_epsilon: float = LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, x_BND):
    batch, _, hidden = x_BND.shape
    probe_11D = self.param('probe', _xavier, (1, 1, hidden), self.param_dtype)
    probe_B1D = jnp.broadcast_to(probe_11D.astype(x_BND.dtype),
                                 (batch, 1, hidden))
    y_B1D = MultiHeadAttention(
        self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        implementation=self.attention, name='MultiHeadDotProductAttention_0')(
            x_BND, train=False, queries_BQD=probe_B1D)
    z_B1D = layer_norm('LayerNorm_0', self.param_dtype,
                       self.layer_norm_epsilon)(y_B1D)
    y_B1D = y_B1D + MlpBlock(
        self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        activation=self.activation, name='MlpBlock_0')(z_B1D, train=False)
    return y_B1D[:, 0]


class VisionTransformer(nn.Module):
  """ViT classifier; with `resnet_units` set, an R+ViT hybrid.

  Attributes:
    num_classes: classes of the `head`; 0 or None returns the features
      (after `pre_logits` when `representation_size` is set).
    patch_size: (ph, pw) of the `embedding` conv, on the stem output for
      hybrids.
    classifier: one of CLASSIFIERS. 'token': the class token; 'gap': the
      mean of the patch tokens (prefix tokens left out); 'map': attention
      pooling (MAPHead); 'unpooled', 'token_unpooled': every token, prefix
      tokens included.
    representation_size: width of the tanh `pre_logits` layer, or None.
      (CLIP's projection needs no switch: it is a `head` whose bias is 0.)
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
    drop_path_rate: stochastic depth (Huang et al. 2016, "Deep Networks
      with Stochastic Depth"): in training each example's attention and MLP
      branch is dropped with a rate growing linearly from 0 at the first
      block to this at the last (`stochastic_depth.rates`), and scaled by
      1 / (1 - rate) when kept; evaluation is unaffected. Uses the
      'dropout' rng. In [0, 1).
    posemb: one of POSEMB_KINDS. 'learned' (the released models);
      'sincos2d': the fixed 2-D sin-cos embedding of the patch grid at any
      resolution (`posemb.sincos_2d`; Beyer et al. 2022, "Better plain ViT
      baselines for ImageNet-1k", who pool with 'gap'); prefix tokens get no
      position embedding; 'none'.
    posemb_covers_prefix: whether a learned embedding covers the prefix
      tokens too (the released models). False: it covers the patch tokens
      only, and the prefix tokens are prepended without one (timm's
      `no_embed_class`: DeiT-III, DINOv2).
    num_register_tokens: learned tokens `reg_token` (1, R, D) after the
      class (and distillation) token, read by no head (Darcet et al. 2024,
      "Vision Transformers Need Registers").
    distillation: a `dist_token` after the class token and a second head
      `head_dist` on it (Touvron et al. 2021, "Training data-efficient
      image transformers & distillation through attention"); the output is
      the mean of the two heads' logits (their features when there is no
      head). Needs classifier 'token'. Both heads' logits are sown as
      'head_logits' / 'head_dist_logits' for a distillation loss.
    layer_scale_init: None, or the initial value of the LayerScale `scale`
      (D,) multiplying each block's attention and MLP branch (Touvron et al.
      2021, "Going deeper with image transformers" (CaiT)).
    pre_norm: a LayerNorm `Transformer/pre_norm` before the blocks (CLIP,
      Radford et al. 2021; timm's `norm_pre`).
    fc_norm: the final LayerNorm after pooling (`fc_norm`) instead of
      `Transformer/encoder_norm` on every token (timm's `fc_norm`, used by
      its average-pooling models; He et al. 2022, MAE).
    qkv_bias: False drops the query, key and value biases.
    layer_norm_epsilon: of every LayerNorm (1e-6 released; CLIP 1e-5).
    activation: the MLPs' nonlinearity, one of ACTIVATIONS.
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
  drop_path_rate: float = 0.0
  posemb: str = 'learned'
  posemb_covers_prefix: bool = True
  num_register_tokens: int = 0
  distillation: bool = False
  layer_scale_init: Optional[float] = None
  pre_norm: bool = False
  fc_norm: bool = False
  qkv_bias: bool = True
  layer_norm_epsilon: float = LAYER_NORM_EPSILON
  activation: str = 'gelu_tanh'

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: class, distillation and register tokens."""
    return (int(self.classifier in TOKEN_CLASSIFIERS) + int(self.distillation)
            + self.num_register_tokens)

  def check_options(self) -> None:
    """Raises ValueError naming the field of an unknown or bad option."""
    check_choice('classifier', self.classifier, CLASSIFIERS)
    check_choice('posemb', self.posemb, POSEMB_KINDS)
    check_choice('activation', self.activation, tuple(ACTIVATIONS))
    stochastic_depth.check_rate(self.drop_path_rate)
    if int(self.num_register_tokens) != self.num_register_tokens or (
        self.num_register_tokens < 0):
      raise ValueError(f'num_register_tokens must be an integer >= 0, got '
                       f'{self.num_register_tokens}')
    if self.distillation and self.classifier != 'token':
      raise ValueError(f'distillation=True needs classifier \'token\', got '
                       f'{self.classifier!r}')
    if not self.layer_norm_epsilon > 0:
      raise ValueError(f'layer_norm_epsilon must be > 0, got '
                       f'{self.layer_norm_epsilon}')

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False,
               capture_attention: Sequence[int] = (),
               capture_block_outputs: bool = False):
    """Classifies images in [-1, 1].

    Args:
      images_BHWC: float images, NHWC, values in [-1, 1].
      train: enables dropout and stochastic depth (needs a 'dropout' rng).
      capture_attention: layer indices whose attention weights
        (B, heads, tokens, tokens) are sown into 'intermediates'.
      capture_block_outputs: sow every block's output (B, tokens, D).

    Returns:
      Logits (B, num_classes), (B, N, num_classes) for the unpooled
      classifiers, or the features when num_classes is 0/None.
    """
    self.check_options()
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
    x_BND = self._prepend_prefix_tokens(x_BND)

    # The 'token' head reads the class (and distillation) token only.
    head_tokens = (1 + int(self.distillation) if self.classifier == 'token'
                   else None)
    x_BND = Encoder(
        self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate,
        self.attention_dropout_rate, self.dtype, self.param_dtype,
        self.scan_layers, self.remat_policy, self.attention,
        qkv_bias=self.qkv_bias, activation=self.activation,
        layer_norm_epsilon=self.layer_norm_epsilon,
        layer_scale_init=self.layer_scale_init,
        drop_path_rate=self.drop_path_rate, posemb=self.posemb,
        posemb_covers_prefix=self.posemb_covers_prefix,
        pre_norm=self.pre_norm, final_norm=not self.fc_norm,
        name='Transformer')(
            x_BND, train=train, grid=(rows, cols),
            num_prefix_tokens=self.num_prefix_tokens,
            capture_attention=tuple(capture_attention),
            capture_block_outputs=capture_block_outputs,
            head_tokens=head_tokens)

    x = self._pool(x_BND)
    if self.fc_norm:
      x = layer_norm('fc_norm', self.param_dtype, self.layer_norm_epsilon)(x)
    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   param_dtype=self.param_dtype,
                   dot_general=layers.dot_general(self.dtype),
                   name='pre_logits')(x)
      x = jnp.tanh(x)
    return self._head(x)

  def _prefix_token(self, name: str, count: int, init, x_BND):
    token_1PD = self.param(name, init, (1, count, x_BND.shape[-1]),
                           self.param_dtype)
    return jnp.broadcast_to(token_1PD.astype(x_BND.dtype),
                            (x_BND.shape[0], count, x_BND.shape[-1]))

  def _prepend_prefix_tokens(self, x_BND):
    """[cls] [dist] [registers] patches."""
    prefix = []
    if self.classifier in TOKEN_CLASSIFIERS:
      prefix.append(self._prefix_token('cls', 1, nn.initializers.zeros,
                                       x_BND))
    if self.distillation:
      # Not zero like `cls`: two zero tokens would start out identical.
      prefix.append(self._prefix_token(
          'dist_token', 1, nn.initializers.normal(stddev=0.02), x_BND))
    if self.num_register_tokens:
      # Small random values (DINOv2's 1e-6) tell the registers apart.
      prefix.append(self._prefix_token(
          'reg_token', self.num_register_tokens,
          nn.initializers.normal(stddev=1e-6), x_BND))
    if not prefix:
      return x_BND
    return jnp.concatenate([*prefix, x_BND], axis=1)

  def _pool(self, x_BND):
    """The head's input: (B, D), (B, 2, D) for the distilled 'token' head
    (class and distillation token), (B, N, D) for the unpooled ones."""
    if self.classifier == 'token':
      return x_BND[:, 0] if not self.distillation else x_BND[:, :2]
    if self.classifier == 'gap':
      return jnp.mean(x_BND[:, self.num_prefix_tokens:], axis=1)
    if self.classifier == 'map':
      return MAPHead(self.num_heads, self.mlp_dim, self.dtype,
                     self.param_dtype, self.attention, self.activation,
                     self.layer_norm_epsilon, name='MAPHead_0')(x_BND)
    return x_BND  # 'unpooled', 'token_unpooled': every token.

  def _dense_head(self, name: str):
    return nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.head_bias_init),
        dot_general=layers.dot_general(self.dtype), name=name)

  def _head(self, x):
    features = x.mean(axis=1) if self.distillation else x
    # Named apart from the 'pre_logits' layer: a sow may not reuse its scope.
    self.sow('intermediates', 'features', features)
    if not self.num_classes:
      return features
    if not self.distillation:
      return self._dense_head('head')(x)
    logits_BC = self._dense_head('head')(x[:, 0])
    dist_logits_BC = self._dense_head('head_dist')(x[:, 1])
    self.sow('intermediates', 'head_logits', logits_BC)
    self.sow('intermediates', 'head_dist_logits', dist_logits_BC)
    return (logits_BC + dist_logits_BC) / 2
