"""Evaluations besides the main eval set, run by the training loop.

  * Extra eval sets (`config.extra_evals`), run with every evaluation:
    - 'imagenet2012_real' (TFDS `imagenet2012_real`, its validation split):
      ImageNet-ReaL (Beyer et al. 2020). A top-1 prediction is correct when
      it is one of the image's reassessed labels; images the reassessment
      left without any label are excluded. Records: real_top1_accuracy,
      real_num_examples (images with labels), real_num_without_labels.
    - 'imagenet_v2' (TFDS `imagenet_v2`, default config matched-frequency,
      its test split): evaluated like the main eval set. Records:
      v2_top1_accuracy, v2_top5_accuracy, v2_loss, v2_num_examples.
    Both read `config.extra_evals_data_dir` (None: config.data_dir) and need
    a 1000-class model.
  * Few-shot linear evaluation (`config.fewshot_*`, paper section 4.1): the
    current params' pre-logits features of a training pool and a test split,
    fitted per `vit_jax.fewshot`. Records: fewshot_{k}shot_top1 per shot
    count k (mean over `config.fewshot_seeds`).

Both evaluate the trained params (not their EMA average). Every evaluation
runs the model jitted over the training mesh with the params' own
shardings, on padded and masked batches of `vit_jax.input_pipeline`, so
every example counts exactly once on any number of devices and processes.
"""

import functools
from typing import Any, Callable, Dict, Iterable, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from vit_jax import fewshot
from vit_jax import input_pipeline
from vit_jax import input_sources
from vit_jax import metrics_log
from vit_jax import models
from vit_jax import sharding
from vit_jax import steps

REAL_LABELS = 'imagenet2012_real'
IMAGENET_V2 = 'imagenet_v2'
# name -> (record prefix, split).
EXTRA_EVALS = {REAL_LABELS: ('real_', 'validation'),
               IMAGENET_V2: ('v2_', 'test')}


def _jit_on_mesh(step: Callable, mesh, params_shardings):
  """`step(params, batch)` jitted with batches split over 'data' and a
  replicated result (every process gets all of it)."""
  replicated = sharding.replicated(mesh)
  return sharding.MeshBound(jax.jit(
      step, in_shardings=(params_shardings or replicated,
                          sharding.batch_sharding(mesh)),
      out_shardings=replicated), mesh)


def sum_over_batches(step: Callable, params, batches: Iterable[Any],
                     mesh) -> Dict[str, float]:
  """Sums a jitted step's dict of sums over one pass of host-local batches."""
  sums = None
  for batch in batches:
    out = step(params, sharding.global_batch(batch, mesh))
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
  if sums is None:
    raise ValueError('no batches to evaluate')
  return {k: float(v) for k, v in jax.device_get(sums).items()}


# ----------------------------------------------------------------------------
# ImageNet-ReaL and ImageNet-v2.


def multi_hot(class_ids, num_classes: int):
  """tf: a (variable-length) vector of class ids -> float32 (num_classes,)."""
  counts = tf.reduce_sum(tf.one_hot(class_ids, num_classes, dtype=tf.float32),
                         axis=0)
  return tf.minimum(counts, 1.0)


def real_labels_source(data_dir: Optional[str]):
  """The `imagenet2012_real` validation images with multi-hot label sets.

  Examples: {'image', 'label' (the original label), 'real_label' float32
  (num_classes,) multi-hot, all zero for an image without ReaL labels}.
  """
  builder = input_sources.tfds_builder(REAL_LABELS, data_dir)
  input_sources.check_split(builder, EXTRA_EVALS[REAL_LABELS][1])
  features = builder.info.features
  # TFDS names the original label 'original_label'; accept 'label' too.
  label_key = 'original_label' if 'original_label' in features else 'label'
  if 'real_label' not in features:
    raise ValueError(f'{REAL_LABELS} in {data_dir!r} has no real_label '
                     f'feature (features: {list(features)}).')
  num_classes = features['real_label'].feature.num_classes

  def example(ex):
    return {'image': ex['image'], 'label': ex[label_key],
            'real_label': multi_hot(ex['real_label'], num_classes)}

  return input_sources.TfdsSource(
      builder, example_fn=example, num_classes=num_classes,
      features=('image', label_key, 'real_label'))


