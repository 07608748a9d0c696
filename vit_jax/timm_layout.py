"""What timm's ViT parameter layout means, as our `vit.VisionTransformer`.

timm 1.0's `VisionTransformer` (timm/models/vision_transformer.py; the
distilled DeiT in deit.py, the MAP head `AttentionPoolLatent` in
timm/layers/attention_pool.py) names its state dict as below. The mapping is
the inverse of that file's `_load_weights`, which reads our `.npz` tree into
timm (D width, A heads, E head width, M MLP width, p patch):

  timm key (torch shape)            ours (shape)
  patch_embed.proj (D, 3, p, p)     embedding (p, p, 3, D)
  cls_token, dist_token, reg_token  cls, dist_token, reg_token
  pos_embed                         Transformer/posembed_input/pos_embedding
  norm_pre                          Transformer/pre_norm
  blocks.i.norm1, .norm2            Transformer/encoderblock_i/LayerNorm_0, _1
  blocks.i.attn.qkv (3*A*E, D)      .../MultiHeadDotProductAttention_0/
                                      query, key, value (D, A, E)
  blocks.i.attn.proj (D, A*E)       .../MultiHeadDotProductAttention_0/out
                                      (A, E, D)
  blocks.i.mlp.fc1, .fc2            .../MlpBlock_0/Dense_0, Dense_1
    (M, D), (D, M)                    (D, M), (M, D)
  blocks.i.ls1.gamma, .ls2.gamma    .../LayerScale_0/scale, LayerScale_1/scale
  norm | fc_norm                    Transformer/encoder_norm | fc_norm
  attn_pool.latent, .q, .kv, .proj  MAPHead_0/probe, its attention's query,
                                      key, value, out
  attn_pool.norm, .mlp              MAPHead_0/LayerNorm_0, MlpBlock_0
  head, head_dist                   head, head_dist

The prefix tokens are the class token (Dosovitskiy et al. 2021, "An Image is
Worth 16x16 Words", arXiv:2010.11929), DeiT's distillation token (Touvron et
al. 2021, arXiv:2012.12877) and registers (Darcet et al. 2024, "Vision
Transformers Need Registers", arXiv:2309.16588); LayerScale is CaiT's
(Touvron et al. 2021, arXiv:2103.17239), norm_pre CLIP's ln_pre (Radford et
al. 2021, arXiv:2103.00020), fc_norm the norm after average pooling of MAE's
fine-tuning (He et al. 2022, arXiv:2111.06377), and the MAP head that of
"Scaling Vision Transformers" (Zhai et al. 2022, arXiv:2106.04560), as in
SigLIP (Zhai et al. 2023, arXiv:2303.15343).

What the arrays show is read off them: width, depth, patch, MLP width, the
prefix tokens, LayerScale, q/k/v biases, the pre-norm, fc_norm, the MAP head
and the heads. What they cannot show (attention heads, the GELU variant, the
LayerNorm epsilon, the pooling) comes from config.json's `model_args` first,
else from the architecture name through the tables below (facts of timm's
model definitions). Every array is used or the mapping fails naming it;
timm features our model lacks (qk-norm, gated MLPs, rotary embeddings, ...)
are errors naming the feature. The result is checked key by key and shape
by shape against the model it is for.
"""

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import numpy as np

from vit_jax import models
from vit_jax import npz
from vit_jax.models import family
from vit_jax.models import vit
from vit_jax.models import vit_family


# ------------------------------------ what the arrays cannot say (tables) --

# timm architectures computed in ways our model cannot, although their keys
# may look like a plain ViT's (re.match on the name).
_UNSUPPORTED_ARCHITECTURES = (
    (r'eva|vit_pe_|.*_rope|.*dinov3', "rotary position embeddings (timm's "
     'Eva models)'),
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
                              'global_pool', 'pool_include_prefix'})
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


def _by_name(table, name: str, default):
  return next((value for pattern, value in table if re.match(pattern, name)),
              default)


