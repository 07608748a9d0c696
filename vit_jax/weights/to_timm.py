"""Our weights as a timm hub directory, which `timm.create_model` loads.

  from vit_jax import weights
  weights.save_timm(params, model, 'my-vit')   # config.json + model.safetensors
  # then, where torch and timm are installed:
  #   timm.create_model('local-dir:my-vit')   gives our outputs

The directory is what timm's own `save_for_hf` writes (and what
`vit_jax.weights.timm_hub` reads back): config.json names a timm
architecture, with `model_args` (the create_model arguments that differ from
that architecture's definition, plus those timm itself records: img_size,
num_classes, global_pool, in_chans), `num_classes`, `global_pool`,
`label_names` and `pretrained_cfg` (input_size, mean and std in timm's
[0, 1] pixel units, interpolation, crop); model.safetensors holds timm's
state dict.

The architecture is chosen from the model's shape among timm's definitions
(`vit_jax.models.timm_definitions`): of those of the right class whose
fixed arguments (those JSON cannot override, such as the LayerNorm epsilon)
match, the one needing the fewest `model_args` overrides, then one with a
pretrained tag at the model's resolution, then one of the class's own
module (`vision_transformer` before `deit`), then the first by name. A model of
a released shape therefore gets its own name (ViT-B/16 at 384 px:
`vit_base_patch16_384`), any other the nearest definition with overrides.
Where timm's code, not the arguments, tells definitions apart (a hybrid's
ResNet backbone), the converter names those that fit
(`Conversion.architectures`).
A model timm cannot express is refused in one line naming the feature
(`to_timm_vit.Untranslatable`, a ValueError).

What each family's arrays and options are in timm's terms is that family's
converter (`_CONVERTERS`). The ViT's: `to_timm_vit`; `to_timm_eva` for
timm's Eva where the model has RoPE, gated MLPs or inner norms (of the
layouts of its arrays that compute the same, the one nearest a definition);
`to_timm_hybrid` for its R+ViT hybrids. The MLP-Mixer's: `to_timm_mixer`,
which writes timm's `mixer_b16_224` / `mixer_l16_224` shapes with the erf
GELU, as timm's Mixer entrypoints allow.
"""

import json
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from etils import epath
import numpy as np
from safetensors import numpy as safetensors_numpy

from vit_jax import atomic
from vit_jax import models
from vit_jax.models import family
from vit_jax.models import timm_definitions
from vit_jax.weights import timm_hub
from vit_jax.weights import to_timm_eva
from vit_jax.weights import to_timm_mixer
from vit_jax.weights import to_timm_hybrid
from vit_jax.weights import to_timm_vit

Untranslatable = to_timm_vit.Untranslatable
Conversion = to_timm_vit.Conversion


def _convert_vit(params, model, image_size: Tuple[int, int]) -> Conversion:
  """The ViT family: timm's hybrid layout for an R+ViT (`resnet_units`);
  else timm's VisionTransformer and, for a model with an option of timm's
  Eva (RoPE, gated MLPs, inner norms), its Eva: of the layouts either can
  write, the one nearest a definition (an AIMv2 or a BEiT-3 is timm's ViT,
  an EVA-02 its Eva)."""
  if model.resnet_units is not None:
    return to_timm_hybrid.convert(params, model, image_size)
  rank = lambda conversion: _order(conversion, image_size)
  writers = [to_timm_vit.convert]
  if to_timm_eva.needs_eva(model):
    writers.append(to_timm_eva.convert)
  conversions, refusals = [], []
  for writer in writers:
    try:
      conversions.append(writer(params, model, image_size, rank=rank))
    except Untranslatable as refusal:
      refusals.append(refusal)
  if not conversions:  # RoPE is Eva's alone: its reason; else the ViT's.
    raise refusals[-1] if model.rope is not None else refusals[0]
  # None fits: the last, whose fixed arguments choose_architecture names.
  return conversions[to_timm_vit.nearest(conversions, rank, default=-1)]


