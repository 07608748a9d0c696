"""Our arrays in timm's tensor layouts, the pieces every family's writer
shares (`to_timm_vit`, `to_timm_eva`, `to_timm_mixer`, `to_timm_hybrid`).

Each function adds to `out` (timm key -> array) the arrays of one of our
layers under timm's name `timm`, transposed to PyTorch's layout: a Linear's
weight is (out, in), a fused projection stacks its parts along out. The
inverse of `vit_jax.models.timm_keys`.
"""

from typing import Any, Dict, Mapping

import numpy as np


def linear(out: Dict[str, np.ndarray], timm: str,
           ours: Mapping[str, Any]) -> None:
  """Dense kernel (in, out) -> Linear weight (out, in), and its bias."""
  out[f'{timm}.weight'] = np.asarray(ours['kernel']).T
  if 'bias' in ours:
    out[f'{timm}.bias'] = np.asarray(ours['bias'])


def norm(out, timm: str, ours: Mapping[str, Any]) -> None:
  """LayerNorm scale, bias -> weight, bias (an RMSNorm has no bias)."""
  out[f'{timm}.weight'] = np.asarray(ours['scale'])
  if 'bias' in ours:
    out[f'{timm}.bias'] = np.asarray(ours['bias'])


def fused(out, timm: str, attention: Mapping[str, Any], names) -> None:
  """DenseGeneral kernels (D, A, E) -> one Linear (len(names)*A*E, D)."""
  kernels = [np.asarray(attention[name]['kernel']) for name in names]
  out[f'{timm}.weight'] = np.concatenate(
      [kernel.reshape(kernel.shape[0], -1).T for kernel in kernels])
  if all('bias' in attention[name] for name in names):
    out[f'{timm}.bias'] = np.concatenate(
        [np.asarray(attention[name]['bias']).reshape(-1) for name in names])


def attention_out(out, timm: str, ours: Mapping[str, Any]) -> None:
  """`out` kernel (A, E, D) -> proj (D, A*E)."""
  kernel = np.asarray(ours['kernel'])
  out[f'{timm}.weight'] = kernel.reshape(-1, kernel.shape[-1]).T
  out[f'{timm}.bias'] = np.asarray(ours['bias'])


def mlp(out, timm: str, ours: Mapping[str, Any], *,
        packed: bool = False) -> None:
  """MlpBlock Dense_0, Dense_1 -> fc1, fc2; its inner norm -> `norm`. A
  gated one (Dense_0 the activated gate, Dense_value the value) -> SwiGLU's
  fc1_g, fc1_x or, `packed`, GluMlp's one fc1 of [gate; value]
  (gate_last=False)."""
  if 'Dense_value' not in ours:
    linear(out, f'{timm}.fc1', ours['Dense_0'])
  elif packed:
    gate, value = {}, {}
    linear(gate, 'fc1', ours['Dense_0'])
    linear(value, 'fc1', ours['Dense_value'])
    for part in gate:
      out[f'{timm}.{part}'] = np.concatenate([gate[part], value[part]])
  else:
    linear(out, f'{timm}.fc1_g', ours['Dense_0'])
    linear(out, f'{timm}.fc1_x', ours['Dense_value'])
  if 'LayerNorm_0' in ours:
    norm(out, f'{timm}.norm', ours['LayerNorm_0'])
  linear(out, f'{timm}.fc2', ours['Dense_1'])


def map_head(out, ours: Mapping[str, Any]) -> None:
  """MAPHead -> timm's AttentionPoolLatent (`attn_pool.`)."""
  attention = ours['MultiHeadDotProductAttention_0']
  out['attn_pool.latent'] = np.asarray(ours['probe'])
  fused(out, 'attn_pool.q', attention, ('query',))
  fused(out, 'attn_pool.kv', attention, ('key', 'value'))
  attention_out(out, 'attn_pool.proj', attention['out'])
  norm(out, 'attn_pool.norm', ours['LayerNorm_0'])
  mlp(out, 'attn_pool.mlp', ours['MlpBlock_0'])
