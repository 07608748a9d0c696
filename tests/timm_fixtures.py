"""Random timm hub directories of tiny models of each timm ViT family.

Each directory is what timm 1.0's `save_for_hf(..., safe_serialization=
True)` writes: `config.json` (architecture, num_classes, num_features,
global_pool, model_args with the create_model overrides, pretrained_cfg with
input_size / mean / std / ...) and `model.safetensors` holding the state
dict under timm's keys (written with `safetensors.numpy.save_file`). The
models are tiny (48 wide, 2 blocks, 32-pixel images), so their config.json
carries the `model_args` overrides timm records for such models; `num_heads`
is left out where the head count of timm's definition of the architecture
divides the width, which exercises `timm_definitions`.

A `Family` also holds the facts no array shows (heads, GELU variant,
LayerNorm epsilon, pooling), which the tests pass to the NumPy reference
(tests/numpy_timm.py) independently of the loader's tables.
"""

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from safetensors import numpy as safetensors_numpy

from vit_jax.models import vit
from vit_jax.weights import safetensors_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------- pieces every timm fixture shares --

class RandomStateDict:
  """Random float32 arrays under timm's keys, drawn in order from one seeded
  stream: values ~0.2 (norm scales around 1), so that every array moves
  the output."""

  def __init__(self, seed: int, *, norm_bias: bool = True):
    self._rng = np.random.default_rng(seed)
    self.norm_bias = norm_bias  # False: RmsNorms.
    self.arrays: Dict[str, np.ndarray] = {}

  def rand(self, *shape: int, scale: float = 0.2) -> np.ndarray:
    return (scale * self._rng.standard_normal(shape)).astype(np.float32)

  def add(self, name: str, *shape: int, scale: float = 0.2) -> None:
    self.arrays[name] = self.rand(*shape, scale=scale)

  def norm(self, name: str, width: int) -> None:
    self.arrays[f'{name}.weight'] = (1 + self.rand(width)).astype(np.float32)
    if self.norm_bias:
      self.add(f'{name}.bias', width)

  def linear(self, name: str, outputs: int, inputs: int,
             bias: bool = True) -> None:
    self.add(f'{name}.weight', outputs, inputs)
    if bias:
      self.add(f'{name}.bias', outputs)


def pretrained_cfg(input_size: Sequence[int], mean: Sequence[float],
                   std: Sequence[float], num_classes: int, *,
                   first_conv: str, crop_pct: float,
                   fixed_input_size: bool = True) -> Dict[str, Any]:
  """config.json's pretrained_cfg as timm writes it; input_size is (H, W)."""
  return {
      'tag': 'fixture', 'custom_load': False,
      'input_size': [3, *input_size], 'fixed_input_size': fixed_input_size,
      'interpolation': 'bicubic', 'crop_pct': crop_pct, 'crop_mode': 'center',
      'mean': list(mean), 'std': list(std),
      'num_classes': num_classes, 'pool_size': None,
      'first_conv': first_conv, 'classifier': 'head'}


