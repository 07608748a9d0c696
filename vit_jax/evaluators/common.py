"""The evaluator protocol and what every evaluator runs on.

Every evaluation runs the model jitted over the training mesh with the
params' own shardings, on padded and masked batches of
`vit_jax.data.pipeline`, so every example counts exactly once on any number
of devices and processes.
"""

import dataclasses
import time
from typing import Any, Callable, Dict, Iterable, Protocol

from absl import logging
import jax
import jax.numpy as jnp

from vit_jax import sharding

# The record of the main evaluation: the one `train_and_evaluate` returns.
MAIN_RECORD = 'eval'

Metrics = Dict[str, float]
# A long evaluation says how far it got this often (seconds).
PROGRESS_EVERY_S = 10.0

# (params, global batch) -> dict of arrays, jitted on a mesh.
BatchStep = Callable[[Any, Dict[str, jax.Array]], Dict[str, jax.Array]]
# (source, split) -> re-iterable of padded eval batches, each `iter()` one
# pass (`input_pipeline.get_eval_iterator` with the experiment's settings).
ReadEval = Callable[[Any, str], Iterable[Dict[str, Any]]]


class Evaluator(Protocol):
  """What the training loop runs (`vit_jax.training.loop.train_and_evaluate`).

  Attributes:
    name: unique, e.g. 'eval', 'ema_eval', 'imagenet_v2', 'fewshot'.
    every: cadence in steps: it runs every `every` steps and at the last
      step (`vit_jax.training.loop.is_due`; 0: at the last step only).
    params_field: the `steps.TrainState` field it evaluates: 'params' or
      'ema_params'.
    record: the metrics.jsonl record its metrics join: the metrics of the
      evaluators with the same record that are due at a step are written as
      one line (MAIN_RECORD is the one `train_and_evaluate` returns).
  """
  name: str
  every: int
  params_field: str
  record: str

  def evaluate(self, params: Any) -> Metrics:
    """Metrics of `params`, named as they are logged (prefixes included)."""


def jit_on_mesh(step: Callable, mesh: jax.sharding.Mesh,
                params_shardings: Any = None) -> sharding.MeshBound:
  """`step(params, batch)` jitted with batches split over 'data' and a
  replicated result (every process gets all of it).

  Args:
    step: the function to jit.
    mesh: the training mesh.
    params_shardings: the params' shardings (None: replicated).
  """
  replicated = sharding.replicated(mesh)
  return sharding.MeshBound(jax.jit(
      step, in_shardings=(params_shardings or replicated,
                          sharding.batch_sharding(mesh)),
      out_shardings=replicated), mesh)


def sum_over_batches(step: BatchStep, params: Any,
                     batches: Iterable[Dict[str, Any]],
                     mesh: jax.sharding.Mesh, name: str = 'evaluation'
                     ) -> Metrics:
  """Sums a jitted step's dict of sums over one pass of host-local batches.

  An evaluation that runs past `PROGRESS_EVERY_S` logs how many batches
  it has done, every `PROGRESS_EVERY_S`.

  Args:
    step: jitted (params, global batch) -> dict of sums.
    params: the params `step` takes.
    batches: one pass of host-local batches (with `len`, as
      `pipeline.EvalIterable`, the progress lines give the total).
    mesh: the mesh `step` runs on.
    name: the evaluation, for the progress lines.

  Returns:
    The sums, as floats.

  Raises:
    ValueError: `batches` is empty.
  """
  sums = before_last = None
  total = f'/{len(batches)}' if hasattr(batches, '__len__') else ''
  start = last_report = time.monotonic()
  for done, batch in enumerate(batches, start=1):
    out = step(params, sharding.global_batch(batch, mesh))
    if before_last is not None:
      # Two batches in flight at most: the device always has the next one
      # while the host makes a third, and the progress line counts batches
      # done (nearly), not batches queued (all of them, in a second).
      jax.block_until_ready(before_last)
    before_last = sums
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
    if time.monotonic() - last_report >= PROGRESS_EVERY_S:
      last_report = time.monotonic()
      logging.info('  %s: %d%s batches, %.0f s', name, done, total,
                   last_report - start)
  if sums is None:
    raise ValueError('no batches to evaluate')
  return {k: float(v) for k, v in jax.device_get(sums).items()}


@dataclasses.dataclass
class SummingEvaluator:
  """An evaluator that sums a step's outputs over one pass of an eval set.

  Attributes:
    name, every, params_field, record: see `Evaluator`.
    step: jitted (params, batch) -> sums, e.g. `jit_on_mesh(steps.eval_step)`.
    batches: the eval set, re-iterable.
    mesh: the mesh `step` runs on.
    to_metrics: the summed outputs -> the logged metrics.
  """
  name: str
  every: int
  step: BatchStep
  batches: Iterable[Dict[str, Any]]
  mesh: jax.sharding.Mesh
  to_metrics: Callable[[Metrics], Metrics]
  params_field: str = 'params'
  record: str = MAIN_RECORD

  def evaluate(self, params: Any) -> Metrics:
    return self.to_metrics(sum_over_batches(self.step, params, self.batches,
                                            self.mesh, self.name))

