"""Random timm hub directories of tiny timm Eva models (and timm ViTs with
gated MLPs / inner norms), as timm's `save_for_hf` writes them.

The arrays are under timm 1.0's keys (timm/models/eva.py: fused `qkv` with
`q_bias` / `v_bias` or `q_proj` / `k_proj` / `v_proj`, `gamma_1`,
SwiGLU's `fc1_g` / `fc1_x`, the inner `norm`s, `rope.freqs`). config.json
names a real architecture, whose definition (timm_architectures.json)
supplies the RoPE settings; `model_args` override the sizes as timm records
them. Each `EvaFamily` also holds the facts the NumPy reference
(tests/numpy_eva.py) is given independently of the loader.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np

from tests import timm_fixtures


@dataclasses.dataclass(frozen=True)
class EvaFamily:
  """A tiny Eva model: what its arrays hold and the facts they do not."""
  architecture: str
  num_heads: int = 2  # 24-wide heads: 6 RoPE frequencies per axis.
  embed_dim: int = 48
  depth: int = 2
  mlp_dim: int = 64
  patch: int = 8
  image_size: int = 32
  num_classes: int = 5
  global_pool: str = 'avg'
  class_token: bool = True
  reg_tokens: int = 0
  pos_embed: bool = True
  no_embed_class: bool = False
  qkv: str = 'fused_qv'  # 'fused_qv' (q_bias, v_bias), 'fused', 'separate'.
  qkv_bias: bool = True
  layer_scale: str = ''  # '', 'gamma' (Eva) or 'ls' (VisionTransformer).
  mlp: str = 'plain'  # 'plain', 'swiglu' (fc1_g, fc1_x), 'packed'.
  gate_last: bool = False
  mlp_norm: bool = False
  attn_norm: bool = False
  pre_norm: bool = False
  fc_norm: bool = True  # else `norm` before pooling.
  mixed_rope: bool = False
  eps: float = 1e-6
  activation: str = 'gelu_erf'
  rope: Optional[Dict[str, Any]] = None  # numpy_eva's rope facts.
  extra_model_args: Tuple[Tuple[str, Any], ...] = ()

  def reference_options(self) -> Dict[str, Any]:
    return dict(num_heads=self.num_heads, global_pool=self.global_pool,
                eps=self.eps, activation=self.activation, rope=self.rope,
                no_embed_class=self.no_embed_class, gate_last=self.gate_last)


FAMILIES = {
    # EVA-02: SwiGLU with its hidden norm, separate q/k/v (no k bias),
    # axial RoPE rescaled onto the 16x16 reference grid, fc_norm.
    'eva02': EvaFamily(
        'eva02_base_patch14_224', qkv='separate', mlp='swiglu', mlp_norm=True,
        activation='silu',
        rope=dict(kind='axial', temperature=10000., ref=(16, 16))),
    # EVA-CLIP: as EVA-02 plus the attention output norm; class token.
    'eva02_clip': EvaFamily(
        'eva02_base_patch16_clip_224', qkv='separate', mlp='swiglu',
        mlp_norm=True, attn_norm=True, global_pool='token', fc_norm=False,
        activation='silu', num_classes=7,
        rope=dict(kind='axial', temperature=10000., ref=(16, 16))),
    # EVA-02 small: packed SwiGLU (GluMlp, gate first), fused q/v biases.
    'eva02_packed': EvaFamily(
        'eva02_small_patch14_224', mlp='packed', activation='silu',
        rope=dict(kind='axial', temperature=10000., ref=(16, 16))),
    # DINOv3: class + 4 registers, no learned position embedding, centred
    # RoPE in rotate-half layout, LayerScale, average of the patches.
    'dinov3': EvaFamily(
        'vit_small_patch16_dinov3', reg_tokens=4, pos_embed=False,
        layer_scale='gamma', fc_norm=False, num_classes=0, eps=1e-5,
        qkv_bias=False,
        rope=dict(kind='dinov3', temperature=100., rotate_half=True)),
    # timm's SBB RoPE ViT: no class token, 1 register, 'ij' axial RoPE.
    'rope_reg_gap': EvaFamily(
        'vit_medium_patch16_rope_reg1_gap_256', class_token=False,
        reg_tokens=1, pos_embed=False, layer_scale='gamma',
        rope=dict(kind='axial', temperature=10000., ref=(16, 16))),
    # Naver's RoPE-ViT: AttentionRope (fused qkv with biases), 'xy' axes.
    'rope_axial_ape': EvaFamily(
        'vit_small_patch16_rope_ape_224', qkv='fused', no_embed_class=True,
        layer_scale='gamma', global_pool='token', fc_norm=False,
        rope=dict(kind='axial', temperature=100., indexing='xy')),
    'rope_mixed': EvaFamily(
        'vit_small_patch16_rope_mixed_224', qkv='fused', pos_embed=False,
        layer_scale='gamma', global_pool='token', fc_norm=False,
        mixed_rope=True, rope=dict(kind='mixed', indexing='xy')),
    # timm's VisionTransformer, DINOv2-giant style: SwiGLUPacked.
    'vit_swiglu_packed': EvaFamily(
        'vit_giant_patch14_dinov2', qkv='fused', mlp='packed',
        layer_scale='ls', global_pool='token', fc_norm=False, num_classes=0,
        activation='silu', extra_model_args=(('num_heads', 2),)),
    # timm's VisionTransformer with GluMlp (its gate last, GELU from the
    # block) and both inner norms (scale_attn_norm, scale_mlp_norm).
    'vit_glu_inner_norms': EvaFamily(
        'vit_base_patch16_224', qkv='fused', mlp='packed', gate_last=True,
        mlp_norm=True, attn_norm=True, global_pool='token', fc_norm=False,
        extra_model_args=(('num_heads', 2), ('mlp_layer', 'GluMlp'),
                          ('scale_attn_norm', True),
                          ('scale_mlp_norm', True))),
}


def state_dict(spec: EvaFamily, seed: int = 0) -> Dict[str, np.ndarray]:
  """Random float32 arrays under timm's keys
  (`timm_fixtures.RandomStateDict`)."""
  arrays = timm_fixtures.RandomStateDict(seed)
  d, m, p = spec.embed_dim, spec.mlp_dim, spec.patch
  norm, linear = arrays.norm, arrays.linear
  arrays.add('patch_embed.proj.weight', d, 3, p, p)
  if not spec.pre_norm:
    arrays.add('patch_embed.proj.bias', d)
  if spec.class_token:
    arrays.add('cls_token', 1, 1, d)
  if spec.reg_tokens:
    arrays.add('reg_token', 1, spec.reg_tokens, d)
  prefix = int(spec.class_token) + spec.reg_tokens
  if spec.pos_embed:
    patches = (spec.image_size // p)**2
    arrays.add('pos_embed', 1, patches + (0 if spec.no_embed_class
                                          else prefix), d)
  if spec.mixed_rope:
    arrays.add('rope.freqs', 2, spec.depth, spec.num_heads,
               d // spec.num_heads // 2)
  if spec.pre_norm:
    norm('norm_pre', d)
  for i in range(spec.depth):
    block = f'blocks.{i}'
    norm(f'{block}.norm1', d)
    if spec.qkv == 'separate':
      linear(f'{block}.attn.q_proj', d, d, spec.qkv_bias)
      linear(f'{block}.attn.k_proj', d, d, False)
      linear(f'{block}.attn.v_proj', d, d, spec.qkv_bias)
    else:
      linear(f'{block}.attn.qkv', 3 * d, d,
             spec.qkv_bias and spec.qkv == 'fused')
      if spec.qkv_bias and spec.qkv == 'fused_qv':
        arrays.add(f'{block}.attn.q_bias', d)
        arrays.add(f'{block}.attn.v_bias', d)
    if spec.attn_norm:
      norm(f'{block}.attn.norm', d)
    linear(f'{block}.attn.proj', d, d)
    norm(f'{block}.norm2', d)
    if spec.mlp == 'swiglu':
      linear(f'{block}.mlp.fc1_g', m, d)
      linear(f'{block}.mlp.fc1_x', m, d)
    else:
      linear(f'{block}.mlp.fc1', 2 * m if spec.mlp == 'packed' else m, d)
    if spec.mlp_norm:
      norm(f'{block}.mlp.norm', m)
    linear(f'{block}.mlp.fc2', d, m)
    if spec.layer_scale:
      names = (('gamma_1', 'gamma_2') if spec.layer_scale == 'gamma'
               else ('ls1.gamma', 'ls2.gamma'))
      for name in names:
        arrays.add(f'{block}.{name}', d)
  norm('fc_norm' if spec.fc_norm else 'norm', d)
  if spec.num_classes:
    linear('head', spec.num_classes, d)
  return arrays.arrays


def config(spec: EvaFamily) -> Dict[str, Any]:
  """config.json as timm's save_for_hf writes it for a model created with
  these sizes."""
  size = spec.image_size
  model_args = dict(depth=spec.depth, embed_dim=spec.embed_dim,
                    num_heads=spec.num_heads, patch_size=spec.patch,
                    img_size=size, num_classes=spec.num_classes,
                    mlp_ratio=spec.mlp_dim / spec.embed_dim)
  model_args.update(spec.extra_model_args)
  return timm_fixtures.hub_config(
      spec.architecture, num_classes=spec.num_classes,
      num_features=spec.embed_dim, global_pool=spec.global_pool,
      model_args=model_args,
      pretrained=timm_fixtures.pretrained_cfg(
          (size, size), timm_fixtures.IMAGENET_MEAN,
          timm_fixtures.IMAGENET_STD, spec.num_classes,
          first_conv='patch_embed.proj', crop_pct=1.0))


def write_family(directory, name: str, seed: int = 0):
  spec = FAMILIES[name]
  return timm_fixtures.write_hub_dir(directory, config(spec),
                                     state_dict(spec, seed))
