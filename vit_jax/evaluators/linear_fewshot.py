"""Few-shot linear evaluation of the current params (paper section 4.1).

The 'fewshot' evaluator (record 'fewshot', every config.fewshot_every steps;
none when it is 0) extracts the trained params' pre-logits features of a
training pool and a test split of config.fewshot_dataset and fits them per
`vit_jax.evaluators.fewshot_ridge`. Metrics: fewshot_{k}shot_top1 per shot
count k (mean over config.fewshot_seeds). `FewshotSpec` holds these settings.

`FeatureExtractor` is the one feature extraction of the library: the
evaluator runs it on the training mesh, `vit_jax.cli.fewshot` on one device.
"""

import dataclasses
import functools
from typing import Any, Dict, Iterable, List, Optional, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.data import sources
from vit_jax.evaluators import common
from vit_jax.evaluators import fewshot_ridge
from vit_jax import models
from vit_jax import sharding


def features_step(params, batch: Dict[str, jax.Array], *,
                  model: nn.Module) -> Dict[str, jax.Array]:
  """Pre-logits features of a batch, with its labels and mask alongside (so
  a replicated result gives every process the whole global batch)."""
  _, inside = models.apply_with_intermediates(model, params, batch['image'])
  return {'features': inside['pre_logits'].astype(jnp.float32),
          'label': batch['label'], 'mask': batch['mask']}


