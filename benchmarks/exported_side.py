"""Exported files in their runtimes, for `benchmarks.exported`.

  open_runner(path, threads)     a `.onnx` (ONNX Runtime, CPU provider), a
                                 `.tflite` (LiteRT, XNNPACK) or a SavedModel
                                 directory (TensorFlow): run(images) -> logits
  export_random(kind, loaded, directory, precision)
                                 `loaded`'s model written as that file
  export_timm_onnx(variant, image_size, num_classes, directory)
                                 timm's ViT of the same size through
                                 `torch.onnx.export` (dynamo, opset 18): the
                                 anchor a timm user gets

Every runtime is given the same number of threads. The runtimes and torch
are imported only when a file of theirs is opened or made.
"""

import os
from typing import Any, Callable

import numpy as np

from vit_jax.export import serving
from vit_jax.export import to_onnx
from vit_jax.export import to_saved_model
from vit_jax.export import to_tflite

# File kinds `export_random` writes, by the name --exported takes.
KINDS = {'onnx': to_onnx.FILE, 'tflite': to_tflite.FILE,
         'saved_model': to_saved_model.FILE}
# ONNX opset of timm's export (the one our files are written in too).
TIMM_OPSET = 18

Runner = Callable[[np.ndarray], np.ndarray]


def runtime_name(path: str) -> str:
  """'onnxruntime', 'litert' or 'tensorflow': what runs the file `path`.

  Raises:
    ValueError: `path` is none of the three kinds.
  """
  if path.endswith('.onnx'):
    return 'onnxruntime'
  if path.endswith('.tflite'):
    return 'litert'
  if os.path.isdir(path) and os.path.exists(
      os.path.join(path, 'saved_model.pb')):
    return 'tensorflow'
  raise ValueError(f'--exported={path} is not a .onnx or .tflite file or a '
                   'SavedModel directory, nor one of ' + ', '.join(KINDS))


def open_runner(path: str, threads: int) -> Runner:
  """`run(images)`: the file at `path` on a batch, in its runtime with
  `threads` threads. The input is uint8 NHWC for our files; float32 NCHW
  for timm's (its input is what it was exported with)."""
  runtime = runtime_name(path)
  if runtime == 'onnxruntime':
    return _onnxruntime(path, threads)
  if runtime == 'litert':
    return _litert(path, threads)
  return _tensorflow(path, threads)


def _onnxruntime(path: str, threads: int) -> Runner:
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  session = onnxruntime.InferenceSession(
      path, options, providers=['CPUExecutionProvider'])
  (inputs,) = session.get_inputs()
  return lambda images: session.run(None, {inputs.name: images})[0]


def _litert(path: str, threads: int) -> Runner:
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  runner = interpreter.Interpreter(
      model_path=path, num_threads=threads).get_signature_runner(
          serving.SIGNATURE)
  return lambda images: runner(**{serving.INPUT: images})[serving.OUTPUT]


def _tensorflow(path: str, threads: int) -> Runner:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:  # TensorFlow already started: its threads stay.
    pass
  saved_model = tf.saved_model.load(path)
  serve = saved_model.signatures[serving.SIGNATURE]

  def run(images):
    return serve(**{serving.INPUT: tf.constant(images)})[
        serving.OUTPUT].numpy()
  run.saved_model = saved_model  # It owns the variables `serve` reads.
  return run


def export_random(kind: str, loaded: Any, directory: str,
                  precision: str = 'float32') -> str:
  """`loaded` (`serving.for_serving`'s) as the file of `kind` in
  `directory` (unchecked: the export program checks), in `precision`.

  Returns:
    The file's path.
  """
  serve = serving.serving_function(loaded)
  saved_model = os.path.join(directory, to_saved_model.FILE)
  if kind == 'onnx':
    path = os.path.join(directory, to_onnx.FILE)
    to_onnx.write_serving(serve, loaded.params, loaded.image_size, path,
                          precision=precision)
    return path
  to_saved_model.write(serve, loaded.params, loaded.image_size, saved_model)
  if kind == 'saved_model':
    return saved_model
  path = os.path.join(directory, to_tflite.FILE)
  to_tflite.write(saved_model, path, precision=precision)
  return path


def export_timm_onnx(variant: Any, image_size: int, num_classes: int,
                     directory: str) -> str:
  """timm's own ViT of `variant`'s size (timm's defaults otherwise: exact
  GELU, LayerNorm epsilon 1e-6; `vit_base_patch16_224` for ViT-B_16)
  exported by `torch.onnx.export(dynamo=True)`, batch dimension dynamic.

  Returns:
    The `.onnx` file's path (its weights beside it, as torch writes them).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import timm_side  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vision_transformer = timm_side.import_timm_vision_transformer()
  model = vision_transformer(
      img_size=image_size, patch_size=variant.patch_size,
      embed_dim=variant.hidden_size, depth=variant.num_layers,
      num_heads=variant.num_heads,
      mlp_ratio=variant.mlp_dim / variant.hidden_size,
      num_classes=num_classes).eval()
  path = os.path.join(directory, 'timm.onnx')
  example = torch.zeros(2, 3, image_size, image_size)
  torch.onnx.export(
      model, (example,), path, dynamo=True, opset_version=TIMM_OPSET,
      input_names=['pixels'], output_names=[serving.OUTPUT],
      dynamic_shapes={'x': {0: torch.export.Dim('batch')}}, verbose=False)
  return path
