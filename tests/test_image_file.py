"""vit_jax.data.image_file: the TensorFlow-free single-image path gives
TensorFlow's numbers (preprocess.decode_image, resize, scale_pixels)."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from vit_jax.data import image_file
from vit_jax.data import preprocess
from vit_jax.models import family

IMAGENET = family.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))


def _encode(image: Image.Image, image_format: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=image_format)
  return buffer.getvalue()


@pytest.mark.parametrize('height, width, size', [
    (1, 1, 7), (5, 9, 16), (37, 29, 32), (64, 64, 32), (80, 17, 48),
    (48, 48, 48), (3, 100, 1)])
def test_resize_is_tensorflows_bilinear_bit_for_bit(height, width, size):
  image = np.random.RandomState(height).randint(
      0, 256, (height, width, 3)).astype(np.uint8)
  ours = image_file.resize(image, size)
  assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
  np.testing.assert_array_equal(
      ours, preprocess.resize(tf.constant(image), size).numpy())


def _images():
  rng = np.random.RandomState(0)
  pixels = rng.randint(0, 256, (21, 13, 4)).astype(np.uint8)
  rgb = Image.fromarray(pixels[..., :3])
  return {
      'png': _encode(rgb, 'PNG'),
      'png-rgba': _encode(Image.fromarray(pixels), 'PNG'),
      'png-grey-alpha': _encode(rgb.convert('LA'), 'PNG'),
      'png-palette': _encode(rgb.convert('P'), 'PNG'),
      'png-16-bit': _encode(Image.fromarray(
          rng.randint(0, 65536, (21, 13)).astype(np.uint16)), 'PNG'),
      'gif': _encode(rgb.convert('P'), 'GIF'),
      'bmp': _encode(rgb, 'BMP'),
  }


@pytest.mark.parametrize('name', sorted(_images()))
def test_lossless_formats_decode_as_tensorflow_does(name):
  encoded = _images()[name]
  ours = image_file.decode(encoded)
  assert ours.dtype == np.uint8 and ours.shape == (21, 13, 3)
  np.testing.assert_array_equal(
      ours, preprocess.decode_image(tf.constant(encoded)).numpy())


@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_jpeg_decodes_with_libjpegs_accurate_idct(mode):
  # TensorFlow's decode_image uses the fast IDCT, a few levels of 255 away;
  # Pillow's is libjpeg's accurate one, TensorFlow's INTEGER_ACCURATE.
  pixels = np.random.RandomState(1).randint(0, 256, (30, 20, 3))
  encoded = _encode(Image.fromarray(pixels.astype(np.uint8)).convert(mode),
                    'JPEG')
  np.testing.assert_array_equal(
      image_file.decode(encoded),
      tf.io.decode_jpeg(encoded, channels=3,
                        dct_method='INTEGER_ACCURATE').numpy())


@pytest.mark.parametrize('normalization', [None, IMAGENET])
def test_load_image_is_eval_preprocess_of_the_decoded_file(
    tmp_path, normalization):
  path = tmp_path / 'image.png'
  path.write_bytes(_images()['png'])
  decoded = preprocess.decode_image(tf.io.read_file(str(path)))
  expected = preprocess.eval_preprocess(decoded, 16, normalization).numpy()
  np.testing.assert_array_equal(
      image_file.load_image(path, 16, normalization), expected)
  assert preprocess.load_image is image_file.load_image


def test_a_file_that_is_no_image_is_one_value_error_naming_it(tmp_path):
  path = tmp_path / 'notes.jpg'
  path.write_text('not an image')
  with pytest.raises(ValueError, match=r"^Cannot decode image file '.*notes"
                     r"\.jpg': not a JPEG, PNG, GIF or BMP image, or the file "
                     r'is corrupt \(.+\)\.$'):
    image_file.load_image(str(path), 8)


def test_a_missing_file_is_file_not_found_naming_it(tmp_path):
  path = str(tmp_path / 'missing.png')
  with pytest.raises(FileNotFoundError,
                     match=f'^Image file {path!r} does not exist.$'):
    image_file.load_image(path, 8)
