"""A JAX serving function as an ONNX file, through jax2onnx.

  write_serving(serve, params, image_size, path, precision=...)
                                   the serving function as `path`: images
                                   (B, H, W, 3) of any size, resized first;
                                   float32, float16 or int8 weights
  write(serve, input_spec, path)   trace `serve`, convert it, write `path`
                                   (and `path`.data for weights over 1.5 GiB)
  convert(serve, input_spec)       the same as a ModelProto
  run(path, images)                a file run in ONNX Runtime

jax2onnx (an optional dependency: the `export` extra) converts the
primitives of a traced JAX function to ONNX operators. Two things stand
between it and our models, and this module handles both before jax2onnx
sees the function:

  * jax2onnx replaces some flax.linen modules and functions (Conv,
    GroupNorm, max_pool, ...) by primitives of its own while it traces.
    Those have no batching rule (a vmapped model fails) and its max_pool
    stand-in does not take flax's positional window shape (the hybrid's
    ResNet root fails). The function is therefore traced here first, with
    plain JAX, and jax2onnx converts a re-evaluation of that jaxpr: it sees
    lax primitives only.
  * A max-pool over (B, H, W, C) is a `reduce_window_max` whose window has
    four axes (five under `vmap`); jax2onnx writes it as an ONNX MaxPool
    over as many spatial axes, which ONNX Runtime refuses (it pools over at
    most three). Re-evaluated here, it runs on (B * C, H, W): the axes it
    does not pool are merged into one, and the MaxPool has three axes and
    the same values.

Nested `jit` calls and custom-derivative wrappers are inlined on the way
(inference needs no derivatives), so the graph holds the primitives alone.
jax2onnx's graph is then rewritten into the operators ONNX Runtime fuses
and runs fastest (`onnx_fusions`: MatMul for Einsum, LayerNormalization,
Softmax, FastGelu's pattern).

The resize to the model's size (`serving`) is added to the converted graph
as two ONNX operators in front of it: a Cast to float32 and a Resize
(linear, half-pixel centres, no antialiasing: TF's bilinear resize), whose
input has symbolic H and W.
"""

import contextlib
import functools
import logging
import math
import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import jax
from jax import lax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from vit_jax.export import onnx_fusions
from vit_jax.export import onnx_precision
from vit_jax.export import precision as precision_lib
from vit_jax.export import serving

FILE = 'model.onnx'
# Largest relative difference (max |file - JAX| / max |JAX|) accepted.
TOLERANCE = 1e-4

# Wrappers whose body is one closed jaxpr to evaluate in place.
_INLINED = {'jit': 'jaxpr', 'pjit': 'jaxpr', 'closed_call': 'call_jaxpr',
            'core_call': 'call_jaxpr', 'custom_jvp_call': 'call_jaxpr',
            'custom_vjp_call': 'call_jaxpr', 'remat': 'jaxpr',
            'checkpoint': 'jaxpr'}
# jax2onnx and onnx_ir log at WARNING about their own plugins (some fail to
# import with newer JAX versions, for primitives our models never use) and
# about shapes they leave unannotated; the written file is checked by
# running it, not by these logs.
_CHATTY_LOGGERS = ('jax2onnx', 'onnx_ir')
# Spatial axes ONNX Runtime's MaxPool takes at most.
_MAX_POOL_AXES = 3
# Bytes of weights up to which they are stored inside the .onnx file;
# beyond, in one file beside it (a protobuf message has at most 2 GiB).
INLINE_WEIGHTS_LIMIT = 3 << 29  # 1.5 GiB
# ONNX opset of the written file: 18, read by ONNX Runtime 1.14 and later
# (jax2onnx writes reductions with their axes as an input, which needs 18;
# jax2onnx's default, 23, would need a current runtime for nothing more).
OPSET = 18


# The converted model's input, fed by the Resize.
_RESIZED = 'resized_images'


