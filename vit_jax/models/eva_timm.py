"""timm's `Eva` models (timm/models/eva.py) as our `vit.VisionTransformer`.

timm's eva module holds EVA and EVA-02 (Fang et al. 2023, arXiv:2211.07636,
arXiv:2303.11331; EVA-CLIP, arXiv:2303.15389), DINOv3 (Simeoni et al. 2025,
arXiv:2508.10104), Perception Encoder (Bolya et al. 2025, arXiv:2504.13181)
and the RoPE ViTs (Heo et al. 2024, arXiv:2403.13298, and timm's own). They
are pre-LN ViTs with options our model has: rotary position embeddings
(`vit_jax.models.rope`), gated MLPs and inner norms. Their state dict,
beside the parts all timm layouts share (`timm_keys`; A heads, E head
width):

  timm key                          ours
  blocks.i.attn.qkv (3*A*E, D)      .../MultiHeadDotProductAttention_0/
    + q_bias, v_bias (A*E,)           query, key, value (k bias zero)
  blocks.i.attn.q_proj, k_proj,     .../query, key, value
    v_proj (A*E, D)
  blocks.i.attn.norm (A*E,)         .../MultiHeadDotProductAttention_0/
                                      LayerNorm_0 (A, E)
  blocks.i.gamma_1, gamma_2         .../LayerScale_0/scale, LayerScale_1/scale
  blocks.i.mlp.fc1_g, fc1_x         .../MlpBlock_0/Dense_0, Dense_value
    (SwiGLU)
  blocks.i.mlp.fc1 (2M, D)          .../MlpBlock_0/Dense_0 (the gate half),
    (GluMlp, gate first)              Dense_value (the other half)
  blocks.i.mlp.norm (M,)            .../MlpBlock_0/LayerNorm_0
  rope.freqs (2, depth, A, E/2)     .../encoderblock_i/
    (mixed RoPE)                      MultiHeadDotProductAttention_0/
                                      rope_freqs (2, A, E/2)

A class token beside average or attention pooling (DINOv3, Perception
Encoder) is read by no head: it becomes the first of our register tokens
(`reg_token`), which sit in the same place, are not rotated and are left
out of the average like timm's prefix tokens.

What the arrays cannot say (heads, norm epsilon, pooling, which norms,
RoPE settings) comes from `timm_definitions.model_args(config)`: the
architecture's definition with config.json's model_args over it. Features
our model lacks (post-norm blocks, qk-norm, RMSNorm, grouped-query or gated
attention, ...) are refused in one line naming them.
"""

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from vit_jax.models import family
from vit_jax.models import timm_definitions
from vit_jax.models import timm_keys
from vit_jax.models import vit

# timm's Eva defaults, where the definition leaves an argument out.
_DEFAULT_EPSILON = 1e-6  # timm.layers.LayerNorm
_EVA_DEFAULTS = {
    'num_heads': 12, 'global_pool': 'avg', 'qkv_fused': True,
    'use_rot_pos_emb': False, 'rope_type': 'cat', 'rope_temperature': 10000.,
    'rope_grid_indexing': 'ij', 'rope_grid_offset': 0.,
    'rope_rotate_half': False, 'swiglu_mlp': False, 'scale_mlp': False,
    'scale_attn_inner': False, 'use_pre_transformer_norm': False,
}
# model_args that select a computation our model lacks, when truthy.
_UNSUPPORTED_ARGS = (
    ('qk_norm', 'qk-norm (qk_norm)'),
    ('num_kv_heads', 'grouped-query attention (num_kv_heads)'),
    ('attn_only_layer_scale', 'LayerScale on the attention branch only '
     '(attn_only_layer_scale)'),
    ('gated_attn', 'gated attention (gated_attn)'),
    ('attn_head_dim', 'an attention width other than the token width '
     '(attn_head_dim)'),
    ('rope_mrope_section', 'multimodal RoPE (rope_mrope_section)'),
)
# timm's RoPE kinds -> ours.
_ROPE_KINDS = {'cat': 'axial', 'dinov3': 'dinov3', 'mixed': 'mixed'}


