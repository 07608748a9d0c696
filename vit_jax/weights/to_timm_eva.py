"""Our ViT with Eva's options as timm's `Eva`: state dict and arguments.

The inverse of `vit_jax.models.eva_timm` (whose docstring has the key
table), for the models of options only timm's Eva class
(timm/models/eva.py, timm 1.0) has beside timm's ViT's: rotary position
embeddings, gated MLPs, inner norms (`needs_eva`). Each option of
`vit.VisionTransformer` goes to the `Eva` argument that computes the same:

  ours                                  timm's Eva
  rope 'axial' | 'dinov3' | 'mixed'     use_rot_pos_emb, rope_type 'cat' |
                                        'dinov3' | 'mixed' (rope.freqs)
  rope_temperature, rope_grid_indexing, rope_temperature, rope_grid_indexing,
  rope_grid_offset, rope_rotate_half    rope_grid_offset, rope_rotate_half
  rope_ref_grid ('axial')               ref_feat_shape
  mlp_gated (activation 'silu')         swiglu_mlp (GluMlp fc1 = [gate,
                                        value], or SwiGLU fc1_g / fc1_x
                                        beside an MLP norm)
  mlp_norm, attention_norm              scale_mlp, scale_attn_inner
  classifier token | gap | map |        global_pool 'token' | 'avg' | 'map' |
  (token_)unpooled                      '' (class_token on / off)
  num_register_tokens, extra_class_token num_reg_tokens, class_token
  layer_scale_init                      init_values (gamma_1, gamma_2)
  pre_norm, fc_norm, final_norm=False   use_pre_transformer_norm,
                                        use_fc_norm, use_post_transformer_norm
  block 'post_norm'                     use_post_norm
  map_num_heads, map_mlp_dim            attn_pool_num_heads, ..._mlp_ratio
  q/k/v biases                          attn_type 'eva' (q_bias, v_bias; its
                                        key bias is zero) where our key bias
                                        is zero, else 'rope' (AttentionRope)

Some choices compute the same model either way: fused or separate q/k/v
(`qkv_fused`), the attention class where our key bias is zero, and, beside
average or attention pooling, whether the first register is written as
timm's class token (read by no head either way). Each is decided for the
architecture name: the choice whose nearest definition needs the fewest
overrides (`convert`'s `rank`), so an EVA-02 gets its own name.

What timm's Eva lacks, or config.json cannot say, is refused in one line
naming it (`to_timm_vit.Untranslatable`; the list is `_problem`).
"""

import dataclasses
import itertools
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import flax
import numpy as np

from vit_jax.models import posemb
from vit_jax.models import vit
from vit_jax.models import vit_layout
from vit_jax.weights import to_timm_arrays
from vit_jax.weights import to_timm_vit


Conversion = to_timm_vit.Conversion
Untranslatable = to_timm_vit.Untranslatable

_ROPE_TYPES = {'axial': 'cat', 'dinov3': 'dinov3', 'mixed': 'mixed'}
_GLOBAL_POOL = {'token': 'token', 'gap': 'avg', 'map': 'map',
                'unpooled': '', 'token_unpooled': ''}
# timm 1.0's Eva defaults of the arguments we write.
EVA_DEFAULTS = {
    'patch_size': 16, 'embed_dim': 768, 'depth': 12, 'num_heads': 12,
    'mlp_ratio': 4.0, 'qkv_bias': True, 'qkv_fused': True,
    'attn_type': 'eva', 'swiglu_mlp': False, 'swiglu_align_to': 0,
    'scale_mlp': False, 'scale_attn_inner': False, 'init_values': None,
    'class_token': True, 'num_reg_tokens': 0, 'no_embed_class': False,
    'use_abs_pos_emb': True, 'use_rot_pos_emb': False, 'rope_type': 'cat',
    'rope_grid_offset': 0., 'rope_grid_indexing': 'ij',
    'rope_temperature': 10000., 'rope_rotate_half': False,
    'ref_feat_shape': None, 'use_post_norm': False,
    'use_pre_transformer_norm': False, 'use_post_transformer_norm': None,
    'use_fc_norm': None, 'attn_pool_num_heads': None,
    'attn_pool_mlp_ratio': None, 'dynamic_img_size': False,
    'global_pool': 'avg',
}
# Definition arguments of computations our model lacks: a definition
# naming any of them is not one to name (Sapiens2's qk-norm, ...). The
# rope_*_coords are training-time augmentations, but come only with those.
_ABSENT = ('qk_norm', 'num_kv_heads', 'attn_only_layer_scale', 'gated_attn',
           'attn_head_dim', 'rope_mrope_section', 'rope_shift_coords',
           'rope_jitter_coords', 'rope_rescale_coords')
