"""Tests of vit_jax.data.preprocess: scaling, RGB, crops, flips, RandAugment and
random erasing in the training transform, load_image."""

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from vit_jax.data import preprocess
from vit_jax.data import randaugment
from vit_jax.models import family


def _random_image(height=12, width=10, channels=3, seed=0):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (height, width, channels)).astype(np.uint8)


def test_scale_pixels_is_exact_affine_map_to_minus_one_one():
  pixels = np.array([0, 1, 127, 128, 254, 255], np.uint8)
  scaled = preprocess.scale_pixels(tf.constant(pixels)).numpy()
  assert scaled.dtype == np.float32
  np.testing.assert_array_equal(
      scaled, (pixels.astype(np.float32) - 127.5) / 127.5)
  assert scaled[0] == -1.0 and scaled[-1] == 1.0


IMAGENET = family.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))
# No random step: the training transform is the evaluation one.
PLAIN = preprocess.Augmentation(train_augment='resize', random_flip=False)


def test_scale_pixels_applies_a_per_channel_mean_and_std():
  image = _random_image(3, 4)
  scaled = preprocess.scale_pixels(tf.constant(image), IMAGENET).numpy()
  expected = ((image.astype(np.float32) - np.float32(IMAGENET.mean))
              / np.float32(IMAGENET.std))
  np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-6)
  # The family default is the [-1, 1] map, to the bit.
  np.testing.assert_array_equal(
      preprocess.scale_pixels(tf.constant(image), family.Preprocessing()),
      preprocess.scale_pixels(tf.constant(image)))


def test_train_eval_and_file_transforms_use_the_normalization(tmp_path):
  image = _random_image(6, 6)
  path = str(tmp_path / 'img.png')
  Image.fromarray(image).save(path)
  expected = preprocess.scale_pixels(tf.constant(image), IMAGENET).numpy()
  train = preprocess.train_preprocess(
      tf.constant(image), 6, tf.constant([0, 0]), PLAIN,
      normalization=IMAGENET)
  np.testing.assert_array_equal(train, expected)
  np.testing.assert_array_equal(
      preprocess.eval_preprocess(tf.constant(image), 6, IMAGENET), expected)
  np.testing.assert_array_equal(preprocess.load_image(path, 6, IMAGENET),
                                expected)


def test_to_rgb_tiles_grey_and_keeps_rgb():
  grey = _random_image(channels=1)
  rgb = preprocess.to_rgb(tf.constant(grey)).numpy()
  assert rgb.shape == grey.shape[:2] + (3,)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], grey[..., 0])
  colour = _random_image()
  np.testing.assert_array_equal(preprocess.to_rgb(tf.constant(colour)), colour)


def test_to_rgb_rejects_two_channels():
  with pytest.raises(ValueError, match='1 or 3 channels'):
    preprocess.to_rgb(tf.zeros([4, 4, 2], tf.uint8))


def test_resize_is_exact_noop_at_target_size_and_resizes_otherwise():
  image = _random_image(8, 8)
  same = preprocess.resize(tf.constant(image), 8).numpy()
  assert same.dtype == np.float32
  np.testing.assert_array_equal(same, image.astype(np.float32))
  bigger = preprocess.resize(tf.constant(image), 20).numpy()
  assert bigger.shape == (20, 20, 3)
  assert bigger.min() >= 0 and bigger.max() <= 255


def test_eval_preprocess_grey_gives_identical_exact_channels():
  grey = _random_image(6, 6, channels=1)
  out = preprocess.eval_preprocess(tf.constant(grey), 6).numpy()
  expected = (grey[..., 0].astype(np.float32) - 127.5) / 127.5
  assert out.shape == (6, 6, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], expected)


def test_inception_crop_shape_and_seed_determinism():
  image = tf.constant(_random_image(40, 30))
  crops = [preprocess.inception_crop(image, 16, tf.constant([0, s])).numpy()
           for s in (1, 1, 2)]
  assert crops[0].shape == (16, 16, 3)
  assert crops[0].min() >= 0 and crops[0].max() <= 255
  np.testing.assert_array_equal(crops[0], crops[1])
  assert not np.array_equal(crops[0], crops[2])


def test_random_flip_is_identity_or_mirror_and_both_happen():
  image = _random_image()
  outcomes = set()
  for s in range(16):
    out = preprocess.random_flip(tf.constant(image), tf.constant([3, s]))
    out = out.numpy()
    if np.array_equal(out, image):
      outcomes.add('same')
    else:
      np.testing.assert_array_equal(out, image[:, ::-1])
      outcomes.add('flipped')
  assert outcomes == {'same', 'flipped'}