def is_eva(config: Mapping[str, Any], arrays: Mapping[str, Any]) -> bool:
  """Whether a timm checkpoint is of timm's Eva class: by its definition,
  else (an architecture the table lacks) by keys only Eva writes."""
  found = timm_definitions.definition(config.get('architecture', ''))
  if found is not None:
    return found.model_class == 'Eva'
  return any(key.startswith('rope.') or key.endswith(
      ('.q_bias', '.gamma_1', '.gamma_2', '.attn.q_proj.weight'))
             for key in arrays)


def _arg(model_args: Mapping[str, Any], key: str) -> Any:
  value = model_args.get(key)
  return _EVA_DEFAULTS.get(key) if value is None else value


def _epsilon(model_args: Mapping[str, Any]) -> float:
  norm_layer = model_args.get('norm_layer')
  name = timm_definitions.layer_name(norm_layer)
  if name is None:
    return _DEFAULT_EPSILON
  if name.lower() not in ('layernorm', 'layernormfp32'):
    raise family.CheckpointMismatchError(
        f'norm_layer {name!r}: vit_jax implements LayerNorm only')
  return float(timm_definitions.layer_kwargs(norm_layer).get(
      'eps', _DEFAULT_EPSILON))


def _check_args(model_args: Mapping[str, Any]) -> None:
  for key, feature in _UNSUPPORTED_ARGS:
    value = model_args.get(key)
    if key == 'num_kv_heads' and value is not None:
      heads = _arg(model_args, 'num_heads')
      values = value if isinstance(value, (list, tuple)) else [value]
      value = any(v is not None and v != heads for v in values)
    if value:
      raise family.CheckpointMismatchError(
          f'the checkpoint uses {feature}, which vit_jax does not implement')
  rope_type = _arg(model_args, 'rope_type')
  if _arg(model_args, 'use_rot_pos_emb') and rope_type not in _ROPE_KINDS:
    raise family.CheckpointMismatchError(
        f'rope_type {rope_type!r}: vit_jax implements {sorted(_ROPE_KINDS)}')


# ---------------------------------------------------------------- blocks --

def _attention(arrays, out, timm: str, ours: str, num_heads: int) -> None:
  """Fused qkv (biases in it, as q_bias / v_bias, or none) or q/k/v_proj."""
  if arrays.has(f'{timm}.qkv.weight'):
    timm_keys.split_heads(arrays, out, f'{timm}.qkv', ours,
                          ('query', 'key', 'value'), num_heads)
    q_bias = arrays.take_optional(f'{timm}.q_bias')
    if q_bias is not None:
      v_bias = arrays.take(f'{timm}.v_bias')
      out[f'{ours}/query/bias'] = q_bias.reshape(num_heads, -1)
      out[f'{ours}/key/bias'] = np.zeros_like(out[f'{ours}/query/bias'])
      out[f'{ours}/value/bias'] = v_bias.reshape(num_heads, -1)
  else:
    for name, key in (('query', 'q_proj'), ('key', 'k_proj'),
                      ('value', 'v_proj')):
      weight_OI = arrays.take(f'{timm}.{key}.weight')
      out[f'{ours}/{name}/kernel'] = timm_keys.heads_kernel(weight_OI,
                                                            num_heads)
      bias = arrays.take_optional(f'{timm}.{key}.bias')
      if bias is not None or name == 'key':
        # timm's EvaAttention has no k bias: ours is zero beside q and v's.
        out[f'{ours}/{name}/bias'] = timm_keys.bias_or_zeros(
            bias, weight_OI.shape[0]).reshape(num_heads, -1)
    if f'{ours}/query/bias' not in out:
      del out[f'{ours}/key/bias']
  timm_keys.attention_inner_norm(arrays, out, timm, ours, num_heads)
  timm_keys.attention_out(arrays, out, f'{timm}.proj', f'{ours}/out',
                          num_heads)


