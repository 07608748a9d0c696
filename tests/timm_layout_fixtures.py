"""Random timm hub directories of tiny timm R+ViT hybrids and MLP-Mixers.

As tests/timm_fixtures.py's ViTs: what timm 1.0's `save_for_hf(...,
safe_serialization=True)` writes (config.json + model.safetensors under
timm's keys), for models far smaller than timm's. A hybrid is a ViT fixture
(`timm_fixtures.Family`, its image the backbone's feature map) whose patch
embedding takes the features of a ResNetV2 backbone under
`patch_embed.backbone.` (timm/models/resnetv2.py: 64-channel stem, stage s
of 256 * 2**s channels, a projection in every stage's first block); a Mixer
is timm's MlpMixer state dict (timm/models/mlp_mixer.py).
"""

import dataclasses
from typing import Any, Dict, Tuple

import numpy as np

from tests import timm_fixtures

_STEM_WIDTH = 64


@dataclasses.dataclass(frozen=True)
class Hybrid:
  """A tiny timm hybrid: the ViT on the feature map, the backbone's units
  per stage (() the stem alone) and the input image side."""
  vit: timm_fixtures.Family
  units: Tuple[int, ...]
  image_size: int

  @property
  def stride(self) -> int:
    return 4 * 2**max(len(self.units) - 1, 0)

  @property
  def channels(self) -> int:
    return 256 * 2**(len(self.units) - 1) if self.units else _STEM_WIDTH


def _hybrid(architecture, units, image_size, patch, **vit_fields):
  stride = 4 * 2**max(len(units) - 1, 0)
  return Hybrid(timm_fixtures.Family(
      architecture, patch=patch, image_size=image_size // stride,
      mean=timm_fixtures.HALF, std=timm_fixtures.HALF,
      heads_in_model_args=False, **vit_fields), units, image_size)


HYBRIDS = {
    # R+ViT-Ti/16: the stem alone (4x), 2x2 patches of its features.
    'r_ti': _hybrid('vit_tiny_r_s16_p8_224', (), 32, 2, num_heads=3),
    # R26+ViT-S/32's kind, two stages (8x), patch 1.
    'r26_s': _hybrid('vit_small_r26_s32_384', (1, 2), 32, 1, num_heads=6),
    # R50+ViT-B/16's kind, three stages (16x), no head: pooled features.
    'r50_b_features': _hybrid('vit_base_r50_s16_224', (2, 1, 1), 64, 1,
                              num_heads=12, num_classes=0),
}


