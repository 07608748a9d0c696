"""RandAugment on uint8 images, with stateless TF ops for tf.data.

RandAugment (Cubuk et al. 2020) applies `num_layers` operations in a row,
each drawn uniformly from a fixed set and all sharing one magnitude. The set
and the magnitude scale here are those of the AugReg recipes (Steiner et al.
2021), which use the TensorFlow EfficientNet AutoAugment port: a magnitude m
is a level on a 0..10 scale (`MAX_LEVEL`), and every argument is linear in
m / 10, so magnitudes above 10 extrapolate (AugReg trains with 10, 15, 20).

The 16 operations (`OPS` keeps the published order) and their argument at
magnitude m ("+-": the sign is drawn at random, each with probability 1/2):

  AutoContrast  per channel, stretch [min, max] to [0, 255]; no argument.
  Equalize      per-channel histogram equalisation (PIL's rule); no argument.
  Invert        255 - x; no argument.
  Rotate        +- m/10 * 30 degrees about the image centre.
  Posterize     keep the int(m/10 * 4) high bits (clamped to 0..8). Note the
                direction: m = 0 keeps 0 bits (a black image), m = 20 keeps
                8 (the identity).
  Solarize      invert pixels >= int(m/10 * 256). Note the direction: m = 0
                inverts everything, m >= 10 is the identity.
  SolarizeAdd   add int(m/10 * 110) to pixels < 128, saturating at 255.
  Color         blend with the greyscale image, factor m/10 * 1.8 + 0.1.
  Contrast      blend with the mean grey level, same factor.
  Brightness    blend with black, same factor.
  Sharpness     blend with a 3x3 smoothed image (PIL's SMOOTH kernel; the
                one-pixel border stays sharp), same factor.
                The factor is 1 (the identity) at m = 5, 0.1 at m = 0.
  ShearX/Y      +- m/10 * 0.3: x_in = x + s * y (Y: y_in = y + s * x),
                about the top-left corner.
  TranslateX/Y  +- m/10 * 100 *pixels*, whatever the image size: the
                published constant assumes ImageNet-size images. On a 28 px
                image magnitude 3 already moves the content out of the
                frame, so small images want a smaller `translate_const`.
  Cutout        a square of side 2 * int(m/10 * 40) pixels centred on a
                uniformly random pixel, clipped to the image. The published
                "pad size" 40 is half the side, so at m = 10 the square is
                80 px: it blanks any image of side 40 or less entirely.

Pixels that a geometric op uncovers, and the Cutout square, take the value
128 (`FILL_VALUE`), as published. Geometric ops resample with nearest
neighbour, so integer translations move pixels exactly.

One deliberate difference from the port: Contrast blends towards the true
mean grey level, as PIL's ImageEnhance.Contrast (which the port imitates)
does. The port's "mean" is the histogram's total count / 256, i.e. the
number of pixels / 256, a constant unrelated to the image (about 3 on a
28 px image, which would make Contrast a darkening).

Randomness is stateless: the operation of every layer, the signs and the
Cutout position all derive from one (2,) int seed, so the same seed gives the
same image in graph mode (tf.data) and eagerly.
"""

import functools
import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128
# Argument scales of the published RandAugment (in pixels).
TRANSLATE_CONST = 100
CUTOUT_CONST = 40
# PIL's SMOOTH filter; `sharpness` divides by its sum, 13.
_SMOOTH_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))

OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize',
       'Solarize', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
       'ShearY', 'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')


# --- Pixel operations ---------------------------------------------------------


def invert(image):
  """Returns 255 - image for a uint8 (H, W, 3) image."""
  return 255 - image


def posterize(image, bits):
  """Keeps the `bits` most significant bits of every uint8 value.

  Args:
    image: uint8 (H, W, 3).
    bits: Python int; clamped to 0..8 (0: all black, 8: the identity).
  """
  bits = min(max(int(bits), 0), 8)
  mask = (0xFF << (8 - bits)) & 0xFF
  return tf.bitwise.bitwise_and(image, tf.constant(mask, tf.uint8))


def solarize(image, threshold):
  """Inverts the pixels at or above `threshold` (256 or more: identity).

  Args:
    image: uint8 (H, W, 3).
    threshold: int; compared in int32, so values above 255 are allowed.
  """
  pixels = tf.cast(image, tf.int32)
  return tf.cast(tf.where(pixels < threshold, pixels, 255 - pixels), tf.uint8)


