"""Checkpoint files and models, through the model's family.

  load_params(path)            a released-layout `.npz` -> our param tree
  save_npz(params, path)       our param tree -> the released layout
  load(path, model_name, ...)  a ready-to-run model, strictly loaded
  load_for_fine_tuning(path, model, init_params, ...)  a backbone for a new head

The family of a file is the registered one that recognises its keys
(`vit_jax.models.family_of_checkpoint`); what the file says (class count,
representation size, classifier, native resolution: the family's
`describe`) wins over the variant table, and the model name supplies the
rest of the architecture. Used by training, predict, visualize and few-shot.
"""

from typing import Any, Optional, Sequence, Tuple

import flax
import jax
import numpy as np

from vit_jax import models
from vit_jax import npz

Params = npz.Params


def load_params(path) -> Params:
  """Reads any released layout of any registered family into our nested
  parameter tree (float32)."""
  flat = npz.read_npz(path)
  return models.family_of_checkpoint(flat).from_released(flat)


def save_npz(params: Params, path) -> None:
  """Writes `params` (our tree, of any registered family) in its family's
  released layout, atomically."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  model_family = models.family_of_checkpoint(flat)
  npz.write_npz(model_family.to_released(params), path)


def load(path, model_name: str, *, image_size: Optional[int] = None,
         posemb_method: str = 'bilinear_aligned', **model_overrides: Any
         ) -> Tuple[Any, Params, int]:
  """Builds `model_name` with the file's head and loads it strictly.

  Args:
    path: a released-layout `.npz` (local or remote).
    model_name: a variant name, e.g. 'ViT-B_16' or 'B/16'.
    image_size: run resolution; None keeps the checkpoint's native one. A
      different size resizes what depends on it (the position embedding,
      with `posemb_method`).
    posemb_method: see vit_jax.posemb.METHODS.
    **model_overrides: further module attributes (e.g. dtype), including
      architecture fields for a file trained with overrides (e.g.
      num_layers=2, hidden_size=32, patch_size=4).

  Returns:
    (model, params, image_size).

  Raises:
    CheckpointMismatchError: the file does not fit `model_name`.
  """
  model_family, canonical = models.resolve(model_name)
  loaded = load_params(path)
  facts = model_family.describe(loaded)
  # Architecture overrides (hidden_size, patch_size, ...) count: the model,
  # not the variant table, says what the file must hold.
  model = model_family.create(canonical, **{**model_overrides,
                                            **facts.model_kwargs})
  _check_widths(path, model_name, model, facts)
  patch_pixels, _ = model_family.patch_pixels(model)
  native_size = (facts.native_grid[0] * patch_pixels if facts.native_grid
                 else None)
  image_size = image_size or native_size
  if image_size is None:
    raise ValueError(f'{path} does not say its resolution; pass image_size')
  if image_size % patch_pixels:
    raise ValueError(f'image size {image_size} is not a multiple of '
                     f'{model_name}\'s {patch_pixels}-pixel patches')
  shapes = models.param_shapes(model, (image_size, image_size))
  loaded = model_family.adapt_resolution(loaded, model, shapes,
                                         (image_size, image_size),
                                         posemb_method)
  params = npz.merge_strict(shapes, model_family.match_layout(loaded, shapes))
  return model, jax.tree_util.tree_map(np.asarray, params), image_size


def _check_widths(path, model_name, model, facts) -> None:
  for key, value in facts.expected.items():
    built = getattr(model, key)
    if built != value:
      raise npz.CheckpointMismatchError(
          f'{path} has {key.replace("_", " ")} {value} but {model_name} '
          f'has {built}: is '
          '--model right for this file?')


def load_for_fine_tuning(path, model, init_params: Params, *,
                         image_size: Sequence[int],
                         method: str = 'bilinear_aligned',
                         dont_load: Sequence[str] = ()) -> Params:
  """Loads a released checkpoint to fine-tune `model` (with `init_params`).

  The head is always the model's fresh (zero) head; parameters the family
  lets a fine-tuned model lack (ViT's `pre_logits`) are taken from the file
  when the model has them and dropped otherwise; what depends on the
  resolution (the position embedding) is resized to `image_size` (H, W)
  with `method`.
  """
  model_family = models.family_of(model)
  loaded = load_params(path)
  for name in model_family.head_names:
    loaded.pop(name, None)
  for name in model_family.droppable_for_fine_tuning:
    if name not in init_params:
      loaded.pop(name, None)
  loaded = model_family.adapt_resolution(loaded, model, init_params,
                                         tuple(image_size), method)
  loaded = model_family.match_layout(loaded, init_params)
  head_patterns = tuple(f'{name}/.*' for name in model_family.head_names)
  return npz.merge_strict(init_params, loaded,
                          dont_load=(*head_patterns, *dont_load))


def predict_logits(model, params, images_BHWC: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
  """float32 outputs for normalised images, in input order."""
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  outputs = [np.asarray(apply(params, images_BHWC[i:i + batch_size]))
             for i in range(0, len(images_BHWC), batch_size)]
  return np.concatenate(outputs).astype(np.float32)
