"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for
Vision").

Module names and numerics follow the released checkpoints, so our parameter
tree is their `.npz` layout: a `stem` convolution (kernel = stride = patch,
with bias), `MixerBlock_{i}` each holding `LayerNorm_0`, `token_mixing`,
`LayerNorm_1` and `channel_mixing` (MLPs of `Dense_0` -> tanh-GELU ->
`Dense_1`), `pre_head_layer_norm`, global average pooling over the tokens and
a zero-initialised `head`. LayerNorm epsilon is 1e-6. The released models
have no dropout, class token or position embedding.

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

Dtype = Any

LAYER_NORM_EPSILON = 1e-6
# Logical names of the (B, N, C) activation axes, as in the ViT (sharding).
ACTIVATION_AXES = ('batch', 'tokens', 'embed')


def _layer_norm(name: str, param_dtype: Dtype) -> nn.LayerNorm:
  # Statistics in float32 whatever the compute dtype.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                      param_dtype=param_dtype, name=name)


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> tanh-GELU -> Dense(back to the input width), acting
  on the last axis. Flax's default initialisers, as released."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=layers.dot_general(self.dtype), name=name)
    y = dense(self.mlp_dim, 'Dense_0')(x)
    y = nn.gelu(y, approximate=True)
    return dense(x.shape[-1], 'Dense_1')(y)


class MixerBlock(nn.Module):
  """x + TokenMLP(LN(x) over tokens), then x + ChannelMLP(LN(x)).

  The token-mixing MLP runs on the transposed (B, C, N) array, so its
  `Dense_0` kernel is (N, T): its shape fixes the number of tokens.
  """
  tokens_mlp_dim: int
  channels_mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BNC):
    # A no-op unless the caller maps logical axes to a mesh (vit_jax.sharding).
    x_BNC = nn.with_logical_constraint(x_BNC, ACTIVATION_AXES)
    y_BNC = _layer_norm('LayerNorm_0', self.param_dtype)(x_BNC)
    y_BCN = MlpBlock(self.tokens_mlp_dim, self.dtype, self.param_dtype,
                     name='token_mixing')(jnp.swapaxes(y_BNC, 1, 2))
    x_BNC = x_BNC + jnp.swapaxes(y_BCN, 1, 2)
    y_BNC = _layer_norm('LayerNorm_1', self.param_dtype)(x_BNC)
    y_BNC = MlpBlock(self.channels_mlp_dim, self.dtype, self.param_dtype,
                     name='channel_mixing')(y_BNC)
    return x_BNC + y_BNC


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
    head_bias_init: constant init of the head bias (e.g. negative for
      sigmoid pre-training; 0 for fine-tuning).
    dtype: operand dtype of matmuls and the convolution.
    param_dtype: parameter storage dtype.
  """
  num_classes: Optional[int]
  patch_size: Sequence[int]
  hidden_size: int
  num_layers: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  head_bias_init: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False,
               capture_block_outputs: bool = False):
    """Classifies images in [-1, 1].

    Args:
      images_BHWC: float images, NHWC, normalised to [-1, 1].
      train: accepted for the common training interface; the model has no
        dropout, so it computes the same in training and evaluation.
      capture_block_outputs: sow every block's output (B, N, C) into
        'intermediates' as 'block_outputs'.

    Returns:
      Logits (B, num_classes), or the pooled features (B, C) when
      num_classes is 0/None. The features are always sown as 'features'.
    """
    del train
    x = nn.Conv(self.hidden_size, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding='VALID',
                dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=layers.conv_general_dilated(self.dtype),
                name='stem')(images_BHWC)
    batch, rows, cols, channels = x.shape
    x_BNC = jnp.reshape(x, (batch, rows * cols, channels))  # Row-major.
    for layer in range(self.num_layers):
      x_BNC = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim,
                         self.dtype, self.param_dtype,
                         name=f'MixerBlock_{layer}')(x_BNC)
      if capture_block_outputs:
        self.sow('intermediates', 'block_outputs', x_BNC)
    x_BNC = _layer_norm('pre_head_layer_norm', self.param_dtype)(x_BNC)
    features_BC = jnp.mean(x_BNC, axis=1)
    self.sow('intermediates', 'features', features_BC)
    if not self.num_classes:
      return features_BC
    return nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(self.head_bias_init),
        dot_general=layers.dot_general(self.dtype), name='head')(features_BC)