def write_serving(serve, params, image_size: int, path: str, *,
                  precision: str = 'float32') -> None:
  """`serve` (`serving.serving_function`'s) with `params` (constants in the
  graph) as an ONNX file whose input is uint8 (B, H, W, 3), any B, H, W.

  Args:
    serve: the serving function.
    params: its parameters.
    image_size: the model's resolution, which the file resizes to.
    path: the `.onnx` file to write.
    precision: 'float32', 'float16' or 'int8' (`onnx_precision`).

  Raises:
    ValueError: an unknown precision.
  """
  precision_lib.check(precision, precision_lib.PRECISIONS, FILE)
  spec = jax.ShapeDtypeStruct(
      jax.export.symbolic_shape(f'B, {image_size}, {image_size}, 3'),
      jnp.float32)
  model = convert(functools.partial(serve, params), spec,
                  input_name=_RESIZED, output_name=serving.OUTPUT)
  model = onnx_precision.reduce(_resizing_first(model, image_size),
                                precision)
  _save(model, path)


def _resizing_first(model, image_size: int):
  """`model` (input `_RESIZED`, float32 at `image_size`) behind a Cast and a
  Resize whose input `serving.INPUT` is uint8 (B, H, W, 3)."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import helper  # pylint: disable=g-import-not-at-top
  graph = model.graph
  (resized,) = graph.input
  batch = resized.type.tensor_type.shape.dim[0].dim_param
  sizes = 'resize_sizes'
  graph.initializer.append(helper.make_tensor(
      sizes, onnx.TensorProto.INT64, [2], [image_size, image_size]))
  nodes = [
      helper.make_node('Cast', [serving.INPUT], ['images_float32'],
                       to=onnx.TensorProto.FLOAT),
      helper.make_node('Resize', ['images_float32', '', '', sizes],
                       [_RESIZED], axes=[1, 2], mode='linear',
                       coordinate_transformation_mode='half_pixel',
                       antialias=0)]
  for node in reversed(nodes):
    graph.node.insert(0, node)
  del graph.input[:]
  graph.input.append(helper.make_tensor_value_info(
      serving.INPUT, onnx.TensorProto.UINT8, [batch, 'H', 'W', 3]))
  return model


def run(path: str, images: np.ndarray) -> np.ndarray:
  """The ONNX file at `path` on uint8 `images`, in ONNX Runtime."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(
      path, providers=['CPUExecutionProvider'])
  return session.run([serving.OUTPUT], {serving.INPUT: images})[0]


def write(serve: Callable[..., Any], input_spec: jax.ShapeDtypeStruct,
          path: str, *, input_name: str, output_name: str) -> None:
  """Writes `serve` (one array in, one out) to `path` as an ONNX model.

  Args:
    serve: the function; traced once with `input_spec`.
    input_spec: its input, e.g. with a symbolic batch dimension
      (`jax.export.symbolic_shape('B, 224, 224, 3')`), which stays symbolic
      in the file.
    path: the `.onnx` file to write.
    input_name: the graph input's name.
    output_name: the graph output's name.

  Raises:
    ImportError: jax2onnx is not installed.
  """
  _save(convert(serve, input_spec, input_name=input_name,
                output_name=output_name), path)


def convert(serve: Callable[..., Any], input_spec: jax.ShapeDtypeStruct, *,
            input_name: str, output_name: str):
  """`serve` as an ONNX ModelProto (`write`'s arguments, without a path)."""
  import jax2onnx  # pylint: disable=g-import-not-at-top
  closed = jax.make_jaxpr(serve)(input_spec)

  def replay(images):
    outputs = _evaluate(closed.jaxpr, closed.consts, [images])
    return outputs[0]

  with _quiet_loggers(_CHATTY_LOGGERS):
    model = jax2onnx.to_onnx(
        replay, [input_spec], model_name='vit_jax', opset=OPSET,
        return_mode='proto', input_names=[input_name],
        output_names=[output_name])
  return onnx_fusions.fuse(model)


