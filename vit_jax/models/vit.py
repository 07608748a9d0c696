"""Vision Transformer (Dosovitskiy et al., 2021), its R+ViT hybrids and the
options of its follow-ups.

The model assembles the blocks of `vit_blocks` (whose docstring gives the
numerics, parameter names and the shape letters of array names) after a
patch embedding, on a ResNet stem for hybrids.

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

Looking inside: pass `capture_attention=(layer, ...)` and/or
`capture_block_outputs=True` to `__call__` and apply with
`mutable=['intermediates']` (see `vit_jax.models.apply_with_intermediates`).
Without them the forward pass stores nothing.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import resnet
from vit_jax.models import rope as rope_lib
from vit_jax.models import stochastic_depth
from vit_jax.models import vit_block_variants
from vit_jax.models import vit_blocks
from vit_jax.models import vit_sublayers

Dtype = Any

CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled', 'map')
# Classifiers that prepend a learned class token at index 0.
TOKEN_CLASSIFIERS = ('token', 'token_unpooled')
POSEMB_KINDS = ('learned', 'sincos2d', 'none')
# The `layer_scale_init` of a model built to load LayerScale weights (read
# off a file, ours or timm's): the loaded scales replace it, so any value
# builds the same tree.
LOADED_LAYER_SCALE_INIT = 1.0


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
    remat_policy: one of vit_blocks.REMAT_POLICIES: recompute activations
      in the backward pass instead of storing them.
    attention: vit_sublayers.MultiHeadAttention's `implementation` ('auto',
      'fused' or 'einsum').
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
    activation: the MLPs' nonlinearity, one of vit_sublayers.ACTIVATIONS
      (of the gate, with `mlp_gated`).
    rope: None, or rotary position embeddings of the patch tokens in every
      attention layer, one of rope.KINDS ('axial': EVA-02's and the
      `_rope_` ViTs'; 'dinov3'; 'mixed': learned per-layer frequencies
      `rope_freqs`). `vit_jax.models.rope` gives the papers and numerics;
      the `rope_*` fields below are its settings (`rope_ref_grid`: the
      (rows, cols) 'axial' positions are rescaled onto, or None).
    attention_norm: a LayerNorm on each attention output before its `out`
      projection (`MultiHeadDotProductAttention_0/LayerNorm_0`).
    mlp_gated: gated MLPs, activation(Dense_0(x)) * Dense_value(x) (SwiGLU
      with activation 'silu'; Shazeer 2020, arXiv:2002.05202).
    mlp_norm: a LayerNorm on the MLPs' hidden units (`MlpBlock_0/LayerNorm_0`).
    map_num_heads, map_mlp_dim: the MAP head's attention heads and MLP
      width, when they differ from the blocks' (Perception Encoder's pool).
    resnet_norm_epsilon: a hybrid's GroupNorm epsilon (1e-6 released; timm's
      port of the hybrids 1e-5).
    resnet_variance_epsilon: None standardises a hybrid's kernels as
      released, (w - mean) / (std + 1e-5); a value e as timm's port does,
      (w - mean) / sqrt(var + e) (timm: 1e-8). See `resnet`.
    extra_class_token: a class token `extra_cls` (1, 1, D) before the other
      prefix tokens that the 'gap' / 'map' / 'unpooled' classifier does not
      read (timm's class_token beside global_pool 'avg': BEiT-3, EVA).
    pool_include_prefix: whether 'gap' averages and 'map' attends to the
      prefix tokens too (timm's pool_include_prefix); None: 'gap' leaves
      them out, 'map' reads them (big_vision's).
    final_norm: False drops the final norm (neither
      `Transformer/encoder_norm` nor `fc_norm`; timm's final_norm=False:
      RADIO, InternViT).
    norm_layer: one of vit_block_variants.NORM_LAYERS, every norm's kind:
      'layer_norm', or 'rms_norm' (scale only; AIMv2).
    embed_norm: a norm `embedding_norm` on the patch embeddings, before the
      position embedding (timm's embed_norm_layer).
    block: one of vit_block_variants.BLOCKS: 'pre_norm' (the paper's),
      'post_norm' (timm's ResPostBlock), 'parallel' (ViT-22B's attention and
      MLP side by side; timm's ParallelScalingBlock).
    differential_attention: the attention of the Differential Transformer
      (Ye et al. 2024; timm's attn_layer='diff'); needs scan_layers=False
      (its lambda depends on the block's depth).
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
  layer_norm_epsilon: float = vit_sublayers.LAYER_NORM_EPSILON
  activation: str = 'gelu_tanh'
  rope: Optional[str] = None
  rope_temperature: float = 10000.0
  rope_grid_indexing: str = 'ij'
  rope_grid_offset: float = 0.0
  rope_ref_grid: Optional[Sequence[int]] = None
  rope_rotate_half: bool = False
  attention_norm: bool = False
  mlp_gated: bool = False
  mlp_norm: bool = False
  map_num_heads: Optional[int] = None
  map_mlp_dim: Optional[int] = None
  resnet_norm_epsilon: float = resnet.NORM_EPSILON
  resnet_variance_epsilon: Optional[float] = None
  extra_class_token: bool = False
  pool_include_prefix: Optional[bool] = None
  final_norm: bool = True
  norm_layer: str = 'layer_norm'
  embed_norm: bool = False
  block: str = 'pre_norm'
  differential_attention: bool = False

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: class, distillation and register tokens."""
    return (int(self.classifier in TOKEN_CLASSIFIERS) + int(self.distillation)
            + self.num_register_tokens + int(self.extra_class_token))

  def check_options(self) -> None:
    """Raises ValueError naming the field of an unknown or bad option."""
    vit_sublayers.check_choice('classifier', self.classifier, CLASSIFIERS)
    vit_sublayers.check_choice('posemb', self.posemb, POSEMB_KINDS)
    vit_sublayers.check_choice('activation', self.activation,
                               tuple(vit_sublayers.ACTIVATIONS))
    stochastic_depth.check_rate(self.drop_path_rate)
    if int(self.num_register_tokens) != self.num_register_tokens or (
        self.num_register_tokens < 0):
      raise ValueError(f'num_register_tokens must be an integer >= 0, got '
                       f'{self.num_register_tokens}')
    if self.distillation and self.classifier != 'token':
      raise ValueError(f'distillation=True needs classifier \'token\', got '
                       f'{self.classifier!r}')
    if self.rope is not None:
      vit_sublayers.check_choice('rope', self.rope, rope_lib.KINDS)
      vit_sublayers.check_choice('rope_grid_indexing',
                                 self.rope_grid_indexing,
                                 rope_lib.GRID_INDEXINGS)
    self._check_variant_options()
    if not self.layer_norm_epsilon > 0:
      raise ValueError(f'layer_norm_epsilon must be > 0, got '
                       f'{self.layer_norm_epsilon}')

  def _check_variant_options(self) -> None:
    vit_sublayers.check_choice('norm_layer', self.norm_layer,
                               vit_block_variants.NORM_LAYERS)
    vit_sublayers.check_choice('block', self.block,
                               tuple(vit_block_variants.BLOCKS))
    if self.extra_class_token and self.classifier in TOKEN_CLASSIFIERS:
      raise ValueError(f'extra_class_token=True needs a classifier without '
                       f'a class token, got {self.classifier!r}')
    if self.fc_norm and not self.final_norm:
      raise ValueError('fc_norm=True needs final_norm=True (fc_norm is the '
                       'final norm, after pooling)')
    if self.differential_attention and self.scan_layers:
      raise ValueError('differential_attention=True needs scan_layers=False '
                       "(each block's lambda depends on its depth)")

  def _norm(self, name: str) -> nn.Module:
    return vit_block_variants.norm_layer(self.norm_layer, name,
                                         self.param_dtype,
                                         self.layer_norm_epsilon)

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
      x = resnet.resnet_stem(
          x, self.resnet_units, dtype=self.dtype, param_dtype=self.param_dtype,
          norm_epsilon=self.resnet_norm_epsilon,
          variance_epsilon=self.resnet_variance_epsilon)
    x = nn.Conv(self.hidden_size, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding='VALID',
                dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=layers.conv_general_dilated(self.dtype),
                name='embedding')(x)
    batch, rows, cols, hidden = x.shape
    x_BND = jnp.reshape(x, (batch, rows * cols, hidden))  # row-major patches
    if self.embed_norm:
      x_BND = self._norm('embedding_norm')(x_BND)
    x_BND = self._prepend_prefix_tokens(x_BND)

    # The 'token' head reads the class (and distillation) token only.
    head_tokens = (1 + int(self.distillation) if self.classifier == 'token'
                   else None)
    x_BND = vit_blocks.Encoder(
        self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate,
        self.attention_dropout_rate, self.dtype, self.param_dtype,
        self.scan_layers, self.remat_policy, self.attention,
        qkv_bias=self.qkv_bias, activation=self.activation,
        layer_norm_epsilon=self.layer_norm_epsilon,
        layer_scale_init=self.layer_scale_init,
        drop_path_rate=self.drop_path_rate, posemb=self.posemb,
        posemb_covers_prefix=self.posemb_covers_prefix,
        pre_norm=self.pre_norm,
        final_norm=self.final_norm and not self.fc_norm,
        rope=self._rope(), attention_norm=self.attention_norm,
        mlp_gated=self.mlp_gated, mlp_norm=self.mlp_norm,
        norm_layer=self.norm_layer, block=self.block,
        differential_attention=self.differential_attention,
        name='Transformer')(
            x_BND, train=train, grid=(rows, cols),
            num_prefix_tokens=self.num_prefix_tokens,
            capture_attention=tuple(capture_attention),
            capture_block_outputs=capture_block_outputs,
            head_tokens=head_tokens)

    x = self._pool(x_BND)
    if self.fc_norm:
      x = self._norm('fc_norm')(x)
    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   param_dtype=self.param_dtype,
                   dot_general=layers.dot_general(self.dtype),
                   name='pre_logits')(x)
      x = jnp.tanh(x)
    return self._head(x)

  def _rope(self) -> Optional[rope_lib.Rope]:
    if self.rope is None:
      return None
    return rope_lib.Rope(
        self.rope, float(self.rope_temperature), self.rope_grid_indexing,
        float(self.rope_grid_offset),
        None if self.rope_ref_grid is None else tuple(self.rope_ref_grid),
        bool(self.rope_rotate_half))

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
    if self.extra_class_token:
      prefix.append(self._prefix_token('extra_cls', 1, nn.initializers.zeros,
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
      start = 0 if self.pool_include_prefix else self.num_prefix_tokens
      return jnp.mean(x_BND[:, start:], axis=1)
    if self.classifier == 'map':
      if self.pool_include_prefix is False:
        x_BND = x_BND[:, self.num_prefix_tokens:]
      return vit_blocks.MAPHead(
          self.map_num_heads or self.num_heads,
          self.map_mlp_dim or self.mlp_dim, self.dtype, self.param_dtype,
          self.attention, self.activation, self.layer_norm_epsilon,
          self.norm_layer, name='MAPHead_0')(x_BND)
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