# Which RoPE arguments each kind reads (the others change nothing).
_ROPE_ARGS = {
    'cat': ('rope_type', 'rope_grid_offset', 'rope_grid_indexing',
            'rope_temperature', 'rope_rotate_half', 'ref_feat_shape'),
    'dinov3': ('rope_type', 'rope_grid_offset', 'rope_grid_indexing',
               'rope_temperature', 'rope_rotate_half'),
    'mixed': ('rope_type', 'rope_grid_indexing', 'rope_rotate_half'),
}


def needs_eva(model: vit.VisionTransformer) -> bool:
  """Whether `model` has an option of timm's Eva its ViT lacks."""
  return bool(model.rope is not None or model.mlp_gated or model.mlp_norm or
              model.attention_norm)


# ------------------------------------------------------------- arguments --

def _problem(model: vit.VisionTransformer) -> Optional[str]:
  """What timm's Eva cannot compute of `model`, or None."""
  checks = (
      (model.resnet_units is not None,
       "a ResNet stem (resnet_units): timm's Eva has none"),
      (model.representation_size is not None,
       'a tanh pre_logits layer (representation_size='
       f"{model.representation_size}), which timm's Eva lacks"),
      (model.distillation, "a distillation token in timm's Eva"),
      (model.norm_layer != 'layer_norm',
       f"norm_layer={model.norm_layer!r} in timm's Eva (its RMSNorm "
       'definitions, Sapiens2, have qk-norm)'),
      (model.layer_norm_epsilon not in to_timm_vit.NORM_LAYERS,
       f'layer_norm_epsilon={model.layer_norm_epsilon:g}: timm\'s Eva '
       'definitions use 1e-6 or 1e-5'),
      (model.embed_norm, "a patch-embedding norm (embed_norm) in timm's Eva"),
      (model.block == 'parallel', "parallel blocks in timm's Eva"),
      (model.differential_attention,
       "differential attention in timm's Eva"),
      (model.block == 'post_norm' and model.layer_scale_init is not None,
       "LayerScale in post-norm blocks (timm's EvaBlockPostNorm has none)"),
      (model.mlp_gated and model.activation != 'silu',
       f'a gated MLP of activation {model.activation!r}: timm\'s Eva gates '
       'with SiLU (SwiGLU)'),
      (not model.mlp_gated and model.activation != 'gelu_erf',
       f'the MLP activation {model.activation!r} in timm\'s Eva (GELU, '
       "activation='gelu_erf')"),
      (model.mlp_gated and model.classifier == 'map',
       "a MAP head beside gated MLPs (timm's Eva pools with a GELU MLP)"),
      (model.classifier == 'gap' and model.pool_include_prefix,
       "an average over the prefix tokens (timm's Eva leaves them out)"),
      (model.classifier == 'map' and model.pool_include_prefix is False,
       "a MAP head that skips the prefix tokens (timm's Eva reads them)"),
  )
  return next((problem for failed, problem in checks if failed), None)


