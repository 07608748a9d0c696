"""An independent float64 NumPy forward pass of timm's NaFlexVit on a plain
image batch, for the tests.

It reads NaFlexVit's own keys: the Linear patch embedding `embeds.proj`
(D, ph*pw*C) over patches flattened (ph, pw, C) (patchify_channels_last) or
(C, ph, pw), or a Conv2d weight (D, C, ph, pw); the learned position table
`embeds.pos_embed` (1, h, w, D) or the factorized `embeds.pos_embed_y` /
`_x`, resized to the image's patch grid as PyTorch's `F.interpolate` does
(`interpolate_weights`, written from PyTorch's CPU kernels: half-pixel or
aligned-corner source positions, clamped taps, and, with antialias, PIL's
widened and renormalised kernels); then `embeds.cls_token` and
`embeds.reg_token` before the patches. From there on the blocks, norms,
pools and heads are timm's VisionTransformer's (tests/numpy_timm.py). It
shares no code with vit_jax.
"""

import numpy as np

from tests import numpy_timm


def _triangle(x):
  return np.maximum(0.0, 1.0 - np.abs(x))


def _keys_cubic(x, a):
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, a * (((x - 5) * x + 8) * x - 4), 0.0))


def _plain_row(i, size_in, size_out, mode, align_corners):
  """Weights of output `i` without antialias: PyTorch's source position,
  floor taps clamped into the input (a=-0.75 for bicubic)."""
  row = np.zeros(size_in)
  if align_corners:
    source = i * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
  else:
    source = (i + 0.5) * size_in / size_out - 0.5
  if mode == 'bilinear':
    source = max(source, 0.0)  # PyTorch clamps linear sources at 0.
    left = int(np.floor(source))
    frac = source - left
    row[min(left, size_in - 1)] += 1 - frac
    row[min(left + 1, size_in - 1)] += frac
    return row
  left = int(np.floor(source))
  frac = source - left
  for tap in range(-1, 3):
    index = min(max(left + tap, 0), size_in - 1)
    row[index] += _keys_cubic(frac - tap, -0.75)
  return row


def _antialiased_row(i, size_in, size_out, mode):
  """Weights of output `i` with antialias (align_corners=False): the kernel
  (a=-0.5 for bicubic) stretched by the shrink factor, over the inputs
  within its support, normalised to sum 1."""
  scale = size_in / size_out
  stretch = max(scale, 1.0)
  support = (1.0 if mode == 'bilinear' else 2.0) * stretch
  centre = (i + 0.5) * scale
  first = max(int(centre - support + 0.5), 0)
  last = min(int(centre + support + 0.5), size_in)
  taps = np.arange(first, last)
  distance = (taps - centre + 0.5) / stretch
  weights = (_triangle(distance) if mode == 'bilinear' else
             _keys_cubic(distance, -0.5))
  row = np.zeros(size_in)
  row[taps] = weights / weights.sum()
  return row


def interpolate_weights(size_in, size_out, *, mode, align_corners=False,
                        antialias=False):
  """(size_out, size_in): one axis of `F.interpolate(mode=...)` with
  `size=`; 2-D resizing applies it to rows, then columns."""
  if antialias and align_corners:
    raise ValueError('no reference for antialias with align_corners')
  rows = [(_antialiased_row(i, size_in, size_out, mode) if antialias else
           _plain_row(i, size_in, size_out, mode, align_corners))
          for i in range(size_out)]
  return np.stack(rows)


def interpolate(grid_HWD, size, *, mode, align_corners=False,
                antialias=False):
  """A (h, w, D) table resized to `size` (rows, cols) as `F.interpolate`
  resizes the (1, D, h, w) tensor."""
  options = dict(mode=mode, align_corners=align_corners, antialias=antialias)
  rows = interpolate_weights(grid_HWD.shape[0], size[0], **options)
  cols = interpolate_weights(grid_HWD.shape[1], size[1], **options)
  return np.einsum('ih,jw,hwd->ijd', rows, cols, grid_HWD)


def position_embedding(p, grid, *, interp_mode, align_corners, antialias,
                       ar_preserving):
  """What NaFlexVit adds to the patches of a `grid`: (rows*cols, D), or 0.
  Aspect preserving: resized to the longer side squared, then cropped at
  the top left."""
  rows, cols = grid
  target = (max(grid), max(grid)) if ar_preserving else grid
  if 'embeds.pos_embed' in p:
    table = p['embeds.pos_embed'][0]
    if table.shape[:2] != tuple(grid):
      table = interpolate(table, target, mode=interp_mode,
                          align_corners=align_corners,
                          antialias=antialias)[:rows, :cols]
    return table.reshape(rows * cols, -1)
  if 'embeds.pos_embed_y' in p:
    axes = []
    for key, length, size in (('embeds.pos_embed_y', rows, target[0]),
                              ('embeds.pos_embed_x', cols, target[1])):
      table = p[key][0]  # (L, D); F.interpolate(mode='linear').
      if table.shape[0] != size:
        table = interpolate_weights(table.shape[0], size,
                                    mode='bilinear') @ table
      axes.append(table[:length])
    return (axes[0][:, None] + axes[1][None]).reshape(rows * cols, -1)
  return 0.


def _patchify(images_BCHW, patch, channels_last):
  batch, channels, height, width = images_BCHW.shape
  ph, pw = patch
  rows, cols = height // ph, width // pw
  x = images_BCHW.reshape(batch, channels, rows, ph, cols, pw)
  order = (0, 2, 4, 3, 5, 1) if channels_last else (0, 2, 4, 1, 3, 5)
  return x.transpose(order).reshape(batch, rows * cols, -1), (rows, cols)


def forward(state_dict, images_BCHW, *, patch, num_heads, global_pool,
            eps=1e-6, activation='gelu_erf', pool_include_prefix=False,
            interp_mode='bicubic', align_corners=False, antialias=True,
            ar_preserving=False, channels_last=True):
  """NaFlexVit's `model(images)` in eval mode (logits, or pooled features
  without `head`); the keyword arguments are NaFlexVitCfg's fields of the
  same meaning."""
  p = numpy_timm.as_float64(state_dict)
  images_BCHW = np.asarray(images_BCHW, np.float64)
  weight = p['embeds.proj.weight']
  if weight.ndim == 4:  # embed_proj_type='conv': (D, C, ph, pw).
    patches, grid = _patchify(images_BCHW, patch, channels_last=False)
    weight = weight.reshape(weight.shape[0], -1)
  else:
    patches, grid = _patchify(images_BCHW, patch, channels_last)
  x = patches @ weight.T + p.get('embeds.proj.bias', 0.)
  x = x + position_embedding(
      p, grid, interp_mode=interp_mode, align_corners=align_corners,
      antialias=antialias, ar_preserving=ar_preserving)
  batch = x.shape[0]
  prefix = [np.broadcast_to(p[key], (batch,) + p[key].shape[1:])
            for key in ('embeds.cls_token', 'embeds.reg_token') if key in p]
  x = np.concatenate(prefix + [x], axis=1)
  return numpy_timm.encode_and_pool(
      p, x, sum(t.shape[1] for t in prefix), num_heads=num_heads,
      global_pool=global_pool, eps=eps, activation=activation,
      pool_include_prefix=pool_include_prefix)
