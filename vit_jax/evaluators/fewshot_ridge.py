"""Few-shot linear evaluation of frozen features (ViT paper, section 4.1).

For k shots, k training examples per class are sampled; a regularised
least-squares regression maps their frozen features to {-1, 1}^K targets in
closed form; top-1 accuracy is measured on every test example.

Conventions chosen here:
  * Features are used as the model gives them (the `pre_logits`), with no
    scaling. The regression has an unpenalised bias: features and targets are
    centred on the few-shot training means, the weights come from the centred
    ridge problem and the bias restores the means. The result equals ridge
    regression on [x, 1] with the bias column left out of the penalty.
  * Every l2 of `l2_regs` is fitted (one SVD serves them all). The headline
    number picks l2 per seed on a validation sample: `val_per_class` further
    training examples per class, disjoint from the shots and never from the
    test set. Ties go to the larger l2. The per-l2 test accuracies are
    reported too, for sweeps; taking their maximum would peek at the test set.
  * Each (seed, shots) pair draws its own sample, reproducibly
    (numpy.random.default_rng([seed, shots])). Means and standard deviations
    are over seeds; std is the population std (ddof=0).

The features come from `vit_jax.evaluators.linear_fewshot.FeatureExtractor`.
"""

import dataclasses
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_L2_REGS = tuple(float(2.0**e) for e in range(-10, 11))
DEFAULT_VAL_PER_CLASS = 10


# ----------------------------------------------------------------------------
# Closed-form ridge regression.


@dataclasses.dataclass(frozen=True)
class _RidgeFactors:
  """Thin SVD of the centred design, shared by every l2 of a sweep."""
  x_mean_F: np.ndarray
  y_mean_K: np.ndarray
  v_FR: np.ndarray  # right singular vectors kept (R = numerical rank)
  s_R: np.ndarray
  uty_RK: np.ndarray  # U^T (Y - mean)


def _factorise(x_NF, y_NK) -> _RidgeFactors:
  x_NF = np.asarray(x_NF, np.float64)
  y_NK = np.asarray(y_NK, np.float64)
  x_mean_F = x_NF.mean(axis=0)
  y_mean_K = y_NK.mean(axis=0)
  u_NR, s_R, vt_RF = np.linalg.svd(x_NF - x_mean_F, full_matrices=False)
  # Directions below lstsq's default cutoff are rounding noise; dropping them
  # makes l2 = 0 the minimum-norm least-squares solution.
  keep_R = s_R > s_R[:1].max(initial=0.0) * max(x_NF.shape) * np.finfo(
      np.float64).eps
  u_NR, s_R, vt_RF = u_NR[:, keep_R], s_R[keep_R], vt_RF[keep_R]
  return _RidgeFactors(x_mean_F, y_mean_K, vt_RF.T, s_R,
                       u_NR.T @ (y_NK - y_mean_K))


def _shrinkage(factors: _RidgeFactors, l2: float) -> np.ndarray:
  # (X^T X + l2 I)^-1 X^T = V diag(s / (s^2 + l2)) U^T.
  return factors.s_R / (factors.s_R**2 + l2)


def _solve(factors: _RidgeFactors, l2: float) -> Tuple[np.ndarray, np.ndarray]:
  w_FK = factors.v_FR @ (_shrinkage(factors, l2)[:, None] * factors.uty_RK)
  b_K = factors.y_mean_K - factors.x_mean_F @ w_FK
  return w_FK, b_K


def fit_ridge(x, y_onehot_pm1, l2: float) -> Tuple[np.ndarray, np.ndarray]:
  """Regularised least squares with an unpenalised bias, in closed form.

  Minimises ||x W + b - y||^2 + l2 ||W||^2. With xc, yc centred on their
  means: W = (xc^T xc + l2 I)^-1 xc^T yc and b = mean(y) - mean(x) W,
  computed through the SVD of xc (stable when examples < features). l2 = 0
  gives the minimum-norm least-squares solution.

  Args:
    x: (n, F) features.
    y_onehot_pm1: (n, K) targets, +1 for the true class, -1 elsewhere.
    l2: regularisation strength, >= 0.

  Returns:
    (W (F, K), b (K,)) in float64; predictions are x @ W + b.
  """
  if l2 < 0:
    raise ValueError(f'l2 must be >= 0, got {l2}.')
  return _solve(_factorise(x, y_onehot_pm1), l2)


