"""Rotary position embeddings (RoPE) of the patch tokens, as timm computes them.

RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864) rotates pairs of query
and key channels by angles that depend on the token's position, so that
attention logits depend on relative positions. The vision variants here
are 2-D (axial): half of a head's rotation pairs follow one grid axis, half
the other. Families, as timm 1.0 builds them (timm/layers/pos_embed_sincos.py):

  'axial'  (timm's RotaryEmbeddingCat: EVA-02, Fang et al. 2023,
           arXiv:2303.11331; the `_rope_` ViTs of Heo et al. 2024,
           arXiv:2403.13298): integer patch positions (+ `grid_offset`),
           rescaled onto `ref_grid` when set (EVA's scheme for other
           resolutions), frequencies 1 / temperature^(i / F).
  'dinov3' (RotaryEmbeddingDinoV3: DINOv3, Simeoni et al. 2025,
           arXiv:2508.10104): patch centres normalised to [-1, 1] along
           each axis, angles 2 pi x / temperature^(i / F).
  'mixed'  (RotaryEmbeddingMixed, Heo et al. 2024): learned frequencies per
           layer and head (a parameter, `rope_freqs` (2, A, E/2)), mixing
           both axes in every pair.

F = E / 4 frequencies per axis for a head of width E. The sin / cos tables
are laid out either interleaved (pairs (x0, x1), (x2, x3), ...) or
'rotate_half' (pairs (x_i, x_{i+E/2})). Coordinates follow `grid_indexing`:
'ij' puts the row coordinate first, 'xy' the column coordinate (the spatial
order of the tokens is row-major either way). Prefix tokens (class,
registers) are not rotated. The tables are functions of the patch grid, so
a model runs at any resolution as timm does with `dynamic_img_size`.

Shape letters as in vit_blocks: N patch tokens, A heads, E head width.
"""

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ('axial', 'dinov3', 'mixed')
GRID_INDEXINGS = ('ij', 'xy')


@dataclasses.dataclass(frozen=True)
class Rope:
  """How a model's RoPE is computed (see the module docstring).

  Attributes:
    kind: one of KINDS.
    temperature: the frequency base ('axial', 'dinov3'; 'mixed' learns its
      frequencies).
    grid_indexing: one of GRID_INDEXINGS.
    grid_offset: added to the integer ('axial') or centred ('dinov3')
      positions.
    ref_grid: (rows, cols) the positions are rescaled onto ('axial' only),
      or None.
    rotate_half: the rotate-half layout instead of interleaved pairs.
  """
  kind: str
  temperature: float = 10000.0
  grid_indexing: str = 'ij'
  grid_offset: float = 0.0
  ref_grid: Optional[Tuple[int, int]] = None
  rotate_half: bool = False

  def check(self, head_dim: int) -> None:
    """Raises ValueError naming a bad setting."""
    if self.kind not in KINDS:
      raise ValueError(f'unknown rope {self.kind!r}; expected one of {KINDS}')
    if self.grid_indexing not in GRID_INDEXINGS:
      raise ValueError(f'unknown rope_grid_indexing {self.grid_indexing!r}; '
                       f'expected one of {GRID_INDEXINGS}')
    if head_dim % 4:
      raise ValueError(f'rotary embeddings need a head width divisible by 4, '
                       f'got {head_dim}')
    if self.kind == 'mixed' and self.rotate_half:
      raise ValueError("rope 'mixed' rotates interleaved pairs: set "
                       'rope_rotate_half=False')


def coordinates(rope: Rope, grid: Tuple[int, int]) -> np.ndarray:
  """The (N, 2) float32 positions of a (rows, cols) grid, row-major, in the
  channel order of `rope.grid_indexing`."""
  shape, ref = tuple(grid), rope.ref_grid
  if rope.grid_indexing == 'xy':
    shape = shape[::-1]
    ref = None if ref is None else tuple(ref)[::-1]
  if rope.kind == 'dinov3':
    axes = [(np.arange(size, dtype=np.float32) + np.float32(0.5)
             + np.float32(rope.grid_offset)) / np.float32(size)
            for size in shape]
  else:
    axes = [np.arange(size, dtype=np.float32) + np.float32(rope.grid_offset)
            for size in shape]
  if ref is not None and rope.kind == 'axial':
    axes = [axis / np.float32(size) * np.float32(target)
            for axis, size, target in zip(axes, shape, ref)]
  mesh = np.meshgrid(*axes, indexing=rope.grid_indexing)
  coords_N2 = np.stack(mesh, axis=-1).reshape(-1, 2).astype(np.float32)
  if rope.kind == 'dinov3':
    coords_N2 = np.float32(2) * coords_N2 - np.float32(1)
  return coords_N2


