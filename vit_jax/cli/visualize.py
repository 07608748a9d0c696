r"""Looks inside a checkpoint: the ViT paper's Figures 6 and 7 as PNGs.

  .venv/bin/python -m vit_jax.cli.visualize --checkpoint=ViT-B_16.npz \
      --out_dir=analysis [--model=ViT-B_16] [--image_size=224] IMAGE...

writes to --out_dir:
  rollout_<i>_<name>.png  per image: the image, the image weighted by its
      attention-rollout map and a heat overlay of the map (Fig. 6). Models
      without a class token (`gap`) get the rollout averaged over the patch
      queries, which is what their mean-pooled representation draws on; the
      figure title and analysis.json say so; so do `gap` models that keep a
      class token beside average pooling (EVA-02, DINOv3). Maps cover the
      patch grid only: prefix tokens (class, registers) are never drawn.
  attention_distance.png  mean attention distance of every head against
      depth, averaged over the given images (Fig. 7 right).
  position_embedding_similarity.png  cosine similarity of each patch's
      position embedding with all the others, a grid of grids (Fig. 7 centre);
      skipped for models without a learned one (rotary or sin-cos positions).
  embedding_filters_pca.png  the first 28 principal components of the patch
      embedding filters as RGB patches (Fig. 7 left); skipped for hybrids,
      whose embedding filters act on ResNet features rather than RGB pixels.
  analysis.json  the numbers behind the figures (see `to_json`).
  rollout.npy  float32 (images, rows, cols) rollout maps.

--checkpoint takes any source `vit_jax.weights.pretrained.load` reads; the
architecture, resolution and pixel normalisation come from the file (its
arrays and, for our exports, its sidecar). --model is optional: given, the
file must fit that variant, with the same architecture overrides
(--num_layers=..., --hidden_size=..., ...) as its training's
`config.model`. Figures and analysis.json name the model by --model, else
by the checkpoint's file name. `compute_analysis` (numbers only) and the
`vit_jax.analysis.plots` functions are importable, e.g. in a notebook.
"""

from vit_jax.cli import _process

if __name__ == '__main__':
  # Before TensorFlow is imported: keep its banner out of the output.
  _process.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from absl import flags
import jax
import numpy as np

from vit_jax.analysis import measures
from vit_jax.analysis import plots
from vit_jax.cli import _flags as cli_flags
from vit_jax.data import image_file
from vit_jax import models
from vit_jax.models import vit
from vit_jax.weights import pretrained
# pylint: enable=g-import-not-at-top,wrong-import-position

# The paper shows 28 components (Fig. 7 left) in 4 rows of 7.
NUM_FILTER_COMPONENTS = 28
# Images per forward pass: every layer's attention weights are kept at once.
_BATCH_SIZE = 8

ROLLOUT_CLASS_TOKEN = 'class_token'
ROLLOUT_MEAN_QUERY = 'mean_over_patch_queries'
_ROLLOUT_DESCRIPTIONS = {
    ROLLOUT_CLASS_TOKEN:
        'attention rollout: the class token\'s row over the patches',
    ROLLOUT_MEAN_QUERY:
        'attention rollout averaged over all patch queries (the head reads '
        'no class token; its gap representation pools the patch tokens)',
}

# ----------------------------------------------------------------------------
# Computing.


def _attention_per_chunk(model, params, images_BHWC, batch_size):
  """Yields (attention {layer: (b, heads, N, N)}, b) over image chunks."""
  # Only the attention weights matter here: skip the head.
  encoder_only, params = models.without_head(model, params)
  apply = jax.jit(functools.partial(
      models.apply_with_intermediates, encoder_only,
      attention_layers=tuple(range(model.num_layers))))
  for start in range(0, len(images_BHWC), batch_size):
    chunk = images_BHWC[start:start + batch_size]
    _, intermediates = apply(params, chunk)
    attention = jax.tree_util.tree_map(np.asarray,
                                       intermediates['attention_weights'])
    yield attention, len(chunk)


