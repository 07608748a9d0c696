"""timm's tensor layouts -> ours: the pieces every timm layout shares.

timm's ViT-like models (`vit_timm`, `eva_timm`, and through `vit_timm` the
hybrids and NaFlexViT) store the same kinds of layers under their own key
prefixes. Each function here takes one such layer's arrays out of an
`Arrays` (timm's prefix `timm`) and writes our flat parameters under `ours`
in `out` (a dict of '/'-joined paths):

  timm (torch shape)                ours (shape)
  Linear weight (O, I), bias        Dense kernel (I, O), bias (zeros if none)
  LayerNorm / RmsNorm weight, bias  scale, bias (RmsNorm: scale only)
  fused qkv (3*A*E, D)              query, key, value kernels (D, A, E)
  attention proj (D, A*E)           out kernel (A, E, D)
  patch_embed.proj (D, C, p, p)     embedding kernel (p, p, C, D)
  attn_pool (AttentionPoolLatent)   MAPHead_0
  head, head_dist                   head, head_dist

(D width, A heads, E head width, M MLP width, p patch.) `Arrays` hands out
each array once and fails naming the keys no layout took.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import numpy as np

from vit_jax.models import family

_MAX_LISTED = 20  # Left-over keys named in the error.


class Arrays:
  """timm's arrays, each taken once; what is left at the end is an error.
  An array is read (np.asarray) when taken: a reader may hand out arrays
  known by their header only, so that those left are never read."""

  def __init__(self, arrays: Mapping[str, np.ndarray],
               norm_bias: bool = True):
    self._arrays = dict(arrays)
    self.norm_bias = norm_bias  # LayerNorms; RmsNorms have none.

  def has(self, key: str) -> bool:
    return key in self._arrays

  def take(self, key: str) -> np.ndarray:
    if key not in self._arrays:
      raise family.CheckpointMismatchError(
          f'the checkpoint has no {key!r}, which a timm ViT of its shape has')
    return np.asarray(self._arrays.pop(key))

  def take_optional(self, key: str) -> Optional[np.ndarray]:
    value = self._arrays.pop(key, None)
    return None if value is None else np.asarray(value)

  def check_all_taken(self) -> None:
    left = sorted(self._arrays)
    if left:
      listed = ', '.join(left[:_MAX_LISTED])
      more = f' and {len(left) - _MAX_LISTED} more' if len(left) > (
          _MAX_LISTED) else ''
      raise family.CheckpointMismatchError(
          f'{len(left)} timm keys fit no part of vit_jax\'s ViT: {listed}'
          f'{more} (a timm feature vit_jax does not implement?)')


def nested_float32(out: Dict[str, np.ndarray]) -> family.Params:
  """Our flat '/'-joined parameters -> the nested float32 tree."""
  return flax.traverse_util.unflatten_dict(
      {key: np.ascontiguousarray(value, np.float32)
       for key, value in out.items()}, sep='/')


# ---------------------------------------------------------------- layers --

def bias_or_zeros(bias, width: int) -> np.ndarray:
  """A layer timm built with bias=False is ours with a zero bias."""
  return np.zeros(width, np.float32) if bias is None else bias


def norm(arrays: Arrays, out: Dict[str, np.ndarray], timm: str, ours: str):
  """A LayerNorm, or an RmsNorm (no bias), as the arrays' norm_layer."""
  out[f'{ours}/scale'] = arrays.take(f'{timm}.weight')
  if arrays.norm_bias:
    out[f'{ours}/bias'] = arrays.take(f'{timm}.bias')


def dense(arrays: Arrays, out, timm: str, ours: str) -> np.ndarray:
  """torch Linear weight (out, in) -> kernel (in, out); returns the kernel."""
  weight_OI = arrays.take(f'{timm}.weight')
  out[f'{ours}/kernel'] = weight_OI.T
  out[f'{ours}/bias'] = bias_or_zeros(arrays.take_optional(f'{timm}.bias'),
                                      weight_OI.shape[0])
  return out[f'{ours}/kernel']


