"""The ONNX graph ONNX Runtime can fuse, reduced precisions, and the
benchmark's exported-file mode.

Speed is never asserted (the benchmark measures it, docs/deploy.md has the
figures); these tests check what the rewrites emit, that the files keep
JAX's logits at every batch size, and that the benchmark runs.
"""

import collections
import os

import numpy as np
import pytest

from benchmarks import exported
from tests import helpers
from vit_jax import export
from vit_jax.export import precision as precision_lib
from vit_jax.export import serving
from vit_jax.export import to_onnx
from vit_jax import models
from vit_jax.weights import pretrained

onnx = pytest.importorskip('onnx')
IMAGENET = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))


def _loaded(model, size):
  return serving.for_serving(pretrained.LoadedModel(
      model=model, params=helpers.random_params(model, size),
      image_size=size, preprocessing=IMAGENET))


def _write(loaded, path, precision='float32'):
  to_onnx.write_serving(serving.serving_function(loaded), loaded.params,
                        loaded.image_size, str(path), precision=precision)
  return str(path)


def _op_counts(path):
  model = onnx.load(path)
  return collections.Counter(node.op_type for node in model.graph.node)


def _errors(loaded, path, batches=(3, 1)):
  rng = np.random.default_rng(1)
  size = loaded.image_size
  errors = []
  for batch in batches:
    images = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
    logits = to_onnx.run(path, images)
    assert logits.shape == (batch, loaded.model.num_classes)
    errors.append(serving.relative_error(
        logits, serving.reference_logits(loaded, images)))
  return errors


@pytest.fixture(name='tiny_vit', scope='module')
def _tiny_vit():
  return _loaded(helpers.tiny_model(num_classes=3), helpers.TINY_IMAGE_SIZE)


def test_vit_graph_has_the_operators_onnx_runtime_fuses(tiny_vit, tmp_path):
  path = _write(tiny_vit, tmp_path / 'model.onnx')
  ops = _op_counts(path)
  layers = tiny_vit.model.num_layers
  assert 'Einsum' not in ops
  # Two per block and the final one.
  assert ops['LayerNormalization'] == 2 * layers + 1
  assert ops['Softmax'] == layers
  # qkv (3), output, two MLP layers per block, scores and values, the head.
  assert ops['MatMul'] == 8 * layers + 1
  # GELU as (0.5 * x) * (1 + tanh(...)): the Pow's input is the Mul's.
  model = onnx.load(path)
  producers = {out: node for node in model.graph.node for out in node.output}
  powers = [node for node in model.graph.node if node.op_type == 'Pow']
  halves = [node for node in model.graph.node if node.op_type == 'Mul' and
            any(name.startswith('fused_half') for name in node.output)]
  assert len(powers) == len(halves) == layers
  assert {p.input[0] for p in powers} == {h.input[0] for h in halves}
  assert all(producers[h.input[0]].op_type == 'Add' for h in halves)
  assert max(_errors(tiny_vit, path)) <= to_onnx.TOLERANCE


@pytest.mark.parametrize('family', ['hybrid', 'mixer'])
def test_other_families_keep_parity(family, tmp_path):
  if family == 'hybrid':
    loaded = _loaded(helpers.tiny_hybrid(num_classes=4), 32)
  else:
    loaded = _loaded(models.create_model(
        'Mixer-B_16', num_classes=3, hidden_size=32, num_layers=2,
        patch_size=4, tokens_mlp_dim=16, channels_mlp_dim=32), 16)
  path = _write(loaded, tmp_path / 'model.onnx')
  assert 'Einsum' not in _op_counts(path)
  assert max(_errors(loaded, path)) <= to_onnx.TOLERANCE


@pytest.mark.parametrize('precision', ['float16', 'int8'])
def test_reduced_precisions_keep_the_batch_and_close_logits(
    tiny_vit, precision, tmp_path):
  path = _write(tiny_vit, tmp_path / 'model.onnx', precision)
  ops = _op_counts(path)
  if precision == 'int8':
    assert ops['DynamicQuantizeLinear'] + ops['DynamicQuantizeMatMul'] > 0
    assert os.path.getsize(path) < os.path.getsize(
        _write(tiny_vit, tmp_path / 'float32.onnx'))
  else:
    weights = [t for t in onnx.load(path).graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT16]
    assert weights
  session_input = onnx.load(path).graph.input[0]
  assert session_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert max(_errors(tiny_vit, path)) <= (
      precision_lib.REDUCED_TOLERANCE[precision])


def test_an_unknown_precision_is_refused(tiny_vit, tmp_path):
  with pytest.raises(ValueError, match="unknown precision 'int4'"):
    _write(tiny_vit, tmp_path / 'model.onnx', 'int4')
  assert not os.listdir(tmp_path)
  with pytest.raises(ValueError, match='cannot be written in float16'):
    precision_lib.check('float16', ('float32',), 'model.tflite')


def test_export_tolerance_follows_the_precision():
  assert export.tolerance(export.ONNX) == to_onnx.TOLERANCE
  assert export.tolerance(export.ONNX, 'int8') == 0.25
  assert export.tolerance(export.SAVED_MODEL, 'int8') == 1e-4


@pytest.mark.slow
def test_benchmark_times_an_exported_file_beside_jax(tmp_path):
  model = helpers.tiny_model(num_classes=10)
  checkpoint = str(tmp_path / 'model.npz')
  pretrained.save_npz(helpers.random_params(model, helpers.TINY_IMAGE_SIZE),
                      checkpoint, model=model,
                      image_size=helpers.TINY_IMAGE_SIZE)
  result = exported.run_exported('onnx', checkpoint=checkpoint,
                                 batch_size=2, steps=2, warmup=2, threads=1)
  assert result['runtime'] == 'onnxruntime'
  assert result['batch_size'] == 2 and result['threads'] == 1
  assert result['exported']['images_per_sec'] > 0
  assert result['jax']['images_per_sec'] > 0
  assert exported.format_result(result).startswith(
      'onnx (float32, exported now) in onnxruntime, batch 2')
  loaded = exported.load_model(checkpoint, '', 0, 0)
  path = _write(loaded, tmp_path / 'model.onnx')
  from benchmarks import exported_side  # pylint: disable=g-import-not-at-top
  if not os.path.exists('/usr/share/datasets/fashion-mnist'):
    pytest.skip("Debian's dataset-fashion-mnist is not installed")
  agreement = exported.agreement(exported_side.open_runner(path, 1), loaded,
                                 'test', max_images=64)
  # The float32 file agrees with JAX on every image.
  assert agreement['top1_agreement'] == 1.0
  assert agreement['exported_accuracy'] == agreement['jax_accuracy']
  assert agreement['images'] == 64


def test_benchmark_refuses_agreement_without_a_checkpoint():
  with pytest.raises(ValueError, match='needs --checkpoint'):
    exported.run_exported('onnx', agreement_split='test')
