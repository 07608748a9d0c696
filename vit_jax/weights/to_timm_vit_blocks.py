"""timm's ViT blocks from ours: the arrays of each block_fn timm's
VisionTransformer definitions use (timm/models/vision_transformer.py,
timm/layers/diff_attention.py, timm/layers/mlp.py, timm 1.0), the inverse of
`vit_jax.models.vit_timm`'s block mapping:

  ours (encoderblock_i)               timm (blocks.i)
  Block / ResPostBlock                the same keys, norms placed apart:
    LayerNorm_0, LayerNorm_1            norm1, norm2
    attention query, key, value, out    attn.qkv (fused), attn.proj
    attention LayerNorm_0 (A, E)        attn.norm (A*E,) (scale_attn_norm)
    DifferentialAttention lambda_*,     attn.lambda_*, attn.sub_norm
      sub_norm                            (DiffAttention; q and k as 2A
                                          half-width heads fuse the same way)
    MlpBlock_0 Dense_0, Dense_1         mlp.fc1, mlp.fc2 (Mlp)
    gated: Dense_0 (gate), Dense_value  mlp.fc1_g, fc1_x (SwiGLU) or one
                                          fc1 of [gate; value] (GluMlp)
    MlpBlock_0 LayerNorm_0              mlp.norm (scale_mlp_norm)
    LayerScale_0, _1                    ls1.gamma, ls2.gamma
  parallel block                      (Diff)ParallelScalingBlock:
    LayerNorm_0                         in_norm
    Dense_0, query, key, value          in_proj (stacked; its bias, or
                                          mlp_bias without q/k/v biases)
    out, Dense_1                        attn_out_proj, mlp_out_proj, or one
                                          out_proj of [attention; MLP]
                                          (Diff...), its bias their sum
    LayerScale_0                        ls.gamma
"""

import re
from typing import Any, Mapping

import flax
import numpy as np

from vit_jax.models import vit
from vit_jax.models import vit_layout
from vit_jax.weights import to_timm_arrays

# The biases timm's proj_bias=False drops: the attention's and MLP's
# output projections and, in Block, the MLP's input ones.
PROJECTION_BIAS = re.compile(
    r'^blocks\.\d+\.(attn\.proj|attn_out_proj|mlp_out_proj|out_proj|'
    r'mlp\.fc1(_g|_x)?|mlp\.fc2)\.bias$')


def _attention(out, timm: str, ours: Mapping[str, Any]) -> None:
  """Attention or DiffAttention (q and k of 2A half-width heads fuse the
  same way) -> qkv, proj, and the inner norm (A, E) -> `norm` (A*E,)."""
  to_timm_arrays.fused(out, f'{timm}.qkv', ours, ('query', 'key', 'value'))
  _differential_extras(out, timm, ours)
  if 'LayerNorm_0' in ours:
    out[f'{timm}.norm.weight'] = np.asarray(
        ours['LayerNorm_0']['scale']).reshape(-1)
    out[f'{timm}.norm.bias'] = np.asarray(
        ours['LayerNorm_0']['bias']).reshape(-1)
  to_timm_arrays.attention_out(out, f'{timm}.proj', ours['out'])


def _differential_extras(out, timm: str, ours: Mapping[str, Any]) -> None:
  """DiffAttention's lambda vectors and per-head RmsNorm, if any."""
  if 'sub_norm' in ours:
    for name in ('lambda_q1', 'lambda_k1', 'lambda_q2', 'lambda_k2'):
      out[f'{timm}.{name}'] = np.asarray(ours[name])
    out[f'{timm}.sub_norm.weight'] = np.asarray(ours['sub_norm']['scale'])


def block(out, timm: str, ours: Mapping[str, Any], *, packed: bool) -> None:
  """Block or ResPostBlock (the same keys; the norms' places differ); a
  gated MLP as GluMlp's one fc1 (`packed`) or SwiGLU's two."""
  to_timm_arrays.norm(out, f'{timm}.norm1', ours['LayerNorm_0'])
  _attention(out, f'{timm}.attn', ours['MultiHeadDotProductAttention_0'])
  to_timm_arrays.norm(out, f'{timm}.norm2', ours['LayerNorm_1'])
  to_timm_arrays.mlp(out, f'{timm}.mlp', ours['MlpBlock_0'],
                     packed=packed)
  for index in (0, 1):
    if f'LayerScale_{index}' in ours:
      out[f'{timm}.ls{index + 1}.gamma'] = np.asarray(
          ours[f'LayerScale_{index}']['scale'])


def parallel_block(out, timm: str, ours: Mapping[str, Any]) -> None:
  """(Diff)ParallelScalingBlock: in_proj stacks fc1, q, k, v (its bias, or
  mlp_bias without q/k/v biases); the output projections are
  attn_out_proj and mlp_out_proj, or DiffParallelScalingBlock's one
  out_proj of [attention; MLP] whose bias is the sum of ours."""
  attention = ours['MultiHeadDotProductAttention_0']
  mlp = ours['MlpBlock_0']
  stacked = {'mlp': mlp['Dense_0'], **{name: attention[name] for name in
                                       ('query', 'key', 'value')}}
  to_timm_arrays.norm(out, f'{timm}.in_norm', ours['LayerNorm_0'])
  to_timm_arrays.fused(out, f'{timm}.in_proj', stacked,
                       ('mlp', 'query', 'key', 'value'))
  if f'{timm}.in_proj.bias' not in out:
    out[f'{timm}.mlp_bias'] = np.asarray(mlp['Dense_0']['bias'])
  _differential_extras(out, timm, attention)
  if 'sub_norm' in attention:
    parts = {}
    to_timm_arrays.attention_out(parts, 'attn', attention['out'])
    to_timm_arrays.linear(parts, 'mlp', mlp['Dense_1'])
    out[f'{timm}.out_proj.weight'] = np.concatenate(
        [parts['attn.weight'], parts['mlp.weight']], axis=1)
    out[f'{timm}.out_proj.bias'] = parts['attn.bias'] + parts['mlp.bias']
  else:
    to_timm_arrays.attention_out(out, f'{timm}.attn_out_proj',
                                 attention['out'])
    to_timm_arrays.linear(out, f'{timm}.mlp_out_proj', mlp['Dense_1'])
  if 'LayerScale_0' in ours:
    out[f'{timm}.ls.gamma'] = np.asarray(ours['LayerScale_0']['scale'])


def projection_biases_are_zero(params, model: vit.VisionTransformer) -> bool:
  """Whether proj_bias=False computes `model`: the biases it drops
  (`PROJECTION_BIAS`) are zero (a checkpoint timm built without them)."""
  encoder = vit_layout.unstack_blocks(flax.core.unfreeze(params))[
      'Transformer']
  layers = (('MultiHeadDotProductAttention_0', 'out'),
            ('MlpBlock_0', 'Dense_1'))
  if model.block != 'parallel':  # Its fc1 is in_proj, of qkv_bias.
    layers += (('MlpBlock_0', 'Dense_0'), ('MlpBlock_0', 'Dense_value'))
  return not any(
      np.any(np.asarray(block[sublayer][layer].get('bias', 0.)))
      for block in (encoder[f'encoderblock_{index}']
                    for index in range(model.num_layers))
      for sublayer, layer in layers if layer in block[sublayer])
