"""An ONNX model in float16 or dynamic-range int8, with ONNX Runtime's tools.

  reduce(model, precision)   the ModelProto in `precision` (float32: as is)

Both use the converters that ship with ONNX Runtime (the `export` extra):

  * float16: `onnxruntime.transformers.float16`, weights and computation in
    float16 with the uint8 input and float32 logits kept (`keep_io_types`).
    ONNX Runtime's CPU provider has float16 kernels for few operators and
    casts around the others; docs/deploy.md has the measured speed.
  * int8: `onnxruntime.quantization.quantize_dynamic`, the matrix products'
    weights as int8 (one scale per weight), their activations quantised to
    uint8 per batch at run time (`DynamicQuantizeMatMul`); everything else
    stays float32.
"""

import logging
import os
import tempfile

from vit_jax.export import precision as precision_lib

def reduce(model, precision: str):
  """`model` (a float32 ModelProto) in `precision`: a new ModelProto for
  float16 and int8, `model` itself for float32.

  Raises:
    ValueError: an unknown precision.
  """
  precision_lib.check(precision, precision_lib.PRECISIONS, 'model.onnx')
  if precision == 'float16':
    return _float16(model)
  if precision == 'int8':
    return _int8(model)
  return model


def _float16(model):
  from onnxruntime.transformers import float16  # pylint: disable=g-import-not-at-top
  return float16.convert_float_to_float16(
      model, keep_io_types=True, disable_shape_infer=False)


def _int8(model):
  import onnx  # pylint: disable=g-import-not-at-top
  from onnxruntime import quantization  # pylint: disable=g-import-not-at-top
  root = logging.getLogger()
  level = root.level
  # It advises, at WARNING on the root logger, a shape pre-processing that
  # dynamic quantisation of these graphs does not need.
  root.setLevel(logging.ERROR)
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'int8.onnx')
    try:
      quantization.quantize_dynamic(
          model, path, weight_type=quantization.QuantType.QInt8,
          use_external_data_format=True)
    finally:
      root.setLevel(level)
    return onnx.load(path)