def backbone_state_dict(spec: Hybrid, seed: int = 0) -> Dict[str, np.ndarray]:
  """The ResNetV2 arrays under timm's keys; small kernels (std 0.05), so
  that the weight-standardisation epsilon shows."""
  arrays = timm_fixtures.RandomStateDict(seed)

  def conv(name, outputs, inputs, size):
    arrays.add(f'patch_embed.backbone.{name}.weight', outputs, inputs, size,
               size, scale=0.05)

  def norm(name, width):
    arrays.norm(f'patch_embed.backbone.{name}', width)

  root = 'stem.' if spec.units else ''
  conv(f'{root}conv', _STEM_WIDTH, 3, 7)
  norm(f'{root}norm', _STEM_WIDTH)
  inputs = _STEM_WIDTH
  for stage, count in enumerate(spec.units):
    width = 256 * 2**stage
    for block in range(count):
      name = f'stages.{stage}.blocks.{block}'
      if block == 0:
        conv(f'{name}.downsample.conv', width, inputs, 1)
        norm(f'{name}.downsample.norm', width)
      conv(f'{name}.conv1', width // 4, inputs, 1)
      norm(f'{name}.norm1', width // 4)
      conv(f'{name}.conv2', width // 4, width // 4, 3)
      norm(f'{name}.norm2', width // 4)
      conv(f'{name}.conv3', width, width // 4, 1)
      norm(f'{name}.norm3', width)
      inputs = width
  return arrays.arrays


def hybrid_state_dict(spec: Hybrid, seed: int = 0) -> Dict[str, np.ndarray]:
  out = timm_fixtures.state_dict(spec.vit, seed)
  d, p = spec.vit.embed_dim, spec.vit.patch
  out['patch_embed.proj.weight'] = timm_fixtures.RandomStateDict(
      seed + 1).rand(d, spec.channels, p, p, scale=0.05)
  out.update(backbone_state_dict(spec, seed))
  return out


def hybrid_config(spec: Hybrid) -> Dict[str, Any]:
  """config.json: the ViT fixture's, at the hybrid's image size."""
  config = timm_fixtures.config(spec.vit)
  size = spec.image_size
  config['model_args']['img_size'] = [size, size]
  config['pretrained_cfg']['input_size'] = [3, size, size]
  config['pretrained_cfg']['first_conv'] = 'patch_embed.backbone.stem.conv'
  return config


def write_hybrid(directory, name: str, seed: int = 0):
  spec = HYBRIDS[name]
  return timm_fixtures.write_hub_dir(directory, hybrid_config(spec),
                                     hybrid_state_dict(spec, seed))


@dataclasses.dataclass(frozen=True)
class Mixer:
  """A tiny timm MlpMixer."""
  architecture: str = 'mixer_b16_224'
  embed_dim: int = 48
  depth: int = 2
  patch: int = 8
  image_size: int = 32
  tokens_mlp_dim: int = 24  # timm: mlp_ratio[0] * embed_dim.
  channels_mlp_dim: int = 192  # timm: mlp_ratio[1] * embed_dim.
  num_classes: int = 5
  global_pool: str = 'avg'
  mean: Tuple[float, ...] = timm_fixtures.HALF
  std: Tuple[float, ...] = timm_fixtures.HALF

  @property
  def num_tokens(self) -> int:
    return (self.image_size // self.patch)**2


MIXERS = {
    'mixer': Mixer(),
    'mixer_unpooled_features': Mixer('mixer_l16_224', num_classes=0,
                                     global_pool=''),
}


def mixer_state_dict(spec: Mixer, seed: int = 0) -> Dict[str, np.ndarray]:
  """Random float32 arrays under timm's MlpMixer keys
  (`timm_fixtures.RandomStateDict`)."""
  arrays = timm_fixtures.RandomStateDict(seed)
  d, n = spec.embed_dim, spec.num_tokens
  arrays.add('stem.proj.weight', d, 3, spec.patch, spec.patch)
  arrays.add('stem.proj.bias', d)

  def mlp(name, width, hidden):
    arrays.linear(f'{name}.fc1', hidden, width)
    arrays.linear(f'{name}.fc2', width, hidden)

  for block in range(spec.depth):
    arrays.norm(f'blocks.{block}.norm1', d)
    mlp(f'blocks.{block}.mlp_tokens', n, spec.tokens_mlp_dim)
    arrays.norm(f'blocks.{block}.norm2', d)
    mlp(f'blocks.{block}.mlp_channels', d, spec.channels_mlp_dim)
  arrays.norm('norm', d)
  if spec.num_classes:
    arrays.linear('head', spec.num_classes, d)
  return arrays.arrays


def mixer_config(spec: Mixer) -> Dict[str, Any]:
  """config.json as timm's save_config_for_hf writes it for an MlpMixer
  created with img_size, num_classes and global_pool."""
  size = spec.image_size
  return timm_fixtures.hub_config(
      spec.architecture, num_classes=spec.num_classes,
      num_features=spec.embed_dim, global_pool=spec.global_pool,
      model_args={'img_size': [size, size], 'in_chans': 3,
                  'num_classes': spec.num_classes,
                  'global_pool': spec.global_pool},
      pretrained=timm_fixtures.pretrained_cfg(
          (size, size), spec.mean, spec.std, spec.num_classes,
          first_conv='stem.proj', crop_pct=0.875))


def write_mixer(directory, name: str, seed: int = 0):
  spec = MIXERS[name]
  return timm_fixtures.write_hub_dir(directory, mixer_config(spec),
                                     mixer_state_dict(spec, seed))


def random_pixels(image_size: int, batch: int = 2, seed: int = 1):
  """`timm_fixtures.uint8_pixels` of a square image."""
  return timm_fixtures.uint8_pixels((image_size, image_size), batch, seed)
