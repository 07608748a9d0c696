"""The TFLite file: one batched invoke, broadcasts folded, reduced precisions.

A tiny random ViT and hybrid are written as a SavedModel and converted in
each precision (`to_tflite.PRECISIONS`). A batch of B images in one invoke
must give the B logits of B single-image invokes and of JAX; no op of the
file loops, and no parameter is broadcast to the batch's shape at run time
(which kept ViT-B/16 off XNNPACK, `to_tflite`). The float16 and int8 files
must load, hold weights of their type and stay near the float32 file.
"""

import collections
import os

import numpy as np
import pytest

from tests import helpers
from vit_jax.export import serving
from vit_jax.export import to_saved_model
from vit_jax.export import to_tflite
from vit_jax import models
from vit_jax.weights import pretrained

pytest.importorskip('ai_edge_litert')

IMAGENET = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))
# TFLite ops that run a subgraph repeatedly.
LOOP_OPS = {'WHILE', 'CALL_ONCE', 'IF'}
# Ops that broadcast by themselves, into which the converter folds a
# BROADCAST_TO (`to_tflite`). It does not fold one into MAXIMUM: the
# hybrid's ReLUs still broadcast their zero.
BROADCASTING_OPS = {'ADD', 'SUB', 'MUL', 'DIV'}
# Largest relative difference from the float32 file, measured on these tiny
# random models (scale-0.3 weights on every leaf) with a margin of about 3:
# float16 1.6e-3 (ViT) and 2.9e-3 (hybrid), int8 2.1e-2 and 6.7e-2.
REDUCED_TOLERANCE = {'float16': 1e-2, 'int8': 2e-1}
# Weight tensor types each precision stores.
WEIGHT_TYPE = {'float16': np.float16, 'int8': np.int8}
# A batch in one invoke against single-image invokes: the same kernels on
# the same rows, up to XNNPACK's blocking.
BATCH_TOLERANCE = 1e-5


def _loaded(family):
  if family == 'vit':
    model, size = helpers.tiny_model(num_classes=3), helpers.TINY_IMAGE_SIZE
  else:
    model, size = helpers.tiny_hybrid(num_classes=4), 32
  return serving.for_serving(pretrained.LoadedModel(
      model=model, params=helpers.random_params(model, size),
      image_size=size, preprocessing=IMAGENET))


@pytest.fixture(name='files', scope='module', params=['vit', 'hybrid'])
def _files(request, tmp_path_factory):
  """(loaded, {precision: .tflite path}) of a tiny model."""
  loaded = _loaded(request.param)
  directory = tmp_path_factory.mktemp(request.param)
  saved_model = str(directory / 'saved_model')
  to_saved_model.write(serving.serving_function(loaded), loaded.params,
                       loaded.image_size, saved_model)
  paths = {}
  for precision in to_tflite.PRECISIONS:
    paths[precision] = str(directory / f'{precision}.tflite')
    to_tflite.write(saved_model, paths[precision], precision=precision)
  return loaded, paths


def _interpreter(path):
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  return interpreter.Interpreter(model_path=path)


def _images(loaded, batch):
  size = loaded.image_size
  return np.random.default_rng(3).integers(0, 256, (batch, size, size, 3),
                                           np.uint8)


@pytest.mark.slow
def test_a_batch_is_one_invoke_equal_to_single_invokes_and_jax(files):
  loaded, paths = files
  images = _images(loaded, 5)
  runner = _interpreter(paths['float32']).get_signature_runner(
      serving.SIGNATURE)
  batched = runner(**{serving.INPUT: images})[serving.OUTPUT]
  assert batched.shape == (5, loaded.model.num_classes)
  single = np.concatenate([runner(**{serving.INPUT: images[i:i + 1]})[
      serving.OUTPUT] for i in range(len(images))])
  assert serving.relative_error(batched, single) <= BATCH_TOLERANCE
  expected = serving.reference_logits(loaded, images)
  assert serving.relative_error(batched, expected) <= to_tflite.TOLERANCE


@pytest.mark.slow
def test_no_op_loops_and_no_parameter_is_broadcast_at_run_time(files):
  _, paths = files
  for precision, path in paths.items():
    ops = _interpreter(path)._get_ops_details()  # pylint: disable=protected-access
    names = collections.Counter(op['op_name'] for op in ops)
    assert not LOOP_OPS & set(names), (precision, names)
    broadcasts = {int(op['outputs'][0]) for op in ops
                  if op['op_name'] == 'BROADCAST_TO'}
    fed = [op['op_name'] for op in ops if op['op_name'] in BROADCASTING_OPS
           and broadcasts & set(int(i) for i in op['inputs'])]
    assert not fed, (precision, fed)


@pytest.mark.slow
@pytest.mark.parametrize('precision', ['float16', 'int8'])
def test_reduced_precision_files_hold_their_weights_and_agree(files,
                                                              precision):
  loaded, paths = files
  interpreter = _interpreter(paths[precision])
  types = collections.Counter(
      np.dtype(tensor['dtype']) for tensor in interpreter.get_tensor_details())
  assert types[np.dtype(WEIGHT_TYPE[precision])] > 0, types
  assert os.path.getsize(paths[precision]) < os.path.getsize(
      paths['float32'])
  images = _images(loaded, 4)
  expected = to_tflite.run(paths['float32'], images)
  actual = to_tflite.run(paths[precision], images)
  assert actual.dtype == np.float32 and actual.shape == expected.shape
  error = serving.relative_error(actual, expected)
  print(f'{precision}: {error:.1e} from float32')
  assert error <= REDUCED_TOLERANCE[precision]


def test_an_unknown_precision_is_refused_naming_it(tmp_path):
  with pytest.raises(ValueError, match="unknown precision 'bfloat16': give "
                     "one of float32, float16, int8"):
    to_tflite.write(str(tmp_path / 'none'), str(tmp_path / 'x.tflite'),
                    precision='bfloat16')
  with pytest.raises(ValueError, match="precision 'int8' is not the "
                     "SavedModel's"):
    to_saved_model.write(None, None, 16, str(tmp_path / 'sm'),
                         precision='int8')
  assert not os.listdir(tmp_path)