def _save(model, path: str) -> None:
  """Writes the ModelProto `model` to `path`, its weights inside, or in
  `path` + '.data' beside it when they approach protobuf's 2 GiB limit."""
  import onnx  # pylint: disable=g-import-not-at-top
  weights = sum(tensor.ByteSize() for tensor in model.graph.initializer)
  try:
    if weights < INLINE_WEIGHTS_LIMIT:
      onnx.save_model(model, path)
    else:
      onnx.save_model(model, path, save_as_external_data=True,
                      all_tensors_to_one_file=True,
                      location=os.path.basename(path) + '.data',
                      size_threshold=1024)
  except OSError as e:
    if e.filename:
      raise
    raise OSError(e.errno, e.strerror, path) from e  # write()'s names none.


def _evaluate(jaxpr: jax_core.Jaxpr, consts: Sequence[Any],
              args: Sequence[Any]) -> List[Any]:
  """Evaluates `jaxpr` primitive by primitive: wrappers inlined, max-pools
  on as few axes as they pool (module docstring)."""
  env = {}

  def read(atom):
    return atom.val if isinstance(atom, jax_core.Literal) else env[atom]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    inputs = [read(atom) for atom in eqn.invars]
    name = eqn.primitive.name
    body = eqn.params.get(_INLINED.get(name, ''))
    if isinstance(body, jax_core.ClosedJaxpr):
      outputs = _evaluate(body.jaxpr, body.consts, inputs)
    elif isinstance(body, jax_core.Jaxpr):
      outputs = _evaluate(body, (), inputs)
    elif name == 'reduce_window_max' and _pools_too_many_axes(eqn.params):
      outputs = [_pool_on_few_axes(inputs[0], _pooled_axes(eqn.params),
                                   **eqn.params)]
    else:
      outputs = eqn.primitive.bind(*inputs, **eqn.params)
      if not eqn.primitive.multiple_results:
        outputs = [outputs]
    for var, value in zip(eqn.outvars, outputs):
      env[var] = value
  return [read(atom) for atom in jaxpr.outvars]


def _pools_too_many_axes(params) -> bool:
  """Whether jax2onnx's MaxPool for this reduce_window_max would have more
  spatial axes than it needs (all of them), and fewer would do (at most
  three pooled axes, no input dilation)."""
  pooled = _pooled_axes(params)
  return (pooled is not None and len(pooled) <= _MAX_POOL_AXES and
          len(pooled) < len(params['window_dimensions']))


def _pooled_axes(params) -> Optional[Tuple[int, ...]]:
  """The axes a reduce_window_max pools over: those with a window, stride,
  padding or dilation; None if it dilates its input."""
  if set(params['base_dilation']) != {1}:
    return None
  return tuple(
      axis for axis, (window, stride, padding, dilation) in enumerate(zip(
          params['window_dimensions'], params['window_strides'],
          params['padding'], params['window_dilation']))
      if (window, stride, tuple(padding), dilation) != (1, 1, (0, 0), 1))


def _pool_on_few_axes(x, pooled: Sequence[int], *, window_dimensions,
                      window_strides, padding, base_dilation,
                      window_dilation):
  """The same max-pool, on `x` laid out as (the other axes merged, *pooled
  axes): ONNX's MaxPool then has len(pooled) spatial axes."""
  del base_dilation  # 1 everywhere (`_pooled_axes`).
  others = [axis for axis in range(x.ndim) if axis not in pooled]
  order = (*others, *pooled)
  moved = lax.transpose(x, order)
  other_shape = moved.shape[:len(others)]
  # A product of sizes, symbolic when the batch is.
  planes = moved.reshape(math.prod(other_shape), *moved.shape[len(others):])
  pick = lambda values, fill: (fill, *(values[axis] for axis in pooled))
  result = lax.reduce_window_max_p.bind(
      planes, window_dimensions=pick(window_dimensions, 1),
      window_strides=pick(window_strides, 1),
      padding=pick([tuple(p) for p in padding], (0, 0)),
      base_dilation=(1,) * (len(pooled) + 1),
      window_dilation=pick(window_dilation, 1))
  result = result.reshape(*other_shape, *result.shape[1:])
  return lax.transpose(result, tuple(int(axis) for axis in np.argsort(order)))


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str]) -> Iterator[None]:
  """Raises the named loggers to ERROR for the block."""
  loggers = [logging.getLogger(name) for name in names]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)
