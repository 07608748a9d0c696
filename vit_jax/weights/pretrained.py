"""Weights and models: load, save, fine-tune, through the model's family.

  load(source, model_name=None, ...)   a ready-to-run model (LoadedModel)
  load_for_fine_tuning(source, model, init_params, ...)  a backbone for a
                                       new head
  load_preprocessing(source, model)    the pixel normalisation of its weights
  load_params(path)                    a released-layout `.npz` -> our tree
  save_npz(params, path, *, model=None, ...)  our tree -> the released
                                       layout, with a sidecar

A source is a released-layout `.npz` (a local or remote path), a timm
checkpoint ('hf-hub:ORG/NAME' or a directory holding config.json) or the
name of a released file; the weight format that recognises it
(`vit_jax.weights.formats`) reads it into its family's tree.

The family's `describe` reads the architecture off the arrays (widths,
depth, heads, patch size, head, the options that add parameters, native
resolution). What arrays cannot say (options without parameters, the
resolution of a model without a learned position embedding, the pixel
normalisation, the class names) comes from what the format stores beside
them: the sidecar our exports write (`vit_jax.weights.sidecar`), a hub
checkpoint's config; the arrays win for shapes, and a contradiction is an
error. A model name is optional: given, the file must fit it. Used by
training, predict, visualize and few-shot.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import numpy as np

from vit_jax import models
from vit_jax.models import family
from vit_jax.models import merge
from vit_jax.weights import arrays
from vit_jax.weights import formats
from vit_jax.weights import npz
from vit_jax.weights import sidecar as sidecar_lib

Params = npz.Params


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A checkpoint ready to run (what `load` returns).

  Attributes:
    model: the flax module the checkpoint describes.
    params: its parameters (numpy float32), for `image_size` inputs.
    image_size: the run resolution: side of the square input in pixels.
    preprocessing: the pixel normalisation the weights expect.
    class_names: the name of every output class, or None when the
      checkpoint does not store them.
  """
  model: nn.Module
  params: Params
  image_size: int
  preprocessing: family.Preprocessing
  class_names: Optional[Tuple[str, ...]] = None


def load_params(path) -> Params:
  """Reads any released layout of any registered family into our nested
  parameter tree (float32)."""
  flat = npz.read_npz(path)
  return models.family_of_checkpoint(flat).from_released(flat)


