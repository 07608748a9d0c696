"""Our ViT as timm's: its state dict and the arguments timm builds it with.

The inverse of `vit_jax.models.vit_timm` (whose docstring has the key
table): each of our arrays goes to the timm key that mapping reads it from,
transposed back, and each option of `vit.VisionTransformer` to the
`VisionTransformer` argument of timm 1.0 (timm/models/vision_transformer.py)
that computes the same, or `VisionTransformerDistilled` (deit.py) for a
distillation token:

  ours                                   timm
  hidden_size, num_layers, num_heads     embed_dim, depth, num_heads
  mlp_dim                                mlp_ratio (int(embed_dim * ratio))
  classifier token | gap | map           global_pool 'token' | 'avg' | 'map'
  classifier unpooled | token_unpooled   global_pool '' (class_token off/on)
  num_register_tokens                    reg_tokens
  posemb_covers_prefix=False             no_embed_class=True
  posemb 'none'                          pos_embed='none'
  posemb 'sincos2d'                      its table as pos_embed, no_embed_class
  layer_scale_init                       init_values
  pre_norm, fc_norm, qkv_bias            pre_norm, fc_norm, qkv_bias
  activation gelu_tanh|gelu_erf|quick    act_layer gelu_tanh|gelu|quick_gelu
  layer_norm_epsilon 1e-6 | 1e-5         timm's LayerNorm | the definitions'
                                         LayerNorm(eps=1e-5) (CLIP towers)

The epsilon is the one choice JSON cannot override (timm's `norm_layer`
takes a layer, not a number): it selects the architecture definitions the
writer may name (`Conversion.fixed`). What timm's ViT cannot compute is
refused by name (`Untranslatable`): a tanh `pre_logits` layer
(representation_size), other epsilons, and the options of timm's Eva (RoPE,
gated MLPs, inner norms), which `to_timm.convert` writes as timm's Eva
(`to_timm_eva`). An R+ViT hybrid (`resnet_units`) is `to_timm_hybrid`'s,
which writes this module's transformer on its backbone's features.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import numpy as np

from vit_jax.models import posemb
from vit_jax.models import vit
from vit_jax.models import vit_layout
from vit_jax.weights import to_timm_arrays

# timm's names for our activations (timm.layers.create_act's strings).
_ACT_LAYERS = {'gelu_tanh': 'gelu_tanh', 'gelu_erf': 'gelu',
               'quick_gelu': 'quick_gelu'}
# Our epsilon -> the `norm_layer` a definition must have to compute it:
# None (timm's LayerNorm, eps 1e-6) or the CLIP towers' LayerNorm(1e-5).
NORM_LAYERS = {1e-6: None,
                1e-5: {'args': [], 'kwargs': {'eps': 1e-05},
                       'partial': 'LayerNorm'}}
_GLOBAL_POOL = {'token': 'token', 'gap': 'avg', 'map': 'map',
                'unpooled': '', 'token_unpooled': ''}
# timm 1.0's VisionTransformer defaults of the arguments we write.
VIT_DEFAULTS = {
    'patch_size': 16, 'embed_dim': 768, 'depth': 12, 'num_heads': 12,
    'mlp_ratio': 4.0, 'qkv_bias': True, 'init_values': None,
    'class_token': True, 'pos_embed': 'learn', 'no_embed_class': False,
    'reg_tokens': 0, 'pre_norm': False, 'final_norm': True, 'fc_norm': None,
    'pool_include_prefix': False, 'global_pool': 'token', 'act_layer': None,
}


class Untranslatable(ValueError):
  """A model timm cannot express; the message names the feature."""


@dataclasses.dataclass(frozen=True)
class Conversion:
  """A model in timm's terms.

  Attributes:
    model_class: the timm class ('VisionTransformer', ...).
    module: the timm module defining it, whose architectures are named
      before others' of the same fit ('vision_transformer', 'deit').
    args: constructor arguments (JSON values) that reproduce the model,
      each of which config.json's model_args may override.
    defaults: the class's default of each key of `args`.
    fixed: definition arguments JSON cannot override, with the value the
      definition must have (None: the key must be absent or None).
    state_dict: timm key -> float32 array.
    classifiers: the head's parameter names (pretrained_cfg 'classifier').
    first_conv: the first convolution's name (pretrained_cfg 'first_conv').
    same_arg: fn(key, definition's value, ours, args) -> whether they
      compute the same, for the class's arguments (None: `same_arg`).
    architectures: the only definitions that compute the model, where what
      tells them apart is fixed in timm's code, not in their arguments (a
      hybrid's backbone); None: any of the class.
  """
  model_class: str
  module: str
  args: Dict[str, Any]
  defaults: Mapping[str, Any]
  fixed: Mapping[str, Any]
  state_dict: Dict[str, np.ndarray]
  classifiers: Tuple[str, ...]
  first_conv: str = 'patch_embed.proj'
  same_arg: Optional[Callable[[str, Any, Any, Mapping[str, Any]], bool]] = None
  architectures: Optional[Tuple[str, ...]] = None


# ------------------------------------------------------------- arguments --

def mlp_ratio(hidden_size: int, mlp_dim: int) -> float:
  """A ratio timm turns back into `mlp_dim` (int(hidden_size * ratio))."""
  ratio = mlp_dim / hidden_size
  while int(hidden_size * ratio) < mlp_dim:  # Rounded down by a hair.
    ratio = math.nextafter(ratio, math.inf)
  return ratio


def patch_size_arg(patch_size) -> Any:
  height, width = (int(side) for side in patch_size)
  return height if height == width else [height, width]


def _check_expressible(model: vit.VisionTransformer) -> None:
  """Raises Untranslatable naming what timm's ViT cannot compute."""
  problem = None
  if model.representation_size is not None:
    problem = ("a tanh pre_logits layer (representation_size="
               f"{model.representation_size}), which timm's VisionTransformer "
               'lacks; fine-tune without it (load_for_fine_tuning drops it)')
  elif model.layer_norm_epsilon not in NORM_LAYERS:
    problem = (f'layer_norm_epsilon={model.layer_norm_epsilon:g}: timm\'s '
               'ViT definitions use 1e-6 or 1e-5')
  elif model.distillation and model.num_register_tokens:
    problem = ("register tokens beside a distillation token (timm's "
               'distilled model ignores them)')
  elif model.distillation and model.fc_norm:
    problem = "fc_norm beside a distillation token (timm's distilled head " \
              'skips it)'
  # The options of timm's Eva: `to_timm.convert` writes such models as
  # timm's Eva (`to_timm_eva`), never as its VisionTransformer.
  elif (model.rope is not None or model.mlp_gated or model.mlp_norm or
        model.attention_norm):
    problem = ('rotary position embeddings, gated MLPs or inner norms in '
               "timm's VisionTransformer: timm's Eva has them (to_timm_eva)")
  elif model.activation not in _ACT_LAYERS:
    problem = (f'the MLP activation {model.activation!r} in its ViT '
               f'(act_layer: {", ".join(sorted(_ACT_LAYERS))})')
  if problem:
    raise Untranslatable(f'timm cannot express {problem}')


def norm_layer(layer_norm_epsilon: float) -> Any:
  """The `norm_layer` a definition must have to compute our epsilon (as
  timm_args checks, one of 1e-6 and 1e-5)."""
  return NORM_LAYERS[layer_norm_epsilon]


def timm_args(model: vit.VisionTransformer,
              image_size: Tuple[int, int]) -> Dict[str, Any]:
  """The arguments of timm's ViT that compute what `model` computes.

  Raises:
    Untranslatable: `model` has a feature timm's ViT lacks.
  """
  _check_expressible(model)
  pool = _GLOBAL_POOL[model.classifier]
  registers = int(model.num_register_tokens)
  return {
      'img_size': [int(image_size[0]), int(image_size[1])], 'in_chans': 3,
      'num_classes': int(model.num_classes or 0),
      'patch_size': patch_size_arg(model.patch_size),
      'embed_dim': int(model.hidden_size), 'depth': int(model.num_layers),
      'num_heads': int(model.num_heads),
      'mlp_ratio': mlp_ratio(model.hidden_size, model.mlp_dim),
      'qkv_bias': bool(model.qkv_bias),
      'init_values': (None if model.layer_scale_init is None
                      else float(model.layer_scale_init)),
      # A class token no head reads (BEiT-3, EVA: extra_class_token) is
      # timm's class token beside its average pool.
      'class_token': (model.classifier in vit.TOKEN_CLASSIFIERS or
                      bool(model.extra_class_token)),
      'pos_embed': 'none' if model.posemb == 'none' else 'learn',
      # A sin-cos embedding is written as its table at this resolution,
      # which covers the patches only.
      'no_embed_class': (not model.posemb_covers_prefix or
                         model.posemb == 'sincos2d'),
      'reg_tokens': registers, 'pre_norm': bool(model.pre_norm),
      'final_norm': bool(model.final_norm), 'fc_norm': bool(model.fc_norm),
      # Our MAP head attends to every token, registers included.
      'pool_include_prefix': pool == 'map' and registers > 0,
      'global_pool': pool, 'act_layer': _ACT_LAYERS[model.activation],
  }


def same_arg(key: str, definition_value: Any, ours: Any,
             args: Mapping[str, Any]) -> bool:
  """Whether a definition's value of `key` computes what ours does."""
  if key == 'mlp_ratio':  # One ratio, or the Mixer's (tokens, channels).
    width = args['embed_dim']
    widths = lambda ratio: [int(width * value) for value in np.broadcast_to(
        ratio, np.shape(ours)).ravel()]
    return widths(definition_value) == widths(ours)
  if key == 'fc_norm' and definition_value is None:  # timm: avg pools do.
    definition_value = args['global_pool'] in ('avg', 'avgmax', 'max')
  if key == 'init_values':  # Loaded over: only whether there are scales.
    return (definition_value is None) == (ours is None)
  if key == 'act_layer' and definition_value is None:
    definition_value = 'gelu'
  if key == 'patch_size' and isinstance(definition_value, (list, tuple)):
    definition_value = patch_size_arg(definition_value)
  return definition_value == ours


# ---------------------------------------------------------------- arrays --

def _block(out, timm: str, ours: Mapping[str, Any]) -> None:
  attention = ours['MultiHeadDotProductAttention_0']
  to_timm_arrays.norm(out, f'{timm}.norm1', ours['LayerNorm_0'])
  to_timm_arrays.fused(out, f'{timm}.attn.qkv', attention,
                       ('query', 'key', 'value'))
  to_timm_arrays.attention_out(out, f'{timm}.attn.proj', attention['out'])
  to_timm_arrays.norm(out, f'{timm}.norm2', ours['LayerNorm_1'])
  to_timm_arrays.mlp(out, f'{timm}.mlp', ours['MlpBlock_0'])
  for index in (0, 1):
    if f'LayerScale_{index}' in ours:
      out[f'{timm}.ls{index + 1}.gamma'] = np.asarray(
          ours[f'LayerScale_{index}']['scale'])


def patch_embedding(out, params: Mapping[str, Any], pre_norm: bool) -> None:
  """`embedding` (ph, pw, 3, D) -> patch_embed.proj (D, 3, ph, pw); timm's
  pre_norm models have no bias there (PatchEmbed(bias=not pre_norm))."""
  out['patch_embed.proj.weight'] = np.asarray(
      params['embedding']['kernel']).transpose(3, 2, 0, 1)
  bias = np.asarray(params['embedding']['bias'])
  if not pre_norm:
    out['patch_embed.proj.bias'] = bias
  elif np.any(bias):
    raise Untranslatable(
        "timm cannot express a patch-embedding bias beside pre_norm (timm's "
        'pre_norm ViTs have none)')


def state_dict(params, model: vit.VisionTransformer,
               image_size: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """Our ViT tree (scanned or not) -> timm's state dict, float32. A fixed
  sin-cos position embedding becomes timm's learned `pos_embed` holding its
  table for `image_size` (the same numbers at that size; timm resizes it
  like any learned one at another).

  Raises:
    Untranslatable: a nonzero patch-embedding bias beside pre_norm.
  """
  params = vit_layout.unstack_blocks(flax.core.unfreeze(params))
  encoder = params['Transformer']
  out = {}
  patch_embedding(out, params, model.pre_norm)
  for ours, timm in (('cls', 'cls_token'), ('extra_cls', 'cls_token'),
                     ('dist_token', 'dist_token'),
                     ('reg_token', 'reg_token')):
    if ours in params:
      out[timm] = np.asarray(params[ours])
  if 'pos_embedding' in encoder.get('posembed_input', {}):
    out['pos_embed'] = np.asarray(encoder['posembed_input']['pos_embedding'])
  elif model.posemb == 'sincos2d':
    grid = [int(size) // int(patch)
            for size, patch in zip(image_size, model.patch_size)]
    out['pos_embed'] = posemb.sincos_2d(grid, model.hidden_size)
  if 'pre_norm' in encoder:
    to_timm_arrays.norm(out, 'norm_pre', encoder['pre_norm'])
  for layer in range(model.num_layers):
    _block(out, f'blocks.{layer}', encoder[f'encoderblock_{layer}'])
  if 'encoder_norm' in encoder:
    to_timm_arrays.norm(out, 'norm', encoder['encoder_norm'])
  if 'fc_norm' in params:
    to_timm_arrays.norm(out, 'fc_norm', params['fc_norm'])
  if 'MAPHead_0' in params:
    to_timm_arrays.map_head(out, params['MAPHead_0'])
  for head in ('head', 'head_dist'):
    if head in params:
      to_timm_arrays.linear(out, head, params[head])
  return {key: np.ascontiguousarray(value, np.float32)
          for key, value in out.items()}


def convert(params, model: vit.VisionTransformer,
            image_size: Tuple[int, int]) -> Conversion:
  """`model` and its `params` as timm's (see the module docstring).

  Raises:
    Untranslatable: a feature timm's ViT lacks (a hybrid's ResNet stem
      included: `to_timm_hybrid` writes those).
  """
  if model.resnet_units is not None:
    raise Untranslatable(
        "to_timm_vit writes timm's patch-embedding ViT, not an R+ViT hybrid "
        '(resnet_units): to_timm_hybrid.convert writes those')
  args = timm_args(model, image_size)
  distilled = bool(model.distillation)
  return Conversion(
      model_class=('VisionTransformerDistilled' if distilled
                   else 'VisionTransformer'),
      module='deit' if distilled else 'vision_transformer',
      args=args, defaults=VIT_DEFAULTS,
      fixed={'norm_layer': norm_layer(model.layer_norm_epsilon)},
      state_dict=state_dict(params, model, image_size),
      classifiers=('head', 'head_dist') if distilled else ('head',))

