"""The main evaluation: loss, top-1 and top-5 accuracy on the eval split.

Evaluators (record 'eval', every config.eval_every steps):
  'eval'      the trained params: top1_accuracy, top5_accuracy, loss,
              num_examples (`metrics_log.evaluation_record`);
  'ema_eval'  their EMA average when config.ema_decay > 0: the same,
              prefixed 'ema_'.
"""

import functools
from typing import Any, Iterable, List

import flax.linen as nn
import jax

from vit_jax.evaluators import common
from vit_jax.training import metrics_log
from vit_jax.training import steps

MAIN = 'eval'


def eval_step_on_mesh(model: nn.Module, loss: str, mesh: jax.sharding.Mesh,
                      params_shardings: Any = None) -> common.BatchStep:
  """`steps.eval_step` jitted on the mesh: (params, batch) -> sums."""
  return common.jit_on_mesh(
      functools.partial(steps.eval_step, model=model, loss=loss), mesh,
      params_shardings)


def make_evaluator(name: str, *, every: int, step: common.BatchStep,
                   batches: Iterable[Any], mesh: jax.sharding.Mesh,
                   prefix: str = '', params_field: str = 'params'
                   ) -> common.SummingEvaluator:
  """Loss and accuracy of `step` (an `eval_step_on_mesh`) over `batches`,
  logged as `{prefix}top1_accuracy` etc."""
  return common.SummingEvaluator(
      name=name, every=every, step=step, batches=batches, mesh=mesh,
      to_metrics=functools.partial(metrics_log.evaluation_record,
                                   prefix=prefix),
      params_field=params_field)


def make_evaluators(setup: Any, batches: Iterable[Any], *, loss: str,
                    every: int, ema: bool) -> List[common.Evaluator]:
  """The main evaluation of a `vit_jax.training.setup.Setup` on `batches` (the eval split).

  Args:
    setup: the model, mesh and state shardings.
    batches: the eval split's batches, re-iterable.
    loss: the training loss, reported.
    every: cadence in steps (`common.Evaluator`).
    ema: also evaluate the EMA params ('ema_eval').
  """
  # One jitted step for both: the EMA params are sharded like the params.
  step = eval_step_on_mesh(setup.model, loss, setup.mesh,
                           setup.state_shardings.params)
  evaluators = [make_evaluator(MAIN, every=every, step=step,
                               batches=batches, mesh=setup.mesh)]
  if ema:
    evaluators.append(make_evaluator(
        'ema_eval', every=every, step=step, batches=batches,
        mesh=setup.mesh, prefix='ema_', params_field='ema_params'))
  return evaluators
