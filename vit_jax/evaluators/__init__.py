"""Evaluations the training loop runs, behind one protocol.

An evaluator (`common.Evaluator`) has a `name`, a cadence `every` (in steps:
`vit_jax.training.loop.is_due`), the `params_field` of the TrainState it evaluates ('params'
or 'ema_params'), the metrics.jsonl `record` its metrics join, and
`evaluate(params) -> {metric name: value}`. `make_evaluators(spec, ...)`
builds the list the loop runs, in this order:

  classification   'eval' (the eval split; the record train_and_evaluate
                   returns) and 'ema_eval' (ema_decay > 0): record 'eval'
  imagenet         extra_evals, ImageNet-ReaL ('real_*') and
                   ImageNet-v2 ('v2_*'): record 'eval'
  linear_fewshot   'fewshot' (fewshot_every > 0): record 'fewshot'

A new evaluator is a module implementing the protocol with a
`make_evaluators(...)`, its settings in `EvalSpec` and one line below.
"""

import dataclasses
from typing import Any, Iterable, List, Optional, Tuple

from vit_jax.evaluators import classification
from vit_jax.evaluators import common
from vit_jax.evaluators import imagenet
from vit_jax.evaluators import linear_fewshot

Evaluator = common.Evaluator
MAIN = classification.MAIN  # The main evaluator's name.
MAIN_RECORD = common.MAIN_RECORD


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """The evaluations of a run: the config keys of the same names
  (configs/common.py), checked once on construction.

  Attributes:
    eval_every: cadence of the main and extra evaluations; 0: only at the
      last step.
    loss: the training loss, which the evaluations report.
    ema_decay: > 0: the EMA params are evaluated too ('ema_eval').
    extra_evals: names of `imagenet.EXTRA_EVALS`.
    extra_evals_data_dir: their TFDS data_dir (the config's None means
      config.data_dir, resolved by `vit_jax.training.run_spec`).
    fewshot: the few-shot evaluation.
  """
  eval_every: int = 1000
  loss: str = 'softmax_xent'
  ema_decay: float = 0.0
  extra_evals: Tuple[str, ...] = ()
  extra_evals_data_dir: Optional[str] = None
  fewshot: linear_fewshot.FewshotSpec = linear_fewshot.FewshotSpec()

  def __post_init__(self):
    if self.eval_every < 0:
      raise ValueError(f'config.eval_every must be >= 0 (0: only at the last '
                       f'step), got {self.eval_every}')
    imagenet.check_names(self.extra_evals)


def make_evaluators(spec: EvalSpec, setup: Any, eval_batches: Iterable[Any],
                    read_eval: common.ReadEval) -> List[Evaluator]:
  """Every evaluator `spec` asks for.

  Args:
    spec: the evaluations.
    setup: the `vit_jax.training.setup.Setup`: its model, mesh and state shardings.
    eval_batches: the main eval set (the eval split), re-iterable.
    read_eval: reads the eval batches of another (source, split) with the
      experiment's settings.

  Returns:
    The evaluators, the main one ('eval') first.
  """
  return [
      *classification.make_evaluators(
          setup, eval_batches, loss=spec.loss, every=spec.eval_every,
          ema=spec.ema_decay > 0),
      *imagenet.make_evaluators(
          spec.extra_evals, setup, read_eval,
          data_dir=spec.extra_evals_data_dir, loss=spec.loss,
          every=spec.eval_every),
      *linear_fewshot.make_evaluators(spec.fewshot, setup, read_eval)]
