"""What timm's R+ViT hybrid layout means, as our `vit.VisionTransformer`.

timm 1.0 ports the hybrids of Dosovitskiy et al. (2021) (R50+ViT-B/16,
R26+ViT-S/32, R+ViT-Ti/16, R50+ViT-L/32; timm/models/
vision_transformer_hybrid.py) as its VisionTransformer whose patch embedding
is a `HybridEmbed`: a `ResNetV2(preact=False, stem_type='same')` backbone
(timm/models/resnetv2.py), then a `proj` conv on its feature map. Its state
dict is the ViT's (`vit_timm`) plus the backbone (u unit, s stage, numbered
from 0):

  timm key (under patch_embed.backbone.)   ours
  stem.conv (64, 3, 7, 7)                  conv_root/kernel (7, 7, 3, 64)
  stem.norm                                gn_root (scale, bias)
  stages.s.blocks.u.conv1, conv2, conv3    block{s+1}/unit{u+1}/conv1, 2, 3
  stages.s.blocks.u.norm1, norm2, norm3    block{s+1}/unit{u+1}/gn1, 2, 3
  stages.s.blocks.u.downsample.conv, norm  block{s+1}/unit{u+1}/conv_proj,
                                             gn_proj
  conv, norm (no stages: R+ViT-Ti)         conv_root, gn_root
  patch_embed.proj (D, C, p, p)            embedding (p, p, C, D), p on the
                                             feature map (1, or 8 for Ti)

timm's stem and units compute what ours do (TensorFlow 'SAME' padding of
the strided convs and of the max pool, which pads with -inf; the stride on
the 3x3 conv; a projection in every stage's first unit), except two
numerics, which the model options `resnet_norm_epsilon` (GroupNormAct's
1e-5) and `resnet_variance_epsilon` (StdConv2dSame(eps=1e-8)'s kernels
(w - mean) / sqrt(var + 1e-8)) reproduce (see `vit_jax.models.resnet`).
timm's other backbones (its ResNet-D `vit_*_resnet*d_*`, MobileCLIP's
BatchNorm ConvStem `vit_base_mci_224`) are refused, by name.
"""

import re
from typing import Any, Dict, Mapping, Tuple

import flax
import numpy as np

from vit_jax.models import family
from vit_jax.models import vit_timm
from vit_jax.models import vit_timm_recipe as timm_recipe

BACKBONE = 'patch_embed.backbone.'
# What timm's hybrids compute differently from the released ones.
TIMM_GROUP_NORM_EPSILON = 1e-5
TIMM_VARIANCE_EPSILON = 1e-8
_STEM_WIDTH = 64  # resnet.resnet_stem's root width.

# Every key of timm's ResNetV2 backbone, relative to BACKBONE.
_RESNETV2_KEY = re.compile(
    r'((stem\.)?(conv\.weight|norm\.(weight|bias))|'
    r'stages\.\d+\.blocks\.\d+\.(conv[123]\.weight|norm[123]\.(weight|bias)|'
    r'downsample\.conv\.weight|downsample\.norm\.(weight|bias)))')
# Backbones of timm's hybrid module that are not ResNetV2 (re.match on the
# first backbone key), by what they are.
_OTHER_BACKBONES = (
    (r'\d+\.', "MobileCLIP's convolutional stem (BatchNorm, GELU; "
     'vit_base_mci_224)'),
    (r'conv1\.|layer\d', "timm's ResNet-D (vit_*_resnet*d_*)"),
)


def _check_backbone(arrays: Mapping[str, Any]) -> Tuple[str, ...]:
  """The backbone's keys (relative to BACKBONE) if it is timm's ResNetV2.

  Raises:
    family.CheckpointMismatchError: another backbone, named.
  """
  keys = tuple(sorted(key[len(BACKBONE):] for key in arrays
                      if key.startswith(BACKBONE)))
  foreign = [key for key in keys if not _RESNETV2_KEY.fullmatch(key)]
  if foreign:
    what = next((name for pattern, name in _OTHER_BACKBONES
                 if re.match(pattern, foreign[0])), 'a CNN backbone')
    raise family.CheckpointMismatchError(
        f'the checkpoint\'s CNN backbone ({BACKBONE}{foreign[0]}) is {what}, '
        "not the R+ViT hybrids' ResNetV2: vit_jax does not implement it")
  return keys


def _take(arrays: Dict[str, Any], key: str, ndim: int) -> np.ndarray:
  """arrays[BACKBONE + key], read and removed."""
  if BACKBONE + key not in arrays:
    raise family.CheckpointMismatchError(
        f'the checkpoint has no {BACKBONE + key!r}, which timm\'s ResNetV2 '
        'of its shape has')
  value = np.asarray(arrays.pop(BACKBONE + key))
  if value.ndim != ndim:
    raise family.CheckpointMismatchError(
        f'{BACKBONE + key} has shape {value.shape}; timm\'s ResNetV2 has '
        f'{ndim} axes there')
  return value


def _conv(arrays, out, timm: str, ours: str) -> np.ndarray:
  """A bias-free torch conv (O, I, kh, kw) -> StdConv kernel (kh, kw, I, O)."""
  out[f'{ours}/kernel'] = _take(arrays, f'{timm}.weight', 4).transpose(
      2, 3, 1, 0)
  return out[f'{ours}/kernel']


def _group_norm(arrays, out, timm: str, ours: str) -> None:
  for timm_name, our_name in (('weight', 'scale'), ('bias', 'bias')):
    out[f'{ours}/{our_name}'] = _take(arrays, f'{timm}.{timm_name}', 1)


