"""timm names as checkpoint sources, and which of timm's models vit_jax loads.

A timm name is what `timm.create_model` takes: an architecture and a
pretrained tag (`vit_base_patch16_224.augreg2_in21k_ft_in1k`), with or
without `timm/` before it; a bare architecture means timm's default tag.
`hub_source` turns one into the 'hf-hub:' id of its weights (the tag's
`hf_hub_id` in timm's table, `vit_jax.models.timm_definitions`), which
`timm_hub` fetches through the Hugging Face cache like any other id:

  weights.load('vit_base_patch16_224.augreg2_in21k_ft_in1k')
  # = weights.load('hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k')

`refusal(definition)` says, without any array, why vit_jax would refuse an
architecture, or None when it loads: the listing (`vit-jax weights --timm`)
is computed from it, not kept by hand. It asks the registered families'
timm layouts (a layout's `model_classes` and `definition_refusal`, where it
has them); for the ViT layout, which has neither yet, it runs the definition
through the recipe's own checks (`vit_timm_recipe`: the name table, the
model_args vocabulary, the pooling), with the features the arrays would show
(qk-norm, inner norms, a CNN backbone) named as its key table names them.
"""

import re
from typing import Any, Dict, Mapping, Optional, Tuple

from vit_jax import models
from vit_jax.models import family
from vit_jax.models import timm_definitions
from vit_jax.models import vit_timm_recipe as timm_recipe
from vit_jax.weights import timm_hub

TIMM_PREFIX = 'timm/'
# Classes the ViT family's timm layout (vit_timm) reads.
_VIT_CLASSES = ('VisionTransformer', 'VisionTransformerDistilled')
# Definition arguments whose effect shows in the arrays only, as a key that
# the recipe's key table (`vit_timm_recipe._UNSUPPORTED_KEYS`) names the
# feature of: (argument, its layer name or value, a key it adds).
_FEATURES_IN_ARRAYS = (
    ('embed_layer', 'HybridEmbed', 'patch_embed.backbone.stem.conv.weight'),
    ('embed_norm_layer', '*', 'patch_embed.norm.weight'),
    ('qk_norm', True, 'blocks.0.attn.q_norm.weight'),
    ('scale_attn_norm', True, 'blocks.0.attn.norm.weight'),
    ('scale_mlp_norm', True, 'blocks.0.mlp.norm.weight'),
    ('mlp_layer', 'SwiGLU', 'blocks.0.mlp.fc1_g.weight'),
    ('mlp_layer', 'SwiGLUPacked', 'blocks.0.mlp.fc1_g.weight'),
    ('mlp_layer', 'GluMlp', 'blocks.0.mlp.fc1_g.weight'),
    ('attn_layer', 'diff', 'blocks.0.attn.lambda_q1'),
    ('block_fn', 'ParallelScalingBlock', 'blocks.0.in_proj.weight'),
    ('block_fn', 'DiffParallelScalingBlock', 'blocks.0.in_proj.weight'),
    ('block_fn', 'ParallelThingsBlock', 'blocks.0.attns.0.qkv.weight'),
)


# ------------------------------------------------------------------ names --

def split(name: str) -> Tuple[str, Optional[str]]:
  """'timm/ARCH.TAG', 'ARCH.TAG' or 'ARCH' -> (ARCH, TAG or None)."""
  return timm_definitions.split_name(name)


def is_timm_name(source: Any) -> bool:
  """Whether `source` names an architecture of timm's table (its tag is
  checked by `hub_source`, so that a wrong tag gets its own error)."""
  if not isinstance(source, str) or not re.fullmatch(
      r'(timm/)?[a-z0-9_]+(\.[A-Za-z0-9_]+)?', source):
    return False
  return timm_definitions.definition(source) is not None


def hub_source(name: str) -> str:
  """The 'hf-hub:' id of a timm name's weights.

  Raises:
    ValueError: the tag is not one of the architecture's, or its weights
      are not on the Hugging Face hub.
  """
  definition = timm_definitions.definition(name)
  if definition is None:
    raise ValueError(f'{name!r} is no timm architecture of timm '
                     f'{timm_definitions.timm_version()}\'s ViT modules')
  architecture, tag = split(name)
  tag = tag or definition.default_tag
  if tag not in definition.tags:
    raise ValueError(
        f'{architecture} has no pretrained tag {tag!r}: it has '
        f'{", ".join(sorted(definition.tags))}')
  hub_id = definition.tags[tag].get('hf_hub_id')
  if not hub_id:
    raise ValueError(f'{architecture}.{tag} is not on the Hugging Face hub '
                     '(timm fetches it from another URL): download it with '
                     'timm and save it with timm.models.save_for_hf')
  return timm_hub.HF_HUB_PREFIX + hub_id