def _predict_per_l2(factors: _RidgeFactors, x_NF,
                    l2_regs: Sequence[float]) -> np.ndarray:
  """Predicted classes (len(l2_regs), n) without forming each W."""
  centred_NF = np.asarray(x_NF, np.float64) - factors.x_mean_F
  projected_NR = centred_NF @ factors.v_FR
  predictions = []
  for l2 in l2_regs:
    # The bias term mean(y) - mean(x) W is folded in: x is centred above and
    # mean(y) is added back, as it differs per class in unbalanced samples.
    scores_NK = (projected_NR * _shrinkage(factors, l2)) @ factors.uty_RK
    predictions.append(np.argmax(scores_NK + factors.y_mean_K, axis=-1))
  return np.stack(predictions)


def pm1_targets(labels, num_classes: int) -> np.ndarray:
  """Integer labels (n,) -> (n, K) targets: +1 at the label, -1 elsewhere."""
  return np.where(np.arange(num_classes) == np.asarray(labels)[:, None], 1.0,
                  -1.0)


# ----------------------------------------------------------------------------
# Sampling and evaluation.


def sample_fewshot_indices(labels, shots: int, seed: int,
                           val_per_class: int = 0) -> Tuple[np.ndarray,
                                                            np.ndarray]:
  """Draws `shots` examples per class, and a disjoint validation sample.

  Args:
    labels: (n,) integer labels of the training pool, classes 0..K-1 with
      K = max(labels) + 1.
    shots: examples per class to fit on.
    seed: with `shots`, seeds numpy's generator.
    val_per_class: further examples per class for choosing l2.

  Returns:
    (fit indices (K * shots,), validation indices (K * val_per_class,)) into
    `labels`, grouped by class.
  """
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1
  rng = np.random.default_rng([seed, shots])
  fit, val = [], []
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    if len(members) < shots + val_per_class:
      raise ValueError(
          f'class {label} has {len(members)} training examples, fewer than '
          f'{shots} shots + {val_per_class} validation examples; lower '
          f'val_per_class (0 reports every l2 without choosing) or the shots.')
    members = rng.permutation(members)
    fit.append(members[:shots])
    val.append(members[shots:shots + val_per_class])
  return np.concatenate(fit), np.concatenate(val)


def _accuracies(factors, features, labels, l2_regs) -> np.ndarray:
  """Top-1 (len(l2_regs),) of the fitted regressions on (features, labels)."""
  return np.mean(_predict_per_l2(factors, features, l2_regs) == labels, axis=1)


def _select(val_top1_L: np.ndarray, l2_regs: Sequence[float]) -> int:
  """Index of the best validation accuracy; ties go to the larger l2."""
  best = val_top1_L.max()
  return max((i for i in range(len(l2_regs)) if val_top1_L[i] == best),
             key=lambda i: l2_regs[i])


def _summary(values) -> Dict[str, float]:
  values = np.asarray(values, np.float64)
  return {'top1_mean': float(values.mean()), 'top1_std': float(values.std())}


def _evaluate_shots(train_features, train_labels, test_features, test_labels,
                    shots, seeds, l2_regs, val_per_class) -> Dict[str, Any]:
  """Results of one shot count over all seeds (see `evaluate_fewshot`)."""
  num_classes = int(train_labels.max()) + 1
  test_top1_SL, selected = [], []
  for seed in seeds:
    fit, val = sample_fewshot_indices(train_labels, shots, seed, val_per_class)
    factors = _factorise(train_features[fit],
                         pm1_targets(train_labels[fit], num_classes))
    test_top1_L = _accuracies(factors, test_features, test_labels, l2_regs)
    test_top1_SL.append(test_top1_L)
    if val_per_class:
      val_top1_L = _accuracies(factors, train_features[val], train_labels[val],
                               l2_regs)
      best = _select(val_top1_L, l2_regs)
      selected.append((float(test_top1_L[best]), l2_regs[best],
                       float(val_top1_L[best])))
  test_top1_SL = np.stack(test_top1_SL)

  result = {
      'top1_mean': None, 'top1_std': None, 'top1_per_seed': None,
      'selected_l2_per_seed': None, 'val_top1_per_seed': None,
      'per_l2': {l2: _summary(test_top1_SL[:, i])
                 for i, l2 in enumerate(l2_regs)},
  }
  if selected:
    top1, chosen_l2, val_top1 = (list(column) for column in zip(*selected))
    result.update(_summary(top1))
    result.update(top1_per_seed=top1, selected_l2_per_seed=chosen_l2,
                  val_top1_per_seed=val_top1)
  return result


