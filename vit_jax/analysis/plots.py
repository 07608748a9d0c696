"""Figures of the ViT paper's analysis (Figs. 6 and 7), one PNG each.

Every `plot_*` function takes the numbers `vit_jax.cli.visualize.compute_analysis`
returns and writes one file. matplotlib is imported lazily, so importing this
module never needs a display or matplotlib.
"""

import jax
import numpy as np

# Columns of the embedding-filter mosaic: the paper shows 4 rows of 7.
_FILTER_COLUMNS = 7
_DPI = 100
# Smallest font (points) of any label, tick or legend: readable at _DPI.
SMALL_FONT = 8


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # Files only: no display on servers and in tests.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path) -> None:
  fig.savefig(path, dpi=_DPI, bbox_inches='tight')
  _pyplot().close(fig)


def _displayable(image_HWC) -> np.ndarray:
  """[-1, 1] model input -> [0, 1] RGB."""
  return np.clip((np.asarray(image_HWC, np.float32) + 1) / 2, 0, 1)


def upsample_map(map_RC, height: int, width: int) -> np.ndarray:
  """Bilinear upsampling of a (rows, cols) map to (height, width), scaled so
  its maximum is 1 (the paper's display normalisation)."""
  upsampled = jax.image.resize(np.asarray(map_RC, np.float32), (height, width),
                               'bilinear')
  upsampled = np.maximum(np.asarray(upsampled), 0)
  return upsampled / max(float(upsampled.max()), np.finfo(np.float32).tiny)


def weighted_image(image_HWC, mask_HW) -> np.ndarray:
  """The image weighted by the map, brightened so its brightest pixel is 1:
  a dark image under a diffuse map would otherwise be near black."""
  weighted = image_HWC * mask_HW[..., None]
  return weighted / max(float(weighted.max()), np.finfo(np.float32).tiny)


def plot_rollout(image_HWC, map_RC, title: str, path) -> None:
  """The image, the image weighted by the map (as in the paper) and a heat
  overlay of the map."""
  plt = _pyplot()
  image = _displayable(image_HWC)
  mask_HW = upsample_map(map_RC, *image.shape[:2])
  fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
  axes[0].imshow(image)
  axes[0].set_title('input')
  axes[1].imshow(weighted_image(image, mask_HW))
  axes[1].set_title('attention (image x map)')
  axes[2].imshow(image)
  heat = axes[2].imshow(mask_HW, cmap='jet', alpha=0.5, vmin=0, vmax=1)
  axes[2].set_title('map overlay')
  bar = fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.04)
  bar.set_label('attention (fraction of its maximum)', fontsize=SMALL_FONT)
  bar.ax.tick_params(labelsize=SMALL_FONT)
  for axis in axes:
    axis.axis('off')
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def plot_attention_distance(distances_LH, image_size: int, title: str,
                            path) -> None:
  """One dot per head: x = layer (1-based, as the paper), y = pixels."""
  plt = _pyplot()
  distances_LH = np.asarray(distances_LH)
  num_layers, num_heads = distances_LH.shape
  fig, axis = plt.subplots(figsize=(5, 4))
  layers_LH = np.broadcast_to(np.arange(1, num_layers + 1)[:, None],
                              distances_LH.shape)
  for head in range(num_heads):
    axis.scatter(layers_LH[:, head], distances_LH[:, head], s=14,
                 label=f'head {head + 1}')
  axis.set_xlabel('network depth (layer)')
  axis.set_ylabel('mean attention distance (pixels)')
  axis.set_xticks(range(1, num_layers + 1))
  axis.set_ylim(0, image_size)
  if num_heads <= 16:
    axis.legend(fontsize=SMALL_FONT, ncol=2, loc='lower right')
  axis.set_title(title, fontsize=9)
  _save(fig, path)


def similarity_mosaic(similarity_RCRC, gap: int = 1) -> np.ndarray:
  """Tiles the (rows, cols) maps of every patch into one image, `gap` NaN
  pixels apart (drawn as background), patch (r, c)'s map at tile (r, c)."""
  rows, cols = similarity_RCRC.shape[:2]
  tile_h, tile_w = rows + gap, cols + gap
  mosaic = np.full((rows * tile_h - gap, cols * tile_w - gap), np.nan,
                   np.float32)
  for r in range(rows):
    for c in range(cols):
      mosaic[r * tile_h:r * tile_h + rows,
             c * tile_w:c * tile_w + cols] = similarity_RCRC[r, c]
  return mosaic


def plot_position_similarity(similarity_RCRC, title: str, path) -> None:
  """The grid of grids: tile (r, c) is patch (r, c)'s similarity map."""
  plt = _pyplot()
  rows, cols = similarity_RCRC.shape[:2]
  fig, axis = plt.subplots(figsize=(6, 6 * rows / cols))
  cmap = plt.get_cmap('viridis').with_extremes(bad='white')  # The gaps.
  shown = axis.imshow(similarity_mosaic(similarity_RCRC), cmap=cmap, vmin=-1,
                      vmax=1, interpolation='nearest')
  # Ticks at the tile centres, numbered like the paper's axes (1-based).
  axis.set_xticks([c * (cols + 1) + (cols - 1) / 2 for c in range(cols)])
  axis.set_xticklabels(range(1, cols + 1), fontsize=SMALL_FONT)
  axis.set_yticks([r * (rows + 1) + (rows - 1) / 2 for r in range(rows)])
  axis.set_yticklabels(range(1, rows + 1), fontsize=SMALL_FONT)
  axis.set_xlabel('input patch column')
  axis.set_ylabel('input patch row')
  fig.colorbar(shown, ax=axis, fraction=0.046, pad=0.04,
               label='cosine similarity')
  axis.set_title(title, fontsize=9)
  _save(fig, path)


def plot_filter_components(components_KPPC, ratio_K, title: str,
                           path) -> None:
  """Each component min-max normalised to [0, 1] and shown as an RGB patch."""
  plt = _pyplot()
  count = len(components_KPPC)
  columns = min(_FILTER_COLUMNS, count)
  rows = -(-count // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns,
                                                   1.3 * rows + 0.4),
                           squeeze=False)
  for index, axis in enumerate(axes.flat):
    axis.axis('off')
    if index < count:
      component = components_KPPC[index]
      low, high = component.min(), component.max()
      axis.imshow((component - low) / max(high - low, 1e-12),
                  interpolation='nearest')
      axis.set_title(f'{index + 1}: {100 * ratio_K[index]:.1f}%',
                     fontsize=SMALL_FONT)
  fig.suptitle(title, fontsize=9)
  _save(fig, path)
