"""What a timm checkpoint's name and config say that its arrays cannot.

timm's config.json names the architecture (e.g. `vit_base_patch16_clip_224`)
and, for models created with overrides, holds `model_args`. The number of
attention heads, the GELU variant and the LayerNorm epsilon are not in the
state dict; they come from `model_args` first, else from the tables below
(facts of timm 1.0's model definitions in timm/models/vision_transformer.py
and deit.py). Features of timm's ViTs that `vit.VisionTransformer` lacks
(qk-norm, gated MLPs, rotary embeddings, ...) are refused here, by name,
before any key is mapped (`vit_jax.models.vit_timm`).
"""

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from vit_jax.models import family
from vit_jax.models import timm_definitions


# ------------------------------------ what the arrays cannot say (tables) --

# timm architectures computed in ways our model cannot, although their keys
# may look like a plain ViT's (re.match on the name).
_UNSUPPORTED_ARCHITECTURES = (
    (r'.*_rpn_', 'post-norm blocks (ResPostBlock)'),
)
# Attention heads by name, first match (timm's model definitions).
_NUM_HEADS = (
    (r'vit_base_patch16_gap_224', 16),
    (r'vit_base_patch\d+_plus_', 14),
    (r'vit_giant_patch14_(reg\d+_)?dinov2', 24),
    (r'(vit|deit3?)_tiny_', 3),
    (r'vit_xsmall_', 4),
    (r'(vit|deit3?)_small_', 6),
    (r'(vit|deit3?)_mediumd?_', 8),
    (r'vit_betwixt_', 10),
    (r'(vit|deit3?)_base_', 12),
    (r'vit_so150m_', 14),
    (r'vit_so150m2_', 13),
    (r'vit_p?wee_', 4),
    (r'vit_little_', 5),
    (r'(vit|deit3?)_(large|huge|giant|gigantic|giantopt|so400m)_', 16),
)
# timm's Mlp uses exact (erf) GELU (nn.GELU) unless the model sets act_layer.
_ACTIVATIONS_BY_NAME = (
    (r'.*_quickgelu_', 'quick_gelu'),
    (r'vit_(base_patch32_siglip(_gap)?_256|large_patch16_siglip(_gap)?_512|'
     r'so400m_patch16_siglip(_gap)?_\d+|giantopt_patch16_siglip(_gap)?_\d+)$',
     'gelu_tanh'),
)
_DEFAULT_ACTIVATION = 'gelu_erf'
# model_args act_layer -> ours.
_ACT_LAYERS = {'gelu': 'gelu_erf', 'gelu_tanh': 'gelu_tanh',
               'quick_gelu': 'quick_gelu'}
# timm.layers.LayerNorm's default epsilon; the CLIP towers use 1e-5.
_DEFAULT_EPSILON = 1e-6
_CLIP_EPSILON = 1e-5
_NORM_LAYERS = ('layernorm', 'layernormfp32')  # Both with timm's default.
# model_args keys the arrays show (or errors on their keys report), or that
# only matter in training.
_MODEL_ARGS_SHOWN = frozenset({
    'img_size', 'in_chans', 'num_classes', 'embed_dim', 'depth',
    'patch_size', 'mlp_ratio', 'class_token', 'reg_tokens', 'no_embed_class',
    'init_values', 'qkv_bias', 'qk_norm', 'scale_attn_norm',
    'scale_mlp_norm', 'proj_bias', 'pre_norm', 'final_norm', 'fc_norm',
    'pos_embed', 'dynamic_img_size', 'dynamic_img_pad', 'weight_init',
    'fix_init', 'drop_rate', 'pos_drop_rate', 'patch_drop_rate',
    'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate'})
_MODEL_ARGS_READ = frozenset({'num_heads', 'act_layer', 'norm_layer',
                              'global_pool', 'pool_include_prefix',
                              'mlp_layer'})
# model_args values that are timm's defaults although the key is a layer.
_MODEL_ARGS_DEFAULTS = {'attn_layer': ('', 'attn'), 'embed_norm_layer': (None,)}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a checkpoint's arrays cannot say."""
  architecture: str  # config.json's, with its pretrained tag.
  num_heads: Optional[int]
  activation: str
  layer_norm_epsilon: float
  global_pool: Optional[str]  # None: not written; the arrays decide.
  pool_include_prefix: bool
  # Gated MLPs (the arrays show one): the gate's activation, and whether
  # a packed fc1 holds the gate in its second half (GluMlp's gate_last).
  mlp_activation: str = 'silu'
  mlp_gate_last: bool = False


