"""A ready-to-run model from a released checkpoint file.

What the file says (class count from `head`, representation size from
`pre_logits`, `gap` when there is no `cls`, native resolution from the
position-embedding grid) wins; the model name supplies the architecture. Used
by the predict, visualize and fewshot command lines.
"""

import dataclasses
from typing import Any, Optional, Tuple

import jax
import numpy as np

from vit_jax import checkpoint
from vit_jax import models
from vit_jax import models_vit
from vit_jax import posemb


@dataclasses.dataclass(frozen=True)
class CheckpointFacts:
  """What a checkpoint's parameter tree tells about its model."""
  num_classes: Optional[int]  # None: no head (a feature extractor).
  representation_size: Optional[int]
  classifier: str  # 'token' with a class token, else 'gap'.
  hidden_size: int
  grid: Tuple[int, int]  # The position embedding's patch grid.


def describe(params) -> CheckpointFacts:
  """Reads the facts off a parameter tree in our layout."""
  for required in ('embedding', 'Transformer'):
    if required not in params:
      raise checkpoint.CheckpointMismatchError(
          f'the checkpoint has no {required!r} parameters: not a ViT '
          'checkpoint')
  classifier = 'token' if 'cls' in params else 'gap'
  pos_embedding = params['Transformer']['posembed_input']['pos_embedding']
  num_patches = pos_embedding.shape[1] - checkpoint.num_prefix_tokens(
      classifier)
  head = params.get('head')
  pre_logits = params.get('pre_logits')
  return CheckpointFacts(
      num_classes=None if head is None else int(head['kernel'].shape[-1]),
      representation_size=(None if pre_logits is None else
                            int(pre_logits['kernel'].shape[-1])),
      classifier=classifier,
      hidden_size=int(params['embedding']['bias'].shape[-1]),
      grid=posemb.square_grid(num_patches))


def load(path, model_name: str, *, image_size: Optional[int] = None,
         posemb_method: str = 'bilinear_aligned', **model_overrides: Any
         ) -> Tuple[models_vit.VisionTransformer, Any, int]:
  """Builds `model_name` with the file's head and loads it strictly.

  Args:
    path: a released-layout `.npz` (local or remote).
    model_name: a variant name, e.g. 'ViT-B_16' or 'B/16'.
    image_size: run resolution; None keeps the checkpoint's native one. A
      different size resizes the position embedding with `posemb_method`.
    posemb_method: see vit_jax.posemb.METHODS.
    **model_overrides: further VisionTransformer attributes (e.g. dtype),
      including architecture fields for a file trained with overrides
      (e.g. num_layers=2, hidden_size=32, patch_size=4).

  Returns:
    (model, params, image_size).

  Raises:
    CheckpointMismatchError: the file does not fit `model_name`.
  """
  loaded = checkpoint.load_params(path)
  facts = describe(loaded)
  # Architecture overrides (hidden_size, patch_size, ...) count: the model,
  # not the variant table, says what the file must hold.
  model = models.create_model(
      model_name, num_classes=facts.num_classes, classifier=facts.classifier,
      representation_size=facts.representation_size, **model_overrides)
  if facts.hidden_size != model.hidden_size:
    raise checkpoint.CheckpointMismatchError(
        f'{path} has hidden size {facts.hidden_size} but {model_name} has '
        f'{model.hidden_size}: is --model right for this file?')
  patch_pixels, _ = models.patch_pixels(model)
  native_size = facts.grid[0] * patch_pixels
  image_size = image_size or native_size
  if image_size % patch_pixels:
    raise ValueError(f'image size {image_size} is not a multiple of '
                     f'{model_name}\'s {patch_pixels}-pixel patches')
  shapes = models.param_shapes(model, (image_size, image_size))
  grid = (image_size // patch_pixels,) * 2
  loaded = checkpoint.adapt_pos_embedding(
      loaded, shapes, classifier=facts.classifier, new_grid=grid,
      method=posemb_method)
  params = checkpoint.merge_strict(shapes, loaded)
  return model, jax.tree_util.tree_map(np.asarray, params), image_size


def predict_logits(model, params, images_BHWC: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
  """float32 outputs for images in [-1, 1], in input order."""
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  outputs = [np.asarray(apply(params, images_BHWC[i:i + batch_size]))
             for i in range(0, len(images_BHWC), batch_size)]
  return np.concatenate(outputs).astype(np.float32)