def real_labels_eval_step(params, batch: Dict[str, jax.Array], *, model):
  """Sums over the real examples of `batch` for ImageNet-ReaL.

  A prediction is correct when batch['real_label'] (B, C) marks its class;
  examples whose label set is empty are counted apart and excluded.
  """
  logits_BC = model.apply({'params': params}, batch['image'], train=False)
  predicted_B = jnp.argmax(logits_BC, axis=-1)
  real_BC = batch['real_label']
  hit_B = jnp.take_along_axis(real_BC, predicted_B[:, None], axis=1)[:, 0]
  mask_B = batch['mask'].astype(jnp.float32)
  has_labels_B = (jnp.max(real_BC, axis=-1) > 0).astype(jnp.float32)
  return {
      'top1_correct': jnp.sum(hit_B * has_labels_B * mask_B),
      'count': jnp.sum(has_labels_B * mask_B),
      'without_labels': jnp.sum((1 - has_labels_B) * mask_B),
  }


def real_labels_record(sums: Dict[str, float], prefix: str) -> Dict[str, float]:
  return {f'{prefix}top1_accuracy': sums['top1_correct'] / max(sums['count'],
                                                               1.0),
          f'{prefix}num_examples': sums['count'],
          f'{prefix}num_without_labels': sums['without_labels']}


class ExtraEval:
  """One extra eval set: a jitted summing step over its padded batches."""

  def __init__(self, name: str, step: Callable, batches, mesh,
               record: Callable[[Dict[str, float]], Dict[str, float]]):
    self.name = name
    self._step, self._batches, self._mesh = step, batches, mesh
    self._record = record

  def evaluate(self, params) -> Dict[str, float]:
    return self._record(sum_over_batches(self._step, params, self._batches,
                                         self._mesh))


def _check_classes(name: str, source, model) -> None:
  if source.num_classes != model.num_classes:
    raise ValueError(
        f'extra eval {name!r} has {source.num_classes} classes but the model '
        f'has {model.num_classes}; config.extra_evals needs an ImageNet '
        '(1000-class) model.')


def make_extra_eval(name: str, config, model, mesh,
                    params_shardings=None) -> ExtraEval:
  """The evaluation called `name` (a key of EXTRA_EVALS).

  Args:
    name: 'imagenet2012_real' or 'imagenet_v2'.
    config: the experiment config: data_dir, extra_evals_data_dir,
      image_size, eval_batch_size, cache, prefetch and loss are read.
    model: the model being trained (1000 classes).
    mesh: the training mesh.
    params_shardings: the params' shardings (None: replicated).
  """
  if name not in EXTRA_EVALS:
    raise ValueError(f'config.extra_evals has unknown {name!r}; known: '
                     f'{sorted(EXTRA_EVALS)}.')
  prefix, split = EXTRA_EVALS[name]
  data_dir = config.extra_evals_data_dir or config.data_dir
  if name == REAL_LABELS:
    source = real_labels_source(data_dir)
    step = functools.partial(real_labels_eval_step, model=model)
    record = functools.partial(real_labels_record, prefix=prefix)
  else:
    source = input_sources.make_source(name, data_dir, (split,))
    step = functools.partial(steps.eval_step, model=model, loss=config.loss)
    record = functools.partial(metrics_log.evaluation_record, prefix=prefix)
  _check_classes(name, source, model)
  batches = input_pipeline.get_eval_iterator(config, source=source,
                                             split=split)
  return ExtraEval(name, _jit_on_mesh(step, mesh, params_shardings), batches,
                   mesh, record)


def extra_eval_names(config) -> List[str]:
  """config.extra_evals as a list of names.

  Entries may hold comma-separated names, which is what the command line
  `--config.extra_evals=imagenet2012_real,imagenet_v2` gives.
  """
  return [name.strip() for entry in config.extra_evals
          for name in entry.split(',') if name.strip()]