def _by_name(table, name: str, default):
  return next((value for pattern, value in table if re.match(pattern, name)),
              default)


def _check_model_args(model_args: Mapping[str, Any]) -> None:
  for key, value in model_args.items():
    if key in _MODEL_ARGS_SHOWN or key in _MODEL_ARGS_READ or (
        value in _MODEL_ARGS_DEFAULTS.get(key, ())):
      continue
    raise family.CheckpointMismatchError(
        f'config.json model_args {key}={value!r}: a timm option vit_jax does '
        'not implement')


def _activation(name: str, model_args: Mapping[str, Any]) -> str:
  if 'act_layer' not in model_args:
    return _by_name(_ACTIVATIONS_BY_NAME, name, _DEFAULT_ACTIVATION)
  activation = _ACT_LAYERS.get(str(model_args['act_layer']))
  if activation is None:
    raise family.CheckpointMismatchError(
        f'config.json model_args act_layer={model_args["act_layer"]!r}: '
        f'vit_jax implements {sorted(_ACT_LAYERS)}')
  return activation


def _epsilon(name: str, model_args: Mapping[str, Any]) -> float:
  if 'norm_layer' not in model_args:
    return _CLIP_EPSILON if '_clip_' in name else _DEFAULT_EPSILON
  if str(model_args['norm_layer']).lower() not in _NORM_LAYERS:
    raise family.CheckpointMismatchError(
        f'config.json model_args norm_layer={model_args["norm_layer"]!r}: '
        'vit_jax implements LayerNorm only')
  return _DEFAULT_EPSILON


def recipe(config: Mapping[str, Any],
           timm_arrays: Mapping[str, np.ndarray]) -> Recipe:
  """What the arrays cannot say: model_args first, else the name tables.

  Args:
    config: config.json (`architecture`, optional `model_args` and
      `global_pool`).
    timm_arrays: the state dict, checked for timm features we lack first.

  Returns:
    The recipe for `to_vit`.

  Raises:
    family.CheckpointMismatchError: a feature, architecture or model_args
      option vit_jax does not implement.
  """
  _check_features(timm_arrays)
  name = config['architecture'].split('.')[0]
  feature = _by_name(_UNSUPPORTED_ARCHITECTURES, name, None)
  if feature:
    raise family.CheckpointMismatchError(
        f'timm architecture {name!r} uses {feature}, which vit_jax does not '
        'implement')
  model_args = config.get('model_args') or {}
  _check_model_args(model_args)
  return Recipe(
      architecture=config['architecture'],
      num_heads=model_args.get('num_heads', _by_name(_NUM_HEADS, name, None)),
      activation=_activation(name, model_args),
      layer_norm_epsilon=_epsilon(name, model_args),
      global_pool=model_args.get('global_pool', config.get('global_pool')),
      pool_include_prefix=bool(model_args.get('pool_include_prefix', False)),
      **_gated_mlp(config))


# The gate activations of timm's gated MLPs (act_layer names).
_GATE_ACTIVATIONS = {'silu': 'silu', 'swish': 'silu', 'sigmoid': 'sigmoid',
                     'gelu': 'gelu_erf', 'gelu_tanh': 'gelu_tanh'}


def _gated_mlp(config: Mapping[str, Any]) -> Dict[str, Any]:
  """A gated MLP's activation and gate order, from timm's definition
  (mlp_layer, act_layer) merged with config.json's model_args."""
  merged = timm_definitions.model_args(config)
  mlp_layer = merged.get('mlp_layer')
  name = timm_definitions.layer_name(mlp_layer) or ''
  bound = timm_definitions.layer_kwargs(mlp_layer)
  # timm's Block passes its act_layer (default GELU) to the MLP, over the
  # partial's; GluMlp's gate is fc1's second half unless gate_last=False.
  if not name:  # Not a gated MLP: the block's activation is `activation`.
    return {}
  act = merged.get('act_layer') or 'gelu'
  activation = _GATE_ACTIVATIONS.get(str(act).lower())
  if activation is None:
    raise family.CheckpointMismatchError(
        f'gated MLP activation {act!r}: vit_jax implements '
        f'{sorted(_GATE_ACTIVATIONS)}')
  return {'mlp_activation': activation,
          'mlp_gate_last': bool(bound.get('gate_last', name == 'GluMlp'))}