def _rope_args(model: vit.VisionTransformer) -> Dict[str, Any]:
  if model.rope is None:  # Unread (`same_arg`), so any definition fits.
    return {'use_rot_pos_emb': False,
            **{key: EVA_DEFAULTS[key] for key in _ROPE_ARGS['cat']}}
  ref = model.rope_ref_grid if model.rope == 'axial' else None
  return {
      'use_rot_pos_emb': True, 'rope_type': _ROPE_TYPES[model.rope],
      'rope_temperature': float(model.rope_temperature),
      'rope_grid_indexing': model.rope_grid_indexing,
      'rope_grid_offset': float(model.rope_grid_offset),
      'rope_rotate_half': bool(model.rope_rotate_half),
      'ref_feat_shape': None if ref is None else [int(size) for size in ref],
  }


def _norm_args(model: vit.VisionTransformer) -> Dict[str, Any]:
  fc_norm = bool(model.final_norm and model.fc_norm)
  return {'use_pre_transformer_norm': bool(model.pre_norm),
          'use_fc_norm': fc_norm,
          'use_post_transformer_norm': bool(model.final_norm and not fc_norm)}


def _map_args(model: vit.VisionTransformer) -> Dict[str, Any]:
  if model.classifier != 'map':
    return {'attn_pool_num_heads': None, 'attn_pool_mlp_ratio': None}
  return {'attn_pool_num_heads': int(model.map_num_heads or model.num_heads),
          'attn_pool_mlp_ratio': to_timm_vit.mlp_ratio(
              model.hidden_size, model.map_mlp_dim or model.mlp_dim)}


def _fixed_args(model: vit.VisionTransformer,
                image_size: Tuple[int, int]) -> Dict[str, Any]:
  """The arguments no choice changes."""
  return {
      'img_size': [int(image_size[0]), int(image_size[1])], 'in_chans': 3,
      'num_classes': int(model.num_classes or 0),
      'patch_size': to_timm_vit.patch_size_arg(model.patch_size),
      'embed_dim': int(model.hidden_size), 'depth': int(model.num_layers),
      'num_heads': int(model.num_heads),
      'mlp_ratio': to_timm_vit.mlp_ratio(model.hidden_size, model.mlp_dim),
      'qkv_bias': bool(model.qkv_bias),
      'swiglu_mlp': bool(model.mlp_gated), 'swiglu_align_to': 0,
      'scale_mlp': bool(model.mlp_norm),
      'scale_attn_inner': bool(model.attention_norm),
      'init_values': (None if model.layer_scale_init is None
                      else float(model.layer_scale_init)),
      'use_abs_pos_emb': model.posemb != 'none',
      # A sin-cos embedding is written as its table, over the patches.
      'no_embed_class': (not model.posemb_covers_prefix or
                         model.posemb == 'sincos2d'),
      'use_post_norm': model.block == 'post_norm',
      'global_pool': _GLOBAL_POOL[model.classifier],
      'dynamic_img_size': False,
      **_rope_args(model), **_norm_args(model), **_map_args(model),
  }


def _key_bias_is_zero(blocks: List[Mapping[str, Any]]) -> bool:
  """timm's EvaAttention has no key bias: ours must be zero (or absent)."""
  return all(
      not np.any(np.asarray(block['MultiHeadDotProductAttention_0']['key']
                            .get('bias', 0.)))
      for block in blocks)


