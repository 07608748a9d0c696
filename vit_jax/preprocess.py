"""Image preprocessing: TF ops for tf.data, and a single-image loader.

Every model input is NHWC float32, `(x - mean) / std` per channel from
uint8. The default mean = std = 127.5 maps [0, 255] to [-1, 1] with no
ImageNet mean/std: what the released ViT weights expect. Other weights bring
their own (`models.family.Preprocessing`, passed as `normalization`).

Random ops are the *stateless* TF variants with an explicit seed, so the
augmentation of an example depends only on that seed: a tf.data pipeline can
derive it from the data seed and the example's position and so reproduce the
exact same batches after a restart, whatever the parallelism.

Training:   image uint8 -> to_rgb -> inception_crop | resize -> random_flip
            -> scale_pixels
Evaluation: image uint8 -> to_rgb -> resize -> scale_pixels
"""

import re

import tensorflow as tf

# Inception-style crop ranges (Szegedy et al. 2015), as in the ViT code.
CROP_AREA_RANGE = (0.05, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


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


def train_preprocess(image, image_size, seed, *, augment='inception_crop',
                     flip=True, normalization=None):
  """The training transform of one image.

  Args:
    image: uint8 tensor (H, W, 1 or 3).
    image_size: output side in pixels.
    seed: int tensor (2,); the same seed gives the same augmentation.
    augment: 'inception_crop' (random crop, then resize) or 'resize'.
    flip: whether to flip left-right at random.
    normalization: the pixel normalisation (`scale_pixels`).

  Returns:
    float32 tensor (image_size, image_size, 3), normalised.
  """
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = to_rgb(image)
  if augment == 'inception_crop':
    image = inception_crop(image, image_size, crop_seed)
  elif augment == 'resize':
    image = resize(image, image_size)
  else:
    raise ValueError(f"Unknown train_augment {augment!r}; use "
                     "'inception_crop' or 'resize'.")
  if flip:
    image = random_flip(image, flip_seed)
  return scale_pixels(image, normalization)


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


def load_image(path, image_size, normalization=None):
  """Reads one image file as the model's evaluation input.

  Uses the same ops as `eval_preprocess`, so a classified file gets exactly
  the numbers an evaluation batch would.

  Args:
    path: a JPEG, PNG, GIF or BMP file.
    image_size: output side in pixels.
    normalization: the pixel normalisation (`scale_pixels`).

  Returns:
    numpy float32 (image_size, image_size, 3), normalised.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file cannot be decoded as an image.
  """
  try:
    encoded = tf.io.read_file(path)
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(f'Image file {path!r} does not exist.') from e
  try:
    image = decode_image(encoded)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    raise ValueError(
        f'Cannot decode image file {path!r}: not a JPEG, PNG, GIF or BMP '
        f'image, or the file is corrupt ({_op_error_reason(e)}).') from e
  return eval_preprocess(image, image_size, normalization).numpy()


def _op_error_reason(error):
  """The human part of a TF op error message (no op and device names)."""
  return re.sub(r'\{\{.*?\}\}|\[Op:.*', '', error.message).strip()