# ---------------------------------------------------------- what loads --

def _keys_shown(args: Mapping[str, Any]) -> Dict[str, None]:
  """Keys the arrays of a model of these arguments would have that name a
  feature the recipe refuses."""
  shown = {}
  for name, value, key in _FEATURES_IN_ARRAYS:
    given = args.get(name)
    if given is None:
      continue
    if value == '*' or given is value or (
        timm_definitions.layer_name(given) == value):
      shown[key] = None
  return shown


def _vit_refusal(definition: timm_definitions.Definition) -> Optional[str]:
  """Why the ViT layout refuses the definition, by its recipe's checks on
  what a hub checkpoint of it holds: config.json (the name and global_pool)
  and the keys its arrays would show."""
  args = definition.model_args
  pool = args.get('global_pool', 'token')
  config = {'architecture': definition.architecture, 'global_pool': pool}
  norm = timm_definitions.layer_name(args.get('norm_layer'))
  if norm not in (None, 'LayerNorm'):
    return f'norm_layer {norm} (vit_jax implements LayerNorm)'
  if args.get('final_norm') is False:
    return ('neither `norm` nor `fc_norm` (final_norm=False): vit_jax needs '
            'exactly one final LayerNorm')
  try:
    recipe = timm_recipe.recipe(config, _keys_shown(args))
    timm_recipe.num_heads(recipe, int(args.get('embed_dim', 768)))
    has_cls = args.get('class_token', True)
    distilled = definition.model_class == 'VisionTransformerDistilled'
    timm_recipe.classifier(
        recipe, has_cls=has_cls, has_map=pool == 'map', distilled=distilled,
        num_prefix=(int(has_cls) + int(distilled) +
                    int(args.get('reg_tokens', 0))))
  except (family.CheckpointMismatchError, ValueError) as e:
    return str(e)
  return _grid_refusal(definition)


def _grid_refusal(definition: timm_definitions.Definition) -> Optional[str]:
  patch = definition.model_args.get('patch_size', 16)
  patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
  for tag in definition.tags.values():
    size = tag.get('input_size') or ()
    if len(size) == 3 and (size[1] % patch[0] or size[2] % patch[1]):
      return (f'input_size {size[1]}x{size[2]} is not a multiple of the '
              f'patch size {patch[0]}x{patch[1]} (timm floors the grid)')
  return None


def _layouts():
  """(family, its timm layout) of every registered family that has one."""
  return [(model_family, model_family.foreign_layouts[timm_hub.LAYOUT])
          for model_family in models.families()
          if timm_hub.LAYOUT in model_family.foreign_layouts]


def refusal(definition: timm_definitions.Definition) -> Optional[str]:
  """Why vit_jax refuses to load the architecture, or None if it loads it.

  Asks the registered families' timm layouts: one whose `model_classes`
  (the ViT's: VisionTransformer and VisionTransformerDistilled) hold the
  definition's class decides, through its `definition_refusal` where it has
  one, else (the ViT's) through the recipe's checks.
  """
  for model_family, layout in _layouts():
    classes = getattr(layout, 'model_classes',
                      _VIT_CLASSES if model_family.name == 'vit' else ())
    if definition.model_class not in classes:
      continue
    check = getattr(layout, 'definition_refusal', None)
    if check is not None:
      return check(definition)
    return _vit_refusal(definition)
  return (f"timm's {definition.model_class} ({definition.module}.py), whose "
          'layout no vit_jax family reads')


def table() -> Tuple[Tuple[str, str, Optional[str], Optional[str]], ...]:
  """(architecture, tag, hub id or None, refusal or None) of every tag of
  timm's table, sorted; the default tag first in each architecture."""
  rows = []
  for architecture in timm_definitions.architectures():
    definition = timm_definitions.definition(architecture)
    why = refusal(definition)
    tags = sorted(definition.tags,
                  key=lambda tag: (tag != definition.default_tag, tag))
    rows += [(architecture, tag, definition.tags[tag].get('hf_hub_id'), why)
             for tag in tags]
  return tuple(rows)


def summary(rows: Optional[Mapping] = None) -> str:
  """'N of M architectures load' over `table()`."""
  rows = table() if rows is None else rows
  by_architecture = {row[0]: row[3] for row in rows}
  loads = sum(why is None for why in by_architecture.values())
  return (f'{loads} of {len(by_architecture)} architectures of timm '
          f'{timm_definitions.timm_version()} load')