class FeatureExtractor:
  """The pre-logits features of a model over padded batches, jitted once.

  Features are the 'pre_logits' intermediate of
  `models.apply_with_intermediates`: for a model with its head, the input of
  the head (after the tanh representation layer when the model has one); for
  the features model of `models.without_head`, its output.
  """

  def __init__(self, model: nn.Module,
               mesh: Optional[jax.sharding.Mesh] = None,
               params_shardings: Any = None):
    """Jits the features step.

    Args:
      model: a model with pooled features (e.g. a ViT with a 'token' or
        'gap' classifier).
      mesh: where to run (the training mesh); None: one local device.
      params_shardings: the params' shardings (None: replicated).
    """
    self._mesh = mesh or sharding.make_mesh(1, jax.local_devices()[:1])
    self._step = common.jit_on_mesh(
        functools.partial(features_step, model=model), self._mesh,
        params_shardings)

  def __call__(self, params, batches: Iterable[Dict[str, Any]]
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Features of the real examples of `batches`, in input order.

    Args:
      params: the model's params.
      batches: host-local batches: 'image' (B, H, W, 3), 'label' (B,)
        integers or (B, K) one-hot, and 'mask' (B,), true for real examples
        (absent: every example is real).

    Returns:
      (features (n, F) float32, labels (n,) int64) of the n real examples:
      padding (mask 0) is dropped, so with a pipeline that pads the last
      batch every example appears exactly once.

    Raises:
      ValueError: no batches, or features that are not pooled (n, F).
    """
    features, labels = [], []
    for batch in batches:
      out = jax.device_get(self._step(
          params, sharding.global_batch(_with_mask(batch), self._mesh)))
      real = np.asarray(out['mask']).astype(bool).reshape(-1)
      features.append(_pooled(np.asarray(out['features']))[real])
      labels.append(_class_ids(np.asarray(out['label']))[real])
    if not features:
      raise ValueError('no batches to extract features from.')
    return np.concatenate(features), np.concatenate(labels)


def _with_mask(batch: Dict[str, Any]) -> Dict[str, Any]:
  """{'image', 'label', 'mask'} of a batch; a missing mask: all real."""
  mask = batch.get('mask', np.ones(len(batch['image']), np.float32))
  return {'image': batch['image'], 'label': batch['label'], 'mask': mask}


def _pooled(features: np.ndarray) -> np.ndarray:
  if features.ndim != 2:
    raise ValueError(
        f'pre_logits of shape {features.shape} are not pooled; use a '
        "'token' or 'gap' classifier for few-shot features.")
  return features


def _class_ids(labels: np.ndarray) -> np.ndarray:
  """(B,) integers or (B, K) one-hot -> (B,) int64."""
  if labels.ndim == 2:
    labels = labels.argmax(axis=-1)
  return labels.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FewshotSpec:
  """The few-shot evaluation: the config keys of the same names
  (configs/common.py), checked once on construction.

  Attributes:
    fewshot_every: cadence in steps (`common.Evaluator`); 0: no evaluator.
    fewshot_dataset: TFDS name or 'imagefolder'.
    fewshot_data_dir: its data_dir (the config's None means config.data_dir,
      resolved by `vit_jax.training.run_spec`).
    fewshot_train_split: the pool the shots and l2-validation examples come
      from.
    fewshot_test_split: the held-out examples.
    fewshot_shots: examples per class, as in `fewshot_ridge.evaluate_fewshot`.
    fewshot_seeds: as in `fewshot_ridge.evaluate_fewshot`.
    fewshot_val_per_class: as in `fewshot_ridge.evaluate_fewshot`; >= 1.
  """
  fewshot_every: int = 0
  fewshot_dataset: str = 'fashion_mnist_local'
  fewshot_data_dir: Optional[str] = None
  fewshot_train_split: str = 'train[:10000]'
  fewshot_test_split: str = 'test'
  fewshot_shots: Tuple[int, ...] = (1, 5, 10, 25)
  fewshot_seeds: Tuple[int, ...] = (0,)
  fewshot_val_per_class: int = 10

  def __post_init__(self):
    if self.fewshot_every < 0:
      raise ValueError(f'config.fewshot_every must be >= 0 (0 turns it off), '
                       f'got {self.fewshot_every}')
    if self.fewshot_every and (self.fewshot_val_per_class < 1
                               or not self.fewshot_shots):
      raise ValueError('config.fewshot_val_per_class must be >= 1 (it '
                       'chooses l2) and config.fewshot_shots non-empty.')


class FewShotEvaluator:
  """Few-shot linear evaluation of the pre-logits of the params.

  Features come from the model being trained, head and all (see
  `FeatureExtractor`).
  """
  name = 'fewshot'
  record = 'fewshot'
  params_field = 'params'

  def __init__(self, model: nn.Module, mesh: jax.sharding.Mesh,
               read_eval: common.ReadEval, spec: FewshotSpec,
               params_shardings: Any = None):
    """Opens both splits of the spec's dataset and jits the extractor.

    Args:
      model: the model being trained; its classifier must pool the tokens
        ('token' or 'gap').
      mesh: the training mesh.
      read_eval: reads the eval batches of a (source, split).
      spec: what to evaluate on, and how often.
      params_shardings: the params' shardings (None: replicated).
    """
    if not models.family_of(model).pools_features(model):
      raise ValueError('few-shot evaluation needs pooled features; this '
                       "model's are per token (use a 'token' or 'gap' "
                       'classifier, or set config.fewshot_every=0).')
    self.every = spec.fewshot_every
    self._dataset = spec.fewshot_dataset
    self._protocol = dict(shots=tuple(spec.fewshot_shots),
                          seeds=tuple(spec.fewshot_seeds),
                          val_per_class=spec.fewshot_val_per_class)
    train_split, test_split = (spec.fewshot_train_split,
                               spec.fewshot_test_split)
    source = sources.make_source(spec.fewshot_dataset, spec.fewshot_data_dir,
                                 (train_split, test_split))
    self._train_batches = read_eval(source, train_split)
    self._test_batches = read_eval(source, test_split)
    self._features = FeatureExtractor(model, mesh, params_shardings)

  def results(self, params) -> Dict[int, Dict[str, Any]]:
    """The full `fewshot.evaluate_fewshot` results for `params`."""
    return fewshot_ridge.evaluate_fewshot(
        *self._features(params, self._train_batches),
        *self._features(params, self._test_batches), **self._protocol)

  def evaluate(self, params) -> common.Metrics:
    """{'fewshot_{k}shot_top1': mean test top-1 over seeds} per shot count."""
    results = self.results(params)
    logging.info('few-shot on %s:\n%s', self._dataset,
                 fewshot_ridge.format_results(results))
    return {f'fewshot_{shots}shot_top1': result['top1_mean']
            for shots, result in sorted(results.items())}


def make_evaluators(spec: FewshotSpec, setup: Any,
                    read_eval: common.ReadEval) -> List[common.Evaluator]:
  """The evaluator for a `vit_jax.training.setup.Setup`; none when spec.fewshot_every=0."""
  if not spec.fewshot_every:
    return []
  return [FewShotEvaluator(setup.model, setup.mesh, read_eval, spec,
                           params_shardings=setup.state_shardings.params)]
