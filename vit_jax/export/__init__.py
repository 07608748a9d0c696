"""A checkpoint's model as files to serve: TF SavedModel, ONNX and TFLite.

  python -m vit_jax.export --checkpoint=FILE --out=DIR     (the program)
  export(loaded, out)          OUT/saved_model, OUT/model.onnx,
                               OUT/model.tflite (and OUT/labels.txt when
                               the checkpoint names its classes), all or
                               nothing (`bundle`)
  check_out(out)               refuses an `out` that export cannot create
  serving_function(loaded)     what every file computes, as a JAX function
                               (`serving`)
  RUNTIMES[file](path, images) a file run in its own runtime
  PRECISIONS                   float32, float16, int8 (`precision`): what
                               export(..., precision=) writes ONNX and
                               TFLite in

Every file takes `images`, uint8 (B, H, W, 3) of any B, H and W, resizes
them to the model's resolution and normalises them with the checkpoint's
mean and std inside, as `vit_jax.data.preprocess` does for predict
(`serving`), and returns `logits`, float32 (B, classes): what
`python -m vit_jax.cli.predict --logits_out` computes for the same images. The model runs in float32 whatever its compute dtype, with
the einsum attention (no platform-specific fused kernel in a file).

One module per format says how its file is made and run: `to_saved_model`
(jax2tf), `to_tflite` (TensorFlow's TFLite converter on that SavedModel),
`to_onnx` (jax2onnx). Each has its FILE name, TOLERANCE, `write` and `run`;
a new format is one such module added to `bundle.FORMATS`. TensorFlow is
imported when a SavedModel is written or run, jax2onnx, ONNX Runtime and
LiteRT (the `export` extra) when theirs is.
"""

from vit_jax.export.bundle import check_out
from vit_jax.export.bundle import export
from vit_jax.export.bundle import ExportMismatchError
from vit_jax.export.bundle import LABELS
from vit_jax.export.bundle import RUNTIMES
from vit_jax.export.bundle import TOLERANCE
from vit_jax.export.bundle import tolerance
from vit_jax.export.precision import PRECISIONS
from vit_jax.export.serving import INPUT
from vit_jax.export.serving import OUTPUT
from vit_jax.export.serving import serving_function
from vit_jax.export import to_onnx
from vit_jax.export import to_saved_model
from vit_jax.export import to_tflite

SAVED_MODEL = to_saved_model.FILE
ONNX = to_onnx.FILE
TFLITE = to_tflite.FILE
