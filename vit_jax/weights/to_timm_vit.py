"""Our ViT as timm's: its state dict and the arguments timm builds it with.

The inverse of `vit_jax.models.vit_timm` (whose docstring has the key
table): each of our arrays goes to the timm key that mapping reads it from,
transposed back, and each option of `vit.VisionTransformer` to the
`VisionTransformer` argument of timm 1.0 (timm/models/vision_transformer.py)
that computes the same, or `VisionTransformerDistilled` (deit.py) for a
distillation token:

  ours                                   timm
  hidden_size, num_layers, num_heads     embed_dim, depth, num_heads
  mlp_dim                                mlp_ratio (int(embed_dim * ratio);
                                         twice ours for GluMlp's packed fc1)
  classifier token | gap | map           global_pool 'token' | 'avg' | 'map'
  classifier unpooled | token_unpooled   global_pool '' (class_token off/on)
  extra_class_token                      class_token beside 'avg' / 'map'
  num_register_tokens                    reg_tokens
  pool_include_prefix, final_norm        pool_include_prefix, final_norm
  posemb_covers_prefix=False             no_embed_class=True
  posemb 'none'                          pos_embed='none'
  posemb 'sincos2d'                      its table as pos_embed, no_embed_class
  layer_scale_init                       init_values
  pre_norm, fc_norm, qkv_bias            pre_norm, fc_norm, qkv_bias
  activation gelu_tanh | gelu_erf |      act_layer gelu_tanh | gelu |
    quick_gelu | silu                      quick_gelu | silu
  attention_norm, mlp_norm               scale_attn_norm, scale_mlp_norm
  differential_attention                 attn_layer 'diff' (DiffAttention)
  zero output-projection biases          proj_bias=False (AIMv2), a choice

Some options are classes, which JSON cannot give: they select the
architecture definitions the writer may name (`Conversion.fixed`):

  layer_norm_epsilon 1e-6 | 1e-5         norm_layer: timm's LayerNorm | the
                                         definitions' LayerNorm(eps=1e-5)
  norm_layer 'rms_norm', embed_norm      norm_layer, embed_norm_layer
                                         RmsNorm(eps) (AIMv2)
  mlp_gated                              mlp_layer SwiGLU (AIMv2) or GluMlp
                                         (the DINOv2 giants), a choice
  block 'post_norm' | 'parallel'         block_fn ResPostBlock |
                                         (Diff)ParallelScalingBlock

Where layouts compute the same model (the gated MLP's; whether zero output
biases are written), `convert` names the one whose nearest definition needs
the fewest overrides (its `rank`), so an AIMv2 gets its own name. The
blocks' arrays are `to_timm_vit_blocks`'. What timm's ViT cannot compute is
refused by name (`Untranslatable`, the list is `_problem`): RoPE is timm's
Eva's (`to_timm.convert` writes it with `to_timm_eva`, and ranks Eva's
layouts beside these for the models with gated MLPs or inner norms). An
R+ViT hybrid (`resnet_units`) is `to_timm_hybrid`'s, which writes this
module's transformer on its backbone's features.
"""

import dataclasses
import math
from typing import (Any, Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple)

import flax
import numpy as np

from vit_jax.models import posemb
from vit_jax.models import vit
from vit_jax.models import vit_layout
from vit_jax.weights import to_timm_arrays
from vit_jax.weights import to_timm_vit_blocks

# timm's names for our activations (timm.layers.create_act's strings).
_ACT_LAYERS = {'gelu_tanh': 'gelu_tanh', 'gelu_erf': 'gelu',
               'quick_gelu': 'quick_gelu', 'silu': 'silu'}
# Other spellings of those in definitions (lower-cased; None: nn.GELU).
_ACT_ALIASES = {None: 'gelu', 'none': 'gelu', 'gelutanh': 'gelu_tanh',
                'quickgelu': 'quick_gelu', 'swish': 'silu'}
# Our LayerNorm epsilon -> the `norm_layer` a definition must have to
# compute it: None (timm's LayerNorm, eps 1e-6) or the CLIP towers'
# LayerNorm(1e-5).
NORM_LAYERS = {1e-6: None,
                1e-5: {'args': [], 'kwargs': {'eps': 1e-05},
                       'partial': 'LayerNorm'}}
_NORM_CLASSES = {'layer_norm': 'LayerNorm', 'rms_norm': 'RmsNorm'}
# timm's gated MLPs as its ViT definitions record `mlp_layer`: AIMv2's
# SwiGLU and the DINOv2 giants' GluMlp (the block's act_layer is passed
# over the partial's).
SWIGLU = 'SwiGLU'
GLU_MLP = {'args': [], 'kwargs': {'act_layer': 'SiLU', 'gate_last': False},
           'partial': 'GluMlp'}