def mlp(arrays: Arrays, out, timm: str, ours: str,
        gate_last: bool = False) -> int:
  """fc1, fc2 -> Dense_0, Dense_1; returns the MLP width. Gated MLPs:
  SwiGLU's fc1_g (activated), fc1_x -> Dense_0, Dense_value; GluMlp's
  packed fc1 (twice fc2's inputs) -> its activated half (the second with
  `gate_last`) as Dense_0, the other as Dense_value. An inner `norm` ->
  LayerNorm_0."""
  if arrays.has(f'{timm}.fc1_g.weight'):
    dense(arrays, out, f'{timm}.fc1_g', f'{ours}/Dense_0')
    dense(arrays, out, f'{timm}.fc1_x', f'{ours}/Dense_value')
  else:
    dense(arrays, out, f'{timm}.fc1', f'{ours}/Dense_0')
  kernel_DM = out[f'{ours}/Dense_0/kernel']
  kernel_MD = dense(arrays, out, f'{timm}.fc2', f'{ours}/Dense_1')
  if kernel_DM.shape[1] == 2 * kernel_MD.shape[0]:
    halves = [slice(None, kernel_MD.shape[0]), slice(kernel_MD.shape[0], None)]
    gate, value = halves[::-1] if gate_last else halves
    bias_M = out[f'{ours}/Dense_0/bias']
    out[f'{ours}/Dense_value/kernel'] = kernel_DM[:, value]
    out[f'{ours}/Dense_value/bias'] = bias_M[value]
    out[f'{ours}/Dense_0/kernel'] = kernel_DM[:, gate]
    out[f'{ours}/Dense_0/bias'] = bias_M[gate]
  elif kernel_DM.shape[1] != kernel_MD.shape[0]:
    raise family.CheckpointMismatchError(
        f'{timm}.fc1 has {kernel_DM.shape[1]} outputs but fc2 '
        f'{kernel_MD.shape[0]} inputs: an MLP vit_jax does not implement')
  if arrays.has(f'{timm}.norm.weight'):
    norm(arrays, out, f'{timm}.norm', f'{ours}/LayerNorm_0')
  return kernel_MD.shape[0]


# ------------------------------------------------------------- attention --

def heads_kernel(weight_OI: np.ndarray, num_heads: int) -> np.ndarray:
  """Linear weight (A*E, D) -> DenseGeneral kernel (D, A, E)."""
  return weight_OI.T.reshape(weight_OI.shape[1], num_heads, -1)


def stacked_heads(out, ours: str, weight_OI: np.ndarray,
                  bias: Optional[np.ndarray],
                  heads_by_name: Sequence[Tuple[str, int]]) -> None:
  """Projections stacked on a Linear's output axis, D rows each, -> one
  DenseGeneral per name (with its number of heads); no bias stays none."""
  width = weight_OI.shape[1]
  for index, (name, num_heads) in enumerate(heads_by_name):
    rows = slice(index * width, (index + 1) * width)
    out[f'{ours}/{name}/kernel'] = heads_kernel(weight_OI[rows], num_heads)
    if bias is not None:
      out[f'{ours}/{name}/bias'] = bias[rows].reshape(num_heads, -1)


def split_heads(arrays: Arrays, out, timm: str, ours: str,
                names: Tuple[str, ...], num_heads: int) -> None:
  """A fused projection (q, k, v or k, v stacked on the output axis, as
  timm's reshape(B, N, len(names), heads, head_dim) reads it) -> one
  DenseGeneral per name; no bias stays no bias (qkv_bias=False)."""
  weight_OI = arrays.take(f'{timm}.weight')
  bias = arrays.take_optional(f'{timm}.bias')
  width = weight_OI.shape[1]
  if weight_OI.shape[0] != len(names) * width:
    raise family.CheckpointMismatchError(
        f'{timm}.weight is {weight_OI.shape}: attention {weight_OI.shape[0]}'
        f' wide for {width}-wide tokens (attn_head_dim), which vit_jax does '
        'not implement')
  stacked_heads(out, ours, weight_OI, bias,
                [(name, num_heads) for name in names])


def attention_out(arrays: Arrays, out, timm: str, ours: str,
                  num_heads: int) -> None:
  """proj (D, A*E) -> `out` kernel (A, E, D)."""
  weight_OI = arrays.take(f'{timm}.weight')
  out[f'{ours}/kernel'] = weight_OI.T.reshape(num_heads, -1,
                                              weight_OI.shape[0])
  out[f'{ours}/bias'] = bias_or_zeros(arrays.take_optional(f'{timm}.bias'),
                                      weight_OI.shape[0])


def attention_inner_norm(arrays: Arrays, out, timm: str, ours: str,
                         num_heads: int) -> None:
  """The attention's inner norm (scale_attn_norm, scale_attn_inner), if
  any: weight and bias (A*E,) -> LayerNorm_0 scale and bias (A, E)."""
  if arrays.has(f'{timm}.norm.weight'):
    for timm_name, our_name in (('weight', 'scale'), ('bias', 'bias')):
      out[f'{ours}/LayerNorm_0/{our_name}'] = arrays.take(
          f'{timm}.norm.{timm_name}').reshape(num_heads, -1)