@pytest.mark.parametrize('augment', ['inception_crop', 'resize'])
def test_train_preprocess_range_shape_and_grey(augment):
  grey = tf.constant(_random_image(20, 20, channels=1))
  out = preprocess.train_preprocess(
      grey, 12, tf.constant([5, 7]),
      preprocess.Augmentation(train_augment=augment)).numpy()
  assert out.shape == (12, 12, 3) and out.dtype == np.float32
  assert out.min() >= -1.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_train_preprocess_without_augmentation_matches_eval():
  image = tf.constant(_random_image(9, 9))
  train = preprocess.train_preprocess(image, 9, tf.constant([0, 0]), PLAIN)
  np.testing.assert_array_equal(train, preprocess.eval_preprocess(image, 9))


def test_load_image_png_exact_values(tmp_path):
  image = _random_image(7, 7)
  path = str(tmp_path / 'img.png')
  Image.fromarray(image).save(path)
  out = preprocess.load_image(path, 7)
  assert out.dtype == np.float32 and out.shape == (7, 7, 3)
  np.testing.assert_array_equal(out, (image.astype(np.float32) - 127.5) / 127.5)


def test_load_image_grey_jpeg_resized_to_three_channels(tmp_path):
  path = str(tmp_path / 'grey.JPG')
  Image.fromarray(_random_image(30, 20, channels=1)[..., 0], 'L').save(
      path, format='JPEG')
  out = preprocess.load_image(path, 16)
  assert out.shape == (16, 16, 3)
  assert out.min() >= -1.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out[..., 0], out[..., 1])


def test_load_image_corrupt_file_raises_value_error_naming_it(tmp_path):
  path = tmp_path / 'broken.jpg'
  path.write_bytes(b'\xff\xd8 this is not really a jpeg')
  with pytest.raises(ValueError, match='broken.jpg'):
    preprocess.load_image(str(path), 8)


