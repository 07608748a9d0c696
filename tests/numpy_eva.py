"""An independent float64 NumPy forward pass of timm's Eva models
(timm/models/eva.py) and of the gated MLPs and inner norms of its
VisionTransformer, for the tests.

It reads timm's keys as timm 1.0 writes them and shares no code with
vit_jax: rotary embeddings are written as complex rotations of channel
pairs token by token (timm/layers/pos_embed_sincos.py's RotaryEmbeddingCat,
RotaryEmbeddingDinoV3 and RotaryEmbeddingMixed), attention as timm's
EvaAttention / AttentionRope (fused qkv with q_bias / v_bias, or q/k/v_proj;
the output norm `attn.norm`), MLPs as Mlp, GluMlp and SwiGLU (inner `norm`).
Parameters decide what exists; the arguments what no parameter shows.
"""

import math

import numpy as np

from tests import numpy_timm

_ACTIVATIONS = dict(numpy_timm.ACTIVATIONS,
                    silu=lambda x: x / (1 + np.exp(-x)),
                    sigmoid=lambda x: 1 / (1 + np.exp(-x)))


def _norm(p, name, x, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p[f'{name}.weight'] + p[
      f'{name}.bias']


def _linear(p, name, x):
  return x @ p[f'{name}.weight'].T + p.get(f'{name}.bias', 0.)


# ------------------------------------------------------------------ RoPE --

def rope_angles(rope, rows, cols, head_dim, layer=0, p=None):
  """Per token (row-major) and head, the E/2 rotation angles: (A or 1, N,
  E/2). `rope`: dict(kind, temperature, indexing, offset, ref, ...)."""
  bands = head_dim // 4
  indexing = rope.get('indexing', 'ij')
  offset = rope.get('offset', 0.)
  ref = rope.get('ref')
  out = []
  for r in range(rows):
    for c in range(cols):
      # The first coordinate is the row for 'ij', the column for 'xy'.
      a, b = (r, c) if indexing == 'ij' else (c, r)
      size_a, size_b = (rows, cols) if indexing == 'ij' else (cols, rows)
      if rope['kind'] == 'dinov3':
        pos = [2 * (a + 0.5 + offset) / size_a - 1,
               2 * (b + 0.5 + offset) / size_b - 1]
        periods = [rope['temperature'] ** (2 * i / (head_dim // 2))
                   for i in range(bands)]
        out.append([[2 * math.pi * x / t for x in pos for t in periods]])
      elif rope['kind'] == 'mixed':
        freqs = p['rope.freqs'][:, layer]  # (2, A, E/2)
        out.append(a * freqs[0] + b * freqs[1])
      else:
        pos = [a + offset, b + offset]
        if ref is not None:
          ref_a, ref_b = ref if indexing == 'ij' else ref[::-1]
          pos = [pos[0] / size_a * ref_a, pos[1] / size_b * ref_b]
        freqs = [rope['temperature'] ** (-i / bands) for i in range(bands)]
        out.append([[x * f for x in pos for f in freqs]])
  return np.asarray(out, np.float64).transpose(1, 0, 2)


def rotate(x_BANE, angles_ANF, rotate_half):
  """Channel pairs as complex numbers times e^{i angle}: pairs (2i, 2i+1)
  interleaved, (i, i + E/2) with rotate_half."""
  half = x_BANE.shape[-1] // 2
  if rotate_half:
    z = x_BANE[..., :half] + 1j * x_BANE[..., half:]
  else:
    z = x_BANE[..., 0::2] + 1j * x_BANE[..., 1::2]
  z = z * np.exp(1j * angles_ANF)
  if rotate_half:
    return np.concatenate([z.real, z.imag], axis=-1)
  out = np.empty_like(x_BANE)
  out[..., 0::2], out[..., 1::2] = z.real, z.imag
  return out


# ---------------------------------------------------------------- blocks --

def _qkv(p, name, x, num_heads):
  batch, tokens, _ = x.shape
  split = lambda y: y.reshape(batch, tokens, num_heads, -1).transpose(
      0, 2, 1, 3)
  if f'{name}.qkv.weight' in p:
    bias = p.get(f'{name}.qkv.bias')
    if f'{name}.q_bias' in p:
      bias = np.concatenate([p[f'{name}.q_bias'],
                             np.zeros_like(p[f'{name}.q_bias']),
                             p[f'{name}.v_bias']])
    qkv = x @ p[f'{name}.qkv.weight'].T + (0. if bias is None else bias)
    return [split(part) for part in np.split(qkv, 3, axis=-1)]
  return [split(_linear(p, f'{name}.{key}_proj', x)) for key in 'qkv']


def attention(p, name, x, *, num_heads, num_prefix, grid, rope, eps,
              layer=0):
  q, k, v = _qkv(p, name, x, num_heads)
  if rope is not None:
    angles = rope_angles(rope, *grid, q.shape[-1], layer, p)[None]
    half = rope.get('rotate_half', False)
    q[:, :, num_prefix:] = rotate(q[:, :, num_prefix:], angles, half)
    k[:, :, num_prefix:] = rotate(k[:, :, num_prefix:], angles, half)
  logits = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  y = (weights @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
  if f'{name}.norm.weight' in p:
    y = _norm(p, f'{name}.norm', y, eps)
  return _linear(p, f'{name}.proj', y)


def mlp(p, name, x, *, activation, eps, gate_last=False):
  """Mlp, GluMlp (fc1 twice fc2's inputs, halves gated by `gate_last`) or
  SwiGLU (fc1_g, fc1_x)."""
  act = _ACTIVATIONS[activation]
  if f'{name}.fc1_g.weight' in p:
    y = act(_linear(p, f'{name}.fc1_g', x)) * _linear(p, f'{name}.fc1_x', x)
  else:
    y = _linear(p, f'{name}.fc1', x)
    if y.shape[-1] == 2 * p[f'{name}.fc2.weight'].shape[1]:
      first, second = np.split(y, 2, axis=-1)
      y = first * act(second) if gate_last else act(first) * second
    else:
      y = act(y)
  if f'{name}.norm.weight' in p:
    y = _norm(p, f'{name}.norm', y, eps)
  return _linear(p, f'{name}.fc2', y)


def forward(state_dict, images_BCHW, *, num_heads, global_pool='avg',
            eps=1e-6, activation='gelu_erf', rope=None, no_embed_class=False,
            gate_last=False):
  """timm's Eva `model(images)` in eval mode (also timm's VisionTransformer
  with gated MLPs and inner norms: `ls1.gamma` is read like `gamma_1`)."""
  p = {key: np.asarray(value, np.float64)
       for key, value in state_dict.items()}
  images = np.asarray(images_BCHW, np.float64)
  weight = p['patch_embed.proj.weight']
  width, channels, ph, pw = weight.shape
  batch, _, height, wide = images.shape
  grid = (height // ph, wide // pw)
  x = images.reshape(batch, channels, grid[0], ph, grid[1], pw).transpose(
      0, 2, 4, 1, 3, 5).reshape(batch, grid[0] * grid[1], -1)
  x = x @ weight.reshape(width, -1).T + p.get('patch_embed.proj.bias', 0.)
  prefix = [np.broadcast_to(p[key], (batch,) + p[key].shape[1:])
            for key in ('cls_token', 'reg_token') if key in p]
  num_prefix = sum(t.shape[1] for t in prefix)
  if 'pos_embed' in p and no_embed_class:
    x = x + p['pos_embed']
  x = np.concatenate(prefix + [x], axis=1)
  if 'pos_embed' in p and not no_embed_class:
    x = x + p['pos_embed']
  if 'norm_pre.weight' in p:
    x = _norm(p, 'norm_pre', x, eps)
  layer = 0
  while f'blocks.{layer}.norm1.weight' in p:
    block = f'blocks.{layer}'
    gammas = [p.get(f'{block}.gamma_{i}', p.get(f'{block}.ls{i}.gamma', 1.))
              for i in (1, 2)]
    x = x + gammas[0] * attention(
        p, f'{block}.attn', _norm(p, f'{block}.norm1', x, eps),
        num_heads=num_heads, num_prefix=num_prefix, grid=grid, rope=rope,
        eps=eps, layer=layer)
    x = x + gammas[1] * mlp(p, f'{block}.mlp',
                            _norm(p, f'{block}.norm2', x, eps),
                            activation=activation, eps=eps,
                            gate_last=gate_last)
    layer += 1
  if 'norm.weight' in p:
    x = _norm(p, 'norm', x, eps)
  if global_pool == 'token':
    x = x[:, 0]
  elif global_pool == 'avg':
    x = x[:, num_prefix:].mean(axis=1)
  elif global_pool:
    raise ValueError(f'no reference for global_pool {global_pool!r}')
  if 'fc_norm.weight' in p:
    x = _norm(p, 'fc_norm', x, eps)
  if 'head.weight' in p:
    x = _linear(p, 'head', x)
  return x
