"""Tests of vit_jax.cli.fewshot on a generated image folder and checkpoint."""

import json
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

from tests import data_helpers
from tests import helpers
from vit_jax.cli import fewshot as fewshot_cli
from vit_jax.data import preprocess
from vit_jax.evaluators import fewshot_ridge
from vit_jax import models
from vit_jax.weights import pretrained

NUM_CLASSES = 3
PER_CLASS = {'train': 6, 'test': 3}  # 18 and 9 examples: batches of 8 pad.
REPRESENTATION_SIZE = 8  # pre_logits width, unlike the 10 head outputs.
TINY_FLAGS = [f'--{name}={value}' for name, value in helpers.TINY_VIT.items()]
SHOTS, SEEDS, VAL_PER_CLASS = (1, 2), (0, 1), 2


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A tiny ViT with pre_logits and a head, its checkpoint, and the data."""
  root = tmp_path_factory.mktemp('fewshot_cli')
  model = helpers.tiny_model(representation_size=REPRESENTATION_SIZE)
  params = data_helpers.numpy_params(model, helpers.TINY_IMAGE_SIZE)
  path = str(root / 'model.npz')
  pretrained.save_npz(params, path)
  written = data_helpers.write_image_folder(
      str(root / 'data'), PER_CLASS, NUM_CLASSES, helpers.TINY_IMAGE_SIZE)
  return dict(model=model, params=params, checkpoint=path,
              data_dir=str(root / 'data'), written=written)


def _cli(argv):
  """Parses `argv` on fresh flags and runs fewshot_cli.main."""
  flag_values = flags.FlagValues()
  fewshot_cli.define_flags(flag_values)
  return fewshot_cli.main(flag_values(['fewshot_cli', *argv]), flag_values)


def _args(setup, tmp_path, **changes):
  args = dict(checkpoint=setup['checkpoint'], model='ViT-Ti_16',
              dataset='imagefolder', data_dir=setup['data_dir'],
              shots=','.join(map(str, SHOTS)),
              seeds=','.join(map(str, SEEDS)), val_per_class=VAL_PER_CLASS,
              batch_size=8, json_out=str(tmp_path / 'out' / 'fewshot.json'),
              features_out=str(tmp_path / 'features.npz'))
  args.update(changes)
  return [f'--{k}={v}' for k, v in args.items() if v is not None] + TINY_FLAGS


def _direct_features(setup, split, normalization=None):
  """pre_logits of every file of `split`, in the order they were written,
  from the in-memory model: no checkpoint file, no tf.data pipeline."""
  paths, labels = zip(*setup['written'][split])
  images = np.stack([preprocess.load_image(p, helpers.TINY_IMAGE_SIZE,
                                           normalization)
                     for p in paths])
  return np.asarray(_pre_logits(setup, images)), np.asarray(labels)


def _pre_logits(setup, images):
  # The same network without its head outputs the pre_logits (flax ignores
  # the unused head parameters).
  return setup['model'].clone(num_classes=0).apply(
      {'params': setup['params']}, images)


def _match_rows(features, labels, reference, reference_labels):
  """The permutation taking `reference` rows to `features` rows (every image
  is distinct, so each row has one nearest reference row)."""
  distances = np.linalg.norm(features[:, None] - reference[None], axis=-1)
  order = distances.argmin(axis=1)
  assert sorted(order) == list(range(len(reference)))  # A permutation.
  np.testing.assert_allclose(features, reference[order], atol=1e-5)
  np.testing.assert_array_equal(labels, reference_labels[order])
  return order


def _assert_close(actual, expected, where='results'):
  if isinstance(expected, dict):
    assert sorted(actual) == sorted(expected), where
    for key in expected:
      _assert_close(actual[key], expected[key], f'{where}[{key!r}]')
  elif isinstance(expected, list):
    assert len(actual) == len(expected), where
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
      _assert_close(a, e, f'{where}[{i}]')
  elif expected is None:
    assert actual is None, where
  else:
    np.testing.assert_allclose(actual, expected, rtol=1e-6, err_msg=where)


@pytest.mark.slow
def test_cli_results_equal_evaluate_fewshot_on_direct_features(
    setup, tmp_path, capsys):
  _cli(_args(setup, tmp_path))

  with open(tmp_path / 'out' / 'fewshot.json') as f:
    saved = json.load(f)
  assert (saved['num_train_examples'], saved['num_test_examples'],
          saved['num_classes'], saved['feature_dim'], saved['image_size'],
          saved['shots'], saved['seeds']) == (
              18, 9, NUM_CLASSES, REPRESENTATION_SIZE, 16, list(SHOTS),
              list(SEEDS))
  assert sorted(saved['results']) == ['1', '2']
  for result in saved['results'].values():
    assert len(result['top1_per_seed']) == len(SEEDS)
    assert len(result['per_l2']) == len(fewshot_ridge.DEFAULT_L2_REGS)

  # The pipeline's features (shuffled file order, padded batches) are the
  # model's pre_logits of every image exactly once ...
  saved_features = np.load(tmp_path / 'features.npz')
  split_features = {}
  for split in ('train', 'test'):
    reference, reference_labels = _direct_features(setup, split)
    features = saved_features[f'{split}_features']
    labels = saved_features[f'{split}_labels']
    order = _match_rows(features, labels, reference, reference_labels)
    split_features[split] = reference[order], reference_labels[order]

  # ... and the results are evaluate_fewshot's on them.
  expected = fewshot_ridge.evaluate_fewshot(
      *split_features['train'], *split_features['test'], shots=SHOTS,
      seeds=SEEDS, val_per_class=VAL_PER_CLASS)
  _assert_close(saved['results'],
                json.loads(json.dumps(fewshot_cli.to_json(expected)))[
                    'results'])
  assert fewshot_ridge.format_results(expected) in capsys.readouterr().out


def test_features_come_without_the_head(setup):
  loaded = fewshot_cli.feature_extractor(
      setup['checkpoint'], 'Ti/16', **helpers.TINY_VIT)
  model, params, image_size = loaded.model, loaded.params, loaded.image_size
  assert (model.num_classes, image_size, loaded.class_names) == (0, 16, None)
  assert 'head' not in params and 'pre_logits' in params
  images = helpers.random_images(2, image_size)
  features = model.apply({'params': params}, images)
  assert features.shape == (2, REPRESENTATION_SIZE)
  np.testing.assert_allclose(features, _pre_logits(setup, images), rtol=1e-5,
                             atol=1e-6)


def test_only_the_checkpoint_of_an_export_is_needed(setup, tmp_path):
  # The same arrays exported with a sidecar saying another normalisation:
  # no --model, no architecture flags, and the features follow it.
  imagenet = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                  std=(58.395, 57.12, 57.375))
  path = str(tmp_path / 'model.npz')
  pretrained.save_npz(setup['params'], path, model=setup['model'],
                      preprocessing=imagenet,
                      image_size=helpers.TINY_IMAGE_SIZE)
  args = dict(checkpoint=path, dataset='imagefolder',
              data_dir=setup['data_dir'], shots='1', seeds='0',
              val_per_class=VAL_PER_CLASS, batch_size=8,
              json_out=str(tmp_path / 'fewshot.json'),
              features_out=str(tmp_path / 'features.npz'))
  _cli([f'--{k}={v}' for k, v in args.items()])
  with open(tmp_path / 'fewshot.json') as f:
    saved = json.load(f)
  assert (saved['model'], saved['image_size'], saved['feature_dim']) == (
      'model.npz', helpers.TINY_IMAGE_SIZE, REPRESENTATION_SIZE)
  features = np.load(tmp_path / 'features.npz')
  reference, reference_labels = _direct_features(setup, 'test', imagenet)
  _match_rows(features['test_features'], features['test_labels'], reference,
              reference_labels)


@pytest.mark.parametrize('change, message', [
    (dict(data_dir='/nonexistent/data'), 'does not exist'),
    (dict(test_split='validation'), "'validation' does not exist"),
    (dict(shots='1,many'), '--shots must be a comma-separated list'),
    (dict(shots='5'), 'class 0 has 6 training examples'),
    (dict(dataset=None), '--dataset is required'),
    (dict(checkpoint='/nonexistent/model.npz'), 'does not exist'),
])
def test_bad_input_exits_with_status_1_and_a_message(setup, tmp_path, capsys,
                                                     change, message):
  with pytest.raises(SystemExit) as exit_info:
    _cli(_args(setup, tmp_path, **change))
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: ') and message in error


@pytest.mark.slow
def test_python_dash_m_runs_and_exits_with_status_0(setup, tmp_path):
  process = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.fewshot',
       *_args(setup, tmp_path, shots='1', seeds='0')],
      capture_output=True, text=True, timeout=120, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert process.returncode == 0, process.stderr
  assert '  1-shot: top-1 ' in process.stdout
  with open(tmp_path / 'out' / 'fewshot.json') as f:
    assert list(json.load(f)['results']) == ['1']
