"""Our R+ViT hybrids as timm's: its state dict and the architecture to name.

The inverse of `vit_jax.models.vit_hybrid_timm` (whose docstring has the
key table): the transformer, head and tokens are the ViT's (`to_timm_vit`,
on the backbone's feature map), the ResNet goes to the `ResNetV2` under
`patch_embed.backbone.` of timm 1.0's vision_transformer_hybrid.py.

timm's hybrid definitions fix their backbone in code: each entrypoint
builds `_resnetv2(layers)` itself (vit_tiny_r_s16_p8_*: the stem alone;
vit_small_r26_s32_*: (2, 2, 2, 2); vit_base_r50_s16_*: (3, 4, 9);
vit_large_r50_s32_*: (3, 4, 6, 3)) and passes it inside `embed_layer`,
which config.json's model_args cannot change. So a hybrid is written under
a definition whose backbone is the model's, the one needing the fewest
overrides (`Conversion.architectures`); any other backbone is refused. The
backbone of each definition is read from the state dict timm recorded for
it (scripts/timm_table.py, `timm_listing.one_block_checkpoint`), not from a
hand-kept table.

timm's ResNetV2 standardises kernels by sqrt(var + 1e-8) and uses GroupNorm
epsilon 1e-5 (`vit_hybrid_timm.TIMM_*`), neither of which model_args can
change. A hybrid must have those numerics (as one loaded from timm has).
The released ones (std + 1e-5, epsilon 1e-6) are refused rather than
written to compute differently: where the output channels of a kernel have
scales from 0.003 to 0.05, as a trained ResNet's do, the standardisation
alone moves a tiny R50+ViT's outputs by 4e-4 to 6e-4 relative
(tests/test_to_timm_hybrid.py), and the GroupNorm epsilon matters on
features of small variance (flat images).
"""

import functools
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import flax
import numpy as np

from vit_jax.models import timm_definitions
from vit_jax.models import vit
from vit_jax.models import vit_family
from vit_jax.models import vit_hybrid_timm
from vit_jax.weights import timm_listing
from vit_jax.weights import to_timm_vit

_MODULE = 'vision_transformer_hybrid'
_BACKBONE = vit_hybrid_timm.BACKBONE
# A bottleneck block of timm's ResNetV2, by stage and index.
_BLOCK_KEY = re.compile(
    re.escape(_BACKBONE) + r'stages\.(\d+)\.blocks\.(\d+)\.conv1\.weight')
_ROOT_KEY = _BACKBONE + 'conv.weight'  # The stem alone (R+ViT-Ti).
# HybridEmbed's patch_size when a definition does not set it
# (vision_transformer_hybrid._create_vision_transformer_hybrid).
_DEFAULTS = {**to_timm_vit.VIT_DEFAULTS, 'patch_size': 1}


# ------------------------------------------------------------- backbones --

def _units(keys) -> Optional[Tuple[int, ...]]:
  """Units per stage of the ResNetV2 whose state dict has `keys`; () for the
  stem alone; None for no ResNetV2 (a plain ViT, MobileCLIP's ConvStem)."""
  blocks = {}
  for key in keys:
    match = _BLOCK_KEY.fullmatch(key)
    if match:
      stage, block = (int(index) for index in match.groups())
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  if blocks:
    return tuple(blocks[stage] for stage in range(len(blocks)))
  return () if _ROOT_KEY in keys else None


@functools.lru_cache(maxsize=None)
def timm_backbones() -> Dict[Tuple[int, ...], Tuple[str, ...]]:
  """ResNetV2 units per stage -> timm's hybrid architectures built on it
  (computed once: callers must not change it)."""
  backbones = {}
  for name in timm_definitions.architectures():
    if timm_definitions.definition(name).module != _MODULE:
      continue
    _, state_dict = timm_listing.one_block_checkpoint(name)
    units = _units(state_dict)
    if units is not None:
      backbones.setdefault(units, []).append(name)
  return {units: tuple(names) for units, names in backbones.items()}


def _architectures(units: Tuple[int, ...]) -> Tuple[str, ...]:
  """timm's architectures whose backbone has `units`.

  Raises:
    Untranslatable: none has.
  """
  backbones = timm_backbones()
  if units in backbones:
    return backbones[units]
  known = '; '.join(f'{list(known_units)} ({", ".join(names)})'
                    for known_units, names in sorted(backbones.items()))
  raise to_timm_vit.Untranslatable(
      f'timm cannot express a ResNetV2 backbone of {list(units)} units per '
      "stage: timm's hybrid definitions fix theirs (units per stage: "
      f'{known})')