# Family name -> fn(params, model, image_size) -> Conversion.
_CONVERTERS: Dict[str, Callable[..., Conversion]] = {
    'vit': _convert_vit,
    'mixer': to_timm_mixer.convert,
}
# What timm's save_for_hf records in model_args whatever the definition.
_ALWAYS_RECORDED = ('img_size', 'num_classes', 'global_pool', 'in_chans')
# Written even where the definition has them: readers that do not know the
# definitions (older vit_jax, other tools) take them from model_args.
_ALWAYS_WRITTEN = ('num_heads', 'act_layer')
_WRITTEN_WHEN_SET = ('pool_include_prefix',)
# How our evaluation resizes (vit_jax.data.preprocess: the whole image,
# bilinear), in pretrained_cfg's terms.
_INTERPOLATION = 'bilinear'
# timm's own unit-test models (tiny, with tags): never a name to give.
_TEST_MODELS = 'test_'
_CROP_PCT = 1.0


def convert(params, model, image_size: Tuple[int, int]) -> Conversion:
  """`model`'s `params` in timm's terms (its family's converter).

  Raises:
    Untranslatable: timm cannot express the model (or no converter
      knows its family).
  """
  model_family = models.family_of(model)
  converter = _CONVERTERS.get(model_family.name)
  if converter is None:
    raise Untranslatable(
        f'timm cannot express a {model_family.name} model: vit_jax writes '
        f'timm checkpoints of {", ".join(sorted(_CONVERTERS))} models')
  return converter(params, model, image_size)


# -------------------------------------------------- architecture choice --

def _fits(definition: timm_definitions.Definition,
          conversion: Conversion) -> bool:
  """Whether overriding `conversion.args` on the definition gives the model:
  each of its arguments is one we write or a fixed one of the right value."""
  given = definition.model_args
  for key, value in given.items():
    if key not in conversion.args and key not in conversion.fixed:
      return False
  return all(given.get(key) == value
             for key, value in conversion.fixed.items())


def overrides(definition: timm_definitions.Definition,
              conversion: Conversion) -> Dict[str, Any]:
  """The arguments whose value differs from the definition's (or from the
  class default where the definition does not set them)."""
  given = definition.model_args
  same_arg = conversion.same_arg or to_timm_vit.same_arg
  return {key: value for key, value in conversion.args.items()
          if key not in _ALWAYS_RECORDED and not same_arg(
              key, given.get(key, conversion.defaults.get(key)), value,
              conversion.args)}


def _has_tag_at(definition: timm_definitions.Definition,
                image_size: Tuple[int, int]) -> bool:
  return any(tuple(tag.get('input_size', ())[1:]) == tuple(image_size)
             for tag in definition.tags.values())


def _best_candidate(conversion: Conversion, image_size: Tuple[int, int]
                    ) -> Optional[Tuple[Tuple[Any, ...], Dict[str, Any]]]:
  """The nearest definition's (order, overrides): the order is (overrides,
  no tag at the size, of another module, name), the name last; None where
  no definition of the class has the fixed arguments."""
  candidates = []
  for name in timm_definitions.architectures():
    if name.startswith(_TEST_MODELS) or (
        conversion.architectures is not None and
        name not in conversion.architectures):
      continue
    definition = timm_definitions.definition(name)
    if (definition.model_class != conversion.model_class or
        not _fits(definition, conversion)):
      continue
    changed = overrides(definition, conversion)
    candidates.append(((len(changed), not _has_tag_at(definition, image_size),
                        definition.module != conversion.module, name),
                       changed))
  return min(candidates, key=lambda item: item[0]) if candidates else None


def _order(conversion: Conversion, image_size: Tuple[int, int]):
  """How near `conversion` is to a definition (less is nearer), or None."""
  best = _best_candidate(conversion, image_size)
  return None if best is None else best[0]


def choose_architecture(conversion: Conversion, image_size: Tuple[int, int]
                        ) -> Tuple[str, Dict[str, Any]]:
  """The timm architecture to name and its `model_args` overrides.

  Raises:
    Untranslatable: no definition of the class has the fixed arguments.
  """
  best = _best_candidate(conversion, image_size)
  if best is None:
    fixed = ', '.join(f'{key}={value!r}'
                      for key, value in conversion.fixed.items()
                      if value is not None)
    raise Untranslatable(
        f'timm cannot express this model: no {conversion.model_class} '
        f'definition of timm {timm_definitions.timm_version()} has {fixed}')
  (*_, name), changed = best
  return name, changed


# ------------------------------------------------------------- config.json --

