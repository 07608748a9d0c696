"""What a timm checkpoint's definition says that its arrays cannot.

timm's config.json names the architecture (e.g. `vit_base_patch16_clip_224`)
and, for models created with overrides, holds `model_args`. The number of
attention heads, the activation, the norm layer and its epsilon, the pooling,
the block and attention kinds are not in the state dict: they are the
arguments timm builds the architecture with, its definition merged with
config.json's `model_args` (`timm_definitions.model_args`). Options of timm's
VisionTransformer that `vit.VisionTransformer` lacks are refused here, by
name, before any key is mapped (`vit_jax.models.vit_timm`).
"""

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from vit_jax.models import family
from vit_jax.models import timm_definitions
from vit_jax.models import vit_sublayers


# ------------------------------------ what the arrays cannot say (recipe) --

# timm's classes our ViT computes (timm/models/vision_transformer.py, deit.py).
_MODEL_CLASSES = ('VisionTransformer', 'VisionTransformerDistilled')
# act_layer (timm.layers.get_act_layer's names, or the class recorded),
# lower-cased -> ours. timm's Mlp uses exact (erf) GELU (nn.GELU) by default.
_ACT_LAYERS = {None: 'gelu_erf', 'gelu': 'gelu_erf', 'gelu_tanh': 'gelu_tanh',
               'gelutanh': 'gelu_tanh', 'quick_gelu': 'quick_gelu',
               'quickgelu': 'quick_gelu', 'silu': 'silu', 'swish': 'silu'}
# norm_layer (get_norm_layer's names or the class), lower-cased without '_'
# and 'fp32' (float32 statistics, as ours always are) -> ours.
_NORM_LAYERS = {None: 'layer_norm', 'layernorm': 'layer_norm',
                'rmsnorm': 'rms_norm'}
# timm.layers.LayerNorm's and RmsNorm's default epsilon.
_DEFAULT_EPSILON = 1e-6
# block_fn -> our block (vit_block_variants.BLOCKS).
_BLOCKS = {None: 'pre_norm', 'Block': 'pre_norm', 'ResPostBlock': 'post_norm',
           'ParallelScalingBlock': 'parallel',
           'DiffParallelScalingBlock': 'parallel'}
_DIFFERENTIAL_BLOCKS = ('DiffParallelScalingBlock',)
# attn_layer -> differential attention or not.
_ATTENTION_LAYERS = {None: False, '': False, 'attn': False, 'Attention': False,
                     'diff': True, 'DiffAttention': True}
# model_args keys the arrays show (or errors on their keys report), or that
# only matter in training or at another resolution.
_MODEL_ARGS_SHOWN = frozenset({
    'img_size', 'in_chans', 'num_classes', 'embed_dim', 'depth',
    'patch_size', 'mlp_ratio', 'reg_tokens', 'no_embed_class',
    'init_values', 'qkv_bias', 'proj_bias', 'pre_norm', 'pos_embed',
    'dynamic_img_size', 'weight_init', 'fix_init', 'drop_rate',
    'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate',
    'drop_path_rate'})
_MODEL_ARGS_READ = frozenset({
    'num_heads', 'act_layer', 'norm_layer', 'embed_norm_layer', 'global_pool',
    'pool_include_prefix', 'class_token', 'fc_norm', 'final_norm', 'block_fn',
    'attn_layer', 'mlp_layer'})