def test_load_image_missing_file_raises_naming_it(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.png'):
    preprocess.load_image(str(tmp_path / 'missing.png'), 8)


# --- Small-image crops, RandAugment and random erasing ------------------------


def test_pad_crop_is_a_window_of_the_zero_padded_image():
  image = _random_image(8, 8) | 1  # No zeros: the black border shows.
  padded = np.pad(image, [(3, 3), (3, 3), (0, 0)]).astype(np.float32)
  offsets = set()
  for s in range(40):
    out = preprocess.pad_crop(tf.constant(image), 8, 3,
                              tf.constant([s, 2])).numpy()
    assert out.shape == (8, 8, 3) and out.dtype == np.float32
    matches = [(dy, dx) for dy in range(7) for dx in range(7)
               if np.array_equal(out, padded[dy:dy + 8, dx:dx + 8])]
    assert len(matches) == 1
    offsets.add(matches[0])
  assert len(offsets) >= 20  # Of the 7 x 7 possible shifts.
  assert {dy for dy, _ in offsets} == set(range(7))


def test_pad_crop_resizes_first_and_without_padding_is_resize():
  image = tf.constant(_random_image(20, 20))
  for s in range(3):
    np.testing.assert_array_equal(
        preprocess.pad_crop(image, 12, 0, tf.constant([s, 0])),
        preprocess.resize(image, 12))


def test_random_erasing_with_probability_zero_is_the_identity():
  image = np.random.RandomState(0).randn(10, 10, 3).astype(np.float32)
  for s in range(5):
    np.testing.assert_array_equal(
        preprocess.random_erasing(tf.constant(image), 0.0,
                                  tf.constant([s, 0])), image)


def _erased_box(before, after):
  """(top, left, height, width) of the changed pixels, asserting they form
  one filled rectangle changed in every channel."""
  changed = (before != after).any(axis=-1)
  rows, cols = np.nonzero(changed)
  top, left = rows.min(), cols.min()
  height, width = rows.max() - top + 1, cols.max() - left + 1
  assert changed.sum() == height * width
  assert (before != after)[changed].all()
  return top, left, height, width


def test_random_erasing_always_erases_a_rectangle_of_the_drawn_size():
  size = 28
  image = np.full((size, size, 3), 5.0, np.float32)  # Off the noise's scale.
  boxes, noise = set(), []
  for s in range(60):
    out = preprocess.random_erasing(tf.constant(image), 1.0,
                                    tf.constant([s, 4])).numpy()
    top, left, height, width = _erased_box(image, out)
    assert height < size and width < size  # Strictly inside.
    # Sides are rounded: the drawn area and ratio lie within half a pixel.
    area = size * size
    assert (height - 0.5) * (width - 0.5) <= area / 3
    assert (height + 0.5) * (width + 0.5) >= 0.02 * area
    assert (height - 0.5) / (width + 0.5) <= 3.3
    assert (height + 0.5) / (width - 0.5) >= 0.3
    boxes.add((top, left, height, width))
    noise.append(out[top:top + height, left:left + width].ravel())
  assert len(boxes) == 60
  noise = np.concatenate(noise)  # Per-pixel N(0, 1), thousands of values.
  assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05


def test_random_erasing_probability_and_seed():
  image = tf.zeros([16, 16, 3])
  erased = [bool(np.any(preprocess.random_erasing(image, 0.3,
                                                  tf.constant([s, 1]))))
            for s in range(300)]
  assert 60 <= sum(erased) <= 120  # 90 expected, sigma 8.
  np.testing.assert_array_equal(
      preprocess.random_erasing(image, 0.3, tf.constant([3, 3])),
      preprocess.random_erasing(image, 0.3, tf.constant([3, 3])))


def _old_train_preprocess(image, image_size, seed, augment, flip):
  """The transform before RandAugment and erasing existed (the reference)."""
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = preprocess.to_rgb(image)
  if augment == 'inception_crop':
    image = preprocess.inception_crop(image, image_size, crop_seed)
  else:
    image = preprocess.resize(image, image_size)
  if flip:
    image = preprocess.random_flip(image, flip_seed)
  return preprocess.scale_pixels(image)


@pytest.mark.parametrize('augment', ['inception_crop', 'resize'])
def test_train_preprocess_with_new_options_off_is_unchanged(augment):
  image = tf.constant(_random_image(20, 18))
  for s in range(8):
    seed = tf.constant([s, 11], tf.int64)
    np.testing.assert_array_equal(
        preprocess.train_preprocess(
            image, 12, seed, preprocess.Augmentation(train_augment=augment)),
        _old_train_preprocess(image, 12, seed, augment, flip=True))


def test_train_preprocess_order_crop_flip_randaug_normalise_erase():
  image = tf.constant(_random_image(20, 20))
  seed = tf.constant([2, 5], tf.int64)
  crop_seed, flip_seed, randaug_seed, erasing_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  expected = preprocess.random_flip(
      preprocess.pad_crop(image, 16, 2, crop_seed), flip_seed)
  expected = randaugment.randaugment(preprocess.to_uint8(expected),
                                     randaug_seed, 2, 15)
  expected = preprocess.random_erasing(
      preprocess.scale_pixels(expected, IMAGENET), 0.5, erasing_seed)
  out = preprocess.train_preprocess(
      image, 16, seed, preprocess.Augmentation(
          train_augment='pad_crop', crop_padding=2, randaug_layers=2,
          randaug_magnitude=15, random_erasing=0.5),
      normalization=IMAGENET)
  np.testing.assert_array_equal(out, expected)


def test_train_preprocess_new_options_range_shape_and_determinism():
  grey = tf.constant(_random_image(28, 28, channels=1))
  augmentation = preprocess.Augmentation(
      train_augment='pad_crop', crop_padding=4, randaug_layers=2,
      randaug_magnitude=10)
  outs = [preprocess.train_preprocess(grey, 28, tf.constant([0, s]),
                                      augmentation).numpy()
          for s in (1, 1, 2)]
  assert outs[0].shape == (28, 28, 3) and outs[0].dtype == np.float32
  assert outs[0].min() >= -1.0 and outs[0].max() <= 1.0
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])


def test_to_uint8_rounds_and_clips():
  values = tf.constant([-3.0, 0.4, 0.5, 1.5, 254.6, 300.0])
  np.testing.assert_array_equal(preprocess.to_uint8(values),
                                [0, 0, 0, 2, 255, 255])


@pytest.mark.parametrize('options,message', [
    (dict(train_augment='cutmix'),
     "config.train_augment='cutmix' is unknown; use one of ('inception_crop',"
     " 'resize', 'pad_crop')."),
    (dict(train_augment='resize', crop_padding=4),
     "config.crop_padding=4 only applies to train_augment='pad_crop', not "
     "'resize'; set it to 0."),
    (dict(train_augment='pad_crop', crop_padding=-1),
     'config.crop_padding=-1 must be an int >= 0.'),
    (dict(randaug_layers=-2), 'config.randaug_layers=-2 must be an int >= 0.'),
    (dict(randaug_layers=2, randaug_magnitude=-1),
     'config.randaug_magnitude=-1 must be >= 0.'),
    (dict(random_erasing=1.5),
     'config.random_erasing=1.5 is a probability: use a value in [0, 1].'),
    (dict(random_erasing=-0.1),
     'config.random_erasing=-0.1 is a probability: use a value in [0, 1].'),
])
def test_augmentation_rejects_a_bad_option_in_one_line(options, message):
  with pytest.raises(ValueError) as error:
    preprocess.Augmentation(**options)
  assert str(error.value) == message
