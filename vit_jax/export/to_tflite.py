"""A SavedModel (`to_saved_model`'s) as a TFLite file of builtin ops.

TensorFlow's TFLite converter turns the StableHLO into TFLite builtin ops
(no TF ops to link). The serving function runs the model per image
(`jax.vmap` over batches of one): with a symbolic batch, indexing such as
the class token's `x[:, 0]` is a dynamic gather, which the converter cannot
lower; per image it is a static slice. Files run in LiteRT (the `export`
extra).
"""

from vit_jax.export import precision as precision_lib
from vit_jax.export import serving

FILE = 'model.tflite'
# TFLite's kernels (XNNPACK) reorder sums more freely than XLA does.
TOLERANCE = 1e-3


def write(saved_model: str, path: str, *,
          precision: str = 'float32') -> None:
  """The SavedModel at `saved_model` as a TFLite file at `path`."""
  precision_lib.check(precision, ('float32',), FILE)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model, signature_keys=[serving.SIGNATURE])
  flat_buffer = converter.convert()
  try:
    with open(path, 'wb') as f:
      f.write(flat_buffer)
  except OSError as e:  # write()'s names no file.
    raise OSError(e.errno, e.strerror, path) from e


def run(path: str, images):
  """The TFLite file at `path` on uint8 `images`, in LiteRT."""
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  runner = interpreter.Interpreter(model_path=path).get_signature_runner(
      serving.SIGNATURE)
  return runner(**{serving.INPUT: images})[serving.OUTPUT]
