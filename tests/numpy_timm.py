"""An independent float64 NumPy forward pass of timm's VisionTransformer (and
its distilled DeiT variant), for the tests.

It reads timm's own state-dict keys and conventions: NCHW images, the patch
conv weight (D, C, P, P), torch Linear weights (out, in), the fused qkv
projection (3D, D) read as (3, heads, head_dim) on its output axis, the MAP
pool's fused kv (2D, D). It follows timm 1.0's vision_transformer.py,
deit.py and AttentionPoolLatent step by step (and the block variants:
ResPostBlock, (Diff)ParallelScalingBlock, DiffAttention, RmsNorm) and shares
no code with vit_jax: parameters decide what exists (a class, distillation or
register token, patch_embed.norm, norm_pre, LayerScale, norm or fc_norm,
attn_pool, head, head_dist, missing biases, an RmsNorm where a norm has no
bias, in_proj of a parallel block, the lambdas of differential attention),
the arguments what no parameter shows.
"""

import math

import numpy as np
import scipy.special

ACTIVATIONS = {
    'gelu_erf': lambda x: 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2))),
    'gelu_tanh': lambda x: 0.5 * x * (1 + np.tanh(
        math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    'quick_gelu': lambda x: x / (1 + np.exp(-1.702 * x)),
    'silu': lambda x: x / (1 + np.exp(-x)),
}


def _layer_norm(p, name, x, eps):
  """timm's LayerNorm, or its RmsNorm (the norm without a bias)."""
  if f'{name}.bias' not in p:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * p[
        f'{name}.weight']
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p[f'{name}.weight'] + p[
      f'{name}.bias']


def _linear(p, name, x):
  """torch.nn.Linear: x @ W.T + b (no b for bias=False layers)."""
  return x @ p[f'{name}.weight'].T + p.get(f'{name}.bias', 0.)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _attend(q_BAQE, k_BAKE, v_BAKE):
  weights = _softmax(q_BAQE @ k_BAKE.swapaxes(-1, -2) /
                     math.sqrt(q_BAQE.shape[-1]))
  out_BAQE = weights @ v_BAKE
  batch, heads, queries, head_dim = out_BAQE.shape
  return out_BAQE.transpose(0, 2, 1, 3).reshape(batch, queries,
                                                 heads * head_dim)


def _self_attention(p, name, x, num_heads, eps=1e-6):
  """Attention, with the inner norm (scale_attn_norm) before proj where
  there is one."""
  batch, tokens, _ = x.shape
  qkv = _linear(p, f'{name}.qkv', x).reshape(batch, tokens, 3, num_heads, -1)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)
  y = _attend(q, k, v)
  if f'{name}.norm.weight' in p:
    y = _layer_norm(p, f'{name}.norm', y, eps)
  return _linear(p, f'{name}.proj', y)


def _differential_attention(p, name, q, k, v, num_heads, depth):
  """DiffAttention on q, k, v (B, N, D) (timm/layers/diff_attention.py):
  q and k as 2 * heads of half width, two softmax maps per head, the second
  scaled by lambda and subtracted, then a per-head RmsNorm (eps 1e-5) and
  the factor 1 - lambda_init."""
  batch, tokens, width = q.shape
  half = width // num_heads // 2
  split = lambda t, heads: t.reshape(batch, tokens, heads, -1).transpose(
      0, 2, 1, 3)
  q, k, v = split(q, 2 * num_heads), split(k, 2 * num_heads), split(
      v, num_heads)
  weights = _softmax(q @ k.swapaxes(-1, -2) / math.sqrt(half))
  weights = weights.reshape(batch, num_heads, 2, tokens, tokens)
  lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
  lam = (np.exp(np.sum(p[f'{name}lambda_q1'] * p[f'{name}lambda_k1'])) -
         np.exp(np.sum(p[f'{name}lambda_q2'] * p[f'{name}lambda_k2'])) +
         lambda_init)
  out = (weights[:, :, 0] - lam * weights[:, :, 1]) @ v  # (B, A, N, 2E')
  out = out / np.sqrt((out**2).mean(-1, keepdims=True) + 1e-5) * p[
      f'{name}sub_norm.weight']
  out = out * (1 - lambda_init)
  return out.transpose(0, 2, 1, 3).reshape(batch, tokens, width)


