"""Tests of vit_jax.evaluators: the builder, ImageNet-ReaL, ImageNet-v2 and
few-shot.

ImageNet-ReaL and ImageNet-v2 are generated here, a few 8x8 JPEGs each, under
their real TFDS names, versions and features, in a temporary data_dir: the
library then opens them through TFDS's own registered builders, exactly as it
would open the real prepared datasets. A stand-in model whose prediction is
the image's dominant colour channel makes every accuracy known in advance.
"""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from tests import data_helpers
from tests import helpers
from vit_jax.data import pipeline
from vit_jax import evaluators
from vit_jax.evaluators import fewshot_ridge
from vit_jax.evaluators import imagenet
from vit_jax.evaluators import linear_fewshot
from vit_jax import models
from vit_jax import sharding
from vit_jax.training import loop
from vit_jax.training import setup as setup_lib
from vit_jax.training import run_spec

NUM_CLASSES = 1000  # Both ImageNet test sets use the 1000 ImageNet classes.
IMAGE_SIZE = 8
# (dominant channel = predicted class, ReaL label set). Three of the five
# labelled images contain their prediction; two images have no labels.
REAL_EXAMPLES = (
    (0, (0, 7)),   # Correct.
    (0, (3,)),     # Wrong.
    (1, (1,)),     # Correct.
    (2, ()),       # No labels: excluded.
    (1, ()),       # No labels: excluded.
    (2, (9, 2, 5)),  # Correct.
    (1, (0, 2)),   # Wrong.
)
# (dominant channel, label) of the ImageNet-v2 test images: 4 of 6 right.
V2_EXAMPLES = ((0, 0), (1, 1), (2, 2), (0, 5), (1, 1), (2, 0))


def _colour_image(channel, seed):
  """An 8x8 image whose dominant channel survives JPEG compression."""
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 40, (IMAGE_SIZE, IMAGE_SIZE, 3))
  image[..., channel] += 200
  return image.astype(np.uint8)


def _imagenet_label():
  return tfds.features.ClassLabel(num_classes=NUM_CLASSES)