def solarize_add(image, addition, threshold=128):
  """Adds `addition` to the pixels below `threshold`, saturating at 0..255."""
  pixels = tf.cast(image, tf.int32)
  added = tf.clip_by_value(pixels + addition, 0, 255)
  return tf.cast(tf.where(pixels < threshold, added, pixels), tf.uint8)


def autocontrast(image):
  """Stretches each channel's [min, max] linearly to [0, 255].

  A constant channel is left as it is. Values are truncated to uint8, as in
  the published TF port.

  Args:
    image: uint8 (H, W, 3).

  Returns:
    uint8 (H, W, 3).
  """
  pixels = tf.cast(image, tf.float32)
  low = tf.reduce_min(pixels, axis=[0, 1])
  high = tf.reduce_max(pixels, axis=[0, 1])
  # The guard only avoids inf * 0 in constant channels, which are kept below.
  scale = 255.0 / tf.maximum(high - low, 1.0)
  stretched = tf.clip_by_value(pixels * scale - low * scale, 0.0, 255.0)
  return tf.cast(tf.where(high > low, stretched, pixels), tf.uint8)


def equalize(image):
  """Per-channel histogram equalisation with PIL's ImageOps.equalize rule.

  With n pixels and c the count of the channel's largest value, step =
  (n - c) // 255; value v maps to (count of values below v + step // 2) //
  step, clipped to 255. A channel with step 0 (nearly constant) is kept.

  Args:
    image: uint8 (H, W, 3).

  Returns:
    uint8 (H, W, 3).
  """
  pixels = tf.reshape(tf.cast(image, tf.int32), [-1, 3])  # (n, 3)
  # One histogram per channel in a single bincount: channel c uses bins
  # 256c .. 256c + 255.
  offsets = tf.range(3, dtype=tf.int32) * 256
  hist = tf.reshape(
      tf.math.bincount(pixels + offsets, minlength=768, maxlength=768),
      [3, 256])
  top_count = tf.gather(hist, tf.reduce_max(pixels, axis=0), batch_dims=1)
  step = (tf.shape(pixels)[0] - top_count) // 255  # (3,)
  below = tf.cumsum(hist, axis=1, exclusive=True)
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((below + safe_step // 2) // safe_step, 255)
  lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])  # (3, 256)
  mapped = tf.gather(tf.reshape(lut, [-1]), pixels + offsets)
  return tf.reshape(tf.cast(mapped, tf.uint8), tf.shape(image))


# --- Blends (PIL ImageEnhance) ------------------------------------------------


def blend(degenerate, image, factor):
  """degenerate + factor * (image - degenerate), truncated to uint8.

  Factor 1 returns `image` and 0 returns `degenerate` exactly; above 1 the
  difference is extrapolated and clipped to [0, 255].

  Args:
    degenerate: uint8 (H, W, 3), the image the op moves towards.
    image: uint8 (H, W, 3).
    factor: Python float >= 0.
  """
  if factor == 1.0:
    return image
  if factor == 0.0:
    return degenerate
  low = tf.cast(degenerate, tf.float32)
  mixed = low + factor * (tf.cast(image, tf.float32) - low)
  return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)


def _grey(image):
  """(H, W, 1) uint8 luma of an RGB uint8 image (ITU-R 601 weights)."""
  return tf.image.rgb_to_grayscale(image)


def color(image, factor):
  """Blends with the greyscale version: 0 grey, 1 identity, > 1 vivid."""
  return blend(tf.image.grayscale_to_rgb(_grey(image)), image, factor)


def contrast(image, factor):
  """Blends with a flat image at the mean grey level (rounded, as PIL)."""
  mean = tf.reduce_mean(tf.cast(_grey(image), tf.float32))
  level = tf.cast(tf.floor(mean + 0.5), tf.uint8)
  return blend(tf.fill(tf.shape(image), level), image, factor)


