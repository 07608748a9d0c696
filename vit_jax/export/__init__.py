"""A checkpoint's model as files to serve: TF SavedModel, ONNX and TFLite.

  export(loaded, out)          OUT/saved_model, OUT/model.onnx,
                               OUT/model.tflite (and OUT/labels.txt when
                               the checkpoint names its classes), all or
                               nothing
  check_out(out)               refuses an `out` that export cannot create
  serving_function(loaded)     what every file computes, as a JAX function
  run_saved_model(path, images), run_onnx(...), run_tflite(...)
                               a file run in its own runtime

Every file takes `images`, uint8 (B, H, W, 3) at the model's resolution
with any B, normalises them inside with the checkpoint's mean and std as
`vit_jax.data.preprocess` does for predict, and returns `logits`, float32
(B, classes): what `python -m vit_jax.cli.predict --logits_out` computes for
the same pixels. The model runs in float32 whatever its compute dtype, with
the einsum attention (no platform-specific fused kernel in a file).

How each file is made:
  * saved_model: jax2tf. The model is StableHLO inside an XlaCallModule op,
    lowered for CPU and CUDA, with the batch symbolic; the parameters are
    variables. Signature `serving_default`.
  * model.tflite: TensorFlow's TFLite converter on that SavedModel, which
    turns the StableHLO into TFLite builtin ops (no TF ops to link). The
    serving function runs the model per image (`jax.vmap` over batches of
    one): with a symbolic batch, indexing such as the class token's
    `x[:, 0]` is a dynamic gather, which the converter cannot lower; per
    image it is a static slice. Signature `serving_default`.
  * model.onnx: jax2onnx, from the same serving function
    (`vit_jax.export.to_onnx`), batch dimension `B`.
Before they are moved into place, the files are run in their runtimes
(TensorFlow, ONNX Runtime, LiteRT) on a random batch and compared with JAX;
beyond `TOLERANCE` the export fails and writes nothing.

TensorFlow is imported when a SavedModel is written or run, jax2onnx,
ONNX Runtime and LiteRT (the `export` extra) when theirs is.
"""

import dataclasses
import functools
import os
import shutil
import tempfile
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.export import to_onnx
from vit_jax.weights import pretrained

SAVED_MODEL = 'saved_model'
ONNX = 'model.onnx'
TFLITE = 'model.tflite'
LABELS = 'labels.txt'
# The files' input and output names, and the signature of the TF ones.
INPUT = 'images'
OUTPUT = 'logits'
SIGNATURE = 'serving_default'
# Largest relative difference (max |file - JAX| / max |JAX|) accepted.
# TFLite's kernels (XNNPACK) reorder sums more freely than XLA does.
TOLERANCE = {SAVED_MODEL: 1e-4, ONNX: 1e-4, TFLITE: 1e-3}
# Images in the batch each file is checked on.
CHECK_BATCH = 2
# Platforms the SavedModel's StableHLO is lowered for (TF picks by device).
_PLATFORMS = ('cpu', 'cuda')


class ExportMismatchError(ValueError):
  """A written file computes other logits than JAX (a converter's fault)."""


def for_serving(loaded: pretrained.LoadedModel) -> pretrained.LoadedModel:
  """`loaded` with its model in float32 and with the einsum attention."""
  updates = {}
  if hasattr(loaded.model, 'dtype'):
    updates['dtype'] = jnp.float32
  if hasattr(loaded.model, 'attention'):
    updates['attention'] = 'einsum'
  return dataclasses.replace(loaded, model=loaded.model.clone(**updates))


def serving_function(loaded: pretrained.LoadedModel
                     ) -> Callable[[Any, Any], jax.Array]:
  """`serve(params, images)`: uint8 images (B, H, W, 3) to float32 logits,
  normalised as the checkpoint expects, one image at a time (see the module
  docstring). `loaded` should be `for_serving`'s."""
  model = loaded.model
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)

  def one(params, image_HWC):
    # The operations of preprocess.scale_pixels, in the same order.
    pixels_HWC = (image_HWC.astype(jnp.float32) - mean) / std
    return model.apply({'params': params}, pixels_HWC[None], train=False)[0]

  def serve(params, images_BHWC):
    return jax.vmap(one, in_axes=(None, 0))(params, images_BHWC)
  return serve


def check_out(out: str) -> None:
  """Raises ValueError when `export` could not create the directory `out`:
  it exists and is not an empty directory, or its nearest existing parent
  is not a writable directory."""
  path = os.path.abspath(out)
  if os.path.isdir(path) and os.listdir(path):
    raise ValueError(f'{out} exists and is not empty: give a new directory '
                     'to export into')
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f'{out} exists and is not a directory: give a new '
                     'directory to export into')
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'cannot create {out}: {parent} is not a directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f'cannot create {out}: {parent} is not writable')