def hub_config(architecture: str, *, num_classes: int, num_features: int,
               global_pool: str, model_args: Dict[str, Any],
               pretrained: Dict[str, Any],
               label_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """config.json as timm's save_config_for_hf writes it."""
  result = {'architecture': architecture, 'num_classes': num_classes,
            'num_features': num_features}
  if global_pool:  # timm writes only a non-empty global_pool here.
    result['global_pool'] = global_pool
  if label_names:
    result['label_names'] = list(label_names)
  result['model_args'] = model_args
  result['pretrained_cfg'] = pretrained
  return result


def uint8_pixels(image_size: Tuple[int, int], batch: int = 2,
                 seed: int = 1) -> np.ndarray:
  """uint8-valued float pixels (B, H, W, 3) in [0, 255]."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, *image_size, 3)).astype(np.float32)



@dataclasses.dataclass(frozen=True)
class Family:
  """A tiny timm model: its name, what its arrays hold, and the facts."""
  architecture: str
  num_heads: int
  embed_dim: int = 48
  depth: int = 2
  mlp_dim: int = 96
  patch: int = 16
  image_size: int = 32
  num_classes: int = 5  # 0: no head.
  global_pool: str = 'token'
  class_token: bool = True
  distilled: bool = False
  reg_tokens: int = 0
  no_embed_class: bool = False
  layer_scale: bool = False
  qkv_bias: bool = True
  pre_norm: bool = False  # norm_pre, and no patch-embedding bias.
  fc_norm: bool = False  # fc_norm after pooling instead of norm before.
  pool_include_prefix: bool = False
  # timm's block variants: block_fn 'Block', 'ResPostBlock',
  # 'ParallelScalingBlock' (fused_out: one out_proj),
  # 'DiffParallelScalingBlock'.
  block_fn: str = 'Block'
  fused_out: bool = False
  differential: bool = False  # attn_layer='diff' (implied by DiffParallel...).
  rms_norm: bool = False  # norm_layer='rmsnorm': norms without bias.
  embed_norm: bool = False  # embed_norm_layer: patch_embed.norm.
  final_norm: bool = True  # False: neither norm nor fc_norm.
  eps: float = 1e-6
  activation: str = 'gelu_erf'
  heads_in_model_args: bool = True
  extra_model_args: Tuple[Tuple[str, Any], ...] = ()
  mean: Sequence[float] = IMAGENET_MEAN
  std: Sequence[float] = IMAGENET_STD
  label_names: Optional[Sequence[str]] = None

  @property
  def num_prefix(self) -> int:
    return int(self.class_token) + int(self.distilled) + self.reg_tokens

  def reference_options(self) -> Dict[str, Any]:
    """tests.numpy_timm.forward's arguments for what no array shows."""
    return dict(num_heads=self.num_heads, global_pool=self.global_pool,
                no_embed_class=self.no_embed_class, eps=self.eps,
                activation=self.activation,
                pool_include_prefix=self.pool_include_prefix,
                post_norm=self.block_fn == 'ResPostBlock')


FAMILIES = {
    'augreg': Family('vit_tiny_patch16_224', num_heads=3, mean=HALF, std=HALF,
                     heads_in_model_args=False,
                     label_names=('cat', 'dog', 'eel', 'fox', 'gnu')),
    'deit': Family('deit_small_patch16_224', num_heads=6,
                   heads_in_model_args=False),
    'deit_distilled': Family('deit_tiny_distilled_patch16_224', num_heads=3,
                             distilled=True, heads_in_model_args=False),
    'deit3': Family('deit3_base_patch16_224', num_heads=4, layer_scale=True,
                    no_embed_class=True),
    'dino': Family('vit_small_patch16_224', num_heads=6, num_classes=0,
                   heads_in_model_args=False),
    # 28 px / 14 = a 2x2 grid: 4 patches and 4 + 5 prefix tokens are both
    # squares, so only the image size tells no_embed_class apart.
    'dinov2_reg': Family('vit_small_patch14_reg4_dinov2', num_heads=6,
                         patch=14, image_size=28, num_classes=0, reg_tokens=4,
                         layer_scale=True, no_embed_class=True,
                         heads_in_model_args=False),
    'mae': Family('vit_base_patch16_224', num_heads=2, num_classes=0),
    'clip': Family('vit_base_patch16_clip_224', num_heads=4, num_classes=12,
                   pre_norm=True, eps=1e-5, mean=CLIP_MEAN, std=CLIP_STD),
    'clip_quickgelu': Family('vit_base_patch16_clip_quickgelu_224',
                             num_heads=4, num_classes=12, pre_norm=True,
                             eps=1e-5, activation='quick_gelu',
                             mean=CLIP_MEAN, std=CLIP_STD),
    'siglip': Family('vit_base_patch16_siglip_224', num_heads=4,
                     num_classes=0, global_pool='map', class_token=False,
                     mean=HALF, std=HALF),
    'siglip_gelu_tanh': Family('vit_so400m_patch16_siglip_256', num_heads=16,
                               num_classes=0, global_pool='map',
                               class_token=False, activation='gelu_tanh',
                               heads_in_model_args=False, mean=HALF,
                               std=HALF),
    'gap_medium': Family('vit_medium_patch16_gap_256', num_heads=8,
                         global_pool='avg', class_token=False,
                         layer_scale=True, qkv_bias=False,
                         heads_in_model_args=False, mean=HALF, std=HALF),
    'gap_fc_norm_registers': Family(
        'vit_medium_patch16_reg4_gap_256', num_heads=8, global_pool='avg',
        class_token=False, reg_tokens=4, no_embed_class=True,
        layer_scale=True, fc_norm=True, heads_in_model_args=False),
    # timm's MAP pool over the register tokens too (pool_include_prefix).
    'map_registers': Family('vit_so150m_patch16_reg4_map_256', num_heads=4,
                            num_classes=7, global_pool='map',
                            class_token=False, reg_tokens=4,
                            pool_include_prefix=True, mean=HALF, std=HALF),
    'unpooled': Family('vit_small_patch16_224', num_heads=6, num_classes=0,
                       global_pool='', heads_in_model_args=False),
    # timm's VisionTransformer options beyond the families above.
    'post_norm': Family('vit_base_patch16_rpn_224', num_heads=4,
                        global_pool='avg', class_token=False,
                        block_fn='ResPostBlock'),
    'parallel': Family('vit_pwee_patch16_reg1_gap_256', num_heads=4,
                       global_pool='avg', class_token=False, reg_tokens=1,
                       no_embed_class=True, fc_norm=True,
                       block_fn='ParallelScalingBlock', layer_scale=True,
                       heads_in_model_args=False),
    'parallel_fused_no_qkv_bias': Family(
        'vit_base_patch16_224', num_heads=4, qkv_bias=False,
        block_fn='ParallelScalingBlock', fused_out=True),
    'differential': Family('vit_dwee_patch16_reg1_gap_256', num_heads=4,
                           global_pool='avg', class_token=False, reg_tokens=1,
                           no_embed_class=True, fc_norm=True,
                           differential=True, heads_in_model_args=False),
    'differential_parallel': Family(
        'vit_dpwee_patch16_reg1_gap_256', num_heads=4, global_pool='avg',
        class_token=False, reg_tokens=1, no_embed_class=True, fc_norm=True,
        block_fn='DiffParallelScalingBlock', heads_in_model_args=False),
    'rms_norm_embed_norm': Family('vit_base_patch16_224', num_heads=4,
                                  rms_norm=True, embed_norm=True),
    'no_final_norm': Family('vit_base_patch16_radio_v3', num_heads=12,
                            final_norm=False, reg_tokens=7,
                            no_embed_class=True, layer_scale=True,
                            heads_in_model_args=False),
    # BEiT-3 / EVA in vision_transformer.py: average pooling beside a class
    # token.
    'class_token_avg': Family('vit_base_patch16_224', num_heads=4,
                              global_pool='avg', fc_norm=True),
    'avg_over_prefix': Family('vit_medium_patch16_reg4_gap_256', num_heads=8,
                              global_pool='avg', class_token=False,
                              reg_tokens=4, no_embed_class=True,
                              fc_norm=True, pool_include_prefix=True),
    'map_patches_only': Family('vit_base_patch16_siglip_224', num_heads=4,
                               num_classes=0, global_pool='map',
                               class_token=False, reg_tokens=2),
    # 40 px / 16: timm's conv drops the remainder (a 2x2 grid).
    'floor_grid': Family('vit_base_patch16_siglip_gap_224', num_heads=4,
                         image_size=40, global_pool='avg', class_token=False,
                         num_classes=3),
}


def state_dict(spec: Family, seed: int = 0) -> Dict[str, np.ndarray]:
  """Random float32 arrays under timm's keys for `spec` (`RandomStateDict`)."""
  arrays = RandomStateDict(seed, norm_bias=not spec.rms_norm)
  d, m, p = spec.embed_dim, spec.mlp_dim, spec.patch
  norm, linear = arrays.norm, arrays.linear
  arrays.add('patch_embed.proj.weight', d, 3, p, p)
  if not spec.pre_norm:  # timm: PatchEmbed(bias=not pre_norm).
    arrays.add('patch_embed.proj.bias', d)
  if spec.embed_norm:
    norm('patch_embed.norm', d)
  for name, count in (('cls_token', int(spec.class_token)),
                      ('dist_token', int(spec.distilled)),
                      ('reg_token', spec.reg_tokens)):
    if count:
      arrays.add(name, 1, count, d)
  patches = (spec.image_size // p)**2  # timm floors the grid.
  arrays.add('pos_embed', 1, patches + (0 if spec.no_embed_class
                                        else spec.num_prefix), d)
  if spec.pre_norm:
    norm('norm_pre', d)

  def differential(name):  # DiffAttention's extras (head_dim E/2).
    half = d // spec.num_heads // 2
    for lam in ('lambda_q1', 'lambda_k1', 'lambda_q2', 'lambda_k2'):
      arrays.add(f'{name}.{lam}', half)
    arrays.arrays[f'{name}.sub_norm.weight'] = (
        1 + arrays.rand(2 * half)).astype(np.float32)

  for i in range(spec.depth):
    block = f'blocks.{i}'
    if spec.block_fn in ('ParallelScalingBlock', 'DiffParallelScalingBlock'):
      norm(f'{block}.in_norm', d)
      linear(f'{block}.in_proj', m + 3 * d, d, bias=spec.qkv_bias)
      if not spec.qkv_bias:
        arrays.add(f'{block}.mlp_bias', m)
      if spec.fused_out or spec.block_fn == 'DiffParallelScalingBlock':
        linear(f'{block}.out_proj', d, d + m)
      else:
        linear(f'{block}.attn_out_proj', d, d)
        linear(f'{block}.mlp_out_proj', d, m)
      if spec.block_fn == 'DiffParallelScalingBlock':
        differential(block)
      if spec.layer_scale:
        arrays.add(f'{block}.ls.gamma', d)
      continue
    norm(f'{block}.norm1', d)
    linear(f'{block}.attn.qkv', 3 * d, d, bias=spec.qkv_bias)
    linear(f'{block}.attn.proj', d, d)
    if spec.differential:
      differential(f'{block}.attn')
    norm(f'{block}.norm2', d)
    linear(f'{block}.mlp.fc1', m, d)
    linear(f'{block}.mlp.fc2', d, m)
    if spec.layer_scale:
      arrays.add(f'{block}.ls1.gamma', d)
      arrays.add(f'{block}.ls2.gamma', d)
  if spec.final_norm:
    norm('fc_norm' if spec.fc_norm else 'norm', d)
  if spec.global_pool == 'map':
    arrays.add('attn_pool.latent', 1, 1, d)
    linear('attn_pool.q', d, d)
    linear('attn_pool.kv', 2 * d, d)
    linear('attn_pool.proj', d, d)
    norm('attn_pool.norm', d)
    linear('attn_pool.mlp.fc1', m, d)
    linear('attn_pool.mlp.fc2', d, m)
  if spec.num_classes:
    linear('head', spec.num_classes, d)
    if spec.distilled:
      linear('head_dist', spec.num_classes, d)
  return arrays.arrays


def config(spec: Family) -> Dict[str, Any]:
  """config.json as timm's save_config_for_hf writes it."""
  size = spec.image_size
  model_args = dict(
      depth=spec.depth, embed_dim=spec.embed_dim,
      mlp_ratio=spec.mlp_dim / spec.embed_dim, img_size=[size, size],
      num_classes=spec.num_classes, in_chans=3, global_pool=spec.global_pool)
  if spec.heads_in_model_args:
    model_args['num_heads'] = spec.num_heads
  if spec.pool_include_prefix:
    model_args['pool_include_prefix'] = True
  if spec.block_fn != 'Block':
    model_args['block_fn'] = spec.block_fn
  if spec.differential:
    model_args['attn_layer'] = 'diff'
  if spec.rms_norm:
    model_args['norm_layer'] = 'rmsnorm'
  if spec.embed_norm:
    model_args['embed_norm_layer'] = model_args.get('norm_layer', 'layernorm')
  if not spec.final_norm:
    model_args['final_norm'] = False
  model_args.update(spec.extra_model_args)
  return hub_config(
      spec.architecture, num_classes=spec.num_classes,
      num_features=spec.embed_dim, global_pool=spec.global_pool,
      model_args=model_args, label_names=spec.label_names,
      pretrained=pretrained_cfg(
          (size, size), spec.mean, spec.std, spec.num_classes,
          first_conv='patch_embed.proj', crop_pct=0.9))


def write_hub_dir(directory, config_dict: Dict[str, Any],
                  arrays: Dict[str, np.ndarray]) -> pathlib.Path:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'config.json').write_text(json.dumps(config_dict, indent=2))
  safetensors_numpy.save_file(arrays, str(directory / 'model.safetensors'))
  return directory


def write_family(directory, name: str, seed: int = 0) -> pathlib.Path:
  spec = FAMILIES[name]
  return write_hub_dir(directory, config(spec), state_dict(spec, seed))


def random_pixels(spec: Family, batch: int = 2, seed: int = 1) -> np.ndarray:
  """`uint8_pixels` at the fixture's image size."""
  return uint8_pixels((spec.image_size, spec.image_size), batch, seed)


def write_hub_cache(cache_dir, repo_id: str, directory,
                    commit: str = 'c0ffee' * 6 + 'c0ff') -> str:
  """Puts `directory`'s files into a Hugging Face hub cache as
  huggingface_hub lays it out (docs: "Understand caching"):
  models--ORG--NAME/blobs/<sha256>, snapshots/<commit>/<file> -> the blob
  (relative symlink), refs/main holding the commit. Returns the commit."""
  repo = pathlib.Path(cache_dir) / ('models--' + repo_id.replace('/', '--'))
  for folder in ('blobs', f'snapshots/{commit}', 'refs'):
    (repo / folder).mkdir(parents=True, exist_ok=True)
  for path in sorted(pathlib.Path(directory).iterdir()):
    data = path.read_bytes()
    blob = hashlib.sha256(data).hexdigest()
    (repo / 'blobs' / blob).write_bytes(data)
    (repo / 'snapshots' / commit / path.name).symlink_to(
        pathlib.Path('..', '..', 'blobs', blob))
  (repo / 'refs' / 'main').write_text(commit)
  return commit


# ------------------------------------------- checks shared by the tests --

def assert_relatively_close(actual, expected, tolerance=1e-5):
  """max |actual - expected| <= tolerance * max |expected|. 1e-5 (float32
  against float64 gives ~5e-7) tells the GELU variants (~1e-4) and the
  LayerNorm epsilons 1e-5 / 1e-6 (~2e-5) apart."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert error <= tolerance, f'relative error {error:.2e}'


def our_outputs(ckpt, pixels_BHWC):
  mean = np.asarray(ckpt.preprocessing.mean, np.float32)
  std = np.asarray(ckpt.preprocessing.std, np.float32)
  model = vit.VisionTransformer(**ckpt.model_kwargs)
  return model.apply({'params': ckpt.params}, (pixels_BHWC - mean) / std)


def timm_inputs(spec, pixels_BHWC):
  """timm's input: [0, 1] pixels normalised by pretrained_cfg, NCHW."""
  images = (pixels_BHWC / 255. - np.asarray(spec.mean)) / np.asarray(spec.std)
  return images.transpose(0, 3, 1, 2)


def written_state_dict(directory) -> Dict[str, np.ndarray]:
  """The arrays of the model.safetensors in `directory` (what save_timm or
  timm wrote)."""
  return {key: np.asarray(value) for key, value in
          safetensors_file.open_safetensors(
              pathlib.Path(directory) / 'model.safetensors').items()}