def _unit(arrays, out, stage: int, unit: int) -> None:
  timm = f'stages.{stage}.blocks.{unit}'
  ours = f'block{stage + 1}/unit{unit + 1}'
  for index in (1, 2, 3):
    _conv(arrays, out, f'{timm}.conv{index}', f'{ours}/conv{index}')
    _group_norm(arrays, out, f'{timm}.norm{index}', f'{ours}/gn{index}')
  if f'{BACKBONE}{timm}.downsample.conv.weight' in arrays:
    _conv(arrays, out, f'{timm}.downsample.conv', f'{ours}/conv_proj')
    _group_norm(arrays, out, f'{timm}.downsample.norm', f'{ours}/gn_proj')


def _count(keys, pattern: str) -> int:
  """How many consecutive indices i have a key starting with
  pattern.format(i)."""
  count = 0
  while any(key.startswith(pattern.format(count)) for key in keys):
    count += 1
  return count


def _backbone(arrays: Dict[str, Any], keys: Tuple[str, ...]
              ) -> Tuple[Dict[str, np.ndarray], Tuple[int, ...], int]:
  """Takes the backbone's arrays out of `arrays`.

  Returns:
    (our flat params, units per stage, the feature channels).
  """
  out = {}
  root = 'stem.' if 'stem.conv.weight' in keys else ''
  if f'{root}conv.weight' not in keys:
    raise family.CheckpointMismatchError(
        f'the checkpoint has {BACKBONE} arrays but no {BACKBONE}stem.conv '
        'or conv: not the R+ViT hybrids\' ResNetV2')
  root_kernel = _conv(arrays, out, f'{root}conv', 'conv_root')
  _group_norm(arrays, out, f'{root}norm', 'gn_root')
  units = tuple(_count(keys, f'stages.{stage}.blocks.{{}}.')
                for stage in range(_count(keys, 'stages.{}.')))
  for stage, count in enumerate(units):
    for unit in range(count):
      _unit(arrays, out, stage, unit)
  if root_kernel.shape[-1] != _STEM_WIDTH:
    raise family.CheckpointMismatchError(
        f'the ResNetV2 stem is {root_kernel.shape[-1]} channels wide; '
        f"vit_jax's hybrids have {_STEM_WIDTH} (width_factor 1)")
  channels = (_STEM_WIDTH if not units else
              out[f'block{len(units)}/unit1/conv3/kernel'].shape[-1])
  left = sorted(key for key in arrays if key.startswith(BACKBONE))
  if left:
    raise family.CheckpointMismatchError(
        f'{len(left)} backbone keys fit no part of vit_jax\'s ResNet: '
        f'{", ".join(left[:5])}')
  return out, units, int(channels)


def _stem_stride(units: Tuple[int, ...]) -> int:
  """The root's 4x, and 2x for every stage after the first."""
  return 4 * 2**max(len(units) - 1, 0)


def _without_padding_same(config: Mapping[str, Any]) -> Dict[str, Any]:
  """config.json without model_args padding_same, which must be True (the
  default): False pads symmetrically (timm's StdConv2d), which we lack."""
  model_args = dict(config.get('model_args') or {})
  if not model_args.pop('padding_same', True):
    raise family.CheckpointMismatchError(
        'config.json model_args padding_same=False: symmetric padding of the '
        'hybrid backbone, which vit_jax does not implement (it pads as '
        "TensorFlow's 'SAME')")
  return {**config, 'model_args': model_args}


def to_hybrid(config: Mapping[str, Any], timm_arrays: Mapping[str, Any],
              image_size: Tuple[int, int]
              ) -> Tuple[family.Params, Dict[str, Any]]:
  """timm's hybrid state dict -> our parameter tree and model attributes.

  Args:
    config: config.json (architecture, model_args).
    timm_arrays: timm key -> array.
    image_size: the native (H, W) of the input images.

  Returns:
    (params, model_kwargs) as `vit_timm.to_vit`'s, with `resnet_units` and
    timm's ResNet numerics.

  Raises:
    family.CheckpointMismatchError: a backbone or ViT feature vit_jax does
      not implement, or an array missing or left over.
  """
  keys = _check_backbone(timm_arrays)
  arrays = dict(timm_arrays)
  backbone, units, channels = _backbone(arrays, keys)
  stride = _stem_stride(units)
  if image_size[0] % stride or image_size[1] % stride:
    raise family.CheckpointMismatchError(
        f'input_size {image_size} is not a multiple of the backbone\'s '
        f'stride {stride}')
  feature_size = (image_size[0] // stride, image_size[1] // stride)
  config = _without_padding_same(config)
  params, model_kwargs = vit_timm.to_vit(
      timm_recipe.recipe(config, arrays), arrays, feature_size,
      in_channels=channels)
  params = {**params, **flax.traverse_util.unflatten_dict(
      {key: np.ascontiguousarray(value, np.float32)
       for key, value in backbone.items()}, sep='/')}
  model_kwargs.update(resnet_units=units,
                      resnet_norm_epsilon=TIMM_GROUP_NORM_EPSILON,
                      resnet_variance_epsilon=TIMM_VARIANCE_EPSILON)
  return params, model_kwargs


class TimmHybridLayout(family.ForeignLayout):
  """timm's R+ViT hybrids (see the module docstring)."""
  describes = ("timm's R+ViT hybrids: arrays with patch_embed.backbone "
               '(ResNetV2)')

  def recognises(self, config: Mapping[str, Any],
                 arrays: family.FlatParams) -> bool:
    """Every timm ViT with a CNN backbone, so that `to_params` names a
    backbone other than ResNetV2."""
    del config
    return any(key.startswith(BACKBONE) for key in arrays)

  def to_params(self, config: Mapping[str, Any], arrays: family.FlatParams,
                image_size: Tuple[int, int]
                ) -> Tuple[family.Params, Dict[str, Any]]:
    return to_hybrid(config, arrays, image_size)


LAYOUT = TimmHybridLayout()
