"""The ViT's released checkpoint layout, and what a parameter tree says about
its model.

The released `.npz` layout, all of whose variations are mapped here:
  * the ViT-paper files number the modules inside an encoder block globally
    (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3);
    newer Flax code, and our model, numbers them per type (LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0);
  * old hybrid files store GroupNorm scale/bias as (1, 1, 1, C);
  * a scanned encoder (`scan_layers`) keeps one `encoderblock` whose arrays
    have a leading layer axis; files always hold `encoderblock_{i}`.
Only the encoder blocks' modules are renumbered: a MAP head keeps
big_vision's names (`MAPHead_0/MultiHeadDotProductAttention_0`, ...).

A tree shows the whole architecture (`architecture`): patch size (the
`embedding` kernel), width, heads (the query kernel (D, heads, D/heads)),
MLP width, depth (encoder blocks, scanned or not), ResNet units per stage
(`block{s}/unit{u}`); and the options that add or drop parameters
(`tree_options`, `posemb_layout`): `reg_token`, `dist_token` with
`head_dist`, `LayerScale_{0,1}`, `Transformer/pre_norm`, `fc_norm`,
`MAPHead_0`, q/k/v biases, and a position embedding over the patch tokens
only. Options without parameters (activation, layer_norm_epsilon, posemb
'sincos2d' vs 'none') are not in the arrays: our exports store them in a
sidecar (`vit_jax.weights.sidecar`); for other files pass them when loading.
`vit_family` builds the family's checkpoint verbs (`describe`, ...) on these.
"""

import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from vit_jax.models import family
from vit_jax.models import posemb
from vit_jax.models import vit

Params = family.Params

