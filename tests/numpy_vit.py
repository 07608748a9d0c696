"""An independent float64 NumPy ViT / R+ViT forward pass for the tests.

It reads a flat dict in the *released* layout (old block numbering, as written
by `vit_family.FAMILY.to_released` or found in the Google files) and
follows the paper's equations (1)-(4) and the released code's numerics
literally, sharing no code with vit_jax.
"""

import math

import numpy as np


def layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


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


def attention(p, x, pre):
  b, n, d = x.shape
  q, k, v = (np.einsum('bnd,dhk->bnhk', x, p[f'{pre}{name}/kernel']) +
             p[f'{pre}{name}/bias'] for name in ('query', 'key', 'value'))
  q = q / math.sqrt(q.shape[-1])
  weights = softmax(np.einsum('bqhk,bshk->bhqs', q, k))
  out = np.einsum('bhqs,bshk->bqhk', weights, v)
  return np.einsum('bqhk,hkd->bqd', out, p[f'{pre}out/kernel']) + p[
      f'{pre}out/bias']


def forward(flat, images, *, num_layers, patch, classifier='token',
            resnet_units=None):
  """Logits (or features when there is no head) for images in [-1, 1]."""
  p = {k: np.asarray(v, np.float64) for k, v in flat.items()}
  x = np.asarray(images, np.float64)
  if resnet_units is not None:
    x = resnet_stem(p, x, resnet_units)
  x = conv2d(x, p['embedding/kernel'], patch, 'VALID') + p['embedding/bias']
  b, h, w, d = x.shape
  x = x.reshape(b, h * w, d)
  if 'cls' in p:
    x = np.concatenate([np.broadcast_to(p['cls'], (b, 1, d)), x], axis=1)
  x = x + p['Transformer/posembed_input/pos_embedding']
  for i in range(num_layers):
    pre = f'Transformer/encoderblock_{i}/'
    ln = lambda x, name: layer_norm(x, p[f'{pre}{name}/scale'],
                                    p[f'{pre}{name}/bias'])
    x = x + attention(p, ln(x, 'LayerNorm_0'),
                      f'{pre}MultiHeadDotProductAttention_1/')
    y = ln(x, 'LayerNorm_2')
    y = gelu_tanh(y @ p[f'{pre}MlpBlock_3/Dense_0/kernel'] +
                  p[f'{pre}MlpBlock_3/Dense_0/bias'])
    x = x + (y @ p[f'{pre}MlpBlock_3/Dense_1/kernel'] +
             p[f'{pre}MlpBlock_3/Dense_1/bias'])
  x = layer_norm(x, p['Transformer/encoder_norm/scale'],
                 p['Transformer/encoder_norm/bias'])
  if classifier == 'token':
    x = x[:, 0]
  elif classifier == 'gap':
    x = x.mean(axis=1)
  if 'pre_logits/kernel' in p:
    x = np.tanh(x @ p['pre_logits/kernel'] + p['pre_logits/bias'])
  if 'head/kernel' in p:
    x = x @ p['head/kernel'] + p['head/bias']
  return x