# ------------------------------------------------ heads and pooling --

def num_heads(recipe: Recipe, width: int) -> int:
  """The recipe's attention heads, checked against the arrays' width.

  Raises:
    ValueError: the recipe does not know them.
    family.CheckpointMismatchError: they do not divide the width.
  """
  if recipe.num_heads is None:
    raise ValueError(
        f'cannot tell the attention heads of timm architecture '
        f'{recipe.architecture!r} ({width} wide): add "model_args": '
        '{"num_heads": ...} to its config.json')
  if width % recipe.num_heads:
    raise family.CheckpointMismatchError(
        f'{recipe.architecture}: width {width} is not divisible by '
        f'{recipe.num_heads} heads; set "model_args": {{"num_heads": ...}} '
        'in its config.json')
  return int(recipe.num_heads)


_POOLING_WE_LACK = ('avgmax', 'max', 'prr')


def classifier(recipe: Recipe, *, has_cls: bool, num_prefix: int,
               has_map: bool, distilled: bool) -> str:
  """timm's global_pool (config.json, else what the arrays hold) -> our
  `classifier`, given which prefix tokens and head the arrays hold.

  Raises:
    family.CheckpointMismatchError: a pooling vit_jax does not implement,
      or one the arrays contradict.
  """
  pool = recipe.global_pool
  if pool is None:
    pool = 'map' if has_map else 'token' if has_cls else 'avg'
  if pool in _POOLING_WE_LACK:
    raise family.CheckpointMismatchError(
        f'global_pool {pool!r} is a pooling vit_jax does not implement (it '
        "has 'token', 'avg', 'map' and '')")
  problem = None
  if (pool == 'map') != has_map:
    problem = 'attn_pool arrays without global_pool \'map\', or the reverse'
  elif distilled and pool != 'token':
    problem = 'a distillation token needs global_pool \'token\''
  elif pool == 'token' and not has_cls:
    problem = "global_pool 'token' without a class token"
  elif pool in ('avg', 'map') and has_cls:
    problem = (f'global_pool {pool!r} beside a class token (vit_jax\'s '
               "'gap' and 'map' classifiers have none)")
  elif pool == 'avg' and num_prefix and recipe.pool_include_prefix:
    problem = 'average pooling that includes the register tokens'
  elif pool == 'map' and num_prefix and not recipe.pool_include_prefix:
    problem = ('attention pooling of the patch tokens only, beside register '
               "tokens (vit_jax's MAP head attends to every token)")
  elif pool not in ('token', 'avg', 'map', ''):
    problem = f'unknown global_pool {pool!r}'
  if problem:
    raise family.CheckpointMismatchError(
        f'{problem}: vit_jax does not implement it')
  if pool == '':
    return 'token_unpooled' if has_cls else 'unpooled'
  return {'token': 'token', 'avg': 'gap', 'map': 'map'}[pool]


# --------------------------------------------------------------- features --

# Keys of timm features our model lacks (re.search), checked before mapping
# so the error names the feature rather than an unknown key.
_UNSUPPORTED_KEYS = (
    (r'(^|\.)[qk]_norm\.', 'qk-norm (qk_norm=True)'),
    (r'\.mlp\.(w12|w1|w2|w3)\.', 'a gated MLP of another layout (w12 / w3)'),
    (r'\.attn\.gate\.', 'gated attention'),
    (r'\.attn\.lambda_', "differential attention (attn_layer='diff')"),
    (r'^patch_embed\.norm\.', 'a norm in the patch embedding'),
    (r'(^|\.)rope\.|freqs', 'rotary position embeddings'),
    (r'relative_position', 'relative position embeddings'),
    (r'^attn_pool\.pos_embed', 'a position embedding in the attention pool'),
    (r'^blocks\.\d+\.(attns|ffns)\.', 'parallel blocks (ParallelThingsBlock)'),
    (r'^blocks\.\d+\.(in_proj|in_norm|attn_out_proj|mlp_out_proj)\.',
     'parallel scaling blocks (ParallelScalingBlock)'),
)


def _check_features(arrays: Mapping[str, np.ndarray]) -> None:
  for pattern, feature in _UNSUPPORTED_KEYS:
    keys = sorted(key for key in arrays if re.search(pattern, key))
    if keys:
      raise family.CheckpointMismatchError(
          f'the checkpoint uses {feature} (e.g. {keys[0]!r}), which vit_jax '
          'does not implement')