_OLD_TO_NEW_BLOCK_NAMES = {
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
_NEW_TO_OLD_BLOCK_NAMES = {v: k for k, v in _OLD_TO_NEW_BLOCK_NAMES.items()}
_GROUP_NORM = re.compile(r'(^|/)gn(_root|_proj|\d+)/(scale|bias)$')
# The encoder's scope, a scanned encoder's one block, an unrolled one's.
ENCODER, _STACKED, BLOCK = 'Transformer', 'encoderblock', 'encoderblock_{}'
POS_EMBEDDING = (ENCODER, 'posembed_input', 'pos_embedding')


def _is_block_key(key: str) -> bool:
  return key.startswith(f'{ENCODER}/{_STACKED}')


def _rename_parts(key: str, names: Mapping[str, str]) -> str:
  """Renumbers the modules of an encoder block's key; others are kept."""
  if not _is_block_key(key):
    return key
  return '/'.join(names.get(part, part) for part in key.split('/'))


def _check_block_numbering(flat: Mapping[str, np.ndarray]) -> None:
  """Refuses files that mix old and new numbering (they would collide)."""
  parts = {part for key in flat if _is_block_key(key)
           for part in key.split('/')}
  old = parts & set(_OLD_TO_NEW_BLOCK_NAMES)
  new = parts & set(_NEW_TO_OLD_BLOCK_NAMES)
  if old and new:
    raise ValueError(f'checkpoint mixes old ({sorted(old)}) and new '
                     f'({sorted(new)}) encoder-block module numbering')


def normalise_layout(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Any released layout -> ours: per-type block numbering, GroupNorm
  params as (C,)."""
  _check_block_numbering(flat)
  normalised = {}
  for key, value in flat.items():
    if _GROUP_NORM.search(key) and value.ndim == 4:
      value = value.reshape(-1)  # Old hybrids: (1, 1, 1, C).
    normalised[_rename_parts(key, _OLD_TO_NEW_BLOCK_NAMES)] = value
  return normalised


def to_old_numbering(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Our layout -> the ViT-paper files' global block numbering."""
  return {_rename_parts(key, _NEW_TO_OLD_BLOCK_NAMES): value
          for key, value in flat.items()}


def is_stacked(params: Params) -> bool:
  """Whether the encoder is scanned: one `encoderblock`, layer axis first."""
  return _STACKED in params.get(ENCODER, {})


def unstack_blocks(params: Params) -> Params:
  """A scanned model's `encoderblock` (layer axis first) -> encoderblock_{i}."""
  if not is_stacked(params):
    return params
  encoder = dict(params[ENCODER])
  stacked = encoder.pop(_STACKED)
  num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  for layer in range(num_layers):
    encoder[BLOCK.format(layer)] = jax.tree_util.tree_map(
        lambda x, i=layer: x[i], stacked)
  return {**params, ENCODER: encoder}


def stack_blocks(params: Params) -> Params:
  """encoderblock_{i} -> one `encoderblock` with a leading layer axis."""
  if is_stacked(params) or ENCODER not in params:
    return params
  encoder = dict(params[ENCODER])
  blocks = []
  while BLOCK.format(len(blocks)) in encoder:
    blocks.append(encoder.pop(BLOCK.format(len(blocks))))
  if not blocks:
    return params
  encoder[_STACKED] = jax.tree_util.tree_map(lambda *x: np.stack(x), *blocks)
  return {**params, ENCODER: encoder}


def position_embedding(params: Params):
  """The (1, N, D) learned position embedding of a parameter tree."""
  node = params
  for name in POS_EMBEDDING:
    node = node[name]
  return node


def _is_square(n: int) -> bool:
  return n >= 1 and math.isqrt(n)**2 == n


def prefix_tokens_in_tree(params: Params) -> int:
  """Class, distillation and register tokens the tree has parameters for."""
  reg_token = params.get('reg_token')
  return (int('cls' in params) + int('extra_cls' in params) +
          int('dist_token' in params) +
          (0 if reg_token is None else int(reg_token.shape[1])))


def posemb_layout(params: Params):
  """(options, native grid) that a learned position embedding shows.

  It covers the prefix tokens when the rest is a square grid, the patch
  tokens only when it is one itself; both (a few tiny grids) is ambiguous:
  the options then say nothing and the grid is unknown. A tree without one
  gives ({}, None): 'sincos2d' and 'none' look alike.
  """
  if POS_EMBEDDING[1] not in params.get(ENCODER, {}):
    return {}, None
  num_embeddings = position_embedding(params).shape[1]
  num_prefix = prefix_tokens_in_tree(params)
  covers = _is_square(num_embeddings - num_prefix)
  patches_only = num_prefix > 0 and _is_square(num_embeddings)
  if covers and patches_only:
    return {'posemb': 'learned'}, None
  if patches_only:
    return ({'posemb': 'learned', 'posemb_covers_prefix': False},
            posemb.square_grid(num_embeddings))
  options = {'posemb': 'learned'}
  if num_prefix:
    options['posemb_covers_prefix'] = True
  # Raises, as before the options, when no square grid fits.
  return options, posemb.square_grid(num_embeddings - num_prefix)


def _first_block(encoder: Params) -> Params:
  return encoder.get(BLOCK.format(0), encoder.get(_STACKED, {}))


def _num_layers(encoder: Params) -> int:
  """Encoder blocks: the stacked block's leading axis, or the count of
  consecutive encoderblock_{i}."""
  if _STACKED in encoder:
    return int(jax.tree_util.tree_leaves(encoder[_STACKED])[0].shape[0])
  layers = 0
  while BLOCK.format(layers) in encoder:
    layers += 1
  return layers


def _resnet_units(params: Params) -> Optional[Tuple[int, ...]]:
  """Units per ResNet stage of a hybrid's `block{s}/unit{u}` (numbered from
  1); () for the root alone; None without `conv_root` (a pure ViT)."""
  if 'conv_root' not in params:
    return None
  units = []
  while f'block{len(units) + 1}' in params:
    stage = params[f'block{len(units) + 1}']
    count = 0
    while f'unit{count + 1}' in stage:
      count += 1
    units.append(count)
  return tuple(units)


def architecture_of(params: Params) -> Dict[str, Any]:
  """What the shapes fix, width first (the likeliest difference between a
  file and a wrong model name). Heads and MLP width come from the first
  encoder block, or from a MAP head when there is no block; an encoder
  without either leaves them out."""
  kernel = params['embedding']['kernel']  # (ph, pw, C, D)
  architecture = {
      'hidden_size': int(params['embedding']['bias'].shape[-1]),
      'patch_size': (int(kernel.shape[0]), int(kernel.shape[1])),
  }
  attention_owner = (_first_block(params[ENCODER]) or
                     params.get('MAPHead_0', {}))
  if attention_owner:
    # A stacked block's kernels have a leading layer axis: count from the end.
    # The value's heads: differential attention splits q and k in twice as
    # many.
    value = attention_owner['MultiHeadDotProductAttention_0']['value']
    architecture['num_heads'] = int(value['kernel'].shape[-2])
    architecture['mlp_dim'] = int(
        attention_owner['MlpBlock_0']['Dense_0']['kernel'].shape[-1])
  architecture['num_layers'] = _num_layers(params[ENCODER])
  architecture['resnet_units'] = _resnet_units(params)
  return architecture


def tree_options(params: Params) -> Dict[str, Any]:
  """The options that add or drop parameters, as a tree shows them."""
  if 'MAPHead_0' in params:
    classifier = 'map'
  else:
    classifier = 'token' if 'cls' in params else 'gap'
  reg_token = params.get('reg_token')
  options = {
      'classifier': classifier,
      'distillation': 'dist_token' in params,
      'num_register_tokens': 0 if reg_token is None else int(
          reg_token.shape[1]),
      'pre_norm': 'pre_norm' in params[ENCODER],
      'fc_norm': 'fc_norm' in params,
  }
  if 'extra_cls' in params:  # vit.VisionTransformer.extra_class_token.
    options['extra_class_token'] = True
  block = _first_block(params[ENCODER])
  if block:  # Encoders of at least one block.
    # A file's LayerScale is reported by this init value (see vit.py).
    options['layer_scale_init'] = (vit.LOADED_LAYER_SCALE_INIT
                                   if 'LayerScale_0' in block else None)
    query = block.get('MultiHeadDotProductAttention_0', {}).get('query', {})
    options['qkv_bias'] = 'bias' in query
  return options


def parameters_of(classifier: str) -> str:
  """What a classifier adds to the tree: a class token, a MAP head or
  neither (see `tree_options`)."""
  if classifier == 'map':
    return 'map'
  return 'token' if classifier in vit.TOKEN_CLASSIFIERS else 'gap'


def with_position_embedding(params: Params, value) -> Params:
  """`params` with `value` as the learned position embedding."""
  encoder = dict(params[ENCODER])
  encoder[POS_EMBEDDING[1]] = {
      **encoder[POS_EMBEDDING[1]], POS_EMBEDDING[2]: value}
  return {**params, ENCODER: encoder}

