"""The serving function as a TF SavedModel, through jax2tf.

The model is StableHLO inside an XlaCallModule op, lowered for CPU and CUDA,
with the batch symbolic; the parameters are variables. Before it, TF's
bilinear resize takes the images of any size to the model's (`serving`).
Signature `serving_default`. TensorFlow is imported only when a file is
written or run.
"""

import errno
import os

from vit_jax.export import serving

FILE = 'saved_model'
# Largest relative difference (max |file - JAX| / max |JAX|) accepted.
TOLERANCE = 1e-4
# Platforms the SavedModel's StableHLO is lowered for (TF picks by device).
_PLATFORMS = ('cpu', 'cuda')
_NO_SPACE = os.strerror(errno.ENOSPC)


def write(serve, params, image_size: int, path: str, *,
          precision: str = 'float32') -> None:
  """`serve` (`serving.serving_function`'s) with `params` as a SavedModel.

  Args:
    serve: the serving function.
    params: its parameters, stored as float32 variables.
    image_size: the model's resolution, which the images are resized to.
    path: the SavedModel directory to write.
    precision: 'float32' only: TensorFlow's CPU kernels gain nothing from
      float16 weights, and its int8 path needs a TFLite file
      (`to_tflite`'s precisions).

  Raises:
    ValueError: `precision` is not 'float32'.
  """
  if precision != 'float32':
    raise ValueError(f"precision '{precision}' is not the SavedModel's: it "
                     "is written in float32 only (the TFLite file takes "
                     "'float16' and 'int8')")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  converted = jax2tf.convert(
      serve, polymorphic_shapes=[None, '(b, ...)'], with_gradient=False,
      native_serialization_platforms=_PLATFORMS)
  module = tf.Module()
  module.params = tf.nest.map_structure(
      lambda array: tf.Variable(array, trainable=False), params)

  @tf.function(autograph=False, input_signature=[tf.TensorSpec(
      [None, None, None, 3], tf.uint8, name=serving.INPUT)])
  def serving_default(images):
    return {serving.OUTPUT: converted(module.params,
                                      resize(images, image_size))}

  module.serving_default = serving_default
  try:
    tf.saved_model.save(
        module, path, signatures={
            serving.SIGNATURE: serving_default.get_concrete_function()})
  except tf.errors.ResourceExhaustedError as e:
    # TensorFlow's file system reports a full disk (ENOSPC) so; callers
    # handle it as the OSError that every other file's writer raises.
    if _NO_SPACE not in e.message:
      raise
    raise OSError(errno.ENOSPC, _NO_SPACE, path) from e


def resize(images, image_size: int):
  """uint8 `images` (B, H, W, 3) as float32 (B, image_size, image_size, 3),
  resized as `preprocess.resize` does (its op, on float32: the TFLite
  converter's builtin resize keeps its input's dtype)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  resized = tf.image.resize(tf.cast(images, tf.float32),
                            [image_size, image_size], method='bilinear')
  return tf.ensure_shape(resized, [None, image_size, image_size, 3])


def run(path: str, images):
  """The SavedModel at `path` on uint8 `images`, in TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  saved_model = tf.saved_model.load(path)  # Held: it owns the variables.
  serve = saved_model.signatures[serving.SIGNATURE]
  return serve(**{serving.INPUT: tf.constant(images)})[serving.OUTPUT].numpy()
