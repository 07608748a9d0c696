"""Tests of vit_jax.data.randaugment: every op on known images, seeds, dtypes.

Expected values are worked out by hand from the published argument maps
(module docstring) on images small enough to check on paper; Equalize and
AutoContrast are also compared with PIL's ImageOps, an independent
implementation of the same rules.
"""

import collections

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest
import tensorflow as tf

from vit_jax.data import randaugment

SEED = tf.constant([0, 0])


def _random_image(height=12, width=10, seed=0):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (height, width, 3)).astype(np.uint8)


def _op(name, magnitude, image, seed=SEED, **options):
  out = randaugment.apply_op(tf.constant(image), name, magnitude, seed,
                             **options)
  assert out.dtype == tf.uint8 and out.shape == image.shape
  return out.numpy()


def _row(*values):
  """A (1, n, 3) grey image with the given values."""
  return np.repeat(np.array(values, np.uint8)[None, :, None], 3, axis=-1)


def test_the_sixteen_published_ops():
  assert len(randaugment.OPS) == len(set(randaugment.OPS)) == 16
  assert set(randaugment.OPS) == {
      'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize',
      'Solarize', 'SolarizeAdd', 'Color', 'Contrast', 'Brightness',
      'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout'}


# Where the published argument map makes an op the identity: geometric
# amounts, Cutout size and SolarizeAdd's addition are 0 at magnitude 0; the
# enhance factor m / 10 * 1.8 + 0.1 is 1 at m = 5; Solarize's threshold
# int(m / 10 * 256) >= 256 for m >= 10; Posterize keeps int(20 / 10 * 4) = 8
# bits at m = 20.
IDENTITIES = [('Rotate', 0), ('ShearX', 0), ('ShearY', 0), ('TranslateX', 0),
              ('TranslateY', 0), ('Cutout', 0), ('SolarizeAdd', 0),
              ('Color', 5), ('Contrast', 5), ('Brightness', 5),
              ('Sharpness', 5), ('Solarize', 10), ('Solarize', 20),
              ('Posterize', 20)]


@pytest.mark.parametrize('name,magnitude', IDENTITIES)
def test_op_is_the_identity_where_its_argument_says_so(name, magnitude):
  image = _random_image()
  for seed in range(3):
    np.testing.assert_array_equal(
        _op(name, magnitude, image, tf.constant([seed, 1])), image)


@pytest.mark.parametrize('name', sorted(
    set(randaugment.OPS) - {'AutoContrast'}))
def test_every_op_changes_a_random_image_at_magnitude_9(name):
  # AutoContrast is excluded: a random image already spans 0..255.
  image = _random_image(32, 32)
  assert not np.array_equal(_op(name, 9, image), image)


def test_invert():
  np.testing.assert_array_equal(_op('Invert', 3, _row(0, 1, 128, 255)),
                                _row(255, 254, 127, 0))


def test_solarize_threshold_follows_the_magnitude():
  image = _row(0, 100, 127, 128, 200, 255)
  # m = 5: threshold 128; values from 128 up are inverted.
  np.testing.assert_array_equal(_op('Solarize', 5, image),
                                _row(0, 100, 127, 127, 55, 0))
  # m = 0: threshold 0, everything is inverted.
  np.testing.assert_array_equal(_op('Solarize', 0, image), 255 - image)


def test_posterize_keeps_the_high_bits():
  image = _row(0, 15, 16, 200, 255)
  np.testing.assert_array_equal(_op('Posterize', 10, image),  # 4 bits.
                                _row(0, 0, 16, 192, 240))
  np.testing.assert_array_equal(_op('Posterize', 15, image),  # 6 bits.
                                _row(0, 12, 16, 200, 252))
  np.testing.assert_array_equal(_op('Posterize', 0, image), 0 * image)


