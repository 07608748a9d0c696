"""A SavedModel (`to_saved_model`'s) as a TFLite file of builtin ops.

TensorFlow's TFLite converter turns the StableHLO into TFLite builtin ops
(no TF ops to link), with the batch dimension of the SavedModel: one invoke
runs the whole batch, no loop in the file. Files run in LiteRT (the
`export` extra).

With a symbolic batch, every broadcast of a parameter to the activations'
shape (biases, LayerNorm scales, the class token) is a `BROADCAST_TO` of a
shape computed at run time. Left so, each materialises a (B, tokens,
width) tensor and makes the tensors after it dynamic, which LiteRT's XNNPACK
delegate does not take: ViT-B/16 ran at 0.4-0.5x the SavedModel's speed
(docs/deploy.md). The converter's `unsafe_fuse_dynamic_shaped_broadcast`
folds those broadcasts into the ops that use them, which broadcast by
themselves. It is "unsafe" where a broadcast, not its other operand, gives
an op its output shape; the models here broadcast parameters onto
activations that have it, and `bundle` checks every file against JAX.

`precision` picks the weights' type (the computation stays float32 where
LiteRT's kernels need it):
  'float32'  as trained;
  'float16'  weights stored in float16 (half the file), dequantised to
             float32 when the file is loaded;
  'int8'     dynamic-range quantisation: weights of the matrix products in
             int8 with a scale per channel, activations quantised on the fly
             (a quarter of the file).
"""

from typing import Optional

from vit_jax.export import precision as precision_lib
from vit_jax.export import serving

FILE = 'model.tflite'
# Largest relative difference (max |file - JAX| / max |JAX|) accepted for a
# float32 file. TFLite's kernels (XNNPACK) reorder sums more freely than XLA
# does.
TOLERANCE = 1e-3
PRECISIONS = precision_lib.PRECISIONS  # All of them.


def write(saved_model: str, path: str, *, precision: str = 'float32'
          ) -> None:
  """The SavedModel at `saved_model` as a TFLite file at `path`.

  Args:
    saved_model: `to_saved_model.write`'s directory.
    path: the `.tflite` file to write.
    precision: one of `PRECISIONS` (module docstring).

  Raises:
    ValueError: `precision` is not one of `PRECISIONS`.
    OSError: the file cannot be written; the message names `path`.
  """
  precision_lib.check(precision, PRECISIONS, FILE)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model, signature_keys=[serving.SIGNATURE])
  # Private in TF 2.21; its public flag is `ConversionFlags`'s
  # unsafe_fuse_dynamic_shaped_broadcast (module docstring).
  converter._experimental_unsafe_fuse_dynamic_shaped_broadcast = True  # pylint: disable=protected-access
  if precision != 'float32':
    # Without a representative dataset, Optimize.DEFAULT quantises the
    # weights only: dynamic-range int8, or float16 where it is the type
    # allowed.
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if precision == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  flat_buffer = converter.convert()
  try:
    with open(path, 'wb') as f:
      f.write(flat_buffer)
  except OSError as e:  # write()'s names no file.
    raise OSError(e.errno, e.strerror, path) from e


def run(path: str, images, num_threads: Optional[int] = None):
  """The TFLite file at `path` on uint8 `images`, in LiteRT (XNNPACK), on
  `num_threads` threads (None: LiteRT's default)."""
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  runner = interpreter.Interpreter(
      model_path=path, num_threads=num_threads).get_signature_runner(
          serving.SIGNATURE)
  return runner(**{serving.INPUT: images})[serving.OUTPUT]