# Options the arrays show (gated MLPs and inner norms: vit_timm maps their
# keys), read with the keys.
_MODEL_ARGS_SHOWN |= {'scale_attn_norm', 'scale_mlp_norm'}
# A CNN backbone (embed_layer) shows as patch_embed.backbone arrays, which
# the hybrids' layout (vit_hybrid_timm) maps before it hands the rest here.
_MODEL_ARGS_SHOWN |= {'embed_layer'}
# Options vit_jax does not implement, when set to other than timm's default:
# key -> (default values, the feature named in the error).
_MODEL_ARGS_REFUSED = {
    'qk_norm': ((False,), 'qk-norm (qk_norm=True)'),
    'dynamic_img_pad': ((False,), 'padding of inputs to a multiple of the '
                        'patch (dynamic_img_pad)'),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a checkpoint's arrays cannot say: timm's model arguments."""
  architecture: str  # config.json's, with its pretrained tag.
  num_heads: Optional[int]
  activation: str
  norm_layer: str  # 'layer_norm' | 'rms_norm'.
  layer_norm_epsilon: float
  global_pool: Optional[str]  # None: not written; the arrays decide.
  pool_include_prefix: bool
  final_norm: bool
  block: str  # vit_block_variants.BLOCKS.
  differential_attention: bool
  # Gated MLPs (the arrays show one): the gate's activation, and whether
  # a packed fc1 holds the gate in its second half (GluMlp's gate_last).
  mlp_activation: str = 'silu'
  mlp_gate_last: bool = False


def _refuse(feature: str):
  raise family.CheckpointMismatchError(
      f'the checkpoint uses {feature}, which vit_jax does not implement')


def _check_model_class(name: str) -> None:
  found = timm_definitions.definition(name)
  if found is None or found.model_class in _MODEL_CLASSES:
    return
  features = {'Eva': "rotary position embeddings or other features of "
                     "timm's Eva models"}
  _refuse(features.get(found.model_class,
                       f"timm's {found.model_class} model ({found.module})"))


def _check_model_args(model_args: Mapping[str, Any]) -> None:
  for key, value in model_args.items():
    if key in _MODEL_ARGS_SHOWN or key in _MODEL_ARGS_READ:
      continue
    if key in _MODEL_ARGS_REFUSED:
      defaults, feature = _MODEL_ARGS_REFUSED[key]
      if timm_definitions.layer_name(value) in defaults or value in defaults:
        continue
      _refuse(feature.format(timm_definitions.layer_name(value) or value))
    raise family.CheckpointMismatchError(
        f'config.json model_args {key}={value!r}: a timm option vit_jax does '
        'not implement')


def _from_table(model_args: Mapping[str, Any], key: str, table, *,
                normalise=lambda name: name):
  """model_args[key] (a layer's name) -> table's value; refused naming the
  key when the table lacks it."""
  value = model_args.get(key)
  name = timm_definitions.layer_name(value)
  if value is not None and name is None:
    name = repr(value)  # Not a recorded layer: found in no table.
  found = table.get(name if name is None else normalise(name))
  if found is None:
    raise family.CheckpointMismatchError(
        f'timm model_args {key}={name!r}: vit_jax implements '
        f'{sorted(str(name) for name in table if name)}')
  return found


def _activation(model_args: Mapping[str, Any]) -> str:
  activation = _from_table(model_args, 'act_layer', _ACT_LAYERS,
                           normalise=str.lower)
  if activation not in vit_sublayers.ACTIVATIONS:
    _refuse(f'the activation act_layer={model_args["act_layer"]!r}')
  return activation


def _norm_name(name: str) -> str:
  return name.lower().replace('_', '').replace('fp32', '')


def recipe(config: Mapping[str, Any],
           timm_arrays: Mapping[str, np.ndarray]) -> Recipe:
  """What the arrays cannot say: timm's definition of the architecture,
  overridden by config.json's model_args.

  Args:
    config: config.json (`architecture`, optional `model_args` and
      `global_pool`).
    timm_arrays: the state dict, checked for timm features we lack first.

  Returns:
    The recipe for `to_vit`.

  Raises:
    family.CheckpointMismatchError: a feature, model class or model_args
      option vit_jax does not implement.
  """
  _check_features(timm_arrays)
  _check_model_class(config['architecture'])
  model_args = timm_definitions.model_args(config)
  _check_model_args(model_args)
  block_fn = timm_definitions.layer_name(model_args.get('block_fn'))
  norm_layer = model_args.get('norm_layer')
  found = Recipe(
      architecture=config['architecture'],
      num_heads=model_args.get('num_heads'),
      activation=_activation(model_args),
      norm_layer=_from_table(model_args, 'norm_layer', _NORM_LAYERS,
                             normalise=_norm_name),
      layer_norm_epsilon=float(timm_definitions.layer_kwargs(norm_layer).get(
          'eps', _DEFAULT_EPSILON)),
      global_pool=model_args.get('global_pool', config.get('global_pool')),
      pool_include_prefix=bool(model_args.get('pool_include_prefix', False)),
      final_norm=bool(model_args.get('final_norm', True)),
      block=_from_table(model_args, 'block_fn', _BLOCKS),
      differential_attention=block_fn in _DIFFERENTIAL_BLOCKS or _from_table(
          model_args, 'attn_layer', _ATTENTION_LAYERS),
      **_gated_mlp(model_args))
  _check_arrays_fit(found, timm_arrays)
  return found


# Keys of the block variants, which the definition must name.
_VARIANT_KEYS = (
    (r'^blocks\.\d+\.(attn\.)?lambda_q1$', 'differential attention',
     lambda found: found.differential_attention),
    (r'^blocks\.\d+\.in_proj\.', 'parallel blocks (ParallelScalingBlock)',
     lambda found: found.block == 'parallel'),
)


def _check_arrays_fit(found: Recipe, arrays: Mapping[str, np.ndarray]):
  for pattern, feature, named in _VARIANT_KEYS:
    keys = sorted(key for key in arrays if re.search(pattern, key))
    if keys and not named(found):
      raise family.CheckpointMismatchError(
          f'the checkpoint has arrays of {feature} (e.g. {keys[0]!r}) but '
          f'the definition of {found.architecture!r} (block_fn, attn_layer) '
          'does not say so: set them in its config.json model_args')


# The gate activations of timm's gated MLPs (act_layer names).
_GATE_ACTIVATIONS = {'silu': 'silu', 'swish': 'silu', 'sigmoid': 'sigmoid',
                     'gelu': 'gelu_erf', 'gelu_tanh': 'gelu_tanh'}


def _gated_mlp(merged: Mapping[str, Any]) -> Dict[str, Any]:
  """A gated MLP's activation and gate order, from timm's definition
  (mlp_layer, act_layer) merged with config.json's model_args."""
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


def pooling(recipe: Recipe, *, has_cls: bool, num_prefix: int,
            has_map: bool, distilled: bool) -> dict:
  """timm's global_pool (the recipe's, else what the arrays hold) -> our
  `classifier` and the pooling options that differ from their defaults
  (`extra_class_token`, `pool_include_prefix`), given which prefix tokens
  and head the arrays hold.

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
  elif pool not in ('token', 'avg', 'map', ''):
    problem = f'unknown global_pool {pool!r}'
  if problem:
    raise family.CheckpointMismatchError(
        f'{problem}: vit_jax does not implement it')
  if pool == '':
    return {'classifier': 'token_unpooled' if has_cls else 'unpooled'}
  if pool == 'token':
    return {'classifier': 'token'}
  options = {'classifier': {'avg': 'gap', 'map': 'map'}[pool]}
  if has_cls:  # BEiT-3, EVA: a class token beside average pooling.
    options['extra_class_token'] = True
  # Ours by default: 'gap' leaves the prefix tokens out, 'map' reads them.
  if num_prefix and recipe.pool_include_prefix != (pool == 'map'):
    options['pool_include_prefix'] = recipe.pool_include_prefix
  return options


# --------------------------------------------------------------- features --

# Keys of timm features our model lacks (re.search), checked before mapping
# so the error names the feature rather than an unknown key.
_UNSUPPORTED_KEYS = (
    (r'(^|\.)[qk]_norm\.', 'qk-norm (qk_norm=True)'),
    (r'\.mlp\.(w12|w1|w2|w3)\.', 'a gated MLP of another layout (w12 / w3)'),
    (r'\.attn\.gate\.', 'gated attention'),
    (r'\.lambda_[ab]$', 'differential attention with dual_lambda'),
    (r'(^|\.)rope\.|freqs', 'rotary position embeddings'),
    (r'relative_position', 'relative position embeddings'),
    (r'^attn_pool\.pos_embed', 'a position embedding in the attention pool'),
    (r'^blocks\.\d+\.(attns|ffns)\.', 'parallel blocks (ParallelThingsBlock)'),
)


def _check_features(arrays: Mapping[str, np.ndarray]) -> None:
  for pattern, feature in _UNSUPPORTED_KEYS:
    keys = sorted(key for key in arrays if re.search(pattern, key))
    if keys:
      raise family.CheckpointMismatchError(
          f'the checkpoint uses {feature} (e.g. {keys[0]!r}), which vit_jax '
          'does not implement')
