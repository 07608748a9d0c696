"""One image file as a model's evaluation input, without TensorFlow.

The single-image path of predict, visualize and the library's quick start:
Pillow decodes, NumPy resizes and normalises. It computes what
`preprocess.eval_preprocess` computes on TensorFlow's decoding of the same
file (tests/test_image_file.py compares the two), so a classified file gets
the numbers an evaluation batch would, and classifying needs no TensorFlow.

  decode         file bytes -> uint8 (H, W, 3)
  resize         TensorFlow's bilinear resize (half-pixel centres, no
                 antialiasing), in float32
  load_image     decode, resize, normalise
"""

import io

import numpy as np
from PIL import Image

# Pillow modes that hold more than 8 bits per sample (16-bit PNG): their
# values are scaled to 0..255 the way TensorFlow's PNG decoder does.
_WIDE_MODES = ('I;16', 'I;16B', 'I;16L', 'I')


def decode(encoded: bytes, name: str = 'image') -> np.ndarray:
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 (H, W, 3).

  Greyscale images get 3 identical channels, an alpha channel is dropped and
  an animation gives its first frame: as `preprocess.decode_image`.

  Args:
    encoded: the file's bytes.
    name: the file, for the error message.

  Returns:
    uint8 array (H, W, 3).

  Raises:
    ValueError: the bytes are not an image Pillow can decode.
  """
  try:
    with Image.open(io.BytesIO(encoded)) as image:
      image.load()
      if image.mode in _WIDE_MODES:
        # 16 significant bits: keep the high byte.
        grey = (np.asarray(image, np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
      return np.asarray(image.convert('RGB'), np.uint8)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(
        f'Cannot decode image file {name!r}: not a JPEG, PNG, GIF or BMP '
        f'image, or the file is corrupt ({e}).') from e


def _source_indices(in_size: int, out_size: int):
  """For each output row: the two input rows and the weight of the second.

  TensorFlow's half-pixel bilinear sampling, in its float32 arithmetic: the
  output centre x + 0.5 maps to (x + 0.5) * in / out - 0.5 in the input.
  """
  scale = np.float32(in_size / out_size)
  centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale
  centre -= np.float32(0.5)
  low = np.floor(centre)
  lerp = (centre - low).astype(np.float32)
  lower = np.maximum(low, 0).astype(np.int64)
  upper = np.minimum(np.ceil(centre), in_size - 1).astype(np.int64)
  return lower, upper, lerp


def resize(image: np.ndarray, image_size: int) -> np.ndarray:
  """Bilinear resize to (image_size, image_size), as `preprocess.resize`.

  Args:
    image: array (H, W, C), any real dtype.
    image_size: output side in pixels.

  Returns:
    float32 array (image_size, image_size, C), values in the input's range.
  """
  image = image.astype(np.float32)
  if image.shape[:2] == (image_size, image_size):
    return image
  top, bottom, y_lerp = _source_indices(image.shape[0], image_size)
  left, right, x_lerp = _source_indices(image.shape[1], image_size)
  x_lerp = x_lerp[None, :, None]
  # Rows first, then columns, with TF's order of operations:
  # top + (bottom - top) * y_lerp of the two horizontally interpolated rows.
  upper_rows, lower_rows = image[top], image[bottom]
  top_row = upper_rows[:, left] + (
      upper_rows[:, right] - upper_rows[:, left]) * x_lerp
  bottom_row = lower_rows[:, left] + (
      lower_rows[:, right] - lower_rows[:, left]) * x_lerp
  return top_row + (bottom_row - top_row) * y_lerp[:, None, None]


def normalize(image: np.ndarray, normalization=None) -> np.ndarray:
  """(x - mean) / std per channel in float32, as `preprocess.scale_pixels`.

  Args:
    image: (..., 3) array of values in [0, 255].
    normalization: anything with `mean` and `std` (3 floats each), e.g. a
      `models.family.Preprocessing`; None: mean = std = 127.5, giving [-1, 1].
  """
  image = image.astype(np.float32)
  if normalization is None:
    return (image - np.float32(127.5)) / np.float32(127.5)
  mean = np.asarray(normalization.mean, np.float32)
  std = np.asarray(normalization.std, np.float32)
  return (image - mean) / std


def load_image(path, image_size, normalization=None) -> np.ndarray:
  """Reads one image file as the model's evaluation input.

  Args:
    path: a JPEG, PNG, GIF or BMP file (a str or path-like).
    image_size: output side in pixels.
    normalization: the pixel normalisation (`normalize`).

  Returns:
    numpy float32 (image_size, image_size, 3), normalised.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file cannot be decoded as an image.
  """
  try:
    with open(path, 'rb') as f:
      encoded = f.read()
  except FileNotFoundError as e:
    raise FileNotFoundError(f'Image file {str(path)!r} does not exist.') from e
  image = decode(encoded, str(path))
  return normalize(resize(image, image_size), normalization)
