"""Extra ImageNet eval sets (`config.extra_evals`), run with every evaluation.

  * 'imagenet2012_real' (TFDS `imagenet2012_real`, its validation split):
    ImageNet-ReaL (Beyer et al. 2020). A top-1 prediction is correct when it
    is one of the image's reassessed labels; images the reassessment left
    without any label are excluded. Metrics: real_top1_accuracy,
    real_num_examples (images with labels), real_num_without_labels.
  * 'imagenet_v2' (TFDS `imagenet_v2`, default config matched-frequency, its
    test split): evaluated like the main eval set. Metrics:
    v2_top1_accuracy, v2_top5_accuracy, v2_loss, v2_num_examples.

Both read `config.extra_evals_data_dir` (None: config.data_dir), need a
1000-class model, evaluate the trained params (not their EMA average) and
join the main evaluation's record at its cadence (config.eval_every).
"""

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import tensorflow as tf

from vit_jax.data import sources
from vit_jax.evaluators import classification
from vit_jax.evaluators import common

REAL_LABELS = 'imagenet2012_real'
IMAGENET_V2 = 'imagenet_v2'
# name -> (metrics prefix, split).
EXTRA_EVALS = {REAL_LABELS: ('real_', 'validation'),
               IMAGENET_V2: ('v2_', 'test')}


def multi_hot(class_ids, num_classes: int):
  """tf: a (variable-length) vector of class ids -> float32 (num_classes,)."""
  counts = tf.reduce_sum(tf.one_hot(class_ids, num_classes, dtype=tf.float32),
                         axis=0)
  return tf.minimum(counts, 1.0)


def real_labels_source(data_dir: Optional[str]) -> sources.TfdsSource:
  """The `imagenet2012_real` validation images with multi-hot label sets.

  Examples: {'image', 'label' (the original label), 'real_label' float32
  (num_classes,) multi-hot, all zero for an image without ReaL labels}.
  """
  builder = sources.tfds_builder(REAL_LABELS, data_dir)
  sources.check_split(builder, EXTRA_EVALS[REAL_LABELS][1])
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

  return sources.TfdsSource(
      builder, example_fn=example, num_classes=num_classes,
      features=('image', label_key, 'real_label'))


def real_labels_eval_step(params, batch: Dict[str, jax.Array], *,
                          model: nn.Module) -> Dict[str, jax.Array]:
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


def real_labels_record(sums: common.Metrics, prefix: str) -> common.Metrics:
  return {f'{prefix}top1_accuracy': sums['top1_correct'] / max(sums['count'],
                                                               1.0),
          f'{prefix}num_examples': sums['count'],
          f'{prefix}num_without_labels': sums['without_labels']}


def _check_classes(name: str, source, model: nn.Module) -> None:
  if source.num_classes != model.num_classes:
    raise ValueError(
        f'extra eval {name!r} has {source.num_classes} classes but the model '
        f'has {model.num_classes}; config.extra_evals needs an ImageNet '
        '(1000-class) model.')


def make_extra_eval(name: str, *, model: nn.Module, mesh: jax.sharding.Mesh,
                    read_eval: common.ReadEval, data_dir: Optional[str],
                    loss: str = 'softmax_xent', every: int = 0,
                    params_shardings: Any = None) -> common.SummingEvaluator:
  """The evaluation called `name` (a key of EXTRA_EVALS).

  Args:
    name: 'imagenet2012_real' or 'imagenet_v2'.
    model: the model being trained (1000 classes).
    mesh: the training mesh.
    read_eval: reads the eval batches of a (source, split).
    data_dir: the TFDS data_dir of the ImageNet sets.
    loss: the training loss (ImageNet-v2 reports it).
    every: cadence in steps (`common.Evaluator`).
    params_shardings: the params' shardings (None: replicated).
  """
  prefix, split = EXTRA_EVALS[name]
  if name == IMAGENET_V2:
    source = sources.make_source(name, data_dir, (split,))
    _check_classes(name, source, model)
    return classification.make_evaluator(
        name, every=every, batches=read_eval(source, split), mesh=mesh,
        prefix=prefix, step=classification.eval_step_on_mesh(
            model, loss, mesh, params_shardings))
  source = real_labels_source(data_dir)
  _check_classes(name, source, model)
  return common.SummingEvaluator(
      name=name, every=every, batches=read_eval(source, split), mesh=mesh,
      step=common.jit_on_mesh(
          functools.partial(real_labels_eval_step, model=model), mesh,
          params_shardings),
      to_metrics=functools.partial(real_labels_record, prefix=prefix))


def extra_eval_names(entries: Sequence[str]) -> Tuple[str, ...]:
  """config.extra_evals as a tuple of names.

  Entries may hold comma-separated names, which is what the command line
  `--config.extra_evals=imagenet2012_real,imagenet_v2` gives.
  """
  return tuple(name.strip() for entry in entries
               for name in entry.split(',') if name.strip())


def check_names(names: Sequence[str]) -> None:
  """Raises ValueError for a name that is not a key of EXTRA_EVALS."""
  for name in names:
    if name not in EXTRA_EVALS:
      raise ValueError(f'config.extra_evals has unknown {name!r}; known: '
                       f'{sorted(EXTRA_EVALS)}.')


def make_evaluators(names: Sequence[str], setup: Any,
                    read_eval: common.ReadEval, *, data_dir: Optional[str],
                    loss: str, every: int) -> List[common.Evaluator]:
  """The evaluations of `names` (EXTRA_EVALS keys) for a `vit_jax.training.setup.Setup`.

  Args:
    names: checked names (`check_names`).
    setup: the model, mesh and state shardings.
    read_eval: reads the eval batches of a (source, split).
    data_dir: the TFDS data_dir of the ImageNet sets.
    loss: the training loss (ImageNet-v2 reports it).
    every: cadence in steps, the main evaluation's.
  """
  return [make_extra_eval(
      name, model=setup.model, mesh=setup.mesh, read_eval=read_eval,
      data_dir=data_dir, loss=loss, every=every,
      params_shardings=setup.state_shardings.params) for name in names]