def _blocks(arrays, out, num_heads: int) -> Tuple[int, set, set]:
  """blocks.i -> encoderblock_i; (layers, MLP widths, gated flags)."""
  num_layers = 0
  while arrays.has(f'blocks.{num_layers}.norm1.weight'):
    num_layers += 1
  if not num_layers:
    raise family.CheckpointMismatchError(
        'the checkpoint has no blocks.0: not a timm Eva')
  widths, gated = set(), set()
  for layer in range(num_layers):
    timm, ours = f'blocks.{layer}', f'Transformer/encoderblock_{layer}'
    timm_keys.norm(arrays, out, f'{timm}.norm1', f'{ours}/LayerNorm_0')
    _attention(arrays, out, f'{timm}.attn',
               f'{ours}/MultiHeadDotProductAttention_0', num_heads)
    timm_keys.norm(arrays, out, f'{timm}.norm2', f'{ours}/LayerNorm_1')
    # Mlp, GluMlp (packed, gate first) or SwiGLU.
    widths.add(timm_keys.mlp(arrays, out, f'{timm}.mlp',
                             f'{ours}/MlpBlock_0'))
    gated.add(f'{ours}/MlpBlock_0/Dense_value/kernel' in out)
    for index in (0, 1):
      gamma = arrays.take_optional(f'{timm}.gamma_{index + 1}')
      if gamma is not None:
        out[f'{ours}/LayerScale_{index}/scale'] = gamma
  return num_layers, widths, gated


def _mixed_freqs(arrays, out, num_layers: int) -> None:
  """rope.freqs (2, depth, A, E/2) -> each block's rope_freqs (2, A, E/2)."""
  freqs = arrays.take('rope.freqs')
  for layer in range(num_layers):
    out[f'Transformer/encoderblock_{layer}/MultiHeadDotProductAttention_0/'
        'rope_freqs'] = freqs[:, layer]


# --------------------------------------------------------------- options --

def _rope_options(model_args: Mapping[str, Any]) -> Dict[str, Any]:
  if not _arg(model_args, 'use_rot_pos_emb'):
    return {}
  kind = _ROPE_KINDS[_arg(model_args, 'rope_type')]
  options = dict(
      rope=kind, rope_grid_indexing=_arg(model_args, 'rope_grid_indexing'),
      rope_rotate_half=bool(_arg(model_args, 'rope_rotate_half')))
  if kind != 'mixed':
    options['rope_temperature'] = float(_arg(model_args, 'rope_temperature'))
    options['rope_grid_offset'] = float(_arg(model_args, 'rope_grid_offset'))
  ref = model_args.get('ref_feat_shape')
  if kind == 'axial' and ref is not None:
    ref = (ref, ref) if isinstance(ref, int) else tuple(ref)
    options['rope_ref_grid'] = tuple(int(size) for size in ref)
  return options


def _final_norm(arrays, out, model_args, pool: str) -> Tuple[bool, bool]:
  """`norm`, `fc_norm` or neither (Perception Encoder's spatial and
  language towers), as timm's Eva resolves them; returns (fc_norm, a final
  norm at all)."""
  fc_norm = model_args.get('use_fc_norm')
  fc_norm = pool == 'avg' if fc_norm is None else bool(fc_norm)
  post_norm = model_args.get('use_post_transformer_norm')
  post_norm = not fc_norm if post_norm is None else bool(post_norm)
  if (fc_norm and post_norm) or fc_norm != arrays.has('fc_norm.weight') or (
      post_norm != arrays.has('norm.weight')):
    raise family.CheckpointMismatchError(
        f'final norms use_post_transformer_norm={post_norm}, '
        f'use_fc_norm={fc_norm} (or arrays that disagree): vit_jax has one '
        'final LayerNorm or none')
  if fc_norm or post_norm:
    timm_keys.norm(arrays, out, 'fc_norm' if fc_norm else 'norm',
                   'fc_norm' if fc_norm else 'Transformer/encoder_norm')
  return fc_norm, fc_norm or post_norm


def _classifier(pool: str, has_cls: bool, has_map: bool) -> str:
  if (pool == 'map') != has_map:
    raise family.CheckpointMismatchError(
        "attn_pool arrays without global_pool 'map', or the reverse")
  if pool == '':
    return 'token_unpooled' if has_cls else 'unpooled'
  return {'token': 'token', 'avg': 'gap', 'map': 'map'}[pool]


