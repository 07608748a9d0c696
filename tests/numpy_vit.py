"""An independent float64 NumPy ViT / R+ViT forward pass for the tests.

It reads a flat dict in the *released* layout (old block numbering, as written
by `vit_family.FAMILY.to_released` or found in the Google files) and
follows the paper's equations (1)-(4) and the released code's numerics
literally, sharing no code with vit_jax.

The follow-ups' options are written out from their papers: options with
parameters are taken from the keys present (`cls`, `dist_token`,
`reg_token`, `LayerScale_{0,1}`, q/k/v biases, `Transformer/pre_norm`,
`Transformer/encoder_norm` or `fc_norm`, `MAPHead_0`, `head_dist`), the others
are arguments of `forward`.
"""

import math

import numpy as np
import scipy.special


def layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
  return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


def quick_gelu(x):
  return x / (1 + np.exp(-1.702 * x))


ACTIVATIONS = {'gelu_tanh': gelu_tanh, 'gelu_erf': gelu_erf,
               'quick_gelu': quick_gelu}


def sincos_2d(rows, cols, width, temperature=10_000.):
  """Beyer et al. 2022: token (r, c) of a row-major grid gets, for
  frequencies w_i = temperature**(-i / (F - 1)), i < F = width / 4,
  [sin(c w), cos(c w), sin(r w), cos(r w)] (each block F wide)."""
  f = width // 4
  out = np.zeros((rows * cols, width))
  for r in range(rows):
    for c in range(cols):
      for i in range(f):
        w = temperature**(-i / (f - 1))
        out[r * cols + c, [i, f + i, 2 * f + i, 3 * f + i]] = (
            math.sin(c * w), math.cos(c * w), math.sin(r * w),
            math.cos(r * w))
  return out


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def same_padding(size, kernel, stride):
  """TensorFlow SAME padding (low, high): the extra pixel goes high."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d(x, w, stride, padding, pad_value=0.0):
  """x (B,H,W,C), w (kh,kw,C,O); padding 'SAME' (TF) or 'VALID'."""
  kh, kw = w.shape[:2]
  if padding == 'SAME':
    ph, pw = same_padding(x.shape[1], kh, stride), same_padding(
        x.shape[2], kw, stride)
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=pad_value)
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
      out += window @ w[i, j]
  return out


def max_pool_same(x, size=3, stride=2):
  ph = same_padding(x.shape[1], size, stride)
  pw = same_padding(x.shape[2], size, stride)
  x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf)
  oh = (x.shape[1] - size) // stride + 1
  ow = (x.shape[2] - size) // stride + 1
  out = np.full((x.shape[0], oh, ow, x.shape[-1]), -np.inf)
  for i in range(size):
    for j in range(size):
      out = np.maximum(out, x[:, i:i + stride * oh:stride,
                              j:j + stride * ow:stride])
  return out


def std_conv(x, w, stride):
  w = w - w.mean(axis=(0, 1, 2), keepdims=True)
  w = w / (w.std(axis=(0, 1, 2), keepdims=True) + 1e-5)
  return conv2d(x, w, stride, 'SAME')


def group_norm(x, scale, bias, groups=32, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean)**2).mean(axis=(1, 2, 4), keepdims=True)
  g = (g - mean) / np.sqrt(var + eps)
  return g.reshape(b, h, w, c) * scale.reshape(-1) + bias.reshape(-1)


def resnet_stem(p, x, units):
  gn = lambda x, name: group_norm(x, p[f'{name}/scale'], p[f'{name}/bias'])
  x = std_conv(x, p['conv_root/kernel'], 2)
  x = np.maximum(gn(x, 'gn_root'), 0)
  x = max_pool_same(x)
  for s, n in enumerate(units):
    for u in range(n):
      stride = 2 if s > 0 and u == 0 else 1
      pre = f'block{s + 1}/unit{u + 1}/'
      residual = x
      if f'{pre}conv_proj/kernel' in p:
        residual = gn(std_conv(x, p[f'{pre}conv_proj/kernel'], stride),
                      f'{pre}gn_proj')
      y = np.maximum(gn(std_conv(x, p[f'{pre}conv1/kernel'], 1),
                        f'{pre}gn1'), 0)
      y = np.maximum(gn(std_conv(y, p[f'{pre}conv2/kernel'], stride),
                        f'{pre}gn2'), 0)
      y = gn(std_conv(y, p[f'{pre}conv3/kernel'], 1), f'{pre}gn3')
      x = np.maximum(residual + y, 0)
  return x


def attention(p, x, pre, queries=None):
  """Self-attention of x, or attention from `queries` to x. A missing
  q/k/v bias is zero (qkv_bias=False)."""
  queries = x if queries is None else queries
  q, k, v = (np.einsum('bnd,dhk->bnhk', inputs, p[f'{pre}{name}/kernel']) +
             p.get(f'{pre}{name}/bias', 0.)
             for name, inputs in (('query', queries), ('key', x),
                                  ('value', x)))
  q = q / math.sqrt(q.shape[-1])
  weights = softmax(np.einsum('bqhk,bshk->bhqs', q, k))
  out = np.einsum('bhqs,bshk->bqhk', weights, v)
  return np.einsum('bqhk,hkd->bqd', out, p[f'{pre}out/kernel']) + p[
      f'{pre}out/bias']


def mlp(p, x, pre, activation):
  y = ACTIVATIONS[activation](x @ p[f'{pre}Dense_0/kernel'] +
                              p[f'{pre}Dense_0/bias'])
  return y @ p[f'{pre}Dense_1/kernel'] + p[f'{pre}Dense_1/bias']


def map_head(p, x, eps, activation):
  """Attention pooling: a learned probe attends to the tokens, then
  y + MLP(LN(y)); returns (B, D)."""
  pre = 'MAPHead_0/'
  probe = np.broadcast_to(p[f'{pre}probe'], (x.shape[0], 1, x.shape[2]))
  y = attention(p, x, f'{pre}MultiHeadDotProductAttention_0/', probe)
  z = layer_norm(y, p[f'{pre}LayerNorm_0/scale'], p[f'{pre}LayerNorm_0/bias'],
                 eps)
  return (y + mlp(p, z, f'{pre}MlpBlock_0/', activation))[:, 0]


def embed_tokens(p, x, posemb, posemb_covers_prefix):
  """Patches (B, h, w, D) -> [cls] [dist] [registers] patches, with the
  position embedding added to the tokens it covers."""
  b, h, w, d = x.shape
  x = x.reshape(b, h * w, d)
  prefix = [np.broadcast_to(p[name], (b, p[name].shape[1], d))
            for name in ('cls', 'dist_token', 'reg_token') if name in p]
  if posemb == 'learned' and posemb_covers_prefix:
    return np.concatenate(prefix + [x], axis=1) + p[
        'Transformer/posembed_input/pos_embedding']
  if posemb == 'learned':
    x = x + p['Transformer/posembed_input/pos_embedding']
  elif posemb == 'sincos2d':
    x = x + sincos_2d(h, w, d)
  return np.concatenate(prefix + [x], axis=1)


def forward(flat, images, *, num_layers, patch, classifier='token',
            resnet_units=None, posemb='learned', posemb_covers_prefix=True,
            eps=1e-6, activation='gelu_tanh', branch_scales=None):
  """Logits (or features when there is no head) for images in [-1, 1].

  `branch_scales`: (num_layers, 2, B) factors multiplying each example's
  attention and MLP branch (stochastic depth's 0 or 1 / keep); None: 1.
  """
  p = {k: np.asarray(v, np.float64) for k, v in flat.items()}
  x = np.asarray(images, np.float64)
  if resnet_units is not None:
    x = resnet_stem(p, x, resnet_units)
  x = conv2d(x, p['embedding/kernel'], patch, 'VALID') + p['embedding/bias']
  num_patches = x.shape[1] * x.shape[2]
  x = embed_tokens(p, x, posemb, posemb_covers_prefix)
  num_prefix = x.shape[1] - num_patches
  ln = lambda x, name: layer_norm(x, p[f'{name}/scale'], p[f'{name}/bias'],
                                  eps)
  if 'Transformer/pre_norm/scale' in p:
    x = ln(x, 'Transformer/pre_norm')
  if branch_scales is None:
    branch_scales = np.ones((num_layers, 2, x.shape[0]))
  for i in range(num_layers):
    pre = f'Transformer/encoderblock_{i}/'
    for j, branch in enumerate((
        lambda x: attention(p, ln(x, f'{pre}LayerNorm_0'),
                            f'{pre}MultiHeadDotProductAttention_1/'),
        lambda x: mlp(p, ln(x, f'{pre}LayerNorm_2'), f'{pre}MlpBlock_3/',
                      activation))):
      y = branch(x) * p.get(f'{pre}LayerScale_{j}/scale', 1.)
      x = x + branch_scales[i, j][:, None, None] * y
  if 'Transformer/encoder_norm/scale' in p:
    x = ln(x, 'Transformer/encoder_norm')
  distilled = 'head_dist/kernel' in p or 'dist_token' in p
  if classifier == 'token':
    x = x[:, :2] if distilled else x[:, 0]
  elif classifier == 'gap':
    x = x[:, num_prefix:].mean(axis=1)
  elif classifier == 'map':
    x = map_head(p, x, eps, activation)
  if 'fc_norm/scale' in p:
    x = ln(x, 'fc_norm')
  if 'pre_logits/kernel' in p:
    x = np.tanh(x @ p['pre_logits/kernel'] + p['pre_logits/bias'])
  if distilled:
    if 'head/kernel' not in p:
      return x.mean(axis=1)
    return ((x[:, 0] @ p['head/kernel'] + p['head/bias']) +
            (x[:, 1] @ p['head_dist/kernel'] + p['head_dist/bias'])) / 2
  if 'head/kernel' in p:
    x = x @ p['head/kernel'] + p['head/bias']
  return x