def brightness(image, factor):
  """Blends with black: scales every pixel by `factor`."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blends with a smoothed copy: > 1 sharpens, < 1 blurs.

  The smoothed copy is PIL's SMOOTH filter on the interior; the one-pixel
  border keeps the original values, as in PIL and the TF port.

  Args:
    image: uint8 (H, W, 3).
    factor: Python float >= 0.
  """
  kernel = tf.constant(_SMOOTH_KERNEL, tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(
      tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  interior = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  return blend(tf.where(interior, smooth, image), image, factor)


# --- Geometric operations -----------------------------------------------------


def transform(image, matrix, fill_value=FILL_VALUE):
  """Resamples with nearest neighbour: output (x, y) reads input (x', y').

  Args:
    image: uint8 (H, W, 3).
    matrix: float32 (8,) [a0, a1, a2, b0, b1, b2, 0, 0] with
      x' = a0 x + a1 y + a2 and y' = b0 x + b1 y + b2 (x: column, y: row).
    fill_value: the value of output pixels that read outside the input.

  Returns:
    uint8 (H, W, 3).
  """
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=tf.cast(matrix, tf.float32)[None],
      output_shape=tf.shape(image)[:2], fill_value=float(fill_value),
      interpolation='NEAREST', fill_mode='CONSTANT')
  return tf.ensure_shape(out[0], image.shape)


def _geometry(name, amount, image):
  """(base, slope): op `name` moving by +-amount is `base + sign * slope`.

  Splitting off the sign keeps both rows constants when the image size is
  static, so a randomly signed transform needs no trigonometry at run time.

  Args:
    name: 'Rotate' (degrees), 'ShearX', 'ShearY' (shear factor),
      'TranslateX' or 'TranslateY' (pixels).
    amount: Python float >= 0.
    image: the (H, W, C) image (its size sets the rotation centre).

  Returns:
    Two length-8 lists of floats or scalar tensors (`transform`'s matrix).
  """
  if name == 'Rotate':
    return _rotation(math.radians(amount), image)
  identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
  slope = [0.0] * 8
  index = {'ShearX': 1, 'ShearY': 3, 'TranslateX': 2, 'TranslateY': 5}[name]
  # Translations read from x - pixels: positive amounts move content right/down.
  slope[index] = -amount if name.startswith('Translate') else amount
  return identity, slope


def _rotation(radians, image):
  """_geometry's rows of a rotation by +-radians about the image centre."""
  height, width = image.shape[0], image.shape[1]
  if height is None or width is None:
    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
  # Pixel centres span 0 .. side - 1, so the centre is at (side - 1) / 2.
  cy, cx = (height - 1) / 2, (width - 1) / 2
  cos, sin = math.cos(radians), math.sin(radians)
  # input = R (output - centre) + centre, with R = [[cos, -sin], [sin, cos]]
  # and sin the only term odd in the angle.
  base = [cos, 0.0, cx - cos * cx, 0.0, cos, cy - cos * cy, 0.0, 0.0]
  slope = [0.0, -sin, sin * cy, sin, 0.0, -sin * cx, 0.0, 0.0]
  return base, slope


def _signed_transform(image, name, amount, sign):
  base, slope = _geometry(name, amount, image)
  return transform(image, tf.stack(base) + sign * tf.stack(slope))


def rotate(image, degrees):
  """Rotates by `degrees` about the image centre; uncovered pixels 128.

  Positive angles turn the content counterclockwise as displayed (rows
  down): 90 degrees gives numpy's rot90.
  """
  return _signed_transform(image, 'Rotate', abs(degrees),
                           math.copysign(1.0, degrees))


def shear_x(image, level):
  """Horizontal shear about the top-left corner: x' = x + level * y."""
  return _signed_transform(image, 'ShearX', abs(level),
                           math.copysign(1.0, level))


def shear_y(image, level):
  """Vertical shear about the top-left corner: y' = y + level * x."""
  return _signed_transform(image, 'ShearY', abs(level),
                           math.copysign(1.0, level))


def translate_x(image, pixels):
  """Moves the content `pixels` to the right (negative: left)."""
  return _signed_transform(image, 'TranslateX', abs(pixels),
                           math.copysign(1.0, pixels))


def translate_y(image, pixels):
  """Moves the content `pixels` down (negative: up)."""
  return _signed_transform(image, 'TranslateY', abs(pixels),
                           math.copysign(1.0, pixels))


def cutout(image, half_size, seed, fill_value=FILL_VALUE):
  """Fills a square of side 2 half_size, clipped to the image, with 128.

  The square covers rows [cy - half_size, cy + half_size) and the same
  columns around cx, with (cy, cx) a uniformly random pixel: near the border
  the visible part is smaller.

  Args:
    image: uint8 (H, W, 3).
    half_size: Python int, half the side in pixels; 0 is the identity.
    seed: int tensor (2,).
    fill_value: the value written into the square.
  """
  if half_size <= 0:
    return image
  height, width = tf.unstack(tf.shape(image)[:2])
  row_seed, col_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  cy = tf.random.stateless_uniform([], row_seed, 0, height, tf.int32)
  cx = tf.random.stateless_uniform([], col_seed, 0, width, tf.int32)
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  inside = ((rows >= cy - half_size) & (rows < cy + half_size)
            & (cols >= cx - half_size) & (cols < cx + half_size))
  return tf.where(inside, tf.constant(fill_value, tf.uint8), image)


# --- RandAugment --------------------------------------------------------------

# Ops that are a fixed map of each uint8 value, and the geometric ops: each
# group runs as one branch that looks its op up in a table, because every
# branch of a tf.switch_case adds to the per-call cost in tf.data.
_VALUE_MAP_OPS = ('Invert', 'Posterize', 'Solarize', 'SolarizeAdd',
                  'Brightness')
_GEOMETRIC_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
_SINGLE_OPS = ('AutoContrast', 'Equalize', 'Color', 'Contrast', 'Sharpness',
               'Cutout')


class _Args:
  """The arguments of every op at one magnitude (module docstring).

  Integer arguments are truncated with int(), as published.
  """

  def __init__(self, magnitude, translate_const, cutout_const):
    level = magnitude / MAX_LEVEL
    self.factor = level * 1.8 + 0.1
    self.bits = int(level * 4)
    self.threshold = int(level * 256)
    self.addition = int(level * 110)
    self.cutout_half_size = int(level * cutout_const)
    self.amounts = {'Rotate': level * 30.0, 'ShearX': level * 0.3,
                    'ShearY': level * 0.3,
                    'TranslateX': level * translate_const,
                    'TranslateY': level * translate_const}

  def value_map(self, name, values):
    """Op `name` of _VALUE_MAP_OPS applied to uint8 `values`."""
    return {'Invert': lambda: invert(values),
            'Posterize': lambda: posterize(values, self.bits),
            'Solarize': lambda: solarize(values, self.threshold),
            'SolarizeAdd': lambda: solarize_add(values, self.addition),
            'Brightness': lambda: brightness(values, self.factor)}[name]()

  def single(self, name, image, seed):
    """Op `name` of _SINGLE_OPS applied to `image`."""
    return {'AutoContrast': lambda: autocontrast(image),
            'Equalize': lambda: equalize(image),
            'Color': lambda: color(image, self.factor),
            'Contrast': lambda: contrast(image, self.factor),
            'Sharpness': lambda: sharpness(image, self.factor),
            'Cutout': lambda: cutout(image, self.cutout_half_size, seed),
            }[name]()


def _value_map_table(args):
  """uint8 (5, 256): row i is _VALUE_MAP_OPS[i] on the values 0..255.

  Computed once, eagerly, with the ops themselves: a constant of the graph.
  """
  with tf.init_scope():
    values = tf.cast(tf.range(256), tf.uint8)
    table = tf.stack([args.value_map(name, values)
                      for name in _VALUE_MAP_OPS])
    return tf.constant(tf.get_static_value(table))


def _apply_value_map(image, row, table):
  return tf.gather(tf.gather(table, row), tf.cast(image, tf.int32))


def _apply_geometric(image, row, seed, args):
  rows = [_geometry(name, args.amounts[name], image)
          for name in _GEOMETRIC_OPS]
  # Nested lists of floats become one constant (5, 8) table each.
  base = tf.gather(tf.stack([b for b, _ in rows]), row)
  slope = tf.gather(tf.stack([s for _, s in rows]), row)
  return transform(image, base + _random_sign(seed) * slope)


def _random_sign(seed):
  """-1.0 or 1.0, each with probability 1/2."""
  return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)


