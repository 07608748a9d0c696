"""An independent float64 NumPy forward pass of timm's R+ViT hybrids, for
the tests.

It reads timm's own keys: the `patch_embed.backbone.` ResNetV2 of
timm/models/vision_transformer_hybrid.py (`ResNetV2(preact=False,
stem_type='same')` with `StdConv2dSame(eps=1e-8)`, or its stem alone), then
hands the feature map to the ViT reference on timm's keys
(tests/numpy_timm.py), whose patch embedding takes any channel count. It
follows timm/models/resnetv2.py (`create_resnetv2_stem`, `Bottleneck`,
`DownsampleConv`) and timm/layers (StdConv2dSame, GroupNormAct,
MaxPool2dSame) step by step. The convolution, TensorFlow-'SAME' max pool and
GroupNorm are the R+ViT reference's (tests/numpy_vit.py), called with
timm's epsilon; the kernel standardisation is timm's, written here. It
shares no code with vit_jax.
"""

import numpy as np

from tests import numpy_timm
from tests import numpy_vit

BACKBONE = 'patch_embed.backbone.'
GROUP_NORM_EPSILON = 1e-5  # timm.layers.GroupNormAct's default.
STD_CONV_EPSILON = 1e-8  # vision_transformer_hybrid._resnetv2's StdConv2dSame.


def _std_conv(p, name, x_NHWC, stride):
  """StdConv2dSame: the kernel batch-normalised per output channel over
  (in, kh, kw) (biased variance, eps inside the root), TF 'SAME' padding."""
  w_OIHW = p[f'{name}.weight']
  flat = w_OIHW.reshape(w_OIHW.shape[0], -1)
  flat = (flat - flat.mean(1, keepdims=True)) / np.sqrt(
      flat.var(1, keepdims=True) + STD_CONV_EPSILON)
  w_HWIO = flat.reshape(w_OIHW.shape).transpose(2, 3, 1, 0)
  return numpy_vit.conv2d(x_NHWC, w_HWIO, stride, 'SAME')


def _norm(p, name, x_NHWC, act=True):
  """GroupNormAct: 32 groups, then ReLU unless apply_act=False."""
  y = numpy_vit.group_norm(x_NHWC, p[f'{name}.weight'], p[f'{name}.bias'],
                           eps=GROUP_NORM_EPSILON)
  return np.maximum(y, 0) if act else y


def _bottleneck(p, name, x, stride):
  """Bottleneck (non-pre-activation): conv1/norm1, conv2 (strided)/norm2,
  conv3/norm3 without act; ReLU of the sum with the shortcut."""
  shortcut = x
  if f'{name}.downsample.conv.weight' in p:
    shortcut = _norm(p, f'{name}.downsample.norm',
                     _std_conv(p, f'{name}.downsample.conv', x, stride),
                     act=False)
  y = _norm(p, f'{name}.norm1', _std_conv(p, f'{name}.conv1', x, 1))
  y = _norm(p, f'{name}.norm2', _std_conv(p, f'{name}.conv2', y, stride))
  y = _norm(p, f'{name}.norm3', _std_conv(p, f'{name}.conv3', y, 1),
            act=False)
  return np.maximum(y + shortcut, 0)


def backbone(state_dict, images_BCHW):
  """The ResNetV2 feature map (B, C, h, w) of timm's hybrid backbone."""
  p = {key[len(BACKBONE):]: np.asarray(value, np.float64)
       for key, value in state_dict.items() if key.startswith(BACKBONE)}
  x = np.asarray(images_BCHW, np.float64).transpose(0, 2, 3, 1)
  root = 'stem.' if 'stem.conv.weight' in p else ''
  x = _norm(p, f'{root}norm', _std_conv(p, f'{root}conv', x, 2))
  x = numpy_vit.max_pool_same(x, 3, 2)
  stage = 0
  while f'stages.{stage}.blocks.0.conv1.weight' in p:
    block = 0
    while f'stages.{stage}.blocks.{block}.conv1.weight' in p:
      stride = 2 if stage > 0 and block == 0 else 1
      x = _bottleneck(p, f'stages.{stage}.blocks.{block}', x, stride)
      block += 1
    stage += 1
  return x.transpose(0, 3, 1, 2)


def forward(state_dict, images_BCHW, **vit_options):
  """timm's hybrid `model(images)` in eval mode; `vit_options` as
  tests.numpy_timm.forward's."""
  return numpy_timm.forward(state_dict, backbone(state_dict, images_BCHW),
                            **vit_options)