def map_head(arrays: Arrays, out, num_heads: int) -> int:
  """attn_pool (AttentionPoolLatent) -> MAPHead_0; its MLP width."""
  latent = arrays.take('attn_pool.latent')  # (1, latent_len, D)
  if latent.shape[1] != 1:
    raise family.CheckpointMismatchError(
        f'attn_pool has {latent.shape[1]} latent queries; vit_jax\'s MAP head '
        'has one')
  width = latent.shape[-1]
  out['MAPHead_0/probe'] = latent
  attention = 'MAPHead_0/MultiHeadDotProductAttention_0'
  if arrays.has('attn_pool.q.weight'):
    split_heads(arrays, out, 'attn_pool.q', attention, ('query',), num_heads)
  else:  # q_proj=False: the latent itself is the query.
    out[f'{attention}/query/kernel'] = np.eye(width, dtype=np.float32).reshape(
        width, num_heads, -1)
  split_heads(arrays, out, 'attn_pool.kv', attention, ('key', 'value'),
              num_heads)
  for name in ('query', 'key', 'value'):  # Our MAP head has q/k/v biases.
    out.setdefault(f'{attention}/{name}/bias',
                   np.zeros((num_heads, width // num_heads), np.float32))
  attention_out(arrays, out, 'attn_pool.proj', f'{attention}/out', num_heads)
  norm(arrays, out, 'attn_pool.norm', 'MAPHead_0/LayerNorm_0')
  return mlp(arrays, out, 'attn_pool.mlp', 'MAPHead_0/MlpBlock_0')


# ------------------------------------------------- patches and positions --

@dataclasses.dataclass(frozen=True)
class PrefixTokens:
  """The prefix tokens the arrays hold: [cls] [dist] [registers]."""
  has_cls: bool
  distilled: bool
  num_registers: int

  @property
  def count(self) -> int:
    return int(self.has_cls) + int(self.distilled) + self.num_registers


def patch_embedding(arrays: Arrays, out,
                    in_channels: int = 3) -> Tuple[int, Tuple[int, int]]:
  """patch_embed.proj (D, C, ph, pw) -> `embedding` (ph, pw, C, D), and
  its norm (embed_norm_layer) -> `embedding_norm`; returns (width, patch
  size). C is 3 (RGB), or a hybrid's feature channels."""
  if arrays.has('patch_embed.norm.weight'):
    norm(arrays, out, 'patch_embed.norm', 'embedding_norm')
  weight_DCPP = arrays.take('patch_embed.proj.weight')
  width, channels = weight_DCPP.shape[:2]
  if channels != in_channels:
    raise family.CheckpointMismatchError(
        f'patch_embed takes {channels} input channels; vit_jax takes '
        f'{"RGB" if in_channels == 3 else in_channels}')
  out['embedding/kernel'] = weight_DCPP.transpose(2, 3, 1, 0)
  # CLIP towers (pre_norm) have no patch-embedding bias.
  out['embedding/bias'] = bias_or_zeros(
      arrays.take_optional('patch_embed.proj.bias'), width)
  return int(width), (int(weight_DCPP.shape[2]), int(weight_DCPP.shape[3]))


def position_embedding(arrays: Arrays, out) -> Optional[np.ndarray]:
  """pos_embed -> Transformer/posembed_input/pos_embedding; returns it, or
  None without one (pos_embed='none')."""
  pos_embed = arrays.take_optional('pos_embed')
  if pos_embed is not None:
    out['Transformer/posembed_input/pos_embedding'] = pos_embed
  return pos_embed


def patch_grid(image_size, patch_size) -> Tuple[int, int]:
  """timm's PatchEmbed grid: its stride-p conv drops the remainder of a
  side that is not a multiple of the patch (vit_so400m_patch14_siglip_384:
  384 px / 14 -> 27 patches)."""
  return image_size[0] // patch_size[0], image_size[1] // patch_size[1]


def posemb_options(pos_embed, *, grid: Tuple[int, int],
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
  raise family.CheckpointMismatchError(
      f'pos_embed has {pos_embed.shape[1]} positions, but the native '
      f'{grid[0]}x{grid[1]} patch grid has {patches} (+ {num_prefix} prefix '
      'tokens): is pretrained_cfg input_size right?')


# ----------------------------------------------------------------- heads --

def classifier_heads(arrays: Arrays, out,
                     tokens: PrefixTokens) -> Optional[int]:
  """head (and head_dist); returns the class count, None without a head."""
  if not arrays.has('head.weight'):
    return None
  num_classes = int(dense(arrays, out, 'head', 'head').shape[1])
  if tokens.distilled:
    dense(arrays, out, 'head_dist', 'head_dist')
  return num_classes
