"""An independent float64 NumPy MLP-Mixer forward pass for the tests.

It reads a flat dict in the released layout (`stem/kernel`,
`MixerBlock_{i}/token_mixing/Dense_0/kernel`, ...) and follows the equations
of Tolstikhin et al. (2021), "MLP-Mixer: An all-MLP Architecture for
Vision", Section 2, with the released numerics (tanh-GELU, LayerNorm epsilon
1e-6), sharing no code with vit_jax (LayerNorm and GELU come from the ViT
reference, `tests/numpy_vit.py`). The patch size, block count and head
are read off the keys and shapes.
"""

import numpy as np

# The elementwise pieces are the same as the ViT reference's.
from tests.numpy_vit import gelu_tanh
from tests.numpy_vit import layer_norm


def patches(images, patch):
  """(B, H, W, 3) -> (B, N, patch * patch * 3), patches row by row and, in
  each, pixels row by row then channels (the conv kernel's (h, w, c) order)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def mlp(p, prefix, x):
  """Dense_0 -> GELU -> Dense_1 on the last axis of x."""
  hidden = gelu_tanh(x @ p[f'{prefix}/Dense_0/kernel'] +
                     p[f'{prefix}/Dense_0/bias'])
  return hidden @ p[f'{prefix}/Dense_1/kernel'] + p[f'{prefix}/Dense_1/bias']


def forward(flat, images):
  """Logits (or pooled features when there is no head) for [-1, 1] images."""
  p = {k: np.asarray(v, np.float64) for k, v in flat.items()}
  x = np.asarray(images, np.float64)
  kernel = p['stem/kernel']
  patch, channels = kernel.shape[0], kernel.shape[-1]
  # The stem conv, kernel = stride = patch, is one matmul per patch.
  x = patches(x, patch) @ kernel.reshape(-1, channels) + p['stem/bias']
  block = 0
  while f'MixerBlock_{block}/LayerNorm_0/scale' in p:
    pre = f'MixerBlock_{block}'
    ln = lambda x, name: layer_norm(x, p[f'{pre}/{name}/scale'],
                                    p[f'{pre}/{name}/bias'])
    # Token mixing acts on each channel's column of tokens: (B, C, N).
    y = ln(x, 'LayerNorm_0').transpose(0, 2, 1)
    x = x + mlp(p, f'{pre}/token_mixing', y).transpose(0, 2, 1)
    x = x + mlp(p, f'{pre}/channel_mixing', ln(x, 'LayerNorm_1'))
    block += 1
  x = layer_norm(x, p['pre_head_layer_norm/scale'],
                 p['pre_head_layer_norm/bias'])
  x = x.mean(axis=1)
  if 'head/kernel' in p:
    x = x @ p['head/kernel'] + p['head/bias']
  return x