def _branches(image, seed, args):
  """[(ops, fn(row) -> image)]: the branches and the ops each one runs."""
  table = _value_map_table(args)
  groups = [
      (_VALUE_MAP_OPS, lambda row: _apply_value_map(image, row, table)),
      (_GEOMETRIC_OPS, lambda row: _apply_geometric(image, row, seed, args))]
  for name in _SINGLE_OPS:
    groups.append(((name,), lambda row, name=name: args.single(name, image,
                                                               seed)))
  return groups


def _apply(image, op_index, seed, args):
  """Applies op OPS[op_index]; op_index is an int or an int32 tensor."""
  groups = _branches(image, seed, args)
  # For each op of OPS: its branch and its row in that branch's table.
  branch_of, row_of = zip(*[
      next((b, ops.index(name)) for b, (ops, _) in enumerate(groups)
           if name in ops) for name in OPS])
  if isinstance(op_index, int):
    fn = groups[branch_of[op_index]][1]
    return fn(row_of[op_index])
  row = tf.gather(row_of, op_index)
  out = tf.switch_case(tf.gather(branch_of, op_index),
                       [functools.partial(fn, row) for _, fn in groups])
  return tf.ensure_shape(out, image.shape)


def _check(num_layers, magnitude):
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or (
      num_layers < 0):
    raise ValueError(
        f'RandAugment num_layers must be an int >= 0, got {num_layers!r}.')
  if not magnitude >= 0:  # Also rejects NaN.
    raise ValueError(
        f'RandAugment magnitude must be >= 0, got {magnitude!r}.')


