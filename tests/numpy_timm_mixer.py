"""An independent float64 NumPy forward pass of timm's MlpMixer (the
MLP-Mixer blocks), for the tests.

It reads timm's own keys and conventions (NCHW images, the stem conv weight
(D, C, p, p), torch Linear weights (out, in)) and follows timm 1.0's
timm/models/mlp_mixer.py (`PatchEmbed` as `stem`, `MixerBlock`,
`MlpMixer.forward_head`) with its numerics: the erf GELU (torch's nn.GELU)
and LayerNorm epsilon 1e-6. It shares no code with vit_jax (the GELUs are
the ViT reference's on timm's keys, tests/numpy_timm.py).
"""

import numpy as np

from tests import numpy_timm

EPSILON = 1e-6


def _layer_norm(p, name, x):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + EPSILON) * p[f'{name}.weight'] + p[
      f'{name}.bias']


def _linear(p, name, x):
  return x @ p[f'{name}.weight'].T + p[f'{name}.bias']


def _stem(p, images_BCHW):
  """The patch conv (kernel = stride = p): one matmul per patch, patches
  row by row."""
  weight = p['stem.proj.weight']  # (D, C, ph, pw)
  width, channels, ph, pw = weight.shape
  batch, _, height, wide = images_BCHW.shape
  rows, cols = height // ph, wide // pw
  patches = images_BCHW.reshape(batch, channels, rows, ph, cols, pw).transpose(
      0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * ph * pw)
  return patches @ weight.reshape(width, -1).T + p['stem.proj.bias']


def _mlp(p, name, x, activation):
  """timm's Mlp: fc1, act, fc2 on the last axis."""
  hidden = numpy_timm.ACTIVATIONS[activation](_linear(p, f'{name}.fc1', x))
  return _linear(p, f'{name}.fc2', hidden)


def forward(state_dict, images_BCHW, *, global_pool='avg',
            activation='gelu_erf'):
  """timm's `model(images)` in eval mode: logits, or without `head` the
  pooled features (every token for global_pool '')."""
  p = {key: np.asarray(value, np.float64) for key, value in
       state_dict.items()}
  x = _stem(p, np.asarray(images_BCHW, np.float64))
  block = 0
  while f'blocks.{block}.norm1.weight' in p:
    name = f'blocks.{block}'
    # Token mixing acts on each channel's row of tokens: (B, D, N).
    y = _layer_norm(p, f'{name}.norm1', x).swapaxes(1, 2)
    x = x + _mlp(p, f'{name}.mlp_tokens', y, activation).swapaxes(1, 2)
    x = x + _mlp(p, f'{name}.mlp_channels',
                 _layer_norm(p, f'{name}.norm2', x), activation)
    block += 1
  x = _layer_norm(p, 'norm', x)
  if global_pool == 'avg':
    x = x.mean(axis=1)
  if 'head.weight' in p:
    x = _linear(p, 'head', x)
  return x