def test_solarize_add_adds_below_128_and_saturates():
  image = _row(0, 100, 127, 128, 200)
  np.testing.assert_array_equal(_op('SolarizeAdd', 10, image),  # +110.
                                _row(110, 210, 237, 128, 200))
  np.testing.assert_array_equal(_op('SolarizeAdd', 20, image),  # +220.
                                _row(220, 255, 255, 128, 200))


def test_autocontrast_stretches_each_channel_and_keeps_flat_ones():
  image = np.zeros((1, 4, 3), np.uint8)
  image[0, :, 0] = (10, 20, 50, 95)  # Scale 255 / 85 = 3.
  image[0, :, 1] = 77  # Flat: kept.
  image[0, :, 2] = (0, 1, 2, 3)  # Scale 85.
  out = _op('AutoContrast', 0, image)
  np.testing.assert_array_equal(out[0, :, 0], (0, 30, 120, 255))
  np.testing.assert_array_equal(out[0, :, 1], (77, 77, 77, 77))
  np.testing.assert_array_equal(out[0, :, 2], (0, 85, 170, 255))


def test_equalize_hand_computed():
  # 1024 pixels: 510 of 50, 510 of 60, 4 of 70 (the top value). step =
  # (1024 - 4) // 255 = 4; v maps to (pixels below v + 2) // 4.
  channel = np.array([50] * 510 + [60] * 510 + [70] * 4, np.uint8)
  image = np.stack([channel, channel, np.full_like(channel, 9)], -1)
  out = _op('Equalize', 0, image.reshape(32, 32, 3)).reshape(-1, 3)
  np.testing.assert_array_equal(
      out[:, 0], [0] * 510 + [128] * 510 + [255] * 4)  # 512 // 4, 1022 // 4.
  np.testing.assert_array_equal(out[:, 2], 9)  # Flat: step 0, kept.


@pytest.mark.parametrize('seed', range(6))
def test_equalize_and_autocontrast_match_pil(seed):
  rng = np.random.RandomState(seed)
  # Few distinct levels, some channels nearly flat: the rules' edge cases.
  image = (_random_image(20, 17, seed) // rng.randint(1, 80)
           * rng.randint(1, 4)).astype(np.uint8)
  image[..., seed % 3] = 40
  pil = Image.fromarray(image)
  np.testing.assert_array_equal(_op('Equalize', 0, image),
                                np.asarray(ImageOps.equalize(pil)))
  # PIL computes the scale in float64, we in float32 as the TF port: the
  # truncation may differ by one level.
  diff = (_op('AutoContrast', 0, image).astype(int)
          - np.asarray(ImageOps.autocontrast(pil)))
  assert np.abs(diff).max() <= 1


def test_brightness_scales_and_truncates():
  image = _row(0, 9, 10, 100, 200, 255)
  # m = 0: factor 0.1, truncated; m = 10: factor 1.9, clipped at 255.
  np.testing.assert_array_equal(_op('Brightness', 0, image),
                                _row(0, 0, 1, 10, 20, 25))
  np.testing.assert_array_equal(_op('Brightness', 10, image),
                                _row(0, 17, 19, 190, 255, 255))


def test_contrast_moves_away_from_the_true_mean_grey():
  image = np.full((4, 4, 3), 100, np.uint8)
  image[2:] = 200  # Mean grey level 150.
  out = _op('Contrast', 10, image)  # Factor 1.9: 150 +- 1.9 * 50.
  np.testing.assert_array_equal(out[:2], 55)
  np.testing.assert_array_equal(out[2:], 245)


def test_color_of_a_grey_image_is_the_identity_and_greys_colour():
  grey = np.repeat(_random_image(6, 6)[..., :1], 3, axis=-1)
  np.testing.assert_array_equal(_op('Color', 10, grey), grey)
  colour = _random_image(6, 6)
  spread = lambda im: np.ptp(im.astype(int), axis=-1).mean()
  assert spread(_op('Color', 0, colour)) < 0.2 * spread(colour)