def _check_model_args(model_args: Mapping[str, Any]) -> None:
  for key, value in model_args.items():
    if key in _MODEL_ARGS_SHOWN or key in _MODEL_ARGS_READ or (
        value in _MODEL_ARGS_DEFAULTS.get(key, ())):
      continue
    raise npz.CheckpointMismatchError(
        f'config.json model_args {key}={value!r}: a timm option vit_jax does '
        'not implement')


def _activation(name: str, model_args: Mapping[str, Any]) -> str:
  if 'act_layer' not in model_args:
    return _by_name(_ACTIVATIONS_BY_NAME, name, _DEFAULT_ACTIVATION)
  activation = _ACT_LAYERS.get(str(model_args['act_layer']))
  if activation is None:
    raise npz.CheckpointMismatchError(
        f'config.json model_args act_layer={model_args["act_layer"]!r}: '
        f'vit_jax implements {sorted(_ACT_LAYERS)}')
  return activation


def _epsilon(name: str, model_args: Mapping[str, Any]) -> float:
  if 'norm_layer' not in model_args:
    return _CLIP_EPSILON if '_clip_' in name else _DEFAULT_EPSILON
  if str(model_args['norm_layer']).lower() not in _NORM_LAYERS:
    raise npz.CheckpointMismatchError(
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
    npz.CheckpointMismatchError: a feature, architecture or model_args
      option vit_jax does not implement.
  """
  _check_features(timm_arrays)
  name = config['architecture'].split('.')[0]
  feature = _by_name(_UNSUPPORTED_ARCHITECTURES, name, None)
  if feature:
    raise npz.CheckpointMismatchError(
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
      pool_include_prefix=bool(model_args.get('pool_include_prefix', False)))


# --------------------------------------------------------------- features --

# Keys of timm features our model lacks (re.search), checked before mapping
# so the error names the feature rather than an unknown key.
_UNSUPPORTED_KEYS = (
    (r'(^|\.)[qk]_norm\.', 'qk-norm (qk_norm=True)'),
    (r'^blocks\.\d+\.attn\.norm\.', 'attention output norm (scale_attn_norm)'),
    (r'^blocks\.\d+\.mlp\.norm\.', 'MLP hidden norm (scale_mlp_norm)'),
    (r'\.mlp\.(fc1_g|fc1_x|w12|w1|w2|w3)\.', 'a gated MLP (SwiGLU / GluMlp)'),
    (r'\.attn\.gate\.', 'gated attention'),
    (r'\.attn\.lambda_', "differential attention (attn_layer='diff')"),
    (r'^patch_embed\.norm\.', 'a norm in the patch embedding'),
    (r'^patch_embed\.backbone\.', 'a CNN backbone (hybrid ViT)'),
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
      raise npz.CheckpointMismatchError(
          f'the checkpoint uses {feature} (e.g. {keys[0]!r}), which vit_jax '
          'does not implement')


# ---------------------------------------------------------------- mapping --

_MAX_LISTED = 20  # Left-over keys named in the error.


class _Arrays:
  """timm's arrays, each taken once; what is left at the end is an error."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self._arrays = dict(arrays)

  def has(self, key: str) -> bool:
    return key in self._arrays

  def take(self, key: str) -> np.ndarray:
    if key not in self._arrays:
      raise npz.CheckpointMismatchError(
          f'the checkpoint has no {key!r}, which a timm ViT of its shape has')
    return self._arrays.pop(key)

  def take_optional(self, key: str) -> Optional[np.ndarray]:
    return self._arrays.pop(key, None)

  def check_all_taken(self) -> None:
    left = sorted(self._arrays)
    if left:
      listed = ', '.join(left[:_MAX_LISTED])
      more = f' and {len(left) - _MAX_LISTED} more' if len(left) > (
          _MAX_LISTED) else ''
      raise npz.CheckpointMismatchError(
          f'{len(left)} timm keys fit no part of vit_jax\'s ViT: {listed}'
          f'{more} (a timm feature vit_jax does not implement?)')


def _bias_or_zeros(bias, width: int) -> np.ndarray:
  """A layer timm built with bias=False is ours with a zero bias."""
  return np.zeros(width, np.float32) if bias is None else bias


def _norm(arrays: _Arrays, out: Dict[str, np.ndarray], timm: str, ours: str):
  out[f'{ours}/scale'] = arrays.take(f'{timm}.weight')
  out[f'{ours}/bias'] = arrays.take(f'{timm}.bias')


def _dense(arrays: _Arrays, out, timm: str, ours: str) -> np.ndarray:
  """torch Linear weight (out, in) -> kernel (in, out); returns the kernel."""
  weight_OI = arrays.take(f'{timm}.weight')
  out[f'{ours}/kernel'] = weight_OI.T
  out[f'{ours}/bias'] = _bias_or_zeros(arrays.take_optional(f'{timm}.bias'),
                                       weight_OI.shape[0])
  return out[f'{ours}/kernel']


def _mlp(arrays: _Arrays, out, timm: str, ours: str) -> int:
  """fc1, fc2 -> Dense_0, Dense_1; returns the MLP width."""
  kernel_DM = _dense(arrays, out, f'{timm}.fc1', f'{ours}/Dense_0')
  kernel_MD = _dense(arrays, out, f'{timm}.fc2', f'{ours}/Dense_1')
  if kernel_DM.shape[1] != kernel_MD.shape[0]:
    raise npz.CheckpointMismatchError(
        f'{timm}.fc1 has {kernel_DM.shape[1]} outputs but fc2 '
        f'{kernel_MD.shape[0]} inputs: a gated MLP (SwiGLUPacked), which '
        'vit_jax does not implement')
  return kernel_DM.shape[1]


def _heads(weight_OI: np.ndarray, num_heads: int) -> np.ndarray:
  """Linear weight (A*E, D) -> DenseGeneral kernel (D, A, E)."""
  return weight_OI.T.reshape(weight_OI.shape[1], num_heads, -1)


def _attention_out(arrays: _Arrays, out, timm: str, ours: str,
                   num_heads: int) -> None:
  """proj (D, A*E) -> `out` kernel (A, E, D)."""
  weight_OI = arrays.take(f'{timm}.weight')
  out[f'{ours}/kernel'] = weight_OI.T.reshape(num_heads, -1,
                                              weight_OI.shape[0])
  out[f'{ours}/bias'] = _bias_or_zeros(arrays.take_optional(f'{timm}.bias'),
                                       weight_OI.shape[0])


def _split_heads(arrays: _Arrays, out, timm: str, ours: str,
                 names: Tuple[str, ...], num_heads: int) -> None:
  """A fused projection (q, k, v or k, v stacked on the output axis, as
  timm's reshape(B, N, len(names), heads, head_dim) reads it) -> one
  DenseGeneral per name; no bias stays no bias (qkv_bias=False)."""
  weight_OI = arrays.take(f'{timm}.weight')
  bias = arrays.take_optional(f'{timm}.bias')
  width = weight_OI.shape[1]
  if weight_OI.shape[0] != len(names) * width:
    raise npz.CheckpointMismatchError(
        f'{timm}.weight is {weight_OI.shape}: attention {weight_OI.shape[0]}'
        f' wide for {width}-wide tokens (attn_head_dim), which vit_jax does '
        'not implement')
  for index, name in enumerate(names):
    rows = slice(index * width, (index + 1) * width)
    out[f'{ours}/{name}/kernel'] = _heads(weight_OI[rows], num_heads)
    if bias is not None:
      out[f'{ours}/{name}/bias'] = bias[rows].reshape(num_heads, -1)


def _block(arrays: _Arrays, out, layer: int, num_heads: int) -> int:
  """blocks.{layer} -> Transformer/encoderblock_{layer}; its MLP width."""
  timm, ours = f'blocks.{layer}', f'Transformer/encoderblock_{layer}'
  attention = f'{ours}/MultiHeadDotProductAttention_0'
  _norm(arrays, out, f'{timm}.norm1', f'{ours}/LayerNorm_0')
  _split_heads(arrays, out, f'{timm}.attn.qkv', attention,
               ('query', 'key', 'value'), num_heads)
  _attention_out(arrays, out, f'{timm}.attn.proj', f'{attention}/out',
                 num_heads)
  _norm(arrays, out, f'{timm}.norm2', f'{ours}/LayerNorm_1')
  mlp_dim = _mlp(arrays, out, f'{timm}.mlp', f'{ours}/MlpBlock_0')
  for index in (0, 1):
    gamma = arrays.take_optional(f'{timm}.ls{index + 1}.gamma')
    if gamma is not None:
      out[f'{ours}/LayerScale_{index}/scale'] = gamma
  return mlp_dim


def _map_head(arrays: _Arrays, out, num_heads: int) -> int:
  """attn_pool (AttentionPoolLatent) -> MAPHead_0; its MLP width."""
  latent = arrays.take('attn_pool.latent')  # (1, latent_len, D)
  if latent.shape[1] != 1:
    raise npz.CheckpointMismatchError(
        f'attn_pool has {latent.shape[1]} latent queries; vit_jax\'s MAP head '
        'has one')
  width = latent.shape[-1]
  out['MAPHead_0/probe'] = latent
  attention = 'MAPHead_0/MultiHeadDotProductAttention_0'
  if arrays.has('attn_pool.q.weight'):
    _split_heads(arrays, out, 'attn_pool.q', attention, ('query',), num_heads)
  else:  # q_proj=False: the latent itself is the query.
    out[f'{attention}/query/kernel'] = np.eye(width, dtype=np.float32).reshape(
        width, num_heads, -1)
  _split_heads(arrays, out, 'attn_pool.kv', attention, ('key', 'value'),
               num_heads)
  for name in ('query', 'key', 'value'):  # Our MAP head has q/k/v biases.
    out.setdefault(f'{attention}/{name}/bias',
                   np.zeros((num_heads, width // num_heads), np.float32))
  _attention_out(arrays, out, 'attn_pool.proj', f'{attention}/out', num_heads)
  _norm(arrays, out, 'attn_pool.norm', 'MAPHead_0/LayerNorm_0')
  return _mlp(arrays, out, 'attn_pool.mlp', 'MAPHead_0/MlpBlock_0')


def _checked_heads(recipe: Recipe, width: int) -> int:
  if recipe.num_heads is None:
    raise ValueError(
        f'cannot tell the attention heads of timm architecture '
        f'{recipe.architecture!r} ({width} wide): add "model_args": '
        '{"num_heads": ...} to its config.json')
  if width % recipe.num_heads:
    raise npz.CheckpointMismatchError(
        f'{recipe.architecture}: width {width} is not divisible by '
        f'{recipe.num_heads} heads; set "model_args": {{"num_heads": ...}} '
        'in its config.json')
  return int(recipe.num_heads)


# ---------------------------------------------------- pooling and options --

_POOLING_WE_LACK = ('avgmax', 'max', 'prr')


def _classifier(recipe: Recipe, *, has_cls: bool, num_prefix: int,
                has_map: bool, distilled: bool) -> str:
  """timm's global_pool (config.json, else what the arrays hold) -> ours."""
  pool = recipe.global_pool
  if pool is None:
    pool = 'map' if has_map else 'token' if has_cls else 'avg'
  if pool in _POOLING_WE_LACK:
    raise npz.CheckpointMismatchError(
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
    raise npz.CheckpointMismatchError(f'{problem}: vit_jax does not '
                                      'implement it')
  if pool == '':
    return 'token_unpooled' if has_cls else 'unpooled'
  return {'token': 'token', 'avg': 'gap', 'map': 'map'}[pool]



def _posemb_options(pos_embed, *, grid: Tuple[int, int],
                    num_prefix: int) -> Dict[str, Any]:
  """pos_embed over every token, the patches only (no_embed_class), or
  absent (pos_embed='none'), told apart by its length at the native grid."""
  if pos_embed is None:
    return {'posemb': 'none'}
  patches = grid[0] * grid[1]
  if pos_embed.shape[1] == patches + num_prefix:
    return {}
  if pos_embed.shape[1] == patches:
    return {'posemb_covers_prefix': False}
  raise npz.CheckpointMismatchError(
      f'pos_embed has {pos_embed.shape[1]} positions, but the native '
      f'{grid[0]}x{grid[1]} patch grid has {patches} (+ {num_prefix} prefix '
      'tokens): is pretrained_cfg input_size right?')


def _grid(image_size, patch_size) -> Tuple[int, int]:
  if image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
    raise npz.CheckpointMismatchError(
        f'input_size {image_size} is not a multiple of the patch size '
        f'{patch_size}')
  return image_size[0] // patch_size[0], image_size[1] // patch_size[1]


# ------------------------------------------------------------ conversion --

@dataclasses.dataclass(frozen=True)
class _Tokens:
  """The prefix tokens the arrays hold: [cls] [dist] [registers]."""
  has_cls: bool
  distilled: bool
  num_registers: int

  @property
  def count(self) -> int:
    return int(self.has_cls) + int(self.distilled) + self.num_registers


def _embedding(arrays: _Arrays, out) -> Tuple[int, Tuple[int, int]]:
  """patch_embed.proj (D, 3, ph, pw) -> `embedding` (ph, pw, 3, D); returns
  (width, patch size)."""
  weight_DCPP = arrays.take('patch_embed.proj.weight')
  width, channels = weight_DCPP.shape[:2]
  if channels != 3:
    raise npz.CheckpointMismatchError(
        f'patch_embed takes {channels} input channels; vit_jax takes RGB')
  out['embedding/kernel'] = weight_DCPP.transpose(2, 3, 1, 0)
  # CLIP towers (pre_norm) have no patch-embedding bias.
  out['embedding/bias'] = _bias_or_zeros(
      arrays.take_optional('patch_embed.proj.bias'), width)
  return int(width), (int(weight_DCPP.shape[2]), int(weight_DCPP.shape[3]))


def _prefix_tokens(arrays: _Arrays, out) -> _Tokens:
  for timm, ours in (('cls_token', 'cls'), ('dist_token', 'dist_token'),
                     ('reg_token', 'reg_token')):
    if arrays.has(timm):
      out[ours] = arrays.take(timm)
  tokens = _Tokens('cls' in out, 'dist_token' in out,
                   int(out['reg_token'].shape[1]) if 'reg_token' in out else 0)
  if tokens.distilled and tokens.num_registers:
    raise npz.CheckpointMismatchError(
        "register tokens beside a distillation token (timm's distilled "
        'model ignores them): vit_jax does not implement it')
  return tokens


def _encoder(arrays: _Arrays, out, num_heads: int) -> Tuple[int, set]:
  """norm_pre and the blocks; returns (layers, the blocks' MLP widths)."""
  if arrays.has('norm_pre.weight'):
    _norm(arrays, out, 'norm_pre', 'Transformer/pre_norm')
  num_layers = 0
  while arrays.has(f'blocks.{num_layers}.norm1.weight'):
    num_layers += 1
  if not num_layers:
    raise npz.CheckpointMismatchError('the checkpoint has no blocks.0: not a '
                                      'timm ViT')
  return num_layers, {_block(arrays, out, layer, num_heads)
                      for layer in range(num_layers)}


def _final_norm(arrays: _Arrays, out, tokens: _Tokens) -> bool:
  """`norm` (every token) or `fc_norm` (after pooling); returns fc_norm."""
  fc_norm = arrays.has('fc_norm.weight')
  if fc_norm == arrays.has('norm.weight'):
    raise npz.CheckpointMismatchError(
        'the checkpoint has neither or both of `norm` and `fc_norm` '
        '(final_norm=False?): vit_jax needs exactly one final LayerNorm')
  if fc_norm and tokens.distilled:
    raise npz.CheckpointMismatchError(
        "fc_norm with a distillation token (timm's distilled head skips "
        'it): vit_jax does not implement it')
  _norm(arrays, out, 'fc_norm' if fc_norm else 'norm',
        'fc_norm' if fc_norm else 'Transformer/encoder_norm')
  return fc_norm


def _classifier_heads(arrays: _Arrays, out, tokens: _Tokens) -> Optional[int]:
  """head (and head_dist); returns the class count, None without a head."""
  if not arrays.has('head.weight'):
    return None
  num_classes = int(_dense(arrays, out, 'head', 'head').shape[1])
  if tokens.distilled:
    _dense(arrays, out, 'head_dist', 'head_dist')
  return num_classes


def to_vit(recipe: Recipe, timm_arrays: Mapping[str, np.ndarray],
           image_size: Tuple[int, int]
           ) -> Tuple[family.Params, Dict[str, Any]]:
  """timm's state dict -> our parameter tree and model attributes.

  Args:
    recipe: `recipe(config, timm_arrays)`.
    timm_arrays: timm key -> float32 array.
    image_size: the native (H, W), the size `pos_embed` is stored for.

  Returns:
    (params, model_kwargs): the nested float32 tree and the
    `vit.VisionTransformer` attributes (num_classes, None without a head,
    the sizes, classifier, and every option that differs from its default).

  Raises:
    npz.CheckpointMismatchError: an array is missing, left over, or of a
      shape or combination vit_jax does not implement.
  """
  arrays, out = _Arrays(timm_arrays), {}
  width, patch_size = _embedding(arrays, out)
  num_heads = _checked_heads(recipe, width)
  tokens = _prefix_tokens(arrays, out)
  pos_embed = arrays.take_optional('pos_embed')
  if pos_embed is not None:
    out['Transformer/posembed_input/pos_embedding'] = pos_embed
  num_layers, mlp_dims = _encoder(arrays, out, num_heads)
  fc_norm = _final_norm(arrays, out, tokens)
  has_map = arrays.has('attn_pool.latent')
  if has_map:
    mlp_dims.add(_map_head(arrays, out, num_heads))
  if len(mlp_dims) != 1:
    raise npz.CheckpointMismatchError(
        f'MLP widths differ between blocks: {sorted(mlp_dims)}')
  num_classes = _classifier_heads(arrays, out, tokens)
  arrays.check_all_taken()
  options = _options(recipe, out, tokens, fc_norm=fc_norm, posemb=(
      _posemb_options(pos_embed, grid=_grid(image_size, patch_size),
                      num_prefix=tokens.count)))
  model_kwargs = dict(
      num_classes=num_classes, patch_size=patch_size, hidden_size=width,
      num_layers=num_layers, num_heads=num_heads, mlp_dim=int(mlp_dims.pop()),
      classifier=_classifier(recipe, has_cls=tokens.has_cls,
                             num_prefix=tokens.count, has_map=has_map,
                             distilled=tokens.distilled),
      **options)
  return _checked_tree(out, model_kwargs, image_size), model_kwargs


def _options(recipe: Recipe, out: Dict[str, np.ndarray], tokens: _Tokens, *,
             fc_norm: bool, posemb: Dict[str, Any]) -> Dict[str, Any]:
  """The model options that differ from `vit.VisionTransformer`'s defaults
  (an option at its default is left out of model_kwargs)."""
  block = 'Transformer/encoderblock_0'
  options = dict(
      activation=recipe.activation,
      layer_norm_epsilon=recipe.layer_norm_epsilon,
      num_register_tokens=tokens.num_registers,
      distillation=tokens.distilled,
      pre_norm='Transformer/pre_norm/scale' in out, fc_norm=fc_norm,
      qkv_bias=f'{block}/MultiHeadDotProductAttention_0/query/bias' in out,
      layer_scale_init=(vit_family.LOADED_LAYER_SCALE_INIT
                        if f'{block}/LayerScale_0/scale' in out else None),
      **posemb)
  defaults = {field.name: field.default
              for field in dataclasses.fields(vit.VisionTransformer)}
  return {key: value for key, value in options.items()
          if value != defaults[key]}


def _checked_tree(flat: Dict[str, np.ndarray], model_kwargs: Dict[str, Any],
                  image_size: Tuple[int, int]) -> family.Params:
  """The nested tree, checked key by key and shape by shape against the
  model it is for (a block unlike the others, for one, fails here)."""
  tree = flax.traverse_util.unflatten_dict(
      {key: np.ascontiguousarray(value, np.float32)
       for key, value in flat.items()}, sep='/')
  shapes = models.param_shapes(vit.VisionTransformer(**model_kwargs),
                               image_size)
  return npz.merge_strict(shapes, tree)
