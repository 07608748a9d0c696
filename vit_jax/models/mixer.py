"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for
Vision").

Module names and numerics follow the released checkpoints, so our parameter
tree is their `.npz` layout: a `stem` convolution (kernel = stride = patch,
with bias), `MixerBlock_{i}` each holding `LayerNorm_0`, `token_mixing`,
`LayerNorm_1` and `channel_mixing` (MLPs of `Dense_0` -> tanh-GELU ->
`Dense_1`; timm's port has the erf GELU, option `activation`),
`pre_head_layer_norm`, global average pooling over the tokens and a
zero-initialised `head`. LayerNorm epsilon is 1e-6. The released models
have no class token or position embedding, and train without dropout or
stochastic depth: both options are off by default (they add no parameters),
so the default model is the released one, logit for logit.

Mixed precision as in `vit_jax.models.layers`: `dtype` is the operand dtype of the
matmuls and the convolution, whose products come out in float32; LayerNorm,
GELU and the residual stream stay float32.

Shape letters: B batch, H/W image height/width, N tokens, C channels (the
hidden size), T tokens-MLP width, S channels-MLP width, K classes.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import stochastic_depth
from vit_jax.models import vit_sublayers

Dtype = Any

LAYER_NORM_EPSILON = 1e-6
# Logical names of the (B, N, C) activation axes, as in the ViT (sharding).
ACTIVATION_AXES = ('batch', 'tokens', 'embed')
# 'gap': the mean of the tokens (the released models); 'unpooled': every
# token (B, N, C), through the head when there is one (dense tasks).
CLASSIFIERS = ('gap', 'unpooled')


def _layer_norm(name: str, param_dtype: Dtype) -> nn.LayerNorm:
  # Statistics in float32 whatever the compute dtype.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name)


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(back to the input width), acting on the
  last axis, with dropout after the GELU and the output as in the ViT's MLP.
  Flax's default initialisers, as released; `activation` is one of
  vit_sublayers.ACTIVATIONS (released: tanh-GELU)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  activation: str = 'gelu_tanh'

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=layers.dot_general(self.dtype), name=name)
    y = dense(self.mlp_dim, 'Dense_0')(x)
    y = vit_sublayers.activation_fn(self.activation)(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class MixerBlock(nn.Module):
  """x + TokenMLP(LN(x) over tokens), then x + ChannelMLP(LN(x)); each
  branch goes through stochastic depth at `drop_path_rate`.

  The token-mixing MLP runs on the transposed (B, C, N) array, so its
  `Dense_0` kernel is (N, T): its shape fixes the number of tokens.
  """
  tokens_mlp_dim: int
  channels_mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  activation: str = 'gelu_tanh'

  @nn.compact
  def __call__(self, x_BNC, *, train: bool = False):
    mlp = lambda width, name: MlpBlock(
        width, self.dtype, self.param_dtype, self.dropout_rate,
        self.activation, name=name)
    branch = lambda y: stochastic_depth.drop_path(
        self, y, self.drop_path_rate, train)
    # A no-op unless the caller maps logical axes to a mesh (vit_jax.sharding).
    x_BNC = nn.with_logical_constraint(x_BNC, ACTIVATION_AXES)
    y_BNC = _layer_norm('LayerNorm_0', self.param_dtype)(x_BNC)
    y_BCN = mlp(self.tokens_mlp_dim, 'token_mixing')(
        jnp.swapaxes(y_BNC, 1, 2), train=train)
    x_BNC = x_BNC + branch(jnp.swapaxes(y_BCN, 1, 2))
    y_BNC = _layer_norm('LayerNorm_1', self.param_dtype)(x_BNC)
    y_BNC = mlp(self.channels_mlp_dim, 'channel_mixing')(y_BNC, train=train)
    return x_BNC + branch(y_BNC)


class MlpMixer(nn.Module):
  """MLP-Mixer classifier (or feature extractor).

  Attributes:
    num_classes: classes of the `head`; 0 or None returns the pooled
      features (B, C).
    patch_size: (ph, pw) of the `stem` convolution.
    hidden_size: channels C of every token.
    num_layers: number of MixerBlocks.
    tokens_mlp_dim: hidden width T of the token-mixing MLPs.
    channels_mlp_dim: hidden width S of the channel-mixing MLPs.
    classifier: one of CLASSIFIERS: 'gap' pools the tokens (released);
      'unpooled' keeps every token.
    head_bias_init: constant init of the head bias (e.g. negative for
      sigmoid pre-training; 0 for fine-tuning).
    dtype: operand dtype of matmuls and the convolution.
    param_dtype: parameter storage dtype.
    dropout_rate: dropout after the GELU and the output of every MLP, in
      training (uses the 'dropout' rng).
    drop_path_rate: stochastic depth of the token- and channel-mixing
      branches, growing linearly from 0 at the first block to this at the
      last, as the ViT's (`vit_jax.models.stochastic_depth`). In [0, 1).
    activation: the MLPs' nonlinearity, one of vit_sublayers.ACTIVATIONS:
      'gelu_tanh' (released), 'gelu_erf' (timm's port, torch's nn.GELU).
  """
  num_classes: Optional[int]
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  classifier: str = 'gap'
  head_bias_init: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  activation: str = 'gelu_tanh'

  def check_options(self) -> None:
    """Raises ValueError naming the field of an unknown or bad option."""
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'unknown classifier {self.classifier!r}; expected '
                       f'one of {CLASSIFIERS}')
    stochastic_depth.check_rate(self.drop_path_rate)
    vit_sublayers.check_choice('activation', self.activation,
                               tuple(vit_sublayers.ACTIVATIONS))

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False,
               capture_block_outputs: bool = False):
    """Classifies images in [-1, 1].

    Args:
      images_BHWC: float images, NHWC, normalised to [-1, 1].
      train: enables dropout and stochastic depth (needs a 'dropout' rng
        when either is on).
      capture_block_outputs: sow every block's output (B, N, C) into
        'intermediates' as 'block_outputs'.

    Returns:
      Logits (B, num_classes) ((B, N, num_classes) 'unpooled'), or the
      features (B, C) ((B, N, C)) when num_classes is 0/None. The features
      are always sown as 'features'.
    """
    self.check_options()
    x = nn.Conv(self.hidden_size, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding='VALID',
                dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=layers.conv_general_dilated(self.dtype),
                name='stem')(images_BHWC)
    batch, rows, cols, channels = x.shape
    x_BNC = jnp.reshape(x, (batch, rows * cols, channels))  # Row-major.
    rates = stochastic_depth.rates(self.drop_path_rate, self.num_layers)
    for layer in range(self.num_layers):
      x_BNC = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim,
                         self.dtype, self.param_dtype, self.dropout_rate,
                         rates[layer], self.activation,
                         name=f'MixerBlock_{layer}')(
                             x_BNC, train=train)
      if capture_block_outputs:
        self.sow('intermediates', 'block_outputs', x_BNC)
    x_BNC = _layer_norm('pre_head_layer_norm', self.param_dtype)(x_BNC)
    features = jnp.mean(x_BNC, axis=1) if self.classifier == 'gap' else x_BNC
    self.sow('intermediates', 'features', features)
    if not self.num_classes:
      return features
    return nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.head_bias_init),
        dot_general=layers.dot_general(self.dtype), name='head')(features)