def _block(p, block, x, num_heads, eps, activation, post_norm, depth):
  """Block (pre-norm), ResPostBlock (post_norm) or, with DiffAttention's
  lambdas, Block with attn_layer='diff'."""
  norm = lambda name, y: _layer_norm(p, f'{block}.{name}', y, eps)
  attend = lambda y: _self_attention(p, f'{block}.attn', y, num_heads, eps)
  if f'{block}.attn.lambda_q1' in p:
    def attend(y):  # pylint: disable=function-redefined
      q, k, v = np.split(_linear(p, f'{block}.attn.qkv', y), 3, axis=-1)
      return _linear(p, f'{block}.attn.proj', _differential_attention(
          p, f'{block}.attn.', q, k, v, num_heads, depth))
  mlp = lambda y: _mlp(p, f'{block}.mlp', y, activation, eps)
  if post_norm:
    x = x + norm('norm1', attend(x))
    return x + norm('norm2', mlp(x))
  x = x + attend(norm('norm1', x)) * p.get(f'{block}.ls1.gamma', 1.)
  return x + mlp(norm('norm2', x)) * p.get(f'{block}.ls2.gamma', 1.)


def _parallel_block(p, block, x, num_heads, eps, activation, depth):
  """(Diff)ParallelScalingBlock: fc1 and q, k, v from one in_proj of one
  norm; attention and MLP outputs projected (separately or by one
  out_proj of their concatenation) and summed."""
  width = x.shape[-1]
  y = _linear(p, f'{block}.in_proj', _layer_norm(p, f'{block}.in_norm', x,
                                                 eps))
  mlp_dim = y.shape[-1] - 3 * width
  hidden, q, k, v = np.split(
      y, [mlp_dim, mlp_dim + width, mlp_dim + 2 * width], axis=-1)
  hidden = ACTIVATIONS[activation](hidden + p.get(f'{block}.mlp_bias', 0.))
  if f'{block}.lambda_q1' in p:
    attended = _differential_attention(p, f'{block}.', q, k, v, num_heads,
                                       depth)
  else:
    batch, tokens, _ = q.shape
    heads = lambda t: t.reshape(batch, tokens, num_heads, -1).transpose(
        0, 2, 1, 3)
    attended = _attend(heads(q), heads(k), heads(v))
  if f'{block}.out_proj.weight' in p:
    y = _linear(p, f'{block}.out_proj',
                np.concatenate([attended, hidden], axis=-1))
  else:
    y = (_linear(p, f'{block}.attn_out_proj', attended) +
         _linear(p, f'{block}.mlp_out_proj', hidden))
  return x + y * p.get(f'{block}.ls.gamma', 1.)


def _mlp(p, name, x, activation, eps=1e-6):
  """Mlp, SwiGLU (act(fc1_g) * fc1_x) or GluMlp(gate_last=False) (fc1
  twice fc2's inputs: act(first half) * second half), with the inner norm
  (scale_mlp_norm) where there is one."""
  act = ACTIVATIONS[activation]
  if f'{name}.fc1_g.weight' in p:
    y = act(_linear(p, f'{name}.fc1_g', x)) * _linear(p, f'{name}.fc1_x', x)
  else:
    y = _linear(p, f'{name}.fc1', x)
    if y.shape[-1] == 2 * p[f'{name}.fc2.weight'].shape[1]:
      gate, value = np.split(y, 2, axis=-1)
      y = act(gate) * value
    else:
      y = act(y)
  if f'{name}.norm.weight' in p:
    y = _layer_norm(p, f'{name}.norm', y, eps)
  return _linear(p, f'{name}.fc2', y)


def _attention_pool(p, x, num_heads, eps, activation):
  """AttentionPoolLatent: the latent queries the tokens, then x + MLP(LN(x));
  the first latent's output."""
  batch, tokens, _ = x.shape
  latent = p['attn_pool.latent']
  q = _linear(p, 'attn_pool.q', latent).reshape(
      1, latent.shape[1], num_heads, -1).transpose(0, 2, 1, 3)
  q = np.broadcast_to(q, (batch,) + q.shape[1:])
  kv = _linear(p, 'attn_pool.kv', x).reshape(batch, tokens, 2, num_heads, -1)
  k, v = kv.transpose(2, 0, 3, 1, 4)
  y = _linear(p, 'attn_pool.proj', _attend(q, k, v))
  y = y + _mlp(p, 'attn_pool.mlp', _layer_norm(p, 'attn_pool.norm', y, eps),
               activation)
  return y[:, 0]