def save_npz(params: Params, path, *, model: Optional[nn.Module] = None,
             class_names: Optional[Sequence[str]] = None,
             preprocessing: Optional[family.Preprocessing] = None,
             image_size: Optional[Any] = None) -> None:
  """Writes `params` (our tree, of any registered family) in its family's
  released layout, atomically; with `model`, also its sidecar
  (`vit_jax.weights.sidecar`): what `load` then needs no model name or flags
  for.

  Args:
    params: the parameters.
    path: the `.npz` to write; the sidecar is the same stem with `.json`.
    model: the module `params` belong to. None writes no sidecar (and
      deletes an older one, which would describe other arrays).
    class_names: one name per output class.
    preprocessing: the pixel normalisation the weights expect; None: the
      family's.
    image_size: the resolution the weights were trained at (a side or
      (H, W)).

  Raises:
    ValueError: a description without `model`, or one that contradicts
      `params` (e.g. another class count).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  model_family = models.family_of_checkpoint(flat)
  stored = None
  if model is not None:
    stored = _sidecar_of(params, path, model_family, model, class_names,
                         preprocessing, image_size)
  elif (class_names is not None or preprocessing is not None or
        image_size is not None):
    raise ValueError('save_npz writes class names, preprocessing and image '
                     'size into the sidecar, which needs model= too')
  # Interrupted after this, the file loads without a description rather
  # than with a stale one.
  sidecar_lib.remove(path)
  npz.write_npz(model_family.to_released(params), path)
  if stored is not None:
    sidecar_lib.write(path, stored)


def _sidecar_of(params: Params, path, model_family: family.ModelFamily,
                model: nn.Module, class_names, preprocessing,
                image_size) -> sidecar_lib.Sidecar:
  """The sidecar of `model`'s `params`, checked as `load` will check it,
  so that nothing is written that `load` would refuse."""
  if models.family_of(model) is not model_family:
    raise ValueError(f'model is a {models.family_of(model).name} model but '
                     f'params are {model_family.name} arrays')
  stored = sidecar_lib.Sidecar(
      family=model_family.name,
      model_kwargs=model_family.stored_kwargs(model),
      image_size=sidecar_lib.as_pair(image_size),
      preprocessing=preprocessing or model_family.preprocessing,
      class_names=None if class_names is None else tuple(class_names))
  checkpoint = formats.Weights(str(path), model_family, params, stored,
                               'the description given')
  _check_stored(checkpoint, model_family.describe(params))
  _check_class_names(checkpoint, getattr(model, 'num_classes', None))
  return stored


def load(source, model_name: Optional[str] = None, *,
         image_size: Optional[int] = None,
         posemb_method: str = 'bilinear_aligned',
         **model_overrides: Any) -> LoadedModel:
  """Builds the model a checkpoint describes and loads it strictly.

  Args:
    source: a released-layout `.npz` (local or remote), a timm checkpoint
      ('hf-hub:ORG/NAME' or a directory with config.json), a released
      name, or a source of any registered format (`formats`).
    model_name: optional: a variant name (e.g. 'ViT-B_16' or 'B/16') the
      file must fit; its architecture is then the variant's with the
      overrides, checked against the arrays.
    image_size: run resolution; None keeps the checkpoint's native one. A
      different size resizes what depends on it (the position embedding,
      with `posemb_method`).
    posemb_method: see vit_jax.models.posemb.METHODS.
    **model_overrides: further module attributes (e.g. dtype, activation);
      with `model_name`, also architecture fields for a file trained with
      overrides (e.g. num_layers=2, hidden_size=32, patch_size=4).

  Returns:
    The LoadedModel.

  Raises:
    FileNotFoundError: no such source.
    CheckpointMismatchError: the file does not fit `model_name` or the
      overrides, or what is stored beside the arrays contradicts them.
    ValueError: no resolution is known and `image_size` is None, or it is
      not a multiple of the patch size; or an array is not floating point,
      holds a NaN or an infinity, or is damaged (`vit_jax.weights.arrays`).
  """
  checkpoint = formats.read(source)
  model_family = checkpoint.model_family
  model, image_size = model_of(checkpoint, model_name, image_size=image_size,
                               **model_overrides)
  size = (image_size, image_size)
  shapes = models.param_shapes(model, size)
  loaded = model_family.adapt_resolution(checkpoint.params, model, shapes,
                                         size, posemb_method)
  params = merge.merge_strict(shapes, model_family.match_layout(loaded, shapes))
  stored = checkpoint.stored
  # Only now, with keys and shapes checked, are the arrays read.
  return LoadedModel(
      model=model, params=jax.tree_util.tree_map(np.asarray, params),
      image_size=image_size,
      preprocessing=((stored and stored.preprocessing) or
                     model_family.preprocessing),
      class_names=_check_class_names(checkpoint, model.num_classes))


def model_of(checkpoint: formats.Weights, model_name: Optional[str] = None,
             *, image_size: Optional[int] = None,
             **model_overrides: Any) -> Tuple[nn.Module, int]:
  """The model a checkpoint describes and its run resolution: what `load`
  checks before it compares the arrays with the model's shapes.

  Args:
    checkpoint: a format's reading of the files (`formats.read`).
    model_name, image_size, **model_overrides: as `load`'s.

  Returns:
    (the module, the side of its square input in pixels).

  Raises:
    As `load`, but for the files and the arrays' shapes and values.
  """
  facts = checkpoint.model_family.describe(checkpoint.params)
  _check_stored(checkpoint, facts)
  model = _build_model(checkpoint, facts, model_name, model_overrides)
  _check_fit(checkpoint.name, model_name, model, facts)
  return model, _run_size(checkpoint, model, facts, image_size, model_name)


def _build_model(checkpoint: formats.Weights, facts: family.CheckpointFacts,
                 model_name: Optional[str],
                 model_overrides: Mapping[str, Any]) -> nn.Module:
  """In rising precedence: the architecture (the arrays', or the named
  variant's), what is stored beside the arrays, the overrides, and what
  the arrays fix besides the architecture (e.g. the class count)."""
  stored = checkpoint.stored.model_kwargs if checkpoint.stored else {}
  # Stored values agree with the arrays (checked) and may be more precise
  # (a LayerScale's init value), so they replace what `describe` reported.
  # Stored architecture fields are left out: with a model name, the name's
  # are the ones to check; without one, `facts.expected` has them.
  described = {**facts.model_kwargs,
               **{key: value for key, value in stored.items()
                  if key not in facts.expected}}
  kwargs = {**described, **model_overrides,
            **{key: described[key] for key in facts.model_kwargs}}
  if model_name is None:
    return checkpoint.model_family.create_described(facts, **kwargs)
  named_family, canonical = models.resolve(model_name)
  if named_family is not checkpoint.model_family:
    raise family.CheckpointMismatchError(
        f'{checkpoint.name} holds {checkpoint.model_family.name} arrays but '
        f'{model_name} is a {named_family.name} model: is '
        f'model_name={model_name!r} right for this file?')
  return named_family.create(canonical, **kwargs)


def _check_stored(checkpoint: formats.Weights,
                  facts: family.CheckpointFacts) -> None:
  """Raises CheckpointMismatchError when what is stored beside the arrays
  contradicts what they show."""
  if checkpoint.stored is None:
    return
  from_arrays = {**facts.expected, **facts.model_kwargs}
  conflicts = [
      f'{key} {from_arrays[key]!r} where it says {value!r}'
      for key, value in checkpoint.stored.model_kwargs.items()
      if key in from_arrays and checkpoint.model_family.contradicts(
          key, from_arrays[key], value)]
  if conflicts:
    raise family.CheckpointMismatchError(
        f'the arrays of {checkpoint.name} contradict {checkpoint.stored_in}: '
        f'they have {"; ".join(conflicts)}. The description belongs to '
        'other weights: delete it or export the model again')


def _check_fit(name: str, model_name: Optional[str], model: nn.Module,
               facts: family.CheckpointFacts) -> None:
  """Raises CheckpointMismatchError naming every architecture field in which
  `model` differs from the arrays."""
  differences = [(key, value, getattr(model, key))
                 for key, value in facts.expected.items()
                 if getattr(model, key) != value]
  if not differences:
    return
  if model_name is not None:
    detail = '; '.join(f'{key.replace("_", " ")} {value} but {model_name} '
                       f'has {built}' for key, value, built in differences)
    raise family.CheckpointMismatchError(
        f'{name} has {detail}: is model_name={model_name!r} right for this '
        'file?')
  detail = '; '.join(f'{key.replace("_", " ")} {value} but {key}={built!r} '
                     'was asked for' for key, value, built in differences)
  raise family.CheckpointMismatchError(
      f'{name} has {detail}: its architecture is read off its arrays; drop '
      'the override')


def _run_size(checkpoint: formats.Weights, model: nn.Module,
              facts: family.CheckpointFacts, image_size: Optional[int],
              model_name: Optional[str]) -> int:
  """`image_size`, else the native one (the arrays', else the stored one).

  Raises:
    CheckpointMismatchError: the two native sizes differ.
    ValueError: no size is known, or it does not split into patches.
  """
  patch_h, patch_w = checkpoint.model_family.patch_pixels(model)
  native = (None if facts.native_grid is None else
            (facts.native_grid[0] * patch_h, facts.native_grid[1] * patch_w))
  stored = checkpoint.stored and checkpoint.stored.image_size
  if native and stored and (stored[0] // patch_h, stored[1] // patch_w) == (
      tuple(facts.native_grid)):
    # A stored size that is no multiple of the patch (timm's
    # vit_so400m_patch14_siglip_384: the conv drops the remainder).
    native = tuple(stored)
  if native and stored and tuple(stored) != native:
    raise family.CheckpointMismatchError(
        f'the position embedding of {checkpoint.name} is for '
        f'{native[0]}x{native[1]}-pixel images but {checkpoint.stored_in} '
        f'says {stored[0]}x{stored[1]}: delete it or export the model again')
  native = native or stored
  if image_size is None:
    if native is None:
      raise ValueError(f'{checkpoint.name} does not say its resolution; pass '
                       'image_size')
    if native[0] != native[1]:
      raise ValueError(f'{checkpoint.name} was trained on {native[0]}x'
                       f'{native[1]}-pixel images; pass a square image_size')
    image_size = native[0]
  if (image_size % patch_h or image_size % patch_w) and (
      image_size, image_size) != native:
    raise ValueError(f'image size {image_size} is not a multiple of '
                     f'{model_name or "the model"}\'s {patch_h}-pixel patches')
  return image_size


def _check_class_names(checkpoint: formats.Weights,
                       num_classes: Optional[int]
                       ) -> Optional[Tuple[str, ...]]:
  """The stored class names, checked against the head's class count."""
  names = checkpoint.stored and checkpoint.stored.class_names
  if names is None:
    return None
  if len(names) != (num_classes or 0):
    raise family.CheckpointMismatchError(
        f'{checkpoint.stored_in} names {len(names)} classes but '
        f'{checkpoint.name} has {num_classes or "no"} outputs: delete it or '
        'export the model again')
  return names


def load_for_fine_tuning(source, model, init_params: Params, *,
                         image_size: Sequence[int],
                         method: str = 'bilinear_aligned',
                         dont_load: Sequence[str] = ()) -> Params:
  """Loads a checkpoint (any source `load` takes) to fine-tune `model`
  (with `init_params`).

  The head is always the model's fresh (zero) head; parameters the family
  lets a fine-tuned model lack (ViT's `pre_logits`) are taken from the file
  when the model has them and dropped otherwise; what depends on the
  resolution (the position embedding) is resized to `image_size` (H, W)
  with `method`. Arrays are read (and checked, as by `load`) once keys and
  shapes are checked: the head and other arrays not loaded are never read.
  """
  model_family = models.family_of(model)
  checkpoint = formats.read(source)
  _check_rope(checkpoint, model)
  loaded = dict(checkpoint.params)
  for name in model_family.head_names:
    loaded.pop(name, None)
  for name in model_family.droppable_for_fine_tuning:
    if name not in init_params:
      loaded.pop(name, None)
  loaded = model_family.adapt_resolution(loaded, model, init_params,
                                         tuple(image_size), method)
  loaded = model_family.match_layout(loaded, init_params)
  head_patterns = tuple(f'{name}/.*' for name in model_family.head_names)
  merged = merge.merge_strict(init_params, loaded,
                              dont_load=(*head_patterns, *dont_load))
  # Only now, with keys and shapes checked, are the arrays used read.
  return arrays.read_values(merged)


def _check_rope(checkpoint: formats.Weights, model: nn.Module) -> None:
  """Raises CheckpointMismatchError when `model` would not rotate queries
  and keys as the checkpoint's weights were trained to: rotary position
  embeddings have no arrays ('mixed' frequencies aside), so the key and
  shape checks of fine-tuning cannot see a missing or different RoPE."""
  stored = checkpoint.stored.model_kwargs if checkpoint.stored else {}
  if stored.get('rope') is None or not hasattr(model, 'rope'):
    return
  defaults = {field.name: field.default
              for field in dataclasses.fields(model)
              if field.name.startswith('rope')}
  normal = lambda value: tuple(value) if isinstance(value, list) else value
  differences = [
      f'{key}={normal(stored.get(key, default))!r}'
      for key, default in defaults.items()
      if normal(stored.get(key, default)) != normal(getattr(model, key))]
  if differences:
    raise family.CheckpointMismatchError(
        f'{checkpoint.name} was trained with rotary position embeddings '
        f'{", ".join(differences)}, which the model lacks: set them on the '
        'model (config.model in a training config)')


def load_preprocessing(source, model: nn.Module) -> family.Preprocessing:
  """The pixel normalisation the weights of `source` expect: what is stored
  beside them, else the default of `model`'s family (the family they must
  have to fine-tune `model`). Only the description is read, not the arrays."""
  return (formats.find(source).read_preprocessing(source) or
          models.family_of(model).preprocessing)


def predict_logits(model, params, images_BHWC: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
  """float32 outputs for normalised images, in input order."""
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  outputs = [np.asarray(apply(params, images_BHWC[i:i + batch_size]))
             for i in range(0, len(images_BHWC), batch_size)]
  return np.concatenate(outputs).astype(np.float32)