def evaluate_fewshot(train_features, train_labels, test_features, test_labels,
                     *, shots: Sequence[int] = DEFAULT_SHOTS,
                     seeds: Sequence[int] = DEFAULT_SEEDS,
                     l2_regs: Sequence[float] = DEFAULT_L2_REGS,
                     val_per_class: int = DEFAULT_VAL_PER_CLASS
                     ) -> Dict[int, Dict[str, Any]]:
  """Few-shot linear evaluation for every shot count.

  Args:
    train_features: (n_train, F) frozen features of the training pool.
    train_labels: (n_train,) integer labels, classes 0..K-1.
    test_features: (n_test, F) features of the held-out examples.
    test_labels: (n_test,) their labels.
    shots: examples per class to fit on.
    seeds: one fit per seed and shot count, each on its own sample.
    l2_regs: regularisation strengths to fit.
    val_per_class: validation examples per class, drawn from the training
      pool apart from the shots, to choose l2; 0 chooses nothing and only
      the per-l2 figures are filled in.

  Returns:
    {shots: {
       'top1_mean', 'top1_std': test top-1 with l2 chosen on validation,
         mean and std over seeds (None when val_per_class is 0),
       'top1_per_seed', 'selected_l2_per_seed', 'val_top1_per_seed': lists
         over seeds (None when val_per_class is 0),
       'per_l2': {l2: {'top1_mean', 'top1_std'}}: test top-1 of every l2.
    }}
  """
  train_features = np.asarray(train_features)
  test_features = np.asarray(test_features)
  train_labels = np.asarray(train_labels).astype(np.int64)
  test_labels = np.asarray(test_labels).astype(np.int64)
  _check_inputs(train_features, train_labels, test_features, test_labels,
                seeds, l2_regs)
  l2_regs = tuple(float(l2) for l2 in l2_regs)
  return {
      int(k): _evaluate_shots(train_features, train_labels, test_features,
                              test_labels, int(k), tuple(seeds), l2_regs,
                              val_per_class)
      for k in shots
  }


def _check_inputs(train_features, train_labels, test_features, test_labels,
                  seeds, l2_regs) -> None:
  if train_features.ndim != 2 or test_features.ndim != 2:
    raise ValueError(
        f'features must be (examples, F); got {train_features.shape} and '
        f'{test_features.shape}.')
  if train_features.shape[1] != test_features.shape[1]:
    raise ValueError('train and test features differ in width: '
                     f'{train_features.shape[1]} vs {test_features.shape[1]}.')
  if len(train_labels) != len(train_features) or len(test_labels) != len(
      test_features):
    raise ValueError('every feature row needs exactly one label.')
  num_classes = int(train_labels.max()) + 1
  if train_labels.min() < 0 or not 0 <= test_labels.min() <= (
      test_labels.max()) < num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}) (classes of the '
                     'training pool).')
  if not seeds or not l2_regs or min(l2_regs) < 0:
    raise ValueError('need at least one seed and one l2, all l2 >= 0.')


def format_results(results: Mapping[int, Mapping[str, Any]]) -> str:
  """One line per shot count: chosen-l2 top-1 and the best-on-test l2."""
  lines = []
  for shots, result in sorted(results.items()):
    if result['top1_mean'] is None:
      chosen = 'no l2 chosen (val_per_class=0)'
    else:
      chosen = (f'top-1 {100 * result["top1_mean"]:.2f} '
                f'+- {100 * result["top1_std"]:.2f} '
                f'(l2 per seed {result["selected_l2_per_seed"]})')
    oracle_l2, oracle = max(result['per_l2'].items(),
                            key=lambda item: item[1]['top1_mean'])
    lines.append(f'{shots:3d}-shot: {chosen}; best on test (peeking): '
                 f'{100 * oracle["top1_mean"]:.2f} at l2={oracle_l2:g}')
  return '\n'.join(lines)
