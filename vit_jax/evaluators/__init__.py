"""Evaluations the training loop runs, behind one protocol.

An evaluator (`common.Evaluator`) has a `name`, a cadence `every` (in steps:
`train.is_due`), the `params_field` of the TrainState it evaluates ('params'
or 'ema_params'), the metrics.jsonl `record` its metrics join, and
`evaluate(params) -> {metric name: value}`. `from_config` builds the list the
loop runs, in this order:

  classification   'eval' (the eval split; the record train_and_evaluate
                   returns) and 'ema_eval' (config.ema_decay): record 'eval'
  imagenet         config.extra_evals, ImageNet-ReaL ('real_*') and
                   ImageNet-v2 ('v2_*'): record 'eval'
  linear_fewshot   'fewshot' (config.fewshot_every): record 'fewshot'

A new evaluator is a module implementing the protocol with a
`from_config(config, setup, read_eval)` and one line below.
"""

from typing import Any, Iterable, List

from vit_jax.evaluators import classification
from vit_jax.evaluators import common
from vit_jax.evaluators import imagenet
from vit_jax.evaluators import linear_fewshot

Evaluator = common.Evaluator
MAIN = classification.MAIN  # The main evaluator's name.
MAIN_RECORD = common.MAIN_RECORD


def from_config(config, setup: Any, eval_batches: Iterable[Any],
                read_eval: common.ReadEval) -> List[Evaluator]:
  """Every evaluator the config asks for.

  Args:
    config: the experiment config (eval_every, ema_decay, loss,
      extra_evals*, fewshot_*, data_dir).
    setup: the `train.Setup`: its model, mesh and state shardings.
    eval_batches: the main eval set (config.eval_split), re-iterable.
    read_eval: reads the eval batches of another (source, split) with the
      experiment's settings.

  Returns:
    The evaluators, the main one ('eval') first.
  """
  return [*classification.from_config(config, setup, eval_batches),
          *imagenet.from_config(config, setup, read_eval),
          *linear_fewshot.from_config(config, setup, read_eval)]