def _prefix_tokens(arrays, out, pool: str) -> Tuple[bool, int]:
  """cls_token, reg_token -> ours; (class token kept, registers)."""
  cls = arrays.take_optional('cls_token')
  registers = arrays.take_optional('reg_token')
  keep_cls = cls is not None and pool in ('token', '')
  if cls is not None and not keep_cls:  # Read by no head: a register.
    registers = cls if registers is None else np.concatenate(
        [cls, registers], axis=1)
  if keep_cls:
    out['cls'] = cls
  if registers is not None:
    out['reg_token'] = registers
  return keep_cls, 0 if registers is None else int(registers.shape[1])


def _global_pool(config: Mapping[str, Any],
                 model_args: Mapping[str, Any]) -> str:
  """timm's global_pool, from model_args, else config.json, else Eva's."""
  pool = model_args.get('global_pool', config.get('global_pool'))
  pool = _EVA_DEFAULTS['global_pool'] if pool is None else pool
  if pool not in ('token', 'avg', 'map', ''):
    raise family.CheckpointMismatchError(
        f"global_pool {pool!r}: vit_jax implements 'token', 'avg', 'map' "
        "and ''")
  return pool


def _num_heads(model_args: Mapping[str, Any], width: int) -> int:
  num_heads = int(_arg(model_args, 'num_heads'))
  if width % num_heads:
    raise family.CheckpointMismatchError(
        f'width {width} is not divisible by {num_heads} heads')
  return num_heads


def _encoder(arrays, out, model_args: Mapping[str, Any], num_heads: int
             ) -> Tuple[int, set, set, Dict[str, Any]]:
  """norm_pre, the blocks and mixed RoPE's learned frequencies; returns
  (layers, MLP widths, gated flags, the RoPE options)."""
  if arrays.has('norm_pre.weight'):
    timm_keys.norm(arrays, out, 'norm_pre', 'Transformer/pre_norm')
  num_layers, mlp_dims, gated = _blocks(arrays, out, num_heads)
  rope = _rope_options(model_args)
  if rope.get('rope') == 'mixed':
    _mixed_freqs(arrays, out, num_layers)
  return num_layers, mlp_dims, gated, rope


def _map_head(arrays, out, model_args, num_heads: int, mlp_dims: set,
              gated: set) -> Dict[str, Any]:
  """attn_pool -> MAPHead_0 (its own heads and MLP width, as Perception
  Encoder's); returns the model options it needs."""
  if True in gated:
    raise family.CheckpointMismatchError(
        "an attention pool beside gated MLPs (timm's pool MLP is GELU): "
        'vit_jax does not implement it')
  pool_heads = int(model_args.get('attn_pool_num_heads') or num_heads)
  mlp_dim = timm_keys.map_head(arrays, out, pool_heads)
  return {'map_num_heads': None if pool_heads == num_heads else pool_heads,
          # None: the blocks' width.
          'map_mlp_dim': None if mlp_dim in mlp_dims else int(mlp_dim)}


def _one_mlp(mlp_dims: set, gated: set) -> Tuple[int, bool]:
  """The blocks' common MLP (width, gated)."""
  if len(mlp_dims) != 1 or len(gated) != 1:
    raise family.CheckpointMismatchError(
        f'MLP widths differ between blocks: {sorted(mlp_dims)}')
  return int(next(iter(mlp_dims))), next(iter(gated))