def _patch_embed(p, images_BCHW):
  weight = p['patch_embed.proj.weight']  # (D, C, ph, pw)
  width, channels, ph, pw = weight.shape
  batch, _, height, wide = images_BCHW.shape
  rows, cols = height // ph, wide // pw  # A stride-p conv drops the rest.
  images_BCHW = images_BCHW[:, :, :rows * ph, :cols * pw]
  patches = images_BCHW.reshape(batch, channels, rows, ph, cols, pw).transpose(
      0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * ph * pw)
  x = patches @ weight.reshape(width, -1).T + p.get('patch_embed.proj.bias',
                                                   0.)
  return x


def _pos_embed(p, x, no_embed_class):
  """[cls] [dist] [registers] patches; pos_embed added before the prefix is
  concatenated (no_embed_class) or after."""
  batch = x.shape[0]
  prefix = [np.broadcast_to(p[name], (batch,) + p[name].shape[1:])
            for name in ('cls_token', 'dist_token', 'reg_token') if name in p]
  if 'pos_embed' in p and no_embed_class:
    x = x + p['pos_embed']
  x = np.concatenate(prefix + [x], axis=1)
  if 'pos_embed' in p and not no_embed_class:
    x = x + p['pos_embed']
  return x, sum(t.shape[1] for t in prefix)


def forward(state_dict, images_BCHW, *, num_heads, global_pool='token',
            no_embed_class=False, eps=1e-6, activation='gelu_erf',
            pool_include_prefix=False, post_norm=False):
  """timm's `model(images)` in eval mode: logits, or without `head` what
  timm gives with num_classes=0 (pooled features; every token for
  global_pool '')."""
  p = as_float64(state_dict)
  x = _patch_embed(p, np.asarray(images_BCHW, np.float64))
  if 'patch_embed.norm.weight' in p:
    x = _layer_norm(p, 'patch_embed.norm', x, eps)
  x, num_prefix = _pos_embed(p, x, no_embed_class)
  return encode_and_pool(p, x, num_prefix, num_heads=num_heads,
                         global_pool=global_pool, eps=eps,
                         activation=activation,
                         pool_include_prefix=pool_include_prefix,
                         post_norm=post_norm)


def as_float64(state_dict):
  return {key: np.asarray(value, np.float64)
          for key, value in state_dict.items()}


def encode_and_pool(p, x, num_prefix, *, num_heads, global_pool, eps,
                    activation, pool_include_prefix, post_norm=False):
  """From the embedded tokens (B, N, D) on, as `forward`: norm_pre, the
  blocks, the final norm, pooling and heads (timm's keys in float64 `p`)."""
  if 'norm_pre.weight' in p:
    x = _layer_norm(p, 'norm_pre', x, eps)
  layer = 0
  while any(key.startswith(f'blocks.{layer}.') for key in p):
    block = f'blocks.{layer}'
    if f'{block}.in_proj.weight' in p:
      x = _parallel_block(p, block, x, num_heads, eps, activation, layer)
    else:
      x = _block(p, block, x, num_heads, eps, activation, post_norm, layer)
    layer += 1
  if 'norm.weight' in p:
    x = _layer_norm(p, 'norm', x, eps)

  if 'dist_token' in p:  # deit.py's forward_head: no pool, no fc_norm.
    if 'head.weight' not in p:
      return (x[:, 0] + x[:, 1]) / 2
    return (_linear(p, 'head', x[:, 0]) + _linear(p, 'head_dist', x[:, 1])) / 2
  pooled_tokens = x if pool_include_prefix else x[:, num_prefix:]
  if 'attn_pool.latent' in p:
    x = _attention_pool(p, pooled_tokens, num_heads, eps, activation)
  elif global_pool == 'token':
    x = x[:, 0]
  elif global_pool == 'avg':
    x = pooled_tokens.mean(axis=1)
  elif global_pool != '':
    raise ValueError(f'no reference for global_pool {global_pool!r}')
  if 'fc_norm.weight' in p:
    x = _layer_norm(p, 'fc_norm', x, eps)
  if 'head.weight' in p:
    x = _linear(p, 'head', x)
  return x
