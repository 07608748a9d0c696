"""Position embeddings: the fixed 2-D sin-cos one, and resizing learned ones
when the token grid changes.

Resizing: the prefix-token embeddings (a class token's) are kept as they
are; the patch embeddings are reshaped to their grid, resampled to the new
grid and flattened again.

Methods (results differ slightly, so the choice is explicit):
  bilinear_aligned: linear interpolation whose corner samples coincide
    (scipy.ndimage.zoom order=1, i.e. align_corners=True). This is what the
    original ViT code does, and our default.
  bilinear: half-pixel-centre bilinear (align_corners=False), as timm's
    default `resample_abs_pos_embed`; no antialiasing.
  bicubic: half-pixel-centre bicubic (Keys kernel a=-0.5; PyTorch's bicubic
    uses a=-0.75, so it is close to but not equal to timm's bicubic).
  bilinear_antialias, bicubic_antialias: as bilinear and bicubic, but when
    shrinking the kernel is widened by the shrink factor (a low-pass filter),
    its weights renormalised over the samples inside the grid, as PIL does.

As PyTorch's `F.interpolate(mode=..., align_corners=..., antialias=...)`
(which timm uses to resize position embeddings) computes them, to float32
rounding: bilinear_aligned is ('bilinear', True, False); bilinear is
('bilinear', False, False); bilinear_antialias is ('bilinear', False, True);
bicubic_antialias is ('bicubic', False, True) (PyTorch's antialiased bicubic
uses PIL's a=-0.5 kernel). Antialiasing changes nothing when enlarging.
PyTorch's plain bicubic is none of them.
"""

import math
from typing import Optional, Sequence, Tuple

import jax
import numpy as np
import scipy.ndimage

METHODS = ('bilinear_aligned', 'bilinear', 'bicubic', 'bilinear_antialias',
           'bicubic_antialias')


def sincos_2d(grid: Sequence[int], width: int,
              temperature: float = 10_000.) -> np.ndarray:
  """The fixed 2-D sin-cos position embedding of a (rows, cols) patch grid.

  As in Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k"
  (big_vision's `posemb_sincos_2d`, after MoCo v3): with F = width / 4
  frequencies omega_f = 1 / temperature**(f / (F - 1)), f = 0 .. F-1, the
  patch in row y and column x (row-major order, as the patches are
  flattened) gets the concatenation
    [sin(x omega), cos(x omega), sin(y omega), cos(y omega)].

  Args:
    grid: (rows, cols).
    width: the token width D, a multiple of 4 and at least 8.
    temperature: the longest wavelength's scale.

  Returns:
    float32 array (1, rows * cols, width).
  """
  if width % 4 or width < 8:
    raise ValueError(f'the sincos2d position embedding needs a width that is '
                     f'a multiple of 4 and at least 8, got {width}')
  num_frequencies = width // 4
  omega_F = 1.0 / temperature**(np.arange(num_frequencies) /
                                (num_frequencies - 1))
  rows_N, cols_N = [axis.reshape(-1) for axis in np.mgrid[:grid[0],
                                                           :grid[1]]]
  x_NF = cols_N[:, None] * omega_F
  y_NF = rows_N[:, None] * omega_F
  embedding_ND = np.concatenate(
      [np.sin(x_NF), np.cos(x_NF), np.sin(y_NF), np.cos(y_NF)], axis=1)
  return embedding_ND[None].astype(np.float32)


def square_grid(num_patches: int) -> Tuple[int, int]:
  """The (side, side) grid of `num_patches`; raises if it is not square."""
  side = math.isqrt(num_patches)
  if side * side != num_patches:
    raise ValueError(
        f'{num_patches} patch embeddings do not form a square grid; pass the '
        'grid shape (rows, cols) explicitly.')
  return side, side


def resize(pos_embedding_1ND: np.ndarray, new_grid: Sequence[int], *,
           num_prefix_tokens: int, old_grid: Optional[Sequence[int]] = None,
           method: str = 'bilinear_aligned') -> np.ndarray:
  """Resamples a (1, prefix + rows*cols, D) position embedding to `new_grid`.

  Args:
    pos_embedding_1ND: the embedding, prefix tokens first.
    new_grid: (rows, cols) of the new patch grid.
    num_prefix_tokens: tokens before the patches (1 with a class token).
    old_grid: (rows, cols) of the current grid; None infers a square grid.
    method: one of METHODS.

  Returns:
    float32 array (1, prefix + new_rows*new_cols, D); the input itself (as
    float32) when the grid does not change.
  """
  if method not in METHODS:
    raise ValueError(f'unknown resize method {method!r}; expected one of '
                     f'{METHODS}')
  pos_embedding_1ND = np.asarray(pos_embedding_1ND, np.float32)
  prefix_1PD = pos_embedding_1ND[:, :num_prefix_tokens]
  patches_ND = pos_embedding_1ND[0, num_prefix_tokens:]
  if old_grid is None:
    old_grid = square_grid(patches_ND.shape[0])
  old_grid, new_grid = tuple(old_grid), tuple(new_grid)
  if old_grid[0] * old_grid[1] != patches_ND.shape[0]:
    raise ValueError(f'grid {old_grid} does not hold the embedding\'s '
                     f'{patches_ND.shape[0]} patches')
  if old_grid == new_grid:
    return pos_embedding_1ND

  grid_HWD = patches_ND.reshape(*old_grid, -1)
  if method == 'bilinear_aligned':
    zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
    resized_HWD = scipy.ndimage.zoom(grid_HWD, zoom, order=1)
  else:
    resized_HWD = np.asarray(jax.image.resize(
        grid_HWD, (*new_grid, grid_HWD.shape[-1]),
        method='cubic' if method.startswith('bicubic') else 'linear',
        antialias=method.endswith('_antialias')))
  resized_1ND = resized_HWD.reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix_1PD, resized_1ND], axis=1).astype(np.float32)