class ExtraEvals:
  """The eval sets of `config.extra_evals`, run with every evaluation."""

  def __init__(self, evals: List[ExtraEval]):
    self.evals = evals

  @classmethod
  def from_config(cls, config, setup) -> 'ExtraEvals':
    """Builds every set of config.extra_evals for a `train.Setup`."""
    return cls([make_extra_eval(name, config, setup.model, setup.mesh,
                                setup.state_shardings.params)
                for name in extra_eval_names(config)])

  def evaluate(self, params) -> Dict[str, float]:
    """All sets' records in one dict ({} when there are none)."""
    record = {}
    for evaluation in self.evals:
      record.update(evaluation.evaluate(params))
    return record


# ----------------------------------------------------------------------------
# Few-shot linear evaluation of the current params.


def features_step(params, batch: Dict[str, jax.Array], *, model):
  """Pre-logits features of a batch, with its labels and mask alongside (so
  a replicated result gives every process the whole global batch)."""
  _, inside = models.apply_with_intermediates(model, params, batch['image'])
  return {'features': inside['pre_logits'].astype(jnp.float32),
          'label': batch['label'], 'mask': batch['mask']}


class FewShotEvaluator:
  """Few-shot linear evaluation of the pre-logits of the params (section 4.1).

  Features come from the model being trained, head and all: the 'pre_logits'
  intermediate of `models.apply_with_intermediates` (after the tanh
  representation layer when the model has one).
  """

  def __init__(self, config, model, mesh, params_shardings=None):
    """Opens both splits of config.fewshot_dataset and jits the extractor.

    Args:
      config: the experiment config (fewshot_* keys, image_size,
        eval_batch_size, cache, prefetch, data_dir).
      model: the model being trained; its classifier must pool the tokens
        ('token' or 'gap').
      mesh: the training mesh.
      params_shardings: the params' shardings (None: replicated).
    """
    if model.classifier not in ('token', 'gap'):
      raise ValueError(f'few-shot evaluation needs pooled features; the '
                       f'model\'s classifier is {model.classifier!r} (use '
                       "'token' or 'gap', or set config.fewshot_every=0).")
    if config.fewshot_val_per_class < 1 or not config.fewshot_shots:
      raise ValueError('config.fewshot_val_per_class must be >= 1 (it '
                       'chooses l2) and config.fewshot_shots non-empty.')
    self._config = config
    self._mesh = mesh
    splits = (config.fewshot_train_split, config.fewshot_test_split)
    source = input_sources.make_source(
        config.fewshot_dataset, config.fewshot_data_dir or config.data_dir,
        splits)
    self._train_batches, self._test_batches = (
        input_pipeline.get_eval_iterator(config, source=source, split=split)
        for split in splits)
    self._features = _jit_on_mesh(
        functools.partial(features_step, model=model), mesh, params_shardings)

  def _extract(self, params, batches):
    features, labels = [], []
    for batch in batches:
      out = jax.device_get(self._features(
          params, sharding.global_batch(batch, self._mesh)))
      real = np.asarray(out['mask']) > 0
      features.append(np.asarray(out['features'])[real])
      labels.append(np.asarray(out['label'])[real])
    return np.concatenate(features), np.concatenate(labels)

  def results(self, params) -> Dict[int, Dict[str, Any]]:
    """The full `fewshot.evaluate_fewshot` results for `params`."""
    train_features, train_labels = self._extract(params, self._train_batches)
    test_features, test_labels = self._extract(params, self._test_batches)
    config = self._config
    return fewshot.evaluate_fewshot(
        train_features, train_labels, test_features, test_labels,
        shots=tuple(config.fewshot_shots), seeds=tuple(config.fewshot_seeds),
        val_per_class=config.fewshot_val_per_class)

  def evaluate(self, params) -> Dict[str, float]:
    """{'fewshot_{k}shot_top1': mean test top-1 over seeds} per shot count."""
    results = self.results(params)
    logging.info('few-shot on %s:\n%s', self._config.fewshot_dataset,
                 fewshot.format_results(results))
    return {f'fewshot_{shots}shot_top1': result['top1_mean']
            for shots, result in sorted(results.items())}

  @classmethod
  def from_config(cls, config, setup) -> Optional['FewShotEvaluator']:
    """The evaluator for a `train.Setup`; None when config.fewshot_every=0."""
    if not config.fewshot_every:
      return None
    return cls(config, setup.model, setup.mesh, setup.state_shardings.params)