def _pretrained_cfg(conversion: Conversion, image_size: Tuple[int, int],
                    preprocessing: family.Preprocessing,
                    num_classes: int) -> Dict[str, Any]:
  classifiers = conversion.classifiers
  return {
      'input_size': [3, int(image_size[0]), int(image_size[1])],
      'fixed_input_size': True, 'interpolation': _INTERPOLATION,
      'crop_pct': _CROP_PCT, 'crop_mode': 'center',
      # timm normalises [0, 1] pixels; ours are [0, 255].
      'mean': [float(value) / 255 for value in preprocessing.mean],
      'std': [float(value) / 255 for value in preprocessing.std],
      'num_classes': num_classes, 'pool_size': None,
      'first_conv': conversion.first_conv,
      'classifier': classifiers[0] if len(classifiers) == 1 else list(
          classifiers),
      'custom_load': False,
  }


def hub_config(conversion: Conversion, image_size: Tuple[int, int], *,
               preprocessing: family.Preprocessing,
               class_names: Optional[Sequence[str]] = None
               ) -> Dict[str, Any]:
  """config.json of a converted model (see the module docstring)."""
  architecture, changed = choose_architecture(conversion, image_size)
  args = conversion.args
  num_classes = int(args['num_classes'])
  model_args = {**changed,
                **{key: args[key] for key in _ALWAYS_WRITTEN if key in args},
                **{key: args[key] for key in _WRITTEN_WHEN_SET
                   if args.get(key)},
                **{key: args[key] for key in _ALWAYS_RECORDED if key in args}}
  config = {'architecture': architecture, 'num_classes': num_classes,
            'num_features': int(args.get('embed_dim', 0))}
  if args.get('global_pool'):  # timm writes only a non-empty pool here.
    config['global_pool'] = args['global_pool']
  if class_names is not None:
    config['label_names'] = [str(name) for name in class_names]
  config['model_args'] = model_args
  config['pretrained_cfg'] = _pretrained_cfg(conversion, image_size,
                                             preprocessing, num_classes)
  return config


# ------------------------------------------------------------------ write --

def _native_size(params, model) -> Tuple[int, int]:
  """The resolution the position embedding is stored for."""
  model_family = models.family_of(model)
  grid = model_family.describe(params).native_grid
  patch_h, patch_w = model_family.patch_pixels(model)
  # A token count is a square grid's only where the patches are square.
  if grid is None or patch_h != patch_w:
    raise ValueError('the position embedding does not say the resolution '
                     'of this model: pass image_size')
  return grid[0] * patch_h, grid[1] * patch_w


def _check_class_names(class_names, num_classes: int) -> None:
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f'{len(class_names)} class names for a head of '
                     f'{num_classes or "no"} classes: give one name per '
                     'output')


def save_timm(params, model, directory, *,
              image_size: Optional[Any] = None,
              preprocessing: Optional[family.Preprocessing] = None,
              class_names: Optional[Sequence[str]] = None
              ) -> Dict[str, Any]:
  """Writes `params` of `model` as a timm hub directory.

  Args:
    params: the model's parameters (our tree, scanned or not).
    model: the flax module they belong to.
    directory: where config.json and model.safetensors go (created; files
      of those names there are replaced, each atomically, the weights
      first).
    image_size: the resolution (a side or (H, W)); None: the one the
      position embedding is stored for.
    preprocessing: the pixel normalisation the weights expect, in our
      [0, 255] units; None: the family's.
    class_names: one name per output class (config.json's label_names).

  Returns:
    The config.json written.

  Raises:
    Untranslatable: timm cannot express the model (the message names the
      feature); ValueError: class names that do not fit the head, or no
      resolution.
  """
  if image_size is None:
    image_size = _native_size(params, model)
  elif np.ndim(image_size) == 0:
    image_size = (int(image_size), int(image_size))
  image_size = (int(image_size[0]), int(image_size[1]))
  conversion = convert(params, model, image_size)
  _check_class_names(class_names, int(conversion.args['num_classes']))
  config = hub_config(
      conversion, image_size, class_names=class_names,
      preprocessing=(preprocessing or
                     models.family_of(model).preprocessing))
  directory = epath.Path(directory)
  atomic.write_bytes(directory / timm_hub.WEIGHTS_FILE,
                     safetensors_numpy.save(conversion.state_dict))
  atomic.write_text(directory / timm_hub.CONFIG_FILE,
                    json.dumps(config, indent=2) + '\n')
  return config
