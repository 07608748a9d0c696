"""Image preprocessing: TF ops for tf.data.

Every model input is NHWC float32, `(x - mean) / std` per channel from
uint8. The default mean = std = 127.5 maps [0, 255] to [-1, 1] with no
ImageNet mean/std: what the released ViT weights expect. Other weights bring
their own (`models.family.Preprocessing`, passed as `normalization`).

Random ops are the *stateless* TF variants with an explicit seed, so the
augmentation of an example depends only on that seed: a tf.data pipeline can
derive it from the data seed and the example's position and so reproduce the
exact same batches after a restart, whatever the parallelism.

Training:   image uint8 -> to_rgb -> inception_crop | resize | pad_crop
            -> random_flip -> [randaugment] -> scale_pixels
            -> [random_erasing]
Evaluation: image uint8 -> to_rgb -> resize -> scale_pixels

The optional steps follow the AugReg recipes (Steiner et al. 2021): crop,
flip, RandAugment on uint8 pixels, then normalisation; random erasing
(Zhong et al. 2020, as used by DeiT, Touvron et al. 2021) comes last, on the
normalised image, so its noise is N(0, 1) in the model's input space. With
every optional step off, the training transform is exactly the one before
they existed: each step draws from its own sub-seed.
"""

import dataclasses
import math

import tensorflow as tf

from vit_jax.data import image_file
from vit_jax.data import randaugment

# Inception-style crop ranges (Szegedy et al. 2015), as in the ViT code.
CROP_AREA_RANGE = (0.05, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_MODES = ('inception_crop', 'resize', 'pad_crop')
# Random erasing ranges (Zhong et al. 2020; the DeiT setting): the erased
# fraction of the area and the rectangle's aspect ratio (log-uniform).
ERASING_AREA_RANGE = (0.02, 1 / 3)
ERASING_ASPECT_RATIO_RANGE = (0.3, 3.3)
# Rectangles tried until one fits inside the image; none fits: no erasing.
ERASING_ATTEMPTS = 10


def decode_image(encoded):
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 (H, W, 3).

  Greyscale images get 3 identical channels and an alpha channel is dropped.

  Args:
    encoded: scalar string tensor, the file's bytes.

  Returns:
    uint8 tensor (H, W, 3).
  """
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def to_rgb(image):
  """Returns (H, W, 3): a 1-channel image is tiled to 3 identical channels.

  Args:
    image: tensor (H, W, C) with a static C of 1 or 3.

  Raises:
    ValueError: C is unknown or neither 1 nor 3.
  """
  channels = image.shape[-1]
  if channels == 3:
    return image
  if channels == 1:
    return tf.tile(image, [1, 1, 3])
  raise ValueError(
      f'Expected an image with 1 or 3 channels, got shape {image.shape}.')


def resize(image, image_size):
  """Bilinear resize to (image_size, image_size); a no-op at that size.

  Args:
    image: tensor (H, W, C), any real dtype.
    image_size: output side in pixels.

  Returns:
    float32 tensor (image_size, image_size, C), values in the input's range.
  """
  if tuple(image.shape[:2]) == (image_size, image_size):
    return tf.cast(image, tf.float32)
  # Bilinear weights are convex, so uint8 input stays within [0, 255].
  return tf.image.resize(image, [image_size, image_size], method='bilinear')


def inception_crop(image, image_size, seed,
                   area_range=CROP_AREA_RANGE,
                   aspect_ratio_range=CROP_ASPECT_RATIO_RANGE):
  """Random crop of a random area and aspect ratio, resized to image_size.

  Args:
    image: tensor (H, W, C).
    image_size: output side in pixels.
    seed: int tensor (2,), the stateless seed.
    area_range: (min, max) fraction of the image area covered by the crop.
    aspect_ratio_range: (min, max) width / height of the crop.

  Returns:
    float32 tensor (image_size, image_size, C).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      # No object boxes: the whole image is the "object", and
      # min_object_covered=0 lets the area range alone decide the crop.
      bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=aspect_ratio_range,
      area_range=area_range,
      use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, size)
  crop.set_shape([None, None, image.shape[-1]])
  return tf.image.resize(crop, [image_size, image_size], method='bilinear')