def test_sharpness_of_an_impulse_hand_computed():
  image = np.zeros((5, 5, 3), np.uint8)
  image[2, 2] = 100
  # Smoothed interior: centre int(100 * 5 / 13) = 38, neighbours
  # int(100 / 13) = 7; the one-pixel border keeps the original zeros.
  blurred = np.zeros((5, 5), np.uint8)
  blurred[1:4, 1:4] = 6  # int(7 + 0.1 * (0 - 7)).
  blurred[2, 2] = 44  # int(38 + 0.1 * (100 - 38)).
  np.testing.assert_array_equal(_op('Sharpness', 0, image)[..., 1], blurred)
  sharpened = np.zeros((5, 5), np.uint8)
  sharpened[2, 2] = 155  # int(38 + 1.9 * 62); neighbours clip to 0.
  np.testing.assert_array_equal(_op('Sharpness', 10, image)[..., 0],
                                sharpened)


def test_translate_moves_by_whole_pixels_and_fills_128():
  image = _random_image(4, 5)
  right = randaugment.translate_x(tf.constant(image), 2.0).numpy()
  np.testing.assert_array_equal(right[:, 2:], image[:, :3])
  np.testing.assert_array_equal(right[:, :2], 128)
  up = randaugment.translate_y(tf.constant(image), -1.0).numpy()
  np.testing.assert_array_equal(up[:3], image[1:])
  np.testing.assert_array_equal(up[3], 128)


def test_translate_magnitude_is_pixels_with_a_random_sign():
  image = _random_image(6, 7)
  shifted = {'right': np.full_like(image, 128), 'left': np.full_like(image,
                                                                      128)}
  shifted['right'][:, 3:] = image[:, :4]
  shifted['left'][:, :4] = image[:, 3:]
  seen = set()
  for s in range(12):
    # translate_const 10: magnitude 3 is 3 pixels.
    out = _op('TranslateX', 3, image, tf.constant([s, 0]), translate_const=10)
    seen.update(k for k, v in shifted.items() if np.array_equal(out, v))
  assert seen == {'right', 'left'}


def test_translate_at_published_scale_empties_a_small_image():
  # 100 px at m = 10: nothing of a 28 px image is left.
  np.testing.assert_array_equal(_op('TranslateY', 10, _random_image(28, 28)),
                                128)


def test_rotate_extrapolates_to_90_degrees_at_magnitude_30():
  image = _random_image(7, 7)
  # Both signs, exactly: the centre of an odd square is a pixel.
  seen = set()
  for s in range(12):
    out = _op('Rotate', 30, image, tf.constant([s, 5]))
    seen.update(k for k in (1, -1)
                if np.array_equal(out, np.rot90(image, k)))
  assert seen == {1, -1}
  np.testing.assert_array_equal(
      randaugment.rotate(tf.constant(image), 180.0), image[::-1, ::-1])


def test_rotate_fills_the_uncovered_corners_with_128():
  out = randaugment.rotate(tf.constant(_random_image(16, 16) | 1), 30.0)
  out = out.numpy()  # `| 1` makes every original value odd, 128 even.
  assert (out[0, 0] == 128).all() and (out[-1, -1] == 128).all()
  assert (out[8, 8] != 128).all()


def test_shear_x_hand_computed():
  image = _random_image(3, 5)
  out = randaugment.shear_x(tf.constant(image), 1.0).numpy()
  # Output (x, y) reads input (x + y, y): row y moves y pixels left.
  for y in range(3):
    np.testing.assert_array_equal(out[y, :5 - y], image[y, y:])
    np.testing.assert_array_equal(out[y, 5 - y:], 128)
  out = randaugment.shear_y(tf.constant(image), -0.5).numpy()
  # Output (x, y) reads input (x, y - x / 2), rounded to the nearest pixel.
  np.testing.assert_array_equal(out[:, 0], image[:, 0])
  np.testing.assert_array_equal(out[1:, 2], image[:2, 2])


