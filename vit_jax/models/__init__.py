"""Model families and the verbs every model has.

A family (`family.ModelFamily`) owns its variants, its checkpoint layout and
its intermediates; this module finds the family of a name, a built model or
a checkpoint, and offers the same verbs for all of them:

  create_model(name, num_classes=1000, **overrides)  any registered variant
  model_config(name)                                 its family's config.model
  check_model_config(config)                         config.model's keys
  create_model_from_config(config, num_classes)      config.model_name/model
  variant_keys()                                     every family's overrides
  init_params / param_shapes / count_params
  apply_with_intermediates(model, params, images, ...)  features, attention
  without_head(model, params)                        the features model
  patch_pixels(model)                                input pixels per token

Built in: ViT and R+ViT hybrids (`vit_family`) and MLP-Mixer
(`mixer_family`), listed in `_FAMILIES`. Another family is one module
implementing `family.ModelFamily` (its config section included) and one
line: an entry there, or a `register(...)` call; registering is explicit,
never a side effect of importing a module.
"""

from typing import (Any, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax.models import family as family_lib
from vit_jax.models import mixer_family
from vit_jax.models import vit_family

ModelFamily = family_lib.ModelFamily
CheckpointMismatchError = family_lib.CheckpointMismatchError
Preprocessing = family_lib.Preprocessing
count_params = family_lib.count_params

_FAMILIES: List[ModelFamily] = [vit_family.FAMILY, mixer_family.FAMILY]

# The ViT family's variant table (the released names), for convenience.
VARIANTS = vit_family.VARIANTS


def register(new_family: ModelFamily) -> None:
  """Makes a family's variants and checkpoints known to every verb.

  Raises:
    ValueError: a family of that name, or one of its variant names, is
      already registered.
  """
  for known in _FAMILIES:
    if known.name == new_family.name:
      raise ValueError(f'a model family called {new_family.name!r} is '
                       'already registered')
    clashes = set(known.variants) & set(new_family.variants)
    if clashes:
      raise ValueError(f'variants {sorted(clashes)} of {new_family.name!r} '
                       f'are already {known.name!r} variants')
  _FAMILIES.append(new_family)


def unregister(name: str) -> None:
  """Removes the family called `name` (tests register temporary ones)."""
  _FAMILIES[:] = [f for f in _FAMILIES if f.name != name]


def families() -> Tuple[ModelFamily, ...]:
  return tuple(_FAMILIES)


def _all_variant_names() -> List[str]:
  return [name for f in _FAMILIES for name in f.variants]


def resolve(name: str) -> Tuple[ModelFamily, str]:
  """(family, released name) of a variant name or short form.

  Raises:
    ValueError: no family knows `name`.
  """
  for candidate in _FAMILIES:
    canonical = candidate.canonical_name(name)
    if canonical is not None:
      return candidate, canonical
  raise ValueError(
      f'unknown model {name!r}. Known models: {", ".join(_all_variant_names())}'
      ' (short forms such as "B/16" or "R50+B/16" work too).')


def canonical_name(name: str) -> str:
  """Maps `ViT-B_16`, `ViT-B/16` or `B/16` to the released name `ViT-B_16`."""
  return resolve(name)[1]


def family_of(model: nn.Module) -> ModelFamily:
  """The family that builds modules of `model`'s type."""
  for candidate in _FAMILIES:
    if isinstance(model, candidate.module_type):
      return candidate
  raise ValueError(f'{type(model).__name__} belongs to no registered model '
                   'family')


def family_of_checkpoint(flat: Mapping[str, Any]) -> ModelFamily:
  """The family whose released layout a flat checkpoint has.

  Raises:
    CheckpointMismatchError: no registered family recognises the keys.
  """
  for candidate in _FAMILIES:
    if candidate.recognises(flat):
      return candidate
  tops = sorted({key.split('/')[0] for key in flat})
  raise family_lib.CheckpointMismatchError(
      f'no model family recognises a checkpoint with top-level parameters '
      f'{tops[:20]}; known families: {[f.name for f in _FAMILIES]}')


def create_model(name: str, num_classes: Optional[int] = 1000,
                 **overrides: Any) -> nn.Module:
  """Builds the named variant of any registered family.

  Args:
    name: a released variant name or one of its short forms.
    num_classes: size of the head; 0/None returns features.
    **overrides: any other module attribute (classifier, dtype, ...), or an
      architecture field to override (e.g. num_layers=2 for a tiny model).
  """
  model_family, canonical = resolve(name)
  return model_family.create(canonical, num_classes, **overrides)


def model_config(name: str) -> ml_collections.ConfigDict:
  """The `config.model` section of `name`'s family, at its defaults (the
  family's `default_config`: every key it takes)."""
  return resolve(name)[0].default_config()


def check_model_config(config) -> None:
  """Raises ValueError, in one line, when `config.model_name` is unknown or
  `config.model` has a key its family does not take."""
  model_family, _ = resolve(config.model_name)
  model_family.check_config(config.model)


def create_model_from_config(config, num_classes: int) -> nn.Module:
  """The model of `config.model_name` with `config.model`'s settings.

  Raises:
    ValueError: as `check_model_config`.
  """
  model_family, canonical = resolve(config.model_name)
  return model_family.create_from_config(canonical, config.model, num_classes)


class VariantKey(NamedTuple):
  """A variant key of the registered families (see `variant_keys`)."""
  value_type: type  # int, or tuple for a sequence of ints.
  families: Tuple[str, ...]  # Names of the families that take it.


def variant_keys() -> Dict[str, VariantKey]:
  """Every registered family's variant keys (`ModelFamily.variant_keys`),
  in registration order, with their type (from the family's config
  section) and the families that take them: the overrides that load a file
  trained with a changed architecture."""
  keys = {}
  for model_family in _FAMILIES:
    section = model_family.default_config()
    for key in model_family.variant_keys:
      if key in keys:
        keys[key] = keys[key]._replace(
            families=keys[key].families + (model_family.name,))
      else:
        keys[key] = VariantKey(section.get_ref(key).get_type(),
                               (model_family.name,))
  return keys


def effective_patch_pixels(name: str) -> int:
  """Input pixels per token side of a named variant: 16 for ViT-B_16 and
  R50+ViT-B_16."""
  model_family, canonical = resolve(name)
  return model_family.patch_pixels(model_family.create(canonical, 0))[0]


def patch_pixels(model: nn.Module) -> Tuple[int, int]:
  """Input pixels per token side (h, w) of a built model."""
  return family_of(model).patch_pixels(model)


def _dummy_images(image_size: Sequence[int], abstract: bool = False):
  shape = (1, *image_size, 3)
  if abstract:
    return jax.ShapeDtypeStruct(shape, jnp.float32)
  return jnp.zeros(shape, jnp.float32)


def init_params(model: nn.Module, rng: jax.Array,
                image_size: Sequence[int]) -> Dict[str, Any]:
  """Initialises the parameters for (H, W) inputs without running the model."""
  init = jax.jit(lambda rng: model.init(rng, _dummy_images(image_size),
                                        train=False))
  return flax.core.unfreeze(init(rng))['params']


def param_shapes(model: nn.Module,
                 image_size: Sequence[int]) -> Dict[str, Any]:
  """The parameter tree as ShapeDtypeStructs: costs no memory or FLOPs."""
  variables = jax.eval_shape(
      lambda images: model.init(jax.random.PRNGKey(0), images, train=False),
      _dummy_images(image_size, abstract=True))
  return flax.core.unfreeze(variables)['params']


def apply_with_intermediates(model: nn.Module, params, images,
                             attention_layers: Sequence[int] = (),
                             block_outputs: bool = False):
  """Runs the model and returns (outputs, intermediates).

  Args:
    model: a model of any registered family.
    params: its parameters.
    images: (B, H, W, 3), normalised as the family expects.
    attention_layers: layers whose attention weights to return; negative
      indices count from the last layer.
    block_outputs: also return each block's output.

  Returns:
    (outputs, intermediates) where intermediates has 'pre_logits' (the
    features before the head), 'attention_weights' {layer: (B, heads, N, N)}
    when asked, and 'block_outputs' [(B, N, D)] * num_layers when asked.
  """
  return family_of(model).apply_with_intermediates(
      model, params, images, attention_layers, block_outputs)


def without_head(model: nn.Module, params) -> Tuple[nn.Module, Any]:
  """The features model (timm's `num_classes=0`) and its params: its
  output is the 'pre_logits' features."""
  return family_of(model).without_head(model, params)