def random_flip(image, seed):
  """Flips (H, W, C) left-right with probability 1/2, given a (2,) seed."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def scale_pixels(image, normalization=None):
  """Maps uint8-range values to float32: (x - mean) / std per channel.

  Args:
    image: (..., 3) tensor of values in [0, 255].
    normalization: anything with `mean` and `std` (3 floats each), e.g. a
      `models.family.Preprocessing`; None: mean = std = 127.5, giving [-1, 1].
  """
  if normalization is None:
    return (tf.cast(image, tf.float32) - 127.5) / 127.5
  mean = tf.constant(normalization.mean, tf.float32)
  std = tf.constant(normalization.std, tf.float32)
  return (tf.cast(image, tf.float32) - mean) / std


def pad_crop(image, image_size, padding, seed):
  """Resizes, pads with black, and crops a random image_size window.

  The small-image augmentation of the ResNet CIFAR recipe (He et al. 2016):
  the content moves by up to `padding` pixels in each direction. The border
  is black (0), not a reflection: that is the published recipe, and on
  Fashion-MNIST black is the background, while a reflection would mirror
  parts of the object into the border.

  Args:
    image: tensor (H, W, C) of values in [0, 255].
    image_size: output side in pixels (the image is resized to it first).
    padding: pixels added on each side; 0 gives `resize`'s result.
    seed: int tensor (2,), the stateless seed.

  Returns:
    float32 tensor (image_size, image_size, C): rows and columns [dy, dy +
    image_size) and [dx, dx + image_size) of the padded image, with dy and
    dx uniform in 0..2 * padding.
  """
  image = resize(image, image_size)
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  offset = tf.random.stateless_uniform(
      [2], seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
  return tf.slice(padded, tf.concat([offset, [0]], 0),
                  [image_size, image_size, image.shape[-1]])


def to_uint8(image):
  """Rounds float pixel values in [0, 255] to uint8 (RandAugment's input)."""
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def random_erasing(image, probability, seed,
                   area_range=ERASING_AREA_RANGE,
                   aspect_ratio_range=ERASING_ASPECT_RATIO_RANGE,
                   attempts=ERASING_ATTEMPTS):
  """Random erasing (Zhong et al. 2020) with per-pixel noise, as in DeiT.

  With probability `probability`, up to `attempts` rectangles are drawn
  (area fraction uniform in `area_range`, aspect ratio h / w log-uniform in
  `aspect_ratio_range`, sides rounded to pixels); the first that fits
  strictly inside the image, at a uniformly random position, is filled with
  independent N(0, 1) noise per pixel and channel. If none fits, the image is
  unchanged. Meant for the normalised image, where N(0, 1) is on the scale
  of the data.

  Args:
    image: float32 tensor (H, W, C).
    probability: Python float in [0, 1]; 0 is the identity.
    seed: int tensor (2,), the stateless seed.
    area_range: (min, max) fraction of the image area erased.
    aspect_ratio_range: (min, max) height / width of the rectangle.
    attempts: rectangles tried before giving up.

  Returns:
    float32 tensor (H, W, C).
  """
  if probability <= 0:
    return image
  uniform_seed, noise_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  # All the uniform draws at once: one random op instead of five.
  draws = tf.random.stateless_uniform([2 * attempts + 3], uniform_seed)
  area_draws, ratio_draws = draws[:attempts], draws[attempts:2 * attempts]
  apply_draw, top_draw, left_draw = tf.unstack(draws[2 * attempts:])
  shape = tf.shape(image)
  height, width = _erasing_size(shape, area_draws, ratio_draws, area_range,
                                aspect_ratio_range)
  erase = apply_draw < probability
  height = tf.where(erase, height, 0)
  width = tf.where(erase, width, 0)
  # Uniform over the shape[0] - height + 1 top rows that keep it inside.
  top = _scale_draw(top_draw, shape[0] - height + 1)
  left = _scale_draw(left_draw, shape[1] - width + 1)
  # Noise only for the rectangle: cheap when the image is large.
  noise = tf.random.stateless_normal([height, width, shape[2]], noise_seed,
                                     dtype=image.dtype)
  around = [[top, shape[0] - top - height], [left, shape[1] - left - width],
            [0, 0]]
  inside = tf.pad(tf.ones_like(noise, tf.bool), around)
  return tf.where(inside, tf.pad(noise, around), image)


def _scale_draw(draw, count):
  """Maps a uniform [0, 1) draw to an int in 0 .. count - 1."""
  index = tf.cast(tf.floor(draw * tf.cast(count, tf.float32)), tf.int32)
  return tf.minimum(index, count - 1)  # Guards float rounding up to count.


def _erasing_size(shape, area_draws, ratio_draws, area_range,
                  aspect_ratio_range):
  """(height, width) of the first rectangle that fits strictly inside.

  Args:
    shape: the image shape (H, W, C), int32.
    area_draws: uniform [0, 1) draws, one per attempt, for the area.
    ratio_draws: the same for the log aspect ratio.
    area_range: (min, max) fraction of the image area.
    aspect_ratio_range: (min, max) height / width.

  Returns:
    Two int32 scalars; 0, 0 when no attempt fits.
  """
  low, high = area_range
  area = tf.cast(shape[0] * shape[1], tf.float32) * (
      low + (high - low) * area_draws)
  log_low, log_high = (math.log(r) for r in aspect_ratio_range)
  ratio = tf.exp(log_low + (log_high - log_low) * ratio_draws)
  heights = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
  widths = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
  fits = (heights < shape[0]) & (widths < shape[1])
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)
  return (tf.where(found, heights[first], 0),
          tf.where(found, widths[first], 0))


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The per-example training augmentation (`train_preprocess`).

  The defaults are the ViT fine-tuning augmentation; the other options are
  off until set. The fields are the config keys of the same names, checked
  here once: an invalid value raises ValueError on construction.

  Attributes:
    train_augment: 'inception_crop' (a random area and aspect ratio,
      resized), 'resize' (the whole image) or 'pad_crop' (resize, pad with
      black, random crop back: the small-image recipe).
    random_flip: flip left-right at random.
    crop_padding: pixels of padding on each side for 'pad_crop'.
    randaug_layers: RandAugment ops per image (`vit_jax.data.randaugment`);
      0: off.
    randaug_magnitude: their shared magnitude, 0..10 scale (AugReg: 10-20).
    random_erasing: probability of erasing a random rectangle with noise
      after normalisation (DeiT: 0.25); 0: off.
  """
  train_augment: str = 'inception_crop'
  random_flip: bool = True
  crop_padding: int = 0
  randaug_layers: int = 0
  randaug_magnitude: float = 10.0
  random_erasing: float = 0.0

  def __post_init__(self):
    if self.train_augment not in CROP_MODES:
      raise ValueError(f'config.train_augment={self.train_augment!r} is '
                       f'unknown; use one of {CROP_MODES}.')
    _check_int('crop_padding', self.crop_padding)
    if self.crop_padding and self.train_augment != 'pad_crop':
      raise ValueError(
          f'config.crop_padding={self.crop_padding} only applies to '
          f"train_augment='pad_crop', not {self.train_augment!r}; set it "
          'to 0.')
    _check_int('randaug_layers', self.randaug_layers)
    if not self.randaug_magnitude >= 0:  # Also rejects NaN.
      raise ValueError(f'config.randaug_magnitude='
                       f'{self.randaug_magnitude!r} must be >= 0.')
    if not 0 <= self.random_erasing <= 1:
      raise ValueError(f'config.random_erasing={self.random_erasing!r} is a '
                       'probability: use a value in [0, 1].')


def _check_int(key, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f'config.{key}={value!r} must be an int >= 0.')


def train_preprocess(image, image_size, seed,
                     augmentation: Augmentation = Augmentation(),
                     normalization=None):
  """The training transform of one image.

  Order (module docstring): crop, flip, RandAugment, normalise, erase. The
  default augmentation gives the transform of the ViT fine-tuning code.

  Args:
    image: uint8 tensor (H, W, 1 or 3).
    image_size: output side in pixels.
    seed: int tensor (2,); the same seed gives the same augmentation.
    augmentation: the steps and their settings (checked on construction).
    normalization: the pixel normalisation (`scale_pixels`).

  Returns:
    float32 tensor (image_size, image_size, 3), normalised.
  """
  # The first two sub-seeds are those of a 2-way split (Philox is counter
  # based), so crops and flips are unchanged by the steps added after them.
  crop_seed, flip_seed, randaug_seed, erasing_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  image = to_rgb(image)
  if augmentation.train_augment == 'inception_crop':
    image = inception_crop(image, image_size, crop_seed)
  elif augmentation.train_augment == 'pad_crop':
    image = pad_crop(image, image_size, augmentation.crop_padding, crop_seed)
  else:
    image = resize(image, image_size)
  if augmentation.random_flip:
    image = random_flip(image, flip_seed)
  if augmentation.randaug_layers:
    image = randaugment.randaugment(to_uint8(image), randaug_seed,
                                    augmentation.randaug_layers,
                                    augmentation.randaug_magnitude)
  image = scale_pixels(image, normalization)
  return random_erasing(image, augmentation.random_erasing, erasing_seed)


def eval_preprocess(image, image_size, normalization=None):
  """The evaluation transform: RGB, resize, normalise.

  Args:
    image: uint8 tensor (H, W, 1 or 3).
    image_size: output side in pixels.
    normalization: the pixel normalisation (`scale_pixels`).

  Returns:
    float32 tensor (image_size, image_size, 3), normalised.
  """
  return scale_pixels(resize(to_rgb(image), image_size), normalization)


# The single-image path lives in image_file (no TensorFlow): predict and the
# library's users classify files without importing TensorFlow.
load_image = image_file.load_image