def _filter_components(model, params, model_name, notes):
  """(components, explained variance ratio), or (None, None) with a note."""
  kernel = models.family_of(model).embedding_filters(model, params)
  if kernel is None:
    notes.append(
        f'embedding-filter PCA skipped: the patch embedding of {model_name} '
        'does not act on RGB pixels (in a hybrid, it acts on ResNet stem '
        'features), so its filters have no RGB picture.')
    return None, None
  patch_h, patch_w, channels, num_filters = kernel.shape
  count = min(NUM_FILTER_COMPONENTS, num_filters, patch_h * patch_w * channels)
  if count < NUM_FILTER_COMPONENTS:
    notes.append(f'only {count} embedding-filter components shown: the model '
                 f'has {num_filters} filters of dimension '
                 f'{patch_h * patch_w * channels}.')
  components, ratio = measures.embedding_filter_components(kernel, count)
  return components, ratio


def compute_analysis(model, params,
                     images, model_name: str, *,
                     batch_size: int = _BATCH_SIZE) -> Dict[str, Any]:
  """The numbers behind every figure, for model-input (normalised) images.

  Args:
    model: a model with attention weights (ViT, with a 'token' or 'gap'
      classifier).
    params: its parameters (position embedding at the images' grid).
    images: (B, H, W, 3) float images in [-1, 1], H and W multiples of the
      model's patch size in input pixels.
    model_name: the variant's name, for the record and the notes.
    batch_size: images per forward pass.

  Returns:
    A dict: 'model', 'image_size', 'grid' (rows, cols), 'patch_pixels'
    (h, w), 'classifier', 'rollout_kind' (ROLLOUT_CLASS_TOKEN or
    ROLLOUT_MEAN_QUERY), 'rollout_maps' (B, rows, cols) float32,
    'mean_attention_distance_px' (layers, heads) over the images,
    'position_embedding_similarity' (rows, cols, rows, cols),
    'filter_components' (K, p, p, 3) and 'filter_explained_variance' (K,)
    or None for hybrids, and 'notes' (list of str).
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or not len(images):
    raise ValueError(f'need a (B, H, W, 3) batch of images, got shape '
                     f'{images.shape}')
  patch_h, patch_w = models.patch_pixels(model)
  height, width = images.shape[1:3]
  if height % patch_h or width % patch_w:
    raise ValueError(f'images of {height}x{width} pixels do not split into '
                     f'{patch_h}x{patch_w}-pixel patches')
  grid = (height // patch_h, width // patch_w)
  model_family = models.family_of(model)
  num_prefix = model_family.num_prefix_tokens(model)
  notes = []
  # Only a head that reads the class token makes its row the map; a gap head
  # pools the patch tokens, even where prefix tokens (a class token timm
  # keeps beside average pooling, registers) take part in attention.
  reads_class_token = model.classifier in vit.TOKEN_CLASSIFIERS
  if reads_class_token:
    kind = ROLLOUT_CLASS_TOKEN
  else:
    kind = ROLLOUT_MEAN_QUERY
    notes.append(f'rollout maps are the mean over patch queries: classifier '
                 f'{model.classifier!r} reads no class token.')
  if num_prefix and not reads_class_token:
    notes.append(f'the {num_prefix} prefix token(s) (class or register '
                 'tokens) are left out of the rollout maps and distances.')

  maps, distance_sum_LH = [], 0.0
  for attention, count in _attention_per_chunk(model, params, images,
                                               batch_size):
    rollout = measures.attention_rollout(attention,
                                         has_class_token=reads_class_token,
                                         num_prefix_tokens=num_prefix)
    maps.append(rollout.class_token_map(grid) if reads_class_token else
                rollout.mean_query_map(grid))
    # Each chunk's value is a mean over its images; weight it by their count.
    distance_sum_LH = distance_sum_LH + count * (
        measures.mean_attention_distance_per_layer(
            attention, grid, (patch_h, patch_w), num_prefix_tokens=num_prefix))

  components, ratio = _filter_components(model, params, model_name, notes)
  embedding = model_family.position_embedding(params)
  if embedding is None:
    notes.append(f'position-embedding similarity skipped: {model_name} has '
                 'no learned position embedding.')
  return {
      'model': model_name,
      'image_size': [int(height), int(width)],
      'grid': list(grid),
      'patch_pixels': [patch_h, patch_w],
      'classifier': model.classifier,
      'rollout_kind': kind,
      'rollout_maps': np.concatenate(maps).astype(np.float32),
      'mean_attention_distance_px': distance_sum_LH / len(images),
      'position_embedding_similarity': (
          None if embedding is None else
          measures.position_embedding_similarity(
              embedding, grid, num_prefix_tokens=num_prefix)),
      'filter_components': components,
      'filter_explained_variance': ratio,
      'notes': notes,
  }


# ----------------------------------------------------------------------------
# Writing.


def _figure_name(index: int, image_path: str) -> str:
  stem = os.path.splitext(os.path.basename(image_path))[0]
  return f'rollout_{index:02d}_{re.sub(r"[^A-Za-z0-9_.-]", "_", stem)}.png'


def to_json(result: Dict[str, Any], image_paths: Sequence[str],
            figures: Sequence[str]) -> Dict[str, Any]:
  """The analysis.json record: compute_analysis's numbers as plain lists.

  The position-embedding similarity (rows^2 x cols^2 numbers) and the filter
  components stay out; the figures show them.
  """
  ratio = result['filter_explained_variance']
  return {
      'model': result['model'],
      'image_size': result['image_size'],
      'grid': result['grid'],
      'patch_pixels': result['patch_pixels'],
      'classifier': result['classifier'],
      'images': list(image_paths),
      'rollout_kind': result['rollout_kind'],
      'rollout_description': _ROLLOUT_DESCRIPTIONS[result['rollout_kind']],
      'rollout_maps': result['rollout_maps'].tolist(),
      'rollout_file': 'rollout.npy',
      'mean_attention_distance_px': np.asarray(
          result['mean_attention_distance_px']).tolist(),
      'filter_pca_explained_variance': (None if ratio is None else
                                        np.asarray(ratio).tolist()),
      'figures': list(figures),
      'notes': list(result['notes']),
  }


def write_outputs(result: Dict[str, Any], images, image_paths: Sequence[str],
                  out_dir) -> Dict[str, Any]:
  """Writes every figure, rollout.npy and analysis.json into `out_dir`.

  Args:
    result: what `compute_analysis` returned for `images`.
    images: the (B, H, W, 3) images in [-1, 1] it was computed on.
    image_paths: their names, for titles and file names.
    out_dir: created if missing.

  Returns:
    The analysis.json record.
  """
  os.makedirs(out_dir, exist_ok=True)
  name = result['model']
  gap_note = ('' if result['rollout_kind'] == ROLLOUT_CLASS_TOKEN else
              '\nmean over patch queries (no class token)')
  figures = []
  for index, (image, path) in enumerate(zip(images, image_paths)):
    figures.append(_figure_name(index, path))
    plots.plot_rollout(image, result['rollout_maps'][index],
                 f'{name}: attention rollout of {os.path.basename(path)}'
                 f'{gap_note}', os.path.join(out_dir, figures[-1]))
  num_images = len(image_paths)
  figures.append('attention_distance.png')
  plots.plot_attention_distance(
      result['mean_attention_distance_px'], max(result['image_size']),
      f'{name}: mean attention distance per head\n(averaged over '
      f'{num_images} image{"s" * (num_images > 1)})',
      os.path.join(out_dir, figures[-1]))
  if result['position_embedding_similarity'] is not None:
    figures.append('position_embedding_similarity.png')
    plots.plot_position_similarity(
        result['position_embedding_similarity'],
        f'{name}: position embedding similarity', os.path.join(out_dir,
                                                               figures[-1]))
  if result['filter_components'] is not None:
    figures.append('embedding_filters_pca.png')
    plots.plot_filter_components(
        result['filter_components'], result['filter_explained_variance'],
        f'{name}: principal components of the embedding filters\n'
        '(share of variance)', os.path.join(out_dir, figures[-1]))

  np.save(os.path.join(out_dir, 'rollout.npy'), result['rollout_maps'])
  record = to_json(result, image_paths, figures)
  with open(os.path.join(out_dir, 'analysis.json'), 'w') as f:
    json.dump(record, f, indent=1)
  return record


def run(checkpoint_path: str, model_name: Optional[str],
        image_paths: Sequence[str], out_dir: str, *,
        image_size: Optional[int] = None,
        **model_overrides: Any) -> Dict[str, Any]:
  """Loads the checkpoint, analyses the images, writes `out_dir`.

  Args:
    checkpoint_path: any source `pretrained.load` reads.
    model_name: the variant it must be, e.g. 'ViT-B_16'; None: the file's
      own architecture, named by the file in the record.
    image_paths: image files for the rollout maps and the distance average.
    out_dir: where the figures and analysis.json go.
    image_size: resolution; None: the checkpoint's native one.
    **model_overrides: further module attributes; with `model_name`, the
      architecture overrides the checkpoint was trained with.

  Returns:
    The analysis.json record.

  Raises:
    FileNotFoundError, ValueError, CheckpointMismatchError: see
    `cli_flags.USER_ERRORS`.
  """
  if not image_paths:
    raise ValueError('give at least one image: the rollout maps and the '
                     'attention distances are computed on them')
  loaded = pretrained.load(checkpoint_path, model_name,
                           image_size=image_size, **model_overrides)
  images = np.stack([image_file.load_image(path, loaded.image_size,
                                           loaded.preprocessing)
                     for path in image_paths])
  name = model_name or os.path.basename(str(checkpoint_path).rstrip('/'))
  result = compute_analysis(loaded.model, loaded.params, images, name)
  # The figures draw [-1, 1] images, whatever the model's normalisation.
  shown = images if loaded.preprocessing == models.Preprocessing() else (
      np.stack([image_file.load_image(path, loaded.image_size)
                for path in image_paths]))
  record = write_outputs(result, shown, image_paths, out_dir)
  _report(record, out_dir)
  return record


def _report(record: Dict[str, Any], out_dir: str) -> None:
  distances = np.asarray(record['mean_attention_distance_px'])
  print(f'{record["model"]} at {record["image_size"][0]} px, grid '
        f'{record["grid"][0]}x{record["grid"][1]}, classifier '
        f'{record["classifier"]}')
  for layer, row in enumerate(distances):
    print(f'  layer {layer + 1:2d}: mean attention distance '
          f'{row.min():6.1f} .. {row.max():6.1f} px over {len(row)} heads')
  for note in record['notes']:
    print(f'note: {note}')
  for figure in record['figures'] + ['rollout.npy', 'analysis.json']:
    print(f'wrote {os.path.join(out_dir, figure)}')


# ----------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  cli_flags.define_model_flags(flag_values)
  flags.DEFINE_string('out_dir', None, 'Folder for the PNGs and analysis.json.',
                      flag_values=flag_values)


def main(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS):
  """Runs `run` on the parsed flags; user errors exit with status 1.

  Returns None: app.run passes the return value to sys.exit.
  """
  def checked_run():
    cli_flags.check_required(flag_values, 'checkpoint', 'out_dir')
    return run(flag_values.checkpoint, flag_values.model, argv[1:],
               flag_values.out_dir, image_size=flag_values.image_size,
               **cli_flags.architecture_overrides(flag_values))
  cli_flags.exit_on_user_error(checked_run)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