def _choices(model: vit.VisionTransformer,
             blocks: List[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """The argument sets that compute `model`, in order of preference."""
  attn_types = ['eva', 'rope'] if _key_bias_is_zero(blocks) else ['rope']
  registers = int(model.num_register_tokens)
  prefix = [(True, registers)]  # A class token: ours, or our extra one.
  if model.classifier not in vit.TOKEN_CLASSIFIERS and (
      not model.extra_class_token):
    prefix = [(False, registers)]
    if registers and model.classifier in ('gap', 'map'):
      prefix.append((True, registers - 1))  # The first register as cls.
  return [{'attn_type': attn_type, 'qkv_fused': fused,
           'class_token': class_token, 'num_reg_tokens': reg_tokens}
          for attn_type, fused, (class_token, reg_tokens) in itertools.product(
              attn_types, (True, False), prefix)]


def same_arg(key: str, definition_value: Any, ours: Any,
             args: Mapping[str, Any]) -> bool:
  """Whether a definition's value of `key` computes what ours does (the
  arguments a setting leaves unread match any value)."""
  rope_type = args['rope_type'] if args['use_rot_pos_emb'] else None
  if key in _ROPE_ARGS['cat'] and key not in _ROPE_ARGS.get(rope_type, ()):
    return True
  if key == 'dynamic_img_size':  # The same outputs at img_size.
    return True
  if key == 'no_embed_class' and not args['use_abs_pos_emb']:
    return True
  if key == 'swiglu_align_to' and not args['swiglu_mlp']:
    return True
  if key.startswith('attn_pool_') and args['global_pool'] != 'map':
    return True
  if definition_value is None:  # Eva's resolution of its None defaults.
    definition_value = {
        'use_fc_norm': args['global_pool'] == 'avg',
        'use_post_transformer_norm': not args['use_fc_norm'],
        'attn_pool_num_heads': args['num_heads'],
        'attn_pool_mlp_ratio': args['mlp_ratio']}.get(key)
  if key == 'attn_pool_mlp_ratio':
    key = 'mlp_ratio'  # Compared as the width it gives.
  if key == 'ref_feat_shape' and isinstance(definition_value, int):
    definition_value = [definition_value] * 2
  if isinstance(definition_value, tuple):
    definition_value = list(definition_value)
  return to_timm_vit.same_arg(key, definition_value, ours, args)


# ---------------------------------------------------------------- arrays --

def _attention(out, timm: str, ours: Mapping[str, Any],
               args: Mapping[str, Any]) -> None:
  """q/k/v fused or not; EvaAttention's biases are q_bias and v_bias
  (fused) or q_proj's and v_proj's, AttentionRope's all three."""
  names = ('query', 'key', 'value')
  biased = args['qkv_bias']
  if args['qkv_fused']:
    to_timm_arrays.fused(out, f'{timm}.qkv', ours, names)
    if biased and args['attn_type'] == 'eva':
      del out[f'{timm}.qkv.bias']
      out[f'{timm}.q_bias'] = np.asarray(ours['query']['bias']).reshape(-1)
      out[f'{timm}.v_bias'] = np.asarray(ours['value']['bias']).reshape(-1)
  else:
    for name, proj in zip(names, ('q_proj', 'k_proj', 'v_proj')):
      to_timm_arrays.fused(out, f'{timm}.{proj}', ours, (name,))
      if name == 'key' and args['attn_type'] == 'eva':
        out.pop(f'{timm}.k_proj.bias', None)
  if 'LayerNorm_0' in ours:  # (A, E) -> timm's norm over A * E.
    out[f'{timm}.norm.weight'] = np.asarray(
        ours['LayerNorm_0']['scale']).reshape(-1)
    out[f'{timm}.norm.bias'] = np.asarray(
        ours['LayerNorm_0']['bias']).reshape(-1)
  to_timm_arrays.attention_out(out, f'{timm}.proj', ours['out'])


def _block(out, timm: str, ours: Mapping[str, Any],
           args: Mapping[str, Any]) -> None:
  to_timm_arrays.norm(out, f'{timm}.norm1', ours['LayerNorm_0'])
  _attention(out, f'{timm}.attn', ours['MultiHeadDotProductAttention_0'],
             args)
  to_timm_arrays.norm(out, f'{timm}.norm2', ours['LayerNorm_1'])
  # SwiGLU (fc1_g, fc1_x) beside an MLP norm, else GluMlp's packed fc1.
  mlp = ours['MlpBlock_0']
  to_timm_arrays.mlp(out, f'{timm}.mlp', mlp, packed='LayerNorm_0' not in mlp)
  for index in (0, 1):
    if f'LayerScale_{index}' in ours:
      out[f'{timm}.gamma_{index + 1}'] = np.asarray(
          ours[f'LayerScale_{index}']['scale'])


def _prefix_tokens(out, params: Mapping[str, Any],
                   args: Mapping[str, Any]) -> None:
  """Ours [cls | extra_cls] [registers] -> cls_token, reg_token; a
  register may be timm's class token (`_choices`)."""
  tokens = [np.asarray(params[name]) for name in ('cls', 'extra_cls',
                                                  'reg_token')
            if name in params]
  prefix = np.concatenate(tokens, axis=1) if tokens else None
  if args['class_token']:
    out['cls_token'] = prefix[:, :1]
  if args['num_reg_tokens']:
    out['reg_token'] = prefix[:, int(args['class_token']):]


def state_dict(params, model: vit.VisionTransformer,
               args: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Our tree (scanned or not) -> timm's Eva state dict for `args`.

  Raises:
    Untranslatable: a nonzero patch-embedding bias beside pre_norm.
  """
  params = vit_layout.unstack_blocks(flax.core.unfreeze(params))
  encoder = params['Transformer']
  blocks = [encoder[f'encoderblock_{i}'] for i in range(model.num_layers)]
  out = {}
  to_timm_vit.patch_embedding(out, params, model.pre_norm)
  _prefix_tokens(out, params, args)
  if 'pos_embedding' in encoder.get('posembed_input', {}):
    out['pos_embed'] = np.asarray(encoder['posembed_input']['pos_embedding'])
  elif model.posemb == 'sincos2d':
    grid = [int(size) // int(patch)
            for size, patch in zip(args['img_size'], model.patch_size)]
    out['pos_embed'] = posemb.sincos_2d(grid, model.hidden_size)
  if model.rope == 'mixed':  # Per block (2, A, E/2) -> (2, depth, A, E/2).
    out['rope.freqs'] = np.stack(
        [np.asarray(block['MultiHeadDotProductAttention_0']['rope_freqs'])
         for block in blocks], axis=1)
  if 'pre_norm' in encoder:
    to_timm_arrays.norm(out, 'norm_pre', encoder['pre_norm'])
  for layer, block in enumerate(blocks):
    _block(out, f'blocks.{layer}', block, args)
  if 'encoder_norm' in encoder:
    to_timm_arrays.norm(out, 'norm', encoder['encoder_norm'])
  if 'fc_norm' in params:
    to_timm_arrays.norm(out, 'fc_norm', params['fc_norm'])
  if 'MAPHead_0' in params:
    to_timm_arrays.map_head(out, params['MAPHead_0'])
  if 'head' in params:
    to_timm_arrays.linear(out, 'head', params['head'])
  return {key: np.ascontiguousarray(value, np.float32)
          for key, value in out.items()}


def convert(params, model: vit.VisionTransformer,
            image_size: Tuple[int, int], *,
            rank: Optional[Callable[[Conversion], Any]] = None) -> Conversion:
  """`model` and its `params` as timm's Eva (see the module docstring).

  Args:
    params: our tree.
    model: the VisionTransformer.
    image_size: the (H, W) written.
    rank: orders the conversions that compute the same model (None for one
      no definition fits); the least is written. None: the first choice.

  Raises:
    Untranslatable: a feature timm's Eva lacks.
  """
  problem = _problem(model)
  if problem:
    raise Untranslatable(f'timm cannot express {problem}')
  params = vit_layout.unstack_blocks(flax.core.unfreeze(params))
  blocks = [params['Transformer'][f'encoderblock_{i}']
            for i in range(model.num_layers)]
  fixed = {'norm_layer': to_timm_vit.NORM_LAYERS[model.layer_norm_epsilon],
           **{key: None for key in _ABSENT}}
  candidates = [
      Conversion(model_class='Eva', module='eva',
                 args={**_fixed_args(model, image_size), **choice},
                 defaults=EVA_DEFAULTS, fixed=fixed, state_dict={},
                 classifiers=('head',), same_arg=same_arg)
      for choice in _choices(model, blocks)]
  chosen = candidates[0 if rank is None else to_timm_vit.nearest(candidates,
                                                                  rank)]
  return dataclasses.replace(
      chosen, state_dict=state_dict(params, model, chosen.args))
