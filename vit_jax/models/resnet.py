"""The BiT-style ResNet stem of the R+ViT hybrids.

GroupNorm + weight-standardised convolutions, post-activation bottleneck units.
Module names reproduce the released hybrid checkpoints (`conv_root`, `gn_root`,
`block{s}/unit{u}/{conv1,conv2,conv3,conv_proj,gn1,gn2,gn3,gn_proj}`).

timm's port of the same network (`ResNetV2(preact=False, stem_type='same')`
with `StdConv2dSame(eps=1e-8)` in timm/models/vision_transformer_hybrid.py)
pads, pools and orders its layers as we do, but normalises differently:
GroupNorm epsilon 1e-5 (timm's GroupNormAct default) and kernels
standardised as (w - mean) / sqrt(var + 1e-8) (a batch norm over the
kernel). `norm_epsilon` and `variance_epsilon` reproduce it; their defaults
are the released numerics.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import layers
from vit_jax.models import max_pool

Dtype = Any

# GroupNorm as in the released hybrids: 32 groups, epsilon 1e-6.
_GROUPS = 32
NORM_EPSILON = 1e-6
# Added to the population std of the kernel, not inside the square root.
_STD_EPSILON = 1e-5


def standardize_kernel(kernel, variance_epsilon: Optional[float] = None):
  """Standardises a conv kernel (kh, kw, in, out) per output channel: divided
  by std + 1e-5 (released), or by sqrt(var + variance_epsilon) (timm)."""
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  if variance_epsilon is not None:
    return kernel * jax.lax.rsqrt(
        jnp.var(kernel, axis=(0, 1, 2), keepdims=True) + variance_epsilon)
  return kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + _STD_EPSILON)


class StdConv(nn.Module):
  """Bias-free convolution whose kernel is standardised at every call.

  Padding 'SAME' is TensorFlow's: the extra pad goes bottom/right.
  `variance_epsilon`: see `standardize_kernel` (None: released).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  variance_epsilon: Optional[float] = None

  @nn.compact
  def __call__(self, x):
    kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), kernel_shape,
                        self.param_dtype)
    # Standardise in float32 whatever the compute dtype: the statistics are
    # sensitive and the kernel is small.
    kernel = standardize_kernel(kernel.astype(jnp.float32),
                                self.variance_epsilon)
    return layers.conv(x, kernel, self.strides, 'SAME', self.dtype)


def group_norm(name, param_dtype, scale_init=nn.initializers.ones,
               epsilon=NORM_EPSILON):
  # Statistics and output in float32 whatever the compute dtype (see layers).
  return nn.GroupNorm(num_groups=_GROUPS, epsilon=epsilon, name=name,
                      dtype=jnp.float32, param_dtype=param_dtype,
                      scale_init=scale_init)


class BottleneckUnit(nn.Module):
  """Post-activation bottleneck: 1x1 -> 3x3 (strided) -> 1x1, 4x expansion.
  `norm_epsilon`, `variance_epsilon`: see the module docstring."""
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_epsilon: float = NORM_EPSILON
  variance_epsilon: Optional[float] = None

  @nn.compact
  def __call__(self, x):
    out_features = 4 * self.features
    needs_projection = (x.shape[-1] != out_features or
                        tuple(self.strides) != (1, 1))
    conv = lambda f, k, s, name: StdConv(f, k, s, self.dtype, self.param_dtype,
                                         self.variance_epsilon, name=name)
    norm = lambda name, **kw: group_norm(name, self.param_dtype,
                                         epsilon=self.norm_epsilon, **kw)

    residual = x
    if needs_projection:
      residual = conv(out_features, (1, 1), self.strides, 'conv_proj')(x)
      residual = norm('gn_proj')(residual)

    y = conv(self.features, (1, 1), (1, 1), 'conv1')(x)
    y = nn.relu(norm('gn1')(y))
    y = conv(self.features, (3, 3), self.strides, 'conv2')(y)
    y = nn.relu(norm('gn2')(y))
    y = conv(out_features, (1, 1), (1, 1), 'conv3')(y)
    # Zero-initialised last norm: each unit starts as the identity on its path.
    y = norm('gn3', scale_init=nn.initializers.zeros)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`num_units` bottleneck units; only the first one may downsample."""
  num_units: int
  features: int
  first_strides: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_epsilon: float = NORM_EPSILON
  variance_epsilon: Optional[float] = None

  @nn.compact
  def __call__(self, x):
    for unit in range(self.num_units):
      strides = self.first_strides if unit == 0 else (1, 1)
      x = BottleneckUnit(self.features, strides, self.dtype, self.param_dtype,
                         self.norm_epsilon, self.variance_epsilon,
                         name=f'unit{unit + 1}')(x)
    return x


def resnet_stem(x, num_units: Sequence[int], *, width: int = 64,
                dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                norm_epsilon: float = NORM_EPSILON,
                variance_epsilon: Optional[float] = None):
  """Root conv + max-pool, then one stage of bottleneck units per entry.

  A function, not a Module: called inside the VisionTransformer's compact
  `__call__`, its modules are the ViT's direct children (`conv_root`,
  `block1`, ...), as in the released hybrid checkpoints.

  Args:
    x: (B, H, W, C) images.
    num_units: units per stage, e.g. (3, 4, 9) for R50+ViT-B/16; () keeps only
      the root (4x downsampling), as in R+ViT-Ti/16.
    width: channels of the root conv; stage i has width * 2**i bottleneck
      channels.
    dtype: matmul operand dtype.
    param_dtype: parameter dtype.
    norm_epsilon: every GroupNorm's epsilon (released 1e-6; timm 1e-5).
    variance_epsilon: None standardises kernels as released, a value as
      timm does (`standardize_kernel`).

  Returns:
    (B, H / 4 / 2**(stages - 1), W / ..., channels) features.
  """
  x = StdConv(width, (7, 7), (2, 2), dtype, param_dtype, variance_epsilon,
              name='conv_root')(x)
  x = nn.relu(group_norm('gn_root', param_dtype, epsilon=norm_epsilon)(x))
  x = max_pool.max_pool(x, (3, 3), (2, 2), 'SAME')
  for stage, units in enumerate(num_units):
    # The first stage keeps the max-pool's resolution; later ones halve it.
    first_strides = (1, 1) if stage == 0 else (2, 2)
    x = ResNetStage(units, width * 2**stage, first_strides, dtype, param_dtype,
                    norm_epsilon, variance_epsilon,
                    name=f'block{stage + 1}')(x)
  return x