def _changed_options(out: Dict[str, np.ndarray], model_args, *,
                     mlp_gated: bool, epsilon: float, num_registers: int,
                     fc_norm: bool, final_norm: bool,
                     more: Dict[str, Any]) -> Dict[str, Any]:
  """The model options, with those the first block's parameters show and
  `more`, less the ones at `vit.VisionTransformer`'s defaults."""
  block = 'Transformer/encoderblock_0'
  options = dict(
      activation='silu' if mlp_gated else 'gelu_erf',
      layer_norm_epsilon=epsilon, num_register_tokens=num_registers,
      pre_norm='Transformer/pre_norm/scale' in out, fc_norm=fc_norm,
      final_norm=final_norm,
      block='post_norm' if model_args.get('use_post_norm') else 'pre_norm',
      qkv_bias=f'{block}/MultiHeadDotProductAttention_0/query/bias' in out,
      layer_scale_init=(vit.LOADED_LAYER_SCALE_INIT
                        if f'{block}/LayerScale_0/scale' in out else None),
      attention_norm=(f'{block}/MultiHeadDotProductAttention_0/LayerNorm_0/'
                      'scale' in out),
      mlp_gated=mlp_gated, mlp_norm=f'{block}/MlpBlock_0/LayerNorm_0/scale'
      in out, **more)
  return {key: value for key, value in options.items()
          if value != getattr(vit.VisionTransformer, key, None)}


def to_vit(config: Mapping[str, Any], timm_arrays: Mapping[str, np.ndarray],
           image_size: Tuple[int, int]
           ) -> Tuple[family.Params, Dict[str, Any]]:
  """timm's Eva state dict -> our parameter tree and model attributes.

  Args:
    config: timm's config.json (architecture, optional model_args).
    timm_arrays: timm key -> float32 array.
    image_size: the native (H, W), the size `pos_embed` is stored for.

  Returns:
    (params, model_kwargs) as `vit_timm.to_vit`.

  Raises:
    family.CheckpointMismatchError: an array is missing, left over, or of a
      feature vit_jax does not implement.
  """
  model_args = timm_definitions.model_args(config)
  _check_args(model_args)
  epsilon = _epsilon(model_args)
  pool = _global_pool(config, model_args)
  arrays, out = timm_keys.Arrays(timm_arrays), {}
  width, patch_size = timm_keys.patch_embedding(arrays, out)
  num_heads = _num_heads(model_args, width)
  has_cls, num_registers = _prefix_tokens(arrays, out, pool)
  pos_embed = timm_keys.position_embedding(arrays, out)
  num_layers, mlp_dims, gated, rope = _encoder(arrays, out, model_args,
                                               num_heads)
  fc_norm, final_norm = _final_norm(arrays, out, model_args, pool)
  has_map = arrays.has('attn_pool.latent')
  map_options = _map_head(arrays, out, model_args, num_heads, mlp_dims,
                          gated) if has_map else {}
  mlp_dim, mlp_gated = _one_mlp(mlp_dims, gated)
  num_classes = timm_keys.classifier_heads(
      arrays, out, timm_keys.PrefixTokens(has_cls, False, num_registers))
  arrays.check_all_taken()
  posemb = timm_keys.posemb_options(
      pos_embed, grid=timm_keys.patch_grid(image_size, patch_size),
      num_prefix=int(has_cls) + num_registers)
  options = _changed_options(
      out, model_args, mlp_gated=mlp_gated, epsilon=epsilon,
      num_registers=num_registers, fc_norm=fc_norm, final_norm=final_norm,
      more={**rope, **map_options, **posemb})
  model_kwargs = dict(
      num_classes=num_classes, patch_size=patch_size, hidden_size=width,
      num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
      classifier=_classifier(pool, has_cls, has_map), **options)
  return timm_keys.nested_float32(out), model_kwargs


class EvaLayout(family.ForeignLayout):
  """timm's Eva state dict (see the module docstring)."""
  describes = ("timm's Eva (EVA-02, EVA-CLIP, DINOv3, Perception Encoder, "
               'RoPE ViTs): architectures of timm.models.eva')

  def recognises(self, config: Mapping[str, Any],
                 arrays: family.FlatParams) -> bool:
    return 'patch_embed.proj.weight' in arrays and is_eva(config, arrays)

  def to_params(self, config: Mapping[str, Any], arrays: family.FlatParams,
                image_size: Tuple[int, int]
                ) -> Tuple[family.Params, Dict[str, Any]]:
    """See `family.ForeignLayout.to_params`; `config` is timm's config.json."""
    return to_vit(config, arrays, image_size)


LAYOUT = EvaLayout()