def export(loaded: pretrained.LoadedModel, out: str) -> Dict[str, float]:
  """Writes the serving files of `loaded` into the new directory `out`.

  They are written into a temporary directory beside `out`, checked in
  their runtimes, and only then renamed to `out`: a failed export leaves
  nothing behind.

  Args:
    loaded: the model (`pretrained.load`); its native resolution is the
      files' input size.
    out: the directory to create (it may exist if empty).

  Returns:
    File name -> largest relative difference of its logits from JAX's on
    the check batch.

  Raises:
    ValueError: the model has no head, or `out` cannot be created
      (`check_out`); ExportMismatchError: a file is beyond `TOLERANCE`.
    ImportError: an optional converter or runtime is not installed.
  """
  if not loaded.model.num_classes:
    raise ValueError('the checkpoint has no head: it gives features, not '
                     'classes, and export writes classifiers')
  check_out(out)
  loaded = for_serving(loaded)
  path = os.path.abspath(out)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.',
                            suffix='.partial', dir=os.path.dirname(path))
  except OSError as e:
    raise ValueError(f'cannot create {out}: {e}') from e
  try:
    serve = serving_function(loaded)
    write_saved_model(serve, loaded.params, loaded.image_size,
                      os.path.join(work, SAVED_MODEL))
    write_tflite(os.path.join(work, SAVED_MODEL), os.path.join(work, TFLITE))
    write_onnx(serve, loaded.params, loaded.image_size,
               os.path.join(work, ONNX))
    if loaded.class_names:
      with open(os.path.join(work, LABELS), 'w') as f:
        f.write(''.join(f'{name}\n' for name in loaded.class_names))
    errors = check_files(work, loaded)
    _move_into_place(work, path, out)
  except BaseException:
    shutil.rmtree(work, ignore_errors=True)
    raise
  return errors


def write_saved_model(serve, params, image_size: int, path: str) -> None:
  """`serve` (`serving_function`'s) with `params` as a SavedModel."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  converted = jax2tf.convert(
      serve, polymorphic_shapes=[None, '(b, ...)'], with_gradient=False,
      native_serialization_platforms=_PLATFORMS)
  module = tf.Module()
  module.params = tf.nest.map_structure(
      lambda array: tf.Variable(array, trainable=False), params)

  @tf.function(autograph=False, input_signature=[tf.TensorSpec(
      [None, image_size, image_size, 3], tf.uint8, name=INPUT)])
  def serving_default(images):
    return {OUTPUT: converted(module.params, images)}

  module.serving_default = serving_default
  tf.saved_model.save(
      module, path,
      signatures={SIGNATURE: serving_default.get_concrete_function()})


def write_tflite(saved_model: str, path: str) -> None:
  """The SavedModel `saved_model` as a TFLite file of builtin ops."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model, signature_keys=[SIGNATURE])
  with open(path, 'wb') as f:
    f.write(converter.convert())


def write_onnx(serve, params, image_size: int, path: str) -> None:
  """`serve` with `params` (constants in the graph) as an ONNX file."""
  spec = jax.ShapeDtypeStruct(
      jax.export.symbolic_shape(f'B, {image_size}, {image_size}, 3'),
      jnp.uint8)
  to_onnx.write(functools.partial(serve, params), spec, path,
                    input_name=INPUT, output_name=OUTPUT)


def run_saved_model(path: str, images: np.ndarray) -> np.ndarray:
  """The SavedModel at `path` on uint8 `images`, in TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  saved_model = tf.saved_model.load(path)  # Held: it owns the variables.
  serve = saved_model.signatures[SIGNATURE]
  return serve(**{INPUT: tf.constant(images)})[OUTPUT].numpy()


def run_onnx(path: str, images: np.ndarray) -> np.ndarray:
  """The ONNX file at `path` on uint8 `images`, in ONNX Runtime."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider'])
  return session.run([OUTPUT], {INPUT: images})[0]


def run_tflite(path: str, images: np.ndarray) -> np.ndarray:
  """The TFLite file at `path` on uint8 `images`, in LiteRT."""
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  runner = interpreter.Interpreter(model_path=path).get_signature_runner(
      SIGNATURE)
  return runner(**{INPUT: images})[OUTPUT]


RUNTIMES = {SAVED_MODEL: run_saved_model, ONNX: run_onnx,
            TFLITE: run_tflite}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|."""
  scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
  return float(np.max(np.abs(actual - expected))) / scale


def reference_logits(loaded: pretrained.LoadedModel,
                     images: np.ndarray) -> np.ndarray:
  """predict's logits for uint8 `images` at the native size: its
  normalisation in NumPy, then `pretrained.predict_logits`, in full
  float32 precision (no TF32 or bf16 passes on an accelerator)."""
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)
  pixels = (images.astype(np.float32) - mean) / std
  with jax.default_matmul_precision('highest'):
    return pretrained.predict_logits(loaded.model, loaded.params, pixels)


def check_files(directory: str, loaded: pretrained.LoadedModel
                ) -> Dict[str, float]:
  """Runs each file of `directory` on a random batch and compares it with
  `reference_logits`.

  Returns:
    File name -> relative error.

  Raises:
    ExportMismatchError: a file is beyond its `TOLERANCE`.
  """
  size = loaded.image_size
  images = np.random.default_rng(0).integers(
      0, 256, (CHECK_BATCH, size, size, 3), dtype=np.uint8)
  expected = reference_logits(loaded, images)
  errors = {}
  for name, run in RUNTIMES.items():
    actual = run(os.path.join(directory, name), images)
    if actual.shape != expected.shape:
      raise ExportMismatchError(
          f'{name} gives logits of shape {actual.shape}, JAX '
          f'{expected.shape}: nothing was written')
    errors[name] = relative_error(actual, expected)
    if not errors[name] <= TOLERANCE[name]:
      raise ExportMismatchError(
          f'{name} differs from JAX by {errors[name]:.2g} (relative) on a '
          f'random batch, more than the {TOLERANCE[name]:g} allowed: '
          'nothing was written')
  return errors


def _move_into_place(work: str, path: str, out: str) -> None:
  """Renames the finished `work` directory to `path` (an empty directory
  there is replaced), with the permissions a new directory gets."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(work, 0o777 & ~umask)  # mkdtemp's directory is private.
  try:
    if os.path.isdir(path):
      os.rmdir(path)
    os.rename(work, path)
  except OSError as e:
    raise ValueError(f'cannot create {out}: {e}') from e