# Our block -> timm's block_fn (None: its Block).
_BLOCK_FNS = {'pre_norm': None, 'post_norm': 'ResPostBlock',
              'parallel': 'ParallelScalingBlock'}
_DIFFERENTIAL_PARALLEL = 'DiffParallelScalingBlock'
# Arguments a block_fn does not read: any definition's value fits.
_UNREAD = {'post_norm': ('init_values',),  # Only initialises its norms.
           'parallel': ('attn_layer',)}
_GLOBAL_POOL = {'token': 'token', 'gap': 'avg', 'map': 'map',
                'unpooled': '', 'token_unpooled': ''}
# timm 1.0's VisionTransformer defaults of the arguments we write.
VIT_DEFAULTS = {
    'patch_size': 16, 'embed_dim': 768, 'depth': 12, 'num_heads': 12,
    'mlp_ratio': 4.0, 'qkv_bias': True, 'proj_bias': True,
    'scale_attn_norm': False, 'scale_mlp_norm': False, 'init_values': None,
    'class_token': True, 'pos_embed': 'learn', 'no_embed_class': False,
    'reg_tokens': 0, 'pre_norm': False, 'final_norm': True, 'fc_norm': None,
    'pool_include_prefix': False, 'global_pool': 'token', 'act_layer': None,
    'attn_layer': 'attn',
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


@dataclasses.dataclass(frozen=True)
class Layout:
  """One of timm's ways of holding a model, where several compute it.

  Attributes:
    mlp_layer: a gated MLP's (SWIGLU or GLU_MLP), None for timm's Mlp.
    proj_bias: False drops the output projections' biases, all zero.
  """
  mlp_layer: Any = None
  proj_bias: bool = True


PLAIN = Layout()


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


def _problem(model: vit.VisionTransformer, layout: Layout) -> Optional[str]:
  """What timm's ViT cannot compute of `model` in `layout`, or None."""
  parallel = model.block == 'parallel'
  checks = (
      (model.representation_size is not None,
       'a tanh pre_logits layer (representation_size='
       f"{model.representation_size}), which timm's VisionTransformer "
       'lacks; fine-tune without it (load_for_fine_tuning drops it)'),
      (model.norm_layer == 'layer_norm' and
       model.layer_norm_epsilon not in NORM_LAYERS,
       f"layer_norm_epsilon={model.layer_norm_epsilon:g}: timm's ViT "
       'definitions use 1e-6 or 1e-5'),
      (model.distillation and model.num_register_tokens,
       "register tokens beside a distillation token (timm's distilled "
       'model ignores them)'),
      (model.distillation and model.fc_norm,
       "fc_norm beside a distillation token (timm's distilled head skips "
       'it)'),
      # `to_timm.convert` writes these as timm's Eva (`to_timm_eva`).
      (model.rope is not None,
       "rotary position embeddings in timm's VisionTransformer: timm's Eva "
       'has them (to_timm_eva)'),
      (model.activation not in _ACT_LAYERS,
       f'the MLP activation {model.activation!r} in its ViT (act_layer: '
       f'{", ".join(sorted(_ACT_LAYERS))})'),
      (model.mlp_gated != (layout.mlp_layer is not None),
       f'a {"gated" if model.mlp_gated else "plain"} MLP with timm\'s '
       f'mlp_layer={layout.mlp_layer or "Mlp"}'),
      (model.block == 'post_norm' and model.layer_scale_init is not None,
       "LayerScale in post-norm blocks (timm's ResPostBlock has none)"),
      (parallel and (model.mlp_gated or model.mlp_norm or
                     model.attention_norm),
       "gated MLPs or inner norms in parallel blocks (timm's "
       'ParallelScalingBlock has neither)'),
      (model.differential_attention and model.attention_norm,
       'an attention inner norm beside differential attention'),
      (model.norm_layer != 'layer_norm' and (model.mlp_norm or
                                             model.attention_norm),
       f'inner norms beside norm_layer={model.norm_layer!r} (ours are '
       "LayerNorms, timm's its norm_layer)"),
      (model.classifier == 'map' and (
          model.mlp_gated or model.map_num_heads not in (None,
                                                         model.num_heads)
          or model.map_mlp_dim not in (None, model.mlp_dim)),
       "a MAP head unlike the blocks (timm's attn_pool has their heads and "
       'a plain MLP of their width)'),
  )
  return next((problem for failed, problem in checks if failed), None)


def _check_expressible(model: vit.VisionTransformer, layout: Layout) -> None:
  """Raises Untranslatable naming what timm's ViT cannot compute."""
  problem = _problem(model, layout)
  if problem:
    raise Untranslatable(f'timm cannot express {problem}')


def norm_layer(layer_norm_epsilon: float, kind: str = 'layer_norm') -> Any:
  """The `norm_layer` a definition must have to compute our norm (`kind`,
  one of vit_block_variants.NORM_LAYERS) of that epsilon."""
  if kind == 'layer_norm' and layer_norm_epsilon in NORM_LAYERS:
    return NORM_LAYERS[layer_norm_epsilon]
  return {'args': [], 'kwargs': {'eps': float(layer_norm_epsilon)},
          'partial': _NORM_CLASSES[kind]}


def fixed_args(model: vit.VisionTransformer,
               layout: Layout = PLAIN) -> Dict[str, Any]:
  """The arguments JSON cannot give (classes) a definition must have."""
  block_fn = _BLOCK_FNS[model.block]
  if model.block == 'parallel' and model.differential_attention:
    block_fn = _DIFFERENTIAL_PARALLEL
  embed_norm = None
  if model.embed_norm:  # Spelled as a partial even at timm's default eps.
    embed_norm = {'args': [], 'kwargs': {'eps': float(
        model.layer_norm_epsilon)}, 'partial': _NORM_CLASSES[model.norm_layer]}
  return {'norm_layer': norm_layer(model.layer_norm_epsilon, model.norm_layer),
          'embed_norm_layer': embed_norm, 'block_fn': block_fn,
          'mlp_layer': layout.mlp_layer}


def timm_args(model: vit.VisionTransformer, image_size: Tuple[int, int],
              layout: Layout = PLAIN) -> Dict[str, Any]:
  """The arguments of timm's ViT that compute what `model` computes, in
  `layout` (beside `fixed_args`).

  Raises:
    Untranslatable: `model` has a feature timm's ViT lacks (in `layout`).
  """
  _check_expressible(model, layout)
  pool = _GLOBAL_POOL[model.classifier]
  registers = int(model.num_register_tokens)
  class_token = (model.classifier in vit.TOKEN_CLASSIFIERS or
                 bool(model.extra_class_token))
  # Ours by default: 'gap' leaves the prefix tokens out, 'map' reads them.
  include_prefix = (pool == 'map' if model.pool_include_prefix is None
                    else bool(model.pool_include_prefix))
  packed = 2 if layout.mlp_layer == GLU_MLP else 1  # fc1 of [gate; value].
  return {
      'img_size': [int(image_size[0]), int(image_size[1])], 'in_chans': 3,
      'num_classes': int(model.num_classes or 0),
      'patch_size': patch_size_arg(model.patch_size),
      'embed_dim': int(model.hidden_size), 'depth': int(model.num_layers),
      'num_heads': int(model.num_heads),
      'mlp_ratio': mlp_ratio(model.hidden_size, packed * model.mlp_dim),
      'qkv_bias': bool(model.qkv_bias), 'proj_bias': layout.proj_bias,
      'scale_attn_norm': bool(model.attention_norm),
      'scale_mlp_norm': bool(model.mlp_norm),
      'init_values': (None if model.layer_scale_init is None
                      else float(model.layer_scale_init)),
      'class_token': class_token,
      'pos_embed': 'none' if model.posemb == 'none' else 'learn',
      # A sin-cos embedding is written as its table at this resolution,
      # which covers the patches only.
      'no_embed_class': (not model.posemb_covers_prefix or
                         model.posemb == 'sincos2d'),
      'reg_tokens': registers, 'pre_norm': bool(model.pre_norm),
      'final_norm': bool(model.final_norm), 'fc_norm': bool(model.fc_norm),
      'pool_include_prefix': bool(
          pool in ('avg', 'map') and include_prefix and
          int(class_token) + registers),
      'global_pool': pool, 'act_layer': _ACT_LAYERS[model.activation],
      'attn_layer': 'diff' if model.differential_attention else 'attn',
  }


def _layer_name(value: Any, aliases: Mapping[Any, str]) -> Any:
  name = None if value is None else str(value).lower()
  return aliases.get(name, name)


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
  if key == 'act_layer':
    return _layer_name(definition_value, _ACT_ALIASES) == _layer_name(
        ours, _ACT_ALIASES)
  if key == 'attn_layer':
    aliases = {None: 'attn', '': 'attn', 'attention': 'attn',
               'diffattention': 'diff'}
    return _layer_name(definition_value, aliases) == _layer_name(
        ours, aliases)
  if key == 'patch_size' and isinstance(definition_value, (list, tuple)):
    definition_value = patch_size_arg(definition_value)
  return definition_value == ours


def _same_arg_in(block: str) -> Callable[..., bool]:
  """`same_arg` for our block, whose timm block_fn leaves some unread."""
  def same(key, definition_value, ours, args):
    return key in _UNREAD.get(block, ()) or same_arg(
        key, definition_value, ours, args)
  return same


# ---------------------------------------------------------------- arrays --

def patch_embedding(out, params: Mapping[str, Any], pre_norm: bool) -> None:
  """`embedding` (ph, pw, 3, D) -> patch_embed.proj (D, 3, ph, pw); timm's
  pre_norm models have no bias there (PatchEmbed(bias=not pre_norm)); its
  norm (embed_norm_layer) -> patch_embed.norm."""
  out['patch_embed.proj.weight'] = np.asarray(
      params['embedding']['kernel']).transpose(3, 2, 0, 1)
  bias = np.asarray(params['embedding']['bias'])
  if not pre_norm:
    out['patch_embed.proj.bias'] = bias
  elif np.any(bias):
    raise Untranslatable(
        "timm cannot express a patch-embedding bias beside pre_norm (timm's "
        'pre_norm ViTs have none)')
  if 'embedding_norm' in params:
    to_timm_arrays.norm(out, 'patch_embed.norm', params['embedding_norm'])


def state_dict(params, model: vit.VisionTransformer,
               image_size: Tuple[int, int],
               layout: Layout = PLAIN) -> Dict[str, np.ndarray]:
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
    block = encoder[f'encoderblock_{layer}']
    if model.block == 'parallel':
      to_timm_vit_blocks.parallel_block(out, f'blocks.{layer}', block)
    else:
      to_timm_vit_blocks.block(out, f'blocks.{layer}', block,
                               packed=layout.mlp_layer == GLU_MLP)
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
          for key, value in out.items()
          if layout.proj_bias or
          not to_timm_vit_blocks.PROJECTION_BIAS.match(key)}