def _axial_angles(rope: Rope, grid, head_dim: int) -> np.ndarray:
  """(N, E/2) angles of the fixed kinds: each axis times F frequencies."""
  num_bands = head_dim // 4
  exponents = np.arange(num_bands, dtype=np.float32) / np.float32(num_bands)
  coords_N21 = coordinates(rope, grid)[:, :, None]
  if rope.kind == 'dinov3':
    # DINOv3's periods: temperature^(2 i / (E / 2)), angles 2 pi x / period.
    periods = np.float32(rope.temperature) ** (
        np.float32(2) * np.arange(num_bands, dtype=np.float32)
        / np.float32(head_dim // 2))
    angles = np.float32(2 * np.pi) * coords_N21 / periods
  else:
    bands = np.float32(1) / np.float32(rope.temperature) ** exponents
    angles = coords_N21 * bands
  return angles.reshape(coords_N21.shape[0], -1).astype(np.float32)


def mixed_angles(freqs_2AF, grid: Tuple[int, int], grid_indexing: str):
  """(A, N, E/2) angles of learned frequencies `freqs_2AF` (2, A, E/2):
  x * freqs[0] + y * freqs[1], (x, y) the positions in `grid_indexing`
  order."""
  coords_N2 = coordinates(Rope('mixed', grid_indexing=grid_indexing), grid)
  freqs_2AF = jnp.asarray(freqs_2AF, jnp.float32)
  return (coords_N2[None, :, 0, None] * freqs_2AF[0][:, None, :]
          + coords_N2[None, :, 1, None] * freqs_2AF[1][:, None, :])


def _layout(values, rotate_half: bool):
  """Per-pair values (..., E/2) -> per-channel (..., E)."""
  if rotate_half:
    return jnp.concatenate([values, values], axis=-1)
  return jnp.repeat(values, 2, axis=-1)


def sin_cos(rope: Rope, grid: Tuple[int, int], head_dim: int,
            freqs_2AF=None):
  """The sin and cos tables of the patch tokens.

  Args:
    rope: the settings.
    grid: the (rows, cols) patch grid.
    head_dim: E.
    freqs_2AF: the layer's learned frequencies ('mixed' only).

  Returns:
    (sin, cos), float32, each (N, 1, E) (the same for every head) or, for
    'mixed', (N, A, E): ready to broadcast against (B, N, A, E).
  """
  if rope.kind == 'mixed':
    angles = jnp.transpose(mixed_angles(freqs_2AF, grid, rope.grid_indexing),
                           (1, 0, 2))
  else:
    angles = jnp.asarray(_axial_angles(rope, grid, head_dim))[:, None, :]
  return (_layout(jnp.sin(angles), rope.rotate_half),
          _layout(jnp.cos(angles), rope.rotate_half))


def _rotate(x, rotate_half: bool):
  """Each pair (a, b) -> (-b, a), pairs as the layout defines them."""
  if rotate_half:
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)
  # (a, b) reversed to (b, a), then signed: a reverse converts to TFLite
  # where strided slices of a symbolic-batch tensor do not (dynamic slices).
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  signs = jnp.asarray([-1, 1], x.dtype)
  return (jnp.flip(pairs, axis=-1) * signs).reshape(x.shape)


def apply(x_BNAE, sin_NAE, cos_NAE, *, num_prefix_tokens: int,
          rotate_half: bool):
  """Rotates the patch tokens of queries or keys (B, N, A, E); the first
  `num_prefix_tokens` are left as they are. `x_BNAE` may hold fewer tokens
  than prefix + table (the queries of a block that computes a few tokens
  only): the table's first rows are used. Computed in float32, returned
  in x's dtype."""
  patches = x_BNAE.shape[1] - num_prefix_tokens
  if patches <= 0:
    return x_BNAE
  x = x_BNAE[:, num_prefix_tokens:].astype(jnp.float32)
  rotated = (x * cos_NAE[:patches] +
             _rotate(x, rotate_half) * sin_NAE[:patches])
  return jnp.concatenate(
      [x_BNAE[:, :num_prefix_tokens], rotated.astype(x_BNAE.dtype)], axis=1)


def mixed_freqs_init(temperature: float = 10.0):
  """Initialiser of 'mixed' frequencies (2, A, E/2), as timm's
  `init_random_2d_freqs`: per head a random direction, magnitudes
  1 / temperature^(4 i / E) along it and along its perpendicular."""
  def init(key, shape, dtype=jnp.float32):
    _, num_heads, half = shape
    head_dim = 2 * half
    magnitudes = 1.0 / (temperature ** (
        jnp.arange(0, head_dim, 4, dtype=jnp.float32) / head_dim))
    angles = jax.random.uniform(key, (num_heads, 1)) * 2 * jnp.pi
    fx = jnp.concatenate([magnitudes * jnp.cos(angles),
                          magnitudes * jnp.cos(angles + jnp.pi / 2)], -1)
    fy = jnp.concatenate([magnitudes * jnp.sin(angles),
                          magnitudes * jnp.sin(angles + jnp.pi / 2)], -1)
    return jnp.stack([fx, fy]).astype(dtype)

  return init
