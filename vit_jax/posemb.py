"""Resizing position embeddings when the token grid changes.

The class-token embedding (if any) is kept as is; the patch embeddings are
reshaped to their grid, resampled to the new grid and flattened again.

Methods (results differ slightly, so the choice is explicit):
  bilinear_aligned: linear interpolation whose corner samples coincide
    (scipy.ndimage.zoom order=1, i.e. align_corners=True). This is what the
    original ViT code does, and our default.
  bilinear: half-pixel-centre bilinear (align_corners=False), as timm's
    default `resample_abs_pos_embed`; no antialiasing.
  bicubic: half-pixel-centre bicubic (Keys kernel a=-0.5; PyTorch's bicubic
    uses a=-0.75, so it is close to but not equal to timm's bicubic).
"""

import math
from typing import Optional, Sequence, Tuple

import jax
import numpy as np
import scipy.ndimage

METHODS = ('bilinear_aligned', 'bilinear', 'bicubic')


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
        method='cubic' if method == 'bicubic' else 'linear',
        antialias=False))
  resized_1ND = resized_HWD.reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix_1PD, resized_1ND], axis=1).astype(np.float32)