# ------------------------------------------------------------ conversion --

def nearest(conversions: Sequence[Conversion],
            rank: Callable[[Conversion], Any], *, default: int = 0) -> int:
  """The index of the conversion `rank` orders least among those some
  definition fits (whose rank is not None); `default` where none fits."""
  ranked = [(rank(conversion), index)
            for index, conversion in enumerate(conversions)]
  fitting = [item for item in ranked if item[0] is not None]
  return min(fitting)[1] if fitting else default


def layouts(params, model: vit.VisionTransformer) -> List[Layout]:
  """The layouts that compute `model`, in order of preference."""
  mlp_layers = [SWIGLU, GLU_MLP] if model.mlp_gated else [None]
  proj_biases = [True]
  if to_timm_vit_blocks.projection_biases_are_zero(params, model):
    proj_biases.append(False)
  return [Layout(mlp_layer, proj_bias) for mlp_layer in mlp_layers
          for proj_bias in proj_biases]


def convert(params, model: vit.VisionTransformer,
            image_size: Tuple[int, int], *,
            rank: Optional[Callable[[Conversion], Any]] = None) -> Conversion:
  """`model` and its `params` as timm's (see the module docstring).

  Args:
    params: our tree.
    model: the VisionTransformer.
    image_size: the (H, W) written.
    rank: orders the conversions of the layouts that compute the model
      (None for one no definition fits); the least is written. None: the
      first layout.

  Raises:
    Untranslatable: a feature timm's ViT lacks (a hybrid's ResNet stem
      included: `to_timm_hybrid` writes those).
  """
  if model.resnet_units is not None:
    raise Untranslatable(
        "to_timm_vit writes timm's patch-embedding ViT, not an R+ViT hybrid "
        '(resnet_units): to_timm_hybrid.convert writes those')
  distilled = bool(model.distillation)
  candidates = [
      (layout, Conversion(
          model_class=('VisionTransformerDistilled' if distilled
                       else 'VisionTransformer'),
          module='deit' if distilled else 'vision_transformer',
          args=timm_args(model, image_size, layout), defaults=VIT_DEFAULTS,
          fixed=fixed_args(model, layout), state_dict={},
          classifiers=('head', 'head_dist') if distilled else ('head',),
          same_arg=_same_arg_in(model.block)))
      for layout in layouts(params, model)]
  layout, chosen = candidates[0 if rank is None else nearest(
      [conversion for _, conversion in candidates], rank)]
  return dataclasses.replace(
      chosen, state_dict=state_dict(params, model, image_size, layout))