def test_cutout_is_a_clipped_square_of_twice_the_pad_size():
  image = _random_image(9, 9) | 1  # Odd values: no pixel is 128.
  sides = set()
  corners = set()
  for s in range(30):
    # cutout_const 10: magnitude 2 is a half size of 2, a 4 x 4 square.
    out = _op('Cutout', 2, image, tf.constant([s, 3]), cutout_const=10)
    filled = (out == 128).all(axis=-1)
    np.testing.assert_array_equal(out[~filled], image[~filled])
    rows, cols = np.nonzero(filled)
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    assert filled.sum() == height * width  # A rectangle...
    assert height <= 4 and width <= 4  # ... clipped from a 4 x 4 square.
    assert height == 4 or top == 0 or top + height == 9
    sides.add((height, width))
    corners.add((top, left))
  assert (4, 4) in sides and len(sides) > 2 and len(corners) > 10


def test_cutout_at_published_scale_blanks_a_small_image():
  # Half size 40 at m = 10: an 80 px square covers all of a 28 px image.
  np.testing.assert_array_equal(_op('Cutout', 10, _random_image(28, 28)), 128)


# --- randaugment --------------------------------------------------------------


def test_randaugment_shape_dtype_and_determinism():
  image = tf.constant(_random_image(12, 20))
  for magnitude in (0, 10, 20):
    first = randaugment.randaugment(image, tf.constant([1, 2]), 2, magnitude)
    assert first.dtype == tf.uint8 and first.shape == (12, 20, 3)
    again = randaugment.randaugment(image, tf.constant([1, 2]), 2, magnitude)
    np.testing.assert_array_equal(first, again)
  # Scaled-down translations and cutouts: at the published 100 and 40 px
  # they blank this small image alike, whatever the seed.
  outputs = {randaugment.randaugment(
      image, tf.constant([s, 0]), 2, 7, translate_const=6,
      cutout_const=4).numpy().tobytes() for s in range(20)}
  assert len(outputs) >= 18


def test_randaugment_zero_layers_is_the_identity():
  image = _random_image()
  np.testing.assert_array_equal(
      randaugment.randaugment(tf.constant(image), SEED, 0, 10), image)


def test_randaugment_applies_the_drawn_ops_in_graph_mode():
  """Layer i is apply_op of the i-th drawn op with its seed, also in a
  tf.function with unknown image size (the tf.data setting)."""
  augment = tf.function(
      lambda image, seed: randaugment.randaugment(image, seed, 2, 13),
      input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                       tf.TensorSpec([2], tf.int64)])
  image = tf.constant(_random_image(11, 13))
  drawn = set()
  for s in range(24):
    seed = tf.constant([7, s], tf.int64)
    indices, op_seeds = randaugment.layer_ops(seed, 2)
    expected = image
    for index, op_seed in zip(indices.numpy(), op_seeds, strict=True):
      expected = randaugment.apply_op(expected, randaugment.OPS[index], 13,
                                      op_seed)
      drawn.add(randaugment.OPS[index])
    np.testing.assert_array_equal(augment(image, seed), expected)
  assert len(drawn) >= 12


def test_layer_ops_draws_every_op_uniformly():
  counts = collections.Counter()
  for s in range(400):
    indices, seeds = randaugment.layer_ops(tf.constant([s, 9]), 4)
    assert seeds.shape == (4, 2)
    counts.update(indices.numpy().tolist())
  assert sorted(counts) == list(range(16))
  # 1600 draws, 100 expected per op; 60 is more than 4 sigma away.
  assert min(counts.values()) > 60 and max(counts.values()) < 140


def test_bad_arguments_are_rejected():
  image = tf.constant(_random_image())
  with pytest.raises(ValueError, match='magnitude'):
    randaugment.randaugment(image, SEED, 2, -1)
  with pytest.raises(ValueError, match='num_layers'):
    randaugment.randaugment(image, SEED, -1, 10)
  with pytest.raises(ValueError, match='num_layers'):
    randaugment.randaugment(image, SEED, 1.5, 10)
  with pytest.raises(ValueError, match="'Mixup'"):
    randaugment.apply_op(image, 'Mixup', 10, SEED)