class Imagenet2012Real(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
  """Generated stand-in with the features of TFDS's imagenet2012_real."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'original_label': _imagenet_label(),
            'real_label': tfds.features.Sequence(_imagenet_label()),
            'file_name': tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'validation': self._generate_examples()}

  def _generate_examples(self):
    for i, (channel, real) in enumerate(REAL_EXAMPLES):
      yield i, {'image': _colour_image(channel, i), 'original_label': channel,
                'real_label': list(real), 'file_name': f'{i}.JPEG'}


class ImagenetV2(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Generated stand-in with the features of TFDS's imagenet_v2."""

  VERSION = tfds.core.Version('3.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='matched-frequency')]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': _imagenet_label(),
            'file_name': tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'test': self._generate_examples()}

  def _generate_examples(self):
    for i, (channel, label) in enumerate(V2_EXAMPLES):
      yield i, {'image': _colour_image(channel, 100 + i), 'label': label,
                'file_name': f'{label}/{i}.jpeg'}


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  for builder_class in (Imagenet2012Real, ImagenetV2):
    builder_class(data_dir=data_dir).download_and_prepare()
  return data_dir


class DominantChannel(nn.Module):
  """Predicts class c in {0, 1, 2} for an image whose channel c is largest."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False):
    del train
    means_B3 = images_BHWC.mean(axis=(1, 2))
    rest = jnp.full((images_BHWC.shape[0], self.num_classes - 3), -10.0)
    return jnp.concatenate([10 * means_B3, rest], axis=-1)


def _config(**overrides):
  config = common.get_config()
  config.update({**dict(image_size=IMAGE_SIZE, eval_batch_size=8,
                        prefetch=1), **overrides})
  return common.lock(config)


def _mesh():
  return sharding.make_mesh(1)


def _read_eval(**overrides):
  """(source, split) -> eval batches, with `_config`'s data settings."""
  return run_spec.data_spec(_config(**overrides)).eval_batches


def _extra_eval(name, imagenet_dir, model=None):
  return imagenet.make_extra_eval(
      name, model=model or DominantChannel(), mesh=_mesh(),
      read_eval=_read_eval(), data_dir=imagenet_dir)


# --- ImageNet-ReaL ------------------------------------------------------------


def test_real_accuracy_counts_predictions_in_the_label_set(imagenet_dir):
  evaluation = _extra_eval('imagenet2012_real', imagenet_dir)
  record = evaluation.evaluate({})
  assert record == {'real_top1_accuracy': 3 / 5, 'real_num_examples': 5.0,
                    'real_num_without_labels': 2.0}


def test_real_label_sets_arrive_multi_hot_and_padding_is_masked(imagenet_dir):
  source = imagenet.real_labels_source(imagenet_dir)
  batches = list(pipeline.get_eval_iterator(
      source, 'validation', image_size=IMAGE_SIZE, batch_size=4, prefetch=1))
  assert len(batches) == 2  # 7 images + 1 padding row.
  mask = np.concatenate([b['mask'] for b in batches])
  real = np.concatenate([b['real_label'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 7 + [0])
  assert real.shape == (8, NUM_CLASSES) and real.dtype == np.float32
  got = sorted((int(label), tuple(np.flatnonzero(row)))
               for label, row in zip(labels[:7], real[:7], strict=True))
  assert got == sorted((c, tuple(sorted(r))) for c, r in REAL_EXAMPLES)
  assert not real[7].any()


def test_real_step_ignores_masked_rows_even_when_they_would_be_right():
  logits = jnp.asarray([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
  model = type('Fixed', (), {'apply': lambda self, v, x, train: logits})()
  batch = {'image': jnp.zeros((3, 1, 1, 3)),
           'real_label': jnp.asarray([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]]),
           'mask': jnp.asarray([1.0, 1.0, 0.0])}
  sums = imagenet.real_labels_eval_step({}, batch, model=model)
  assert {k: float(v) for k, v in sums.items()} == {
      'top1_correct': 1.0, 'count': 1.0, 'without_labels': 1.0}


# --- ImageNet-v2 --------------------------------------------------------------


def test_imagenet_v2_is_evaluated_like_the_main_eval_set(imagenet_dir):
  evaluation = _extra_eval('imagenet_v2', imagenet_dir)
  record = evaluation.evaluate({})
  assert record['v2_top1_accuracy'] == pytest.approx(4 / 6)
  # The top 5 are the three colour classes, then 3 and 4: label 0 of the
  # blue image is in it, label 5 of the red one is not.
  assert record['v2_top5_accuracy'] == pytest.approx(5 / 6)
  assert record['v2_num_examples'] == 6
  assert record['v2_loss'] > 0


def test_extra_evals_need_a_1000_class_model(imagenet_dir):
  with pytest.raises(ValueError, match='1000 classes but the model has 10'):
    _extra_eval('imagenet_v2', imagenet_dir, DominantChannel(num_classes=10))


def test_extra_eval_names_accept_the_command_line_form():
  # --config.extra_evals=a,b arrives as the one-element tuple ('a,b',).
  spec = run_spec.eval_spec(
      _config(extra_evals=('imagenet2012_real, imagenet_v2',)))
  assert spec.extra_evals == ('imagenet2012_real', 'imagenet_v2')
  assert run_spec.eval_spec(_config()).extra_evals == ()


@pytest.mark.parametrize('overrides, message', [
    (dict(extra_evals=('imagenet_a',)),
     "config.extra_evals has unknown 'imagenet_a'; known: "
     "['imagenet2012_real', 'imagenet_v2']."),
    (dict(eval_every=-1),
     'config.eval_every must be >= 0 (0: only at the last step), got -1'),
    (dict(fewshot_every=-1),
     'config.fewshot_every must be >= 0 (0 turns it off), got -1'),
    (dict(fewshot_every=2, fewshot_val_per_class=0),
     'config.fewshot_val_per_class must be >= 1 (it chooses l2) and '
     'config.fewshot_shots non-empty.'),
])
def test_eval_spec_rejects_a_bad_value_in_one_line(overrides, message):
  with pytest.raises(ValueError) as error:
    run_spec.eval_spec(_config(**overrides))
  assert str(error.value) == message


def test_fewshot_is_checked_only_when_it_runs():
  spec = run_spec.eval_spec(_config(fewshot_every=0, fewshot_shots=()))
  assert spec.fewshot.fewshot_every == 0


def test_eval_data_dirs_fall_back_to_the_data_dir():
  spec = run_spec.eval_spec(_config(data_dir='/data'))
  assert (spec.extra_evals_data_dir, spec.fewshot.fewshot_data_dir) == (
      '/data', '/data')
  spec = run_spec.eval_spec(_config(data_dir='/data', fewshot_data_dir='/f',
                                    extra_evals_data_dir='/e'))
  assert (spec.extra_evals_data_dir, spec.fewshot.fewshot_data_dir) == (
      '/e', '/f')


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_training_logs_the_extra_evals_with_their_prefixes(imagenet_dir,
                                                           tmp_path):
  # The main eval set is ImageNet-v2 itself, so v2_* must equal it exactly.
  config = helpers.tiny_config(
      imagenet_dir, dataset='imagenet_v2', train_split='test',
      eval_split='test', extra_evals=('imagenet2012_real', 'imagenet_v2'),
      image_size=IMAGE_SIZE, shuffle_buffer=16, prefetch=1, total_steps=2,
      eval_every=2)
  record = loop.train_and_evaluate(config, str(tmp_path))
  for key in ('top1_accuracy', 'top5_accuracy', 'loss', 'num_examples'):
    assert record[f'v2_{key}'] == pytest.approx(record[key], rel=1e-6)
  assert record['real_num_examples'] == 5
  assert record['real_num_without_labels'] == 2
  assert 0 <= record['real_top1_accuracy'] <= 1
  logged = [r for r in _records(str(tmp_path)) if 'real_top1_accuracy' in r]
  assert [r['step'] for r in logged] == [2]


# --- Few-shot -----------------------------------------------------------------

FEWSHOT_CLASSES = 4


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('folder'))
  data_helpers.write_image_folder(root, {'train': 6, 'test': 3},
                                  FEWSHOT_CLASSES, helpers.TINY_IMAGE_SIZE)
  return root


# Few-shot on the folder's own splits: 1 and 2 shots, 2 seeds.
_FEWSHOT = dict(
    fewshot_dataset='imagefolder', fewshot_train_split='train',
    fewshot_test_split='test', fewshot_shots=(1, 2), fewshot_seeds=(0, 1),
    fewshot_val_per_class=2)


def _fewshot_config(folder, **overrides):
  config = common.get_config()
  config.update(dict(
      dataset='imagefolder', data_dir=folder,
      image_size=helpers.TINY_IMAGE_SIZE, eval_batch_size=8, prefetch=1,
      **_FEWSHOT))
  config.update(overrides)
  return common.lock(config)


def _fewshot_evaluator(config, model, mesh, shardings=None):
  return linear_fewshot.FewShotEvaluator(
      model, mesh, run_spec.data_spec(config).eval_batches,
      linear_fewshot.FewshotSpec(
          fewshot_dataset='imagefolder', fewshot_data_dir=config.data_dir,
          fewshot_train_split='train', fewshot_test_split='test',
          fewshot_shots=(1, 2), fewshot_seeds=(0, 1),
          fewshot_val_per_class=2),
      params_shardings=shardings)


def _direct_features(config, model, params, split):
  """pre_logits of every real example of `split`, straight from the model."""
  features, labels = [], []
  data = run_spec.data_spec(config)
  for batch in data.eval_batches(data.source(), split):
    _, inside = models.apply_with_intermediates(model, params, batch['image'])
    real = batch['mask'] > 0
    features.append(np.asarray(inside['pre_logits'])[real])
    labels.append(batch['label'][real])
  return np.concatenate(features), np.concatenate(labels)


@pytest.mark.slow
def test_fewshot_evaluator_equals_the_library_on_sharded_params(folder):
  config = _fewshot_config(folder)
  model = helpers.tiny_model(num_classes=FEWSHOT_CLASSES,
                             representation_size=16)
  params = data_helpers.numpy_params(model, helpers.TINY_IMAGE_SIZE)
  mesh = _mesh()
  shardings = sharding.tree_shardings(params, mesh, fsdp=True)
  sharded = jax.device_put(params, shardings)
  got = _fewshot_evaluator(config, model, mesh, shardings).evaluate(sharded)

  expected = fewshot_ridge.evaluate_fewshot(
      *_direct_features(config, model, params, 'train'),
      *_direct_features(config, model, params, 'test'), shots=(1, 2),
      seeds=(0, 1), val_per_class=2)
  assert got == pytest.approx({f'fewshot_{k}shot_top1': r['top1_mean']
                               for k, r in expected.items()})
  assert got['fewshot_2shot_top1'] > 1 / FEWSHOT_CLASSES  # Colours separate.


@pytest.mark.slow
def test_fewshot_runs_at_its_cadence_during_training(folder, tmp_path):
  config = helpers.tiny_config(
      folder, **_FEWSHOT, fewshot_every=3, prefetch=1, shuffle_buffer=16,
      log_every=4, checkpoint_every=4)
  loop.train_and_evaluate(config, str(tmp_path))
  logged = [r for r in _records(str(tmp_path)) if 'fewshot_1shot_top1' in r]
  assert [r['step'] for r in logged] == [3, 4]  # Every 3 steps and the end.
  assert all(0 <= r['fewshot_2shot_top1'] <= 1 for r in logged)


def test_fewshot_needs_pooled_features(folder):
  model = helpers.tiny_model(num_classes=FEWSHOT_CLASSES,
                             classifier='unpooled')
  with pytest.raises(ValueError, match='pooled features'):
    _fewshot_evaluator(_fewshot_config(folder), model, _mesh())


# --- The builder --------------------------------------------------------------


def test_make_evaluators_lists_every_evaluator_with_its_cadence_and_params(
    folder):
  config = _fewshot_config(folder, eval_every=5, ema_decay=0.5,
                           fewshot_every=3)
  config.model.update(dict(helpers.TINY_VIT))
  spec = run_spec.from_config(config)
  setup = setup_lib.make_setup(spec, FEWSHOT_CLASSES)
  source = spec.data.source()
  read_eval = spec.data.eval_batches
  evals = evaluators.make_evaluators(spec.evals, setup, read_eval(source),
                                     read_eval)
  assert [(e.name, e.every, e.params_field, e.record) for e in evals] == [
      ('eval', 5, 'params', 'eval'), ('ema_eval', 5, 'ema_params', 'eval'),
      ('fewshot', 3, 'params', 'fewshot')]
  state = setup.init_state(jax.random.PRNGKey(0))
  main = evals[0].evaluate(state.params)
  assert main['num_examples'] == FEWSHOT_CLASSES * 3
  assert set(evals[1].evaluate(state.ema_params)) == {
      f'ema_{k}' for k in main}


def test_a_long_evaluation_says_how_far_it_got(monkeypatch, caplog):
  monkeypatch.setattr(evaluators.common, 'PROGRESS_EVERY_S', 0.0)
  caplog.set_level('INFO', logger='absl')
  mesh = sharding.make_mesh()
  step = evaluators.common.jit_on_mesh(
      lambda params, batch: {'count': jnp.sum(batch['label']) * params}, mesh)
  batches = [{'label': np.ones(8, np.int32)}] * 3
  sums = evaluators.common.sum_over_batches(step, 2, batches, mesh, 'eval')
  assert sums == {'count': 48.0}
  assert [re.sub(r', \d+ s$', '', r.getMessage()) for r in caplog.records] == [
      '  eval: 1/3 batches', '  eval: 2/3 batches', '  eval: 3/3 batches']
