"""Tests of vit_jax.evaluators.fewshot_ridge (ridge solve, protocol) and of the feature
extraction that feeds it (`evaluators.linear_fewshot.FeatureExtractor`)."""

import jax
import numpy as np
import pytest

from vit_jax.evaluators import fewshot_ridge
from vit_jax.evaluators import linear_fewshot
from vit_jax import models


def _augmented_normal_equations(x, y, l2):
  """Ridge on [x, 1] with the bias column unpenalised, by a direct solve."""
  design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  penalty = l2 * np.eye(design.shape[1])
  penalty[-1, -1] = 0.0
  theta = np.linalg.solve(design.T @ design + penalty, design.T @ y)
  return theta[:-1], theta[-1]


def _clusters(rng, num_classes, per_class, dim, spread):
  centres = 10.0 * rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), per_class)
  features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
  order = rng.permutation(len(labels))
  return features[order], labels[order]


# fit_ridge.


@pytest.mark.parametrize('n, dim', [(40, 8), (12, 30)])
@pytest.mark.parametrize('l2', [1e-3, 1.0, 100.0])
def test_fit_ridge_solves_the_normal_equations(n, dim, l2):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, dim)) + 3.0  # an offset that the bias must absorb
  y = fewshot_ridge.pm1_targets(rng.integers(0, 3, size=n), 3)
  w, b = fewshot_ridge.fit_ridge(x, y, l2)
  w_ref, b_ref = _augmented_normal_equations(x, y, l2)
  np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(b, b_ref, rtol=1e-8, atol=1e-10)

  # The same problem as an ordinary least-squares one with sqrt(l2) I rows.
  design = np.block([[x, np.ones((n, 1))],
                     [np.sqrt(l2) * np.eye(dim), np.zeros((dim, 1))]])
  targets = np.concatenate([y, np.zeros((dim, 3))])
  theta, *_ = np.linalg.lstsq(design, targets, rcond=None)
  np.testing.assert_allclose(w, theta[:-1], rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(b, theta[-1], rtol=1e-8, atol=1e-10)


def test_fit_ridge_without_regularisation_is_least_squares():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(30, 5))
  y = fewshot_ridge.pm1_targets(rng.integers(0, 4, size=30), 4)
  w, b = fewshot_ridge.fit_ridge(x, y, 0.0)
  theta, *_ = np.linalg.lstsq(np.concatenate([x, np.ones((30, 1))], axis=1),
                              y, rcond=None)
  np.testing.assert_allclose(w, theta[:-1], rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(b, theta[-1], rtol=1e-8, atol=1e-10)


def test_fit_ridge_rejects_negative_l2():
  with pytest.raises(ValueError, match='l2'):
    fewshot_ridge.fit_ridge(np.zeros((3, 2)), np.zeros((3, 2)), -1.0)


# The protocol.


def test_separable_clusters_give_perfect_five_shot_accuracy():
  rng = np.random.default_rng(2)
  train_x, train_y = _clusters(rng, 5, 40, 16, spread=0.5)
  test_x, test_y = train_x[:100] + 0.1, train_y[:100]
  results = fewshot_ridge.evaluate_fewshot(train_x, train_y, test_x, test_y,
                                           shots=(5,), seeds=(0, 1))
  assert results[5]['top1_mean'] == 1.0
  assert results[5]['top1_std'] == 0.0
  assert results[5]['top1_per_seed'] == [1.0, 1.0]
  assert set(results[5]['per_l2']) == set(fewshot_ridge.DEFAULT_L2_REGS)
  assert all(0.0 <= r['top1_mean'] <= 1.0
             for r in results[5]['per_l2'].values())


def test_seeds_draw_different_samples_with_the_same_structure():
  labels = np.repeat(np.arange(3), 30)
  fit_a, val_a = fewshot_ridge.sample_fewshot_indices(labels, 5, seed=0,
                                                      val_per_class=4)
  fit_b, _ = fewshot_ridge.sample_fewshot_indices(labels, 5, seed=1,
                                                  val_per_class=4)
  assert not np.array_equal(fit_a, fit_b)
  np.testing.assert_array_equal(fit_a, fewshot_ridge.sample_fewshot_indices(
      labels, 5, seed=0, val_per_class=4)[0])
  np.testing.assert_array_equal(np.bincount(labels[fit_a]), [5, 5, 5])
  np.testing.assert_array_equal(np.bincount(labels[val_a]), [4, 4, 4])
  assert not set(fit_a) & set(val_a)  # validation never holds a shot

  rng = np.random.default_rng(3)
  train_x, train_y = _clusters(rng, 3, 30, 8, spread=8.0)
  test_x, test_y = _clusters(rng, 3, 10, 8, spread=8.0)
  run = lambda seeds: fewshot_ridge.evaluate_fewshot(
      train_x, train_y, test_x, test_y, shots=(1, 5), seeds=seeds,
      l2_regs=(0.1, 10.0), val_per_class=4)
  first, second = run((0, 1)), run((2, 3))
  assert first.keys() == second.keys() == {1, 5}
  for shots in (1, 5):
    assert first[shots].keys() == second[shots].keys()
    assert first[shots]['per_l2'].keys() == {0.1, 10.0}
    assert len(first[shots]['top1_per_seed']) == 2
    assert set(first[shots]['selected_l2_per_seed']) <= {0.1, 10.0}


def test_without_validation_only_per_l2_figures_are_reported():
  rng = np.random.default_rng(4)
  train_x, train_y = _clusters(rng, 3, 5, 4, spread=0.1)
  results = fewshot_ridge.evaluate_fewshot(train_x, train_y, train_x, train_y,
                                           shots=(1,), seeds=(0,), l2_regs=(1.0,),
                                           val_per_class=0)
  assert results[1]['top1_mean'] is None
  assert results[1]['per_l2'][1.0]['top1_mean'] == 1.0
  assert 'no l2 chosen' in fewshot_ridge.format_results(results)


def test_too_few_examples_for_shots_and_validation_raises():
  labels = np.repeat(np.arange(2), 6)
  with pytest.raises(ValueError, match='val_per_class'):
    fewshot_ridge.evaluate_fewshot(np.zeros((12, 3)), labels, np.zeros((2, 3)),
                                   np.array([0, 1]), shots=(5,), val_per_class=2)


# Feature extraction.


@pytest.mark.slow
def test_extract_features_drops_padding_and_keeps_every_real_example():
  model = models.create_model('Ti/16', num_classes=10, num_layers=2,
                              hidden_size=32, mlp_dim=64, num_heads=2)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32))
  images = np.asarray(jax.random.uniform(
      jax.random.PRNGKey(1), (7, 32, 32, 3), minval=-1.0, maxval=1.0))
  labels = np.arange(7) % 3
  # Two batches of 4: the last padded with a junk example and label.
  padded_images = np.concatenate([images, np.full((1, 32, 32, 3), 0.7)])
  padded_labels = np.concatenate([labels, [99]])
  mask = np.arange(8) < 7
  batches = [{'image': padded_images[i:i + 4], 'label': padded_labels[i:i + 4],
              'mask': mask[i:i + 4]} for i in (0, 4)]

  extract = linear_fewshot.FeatureExtractor(model)
  features, got_labels = extract(params, batches)
  assert features.shape == (7, 32)
  np.testing.assert_array_equal(got_labels, labels)
  _, inter = models.apply_with_intermediates(model, params, images)
  np.testing.assert_allclose(features, inter['pre_logits'], rtol=1e-4,
                             atol=1e-5)

  # One-hot labels and a missing mask (every example real) work too.
  unmasked = [{'image': images[:4], 'label': np.eye(3)[labels[:4]]}]
  features, got_labels = extract(params, unmasked)
  assert features.shape == (4, 32)
  np.testing.assert_array_equal(got_labels, labels[:4])

  features, got_labels = extract(params, batches)
  results = fewshot_ridge.evaluate_fewshot(
      features, got_labels, features, got_labels, shots=(1,), seeds=(0,),
      l2_regs=(1.0,), val_per_class=1)
  assert 0.0 <= results[1]['top1_mean'] <= 1.0