def _check_expressible(model: vit.VisionTransformer) -> None:
  """Raises Untranslatable naming what timm's hybrids cannot compute."""
  numerics = (model.resnet_norm_epsilon, model.resnet_variance_epsilon)
  timm_numerics = (vit_hybrid_timm.TIMM_GROUP_NORM_EPSILON,
                   vit_hybrid_timm.TIMM_VARIANCE_EPSILON)
  if numerics != timm_numerics:
    raise to_timm_vit.Untranslatable(
        'timm cannot express the ResNet numerics resnet_norm_epsilon='
        f'{numerics[0]:g}, resnet_variance_epsilon={numerics[1]} (its '
        'ResNetV2 has GroupNorm epsilon 1e-5 and standardises kernels by '
        'sqrt(var + 1e-8), which moves outputs by ~1e-4 to 1e-3): fine-tune '
        'with model.resnet_norm_epsilon=1e-5 and '
        'model.resnet_variance_epsilon=1e-8, as a timm hybrid loads')
  if model.distillation:
    raise to_timm_vit.Untranslatable(
        "timm cannot express a distillation token in a hybrid (timm's "
        'hybrids are its VisionTransformer)')


# ---------------------------------------------------------------- arrays --

def _conv(out: Dict[str, np.ndarray], timm: str, ours: Mapping) -> None:
  """StdConv kernel (kh, kw, I, O) -> bias-free torch conv (O, I, kh, kw)."""
  out[f'{_BACKBONE}{timm}.weight'] = np.asarray(ours['kernel']).transpose(
      3, 2, 0, 1)


def _group_norm(out: Dict[str, np.ndarray], timm: str, ours: Mapping) -> None:
  out[f'{_BACKBONE}{timm}.weight'] = np.asarray(ours['scale'])
  out[f'{_BACKBONE}{timm}.bias'] = np.asarray(ours['bias'])


def _unit(out, timm: str, ours: Mapping) -> None:
  for index in (1, 2, 3):
    _conv(out, f'{timm}.conv{index}', ours[f'conv{index}'])
    _group_norm(out, f'{timm}.norm{index}', ours[f'gn{index}'])
  if 'conv_proj' in ours:
    _conv(out, f'{timm}.downsample.conv', ours['conv_proj'])
    _group_norm(out, f'{timm}.downsample.norm', ours['gn_proj'])


def backbone_state_dict(params: Mapping, units: Sequence[int]
                        ) -> Dict[str, np.ndarray]:
  """Our ResNet (`conv_root`, `gn_root`, `block{s}/unit{u}`) -> timm's
  ResNetV2 keys under patch_embed.backbone., float32."""
  out = {}
  root = 'stem.' if units else ''  # The stem alone is the backbone itself.
  _conv(out, f'{root}conv', params['conv_root'])
  _group_norm(out, f'{root}norm', params['gn_root'])
  for stage, count in enumerate(units):
    for unit in range(count):
      _unit(out, f'stages.{stage}.blocks.{unit}',
            params[f'block{stage + 1}'][f'unit{unit + 1}'])
  return {key: np.ascontiguousarray(value, np.float32)
          for key, value in out.items()}


def convert(params, model: vit.VisionTransformer,
            image_size: Tuple[int, int]) -> to_timm_vit.Conversion:
  """`model` (an R+ViT hybrid) and its `params` as timm's.

  Args:
    params: the model's parameters (scanned or not).
    model: a `vit.VisionTransformer` with `resnet_units`.
    image_size: the input (H, W) in pixels.

  Returns:
    The Conversion, whose `architectures` are timm's hybrids of the model's
    backbone.

  Raises:
    Untranslatable: a backbone no timm hybrid has, the released ResNet
      numerics, or a ViT feature timm lacks.
  """
  units = tuple(int(count) for count in model.resnet_units)
  _check_expressible(model)
  architectures = _architectures(units)
  args = to_timm_vit.timm_args(model, image_size)
  stride = vit_family.stem_stride(units)
  feature_size = (image_size[0] // stride, image_size[1] // stride)
  state_dict = {**to_timm_vit.state_dict(params, model, feature_size),
                **backbone_state_dict(flax.core.unfreeze(params), units)}
  embed_layer = timm_definitions.definition(
      architectures[0]).model_args['embed_layer']
  return to_timm_vit.Conversion(
      model_class='VisionTransformer', module=_MODULE, args=args,
      defaults=_DEFAULTS,
      fixed={**to_timm_vit.fixed_args(model), 'embed_layer': embed_layer},
      state_dict=state_dict, classifiers=('head',),
      first_conv=(f'{_BACKBONE}stem.conv' if units else f'{_BACKBONE}conv'),
      architectures=architectures)