def apply_op(image, name, magnitude, seed, *, translate_const=TRANSLATE_CONST,
             cutout_const=CUTOUT_CONST):
  """Applies one RandAugment op at `magnitude` (module docstring).

  This is the code path of a `randaugment` layer that drew `name`.

  Args:
    image: uint8 (H, W, 3).
    name: one of `OPS`.
    magnitude: level on the 0..10 scale; larger values extrapolate.
    seed: int tensor (2,): the sign of Rotate/Shear/Translate, the Cutout
      position.
    translate_const: TranslateX/Y pixels at magnitude 10.
    cutout_const: Cutout half side at magnitude 10.

  Returns:
    uint8 (H, W, 3).

  Raises:
    ValueError: unknown op name, or a negative magnitude.
  """
  if name not in OPS:
    raise ValueError(f'Unknown RandAugment op {name!r}; use one of {OPS}.')
  _check(0, magnitude)
  args = _Args(float(magnitude), translate_const, cutout_const)
  return _apply(tf.convert_to_tensor(image), OPS.index(name), seed, args)


def layer_ops(seed, num_layers):
  """The ops RandAugment applies with `seed`, and the seed each op gets.

  Args:
    seed: int tensor (2,), `randaugment`'s seed.
    num_layers: the number of layers.

  Returns:
    (indices, op_seeds): int32 (num_layers,) indices into `OPS`, each drawn
    uniformly, and (num_layers, 2) seeds.
  """
  choice_seed, ops_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  indices = tf.random.stateless_uniform(
      [num_layers], choice_seed, minval=0, maxval=len(OPS), dtype=tf.int32)
  return indices, tf.random.experimental.stateless_split(ops_seed, num_layers)


def randaugment(image, seed, num_layers, magnitude, *,
                translate_const=TRANSLATE_CONST, cutout_const=CUTOUT_CONST):
  """RandAugment: `num_layers` ops, each drawn uniformly from `OPS`.

  Every layer applies exactly one op (each with probability 1/16), all at
  the same magnitude, as in the published RandAugment; layer i applies
  `apply_op(image, OPS[indices[i]], magnitude, op_seeds[i])` with the draws
  of `layer_ops(seed, num_layers)`.

  Args:
    image: uint8 (H, W, 3).
    seed: int tensor (2,); the same seed gives the same output.
    num_layers: ops applied in sequence (N in Cubuk et al.); 0: identity.
    magnitude: their shared level (M), on the 0..10 scale; above 10
      extrapolates.
    translate_const: TranslateX/Y pixels at magnitude 10.
    cutout_const: Cutout half side at magnitude 10.

  Returns:
    uint8 (H, W, 3).

  Raises:
    ValueError: num_layers is not an int >= 0 or magnitude is negative.
  """
  _check(num_layers, magnitude)
  image = tf.convert_to_tensor(image)
  if num_layers == 0:
    return image
  args = _Args(float(magnitude), translate_const, cutout_const)
  indices, op_seeds = layer_ops(seed, num_layers)
  for layer in range(num_layers):
    image = _apply(image, indices[layer], op_seeds[layer], args)
  return image
