"""Training and evaluation: checks, setup, restore, loop, export.

`train_and_evaluate(config, workdir)` is the whole job; vit_jax.main only
parses flags. The config is read once, into a `run_spec.RunSpec` (one
checked spec per concern); everything below takes the specs. The model,
mesh and jitted steps are `setup`'s, the final .npz files `npz_export`'s.
Everything here is importable by tests and notebooks.
"""

import dataclasses
import functools
import time
from typing import Dict, List, Optional, Set

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from vit_jax import evaluators
from vit_jax import models
from vit_jax import sharding
from vit_jax.training import checkpoints as train_checkpoints
from vit_jax.training import divergence
from vit_jax.training import metrics_log
from vit_jax.training import preemption
from vit_jax.training import run_identity
from vit_jax.training import npz_export
from vit_jax.training import run_spec
from vit_jax.training import setup as setup_lib
from vit_jax.training import steps
from vit_jax.training import workdir as workdir_lib

RunSpec = run_spec.RunSpec


def is_due(step: int, every: int, total_steps: int) -> bool:
  """The one cadence rule: every `every` steps, and at the last step."""
  return step == total_steps or (every > 0 and step % every == 0)


# ----------------------------------------------------------------------------
# The loop.


def run_evaluators(evals: List[evaluators.Evaluator], state: steps.TrainState,
                   step: int, total_steps: int) -> Dict[str, Dict[str, float]]:
  """Runs the evaluators due at `step`, each on its params field.

  Returns:
    {record: metrics} of the evaluators that ran, in their order; the
    metrics of evaluators sharing a record are merged.
  """
  records = {}
  for evaluator in evals:
    if is_due(step, evaluator.every, total_steps):
      logging.info('step %d: evaluating %s', step, evaluator.name)
      metrics = evaluator.evaluate(getattr(state, evaluator.params_field))
      records.setdefault(evaluator.record, {}).update(metrics)
  return records


def _evaluate_main(evals: List[evaluators.Evaluator],
                   state: steps.TrainState) -> Dict[str, float]:
  main = next(e for e in evals if e.name == evaluators.MAIN)
  return main.evaluate(getattr(state, main.params_field))


def owed_evaluators(evals: List[evaluators.Evaluator], step: int,
                    total_steps: int, done: Set[str]
                    ) -> List[evaluators.Evaluator]:
  """The evaluators due at `step` whose record metrics.jsonl lacks (`done`:
  the records process 0 found there): a run killed after saving `step`'s
  checkpoint but before its evaluations were written owes them. Every
  process gets process 0's answer."""
  if step == 0:
    return []
  owed = np.array([is_due(step, e.every, total_steps) and
                   e.record not in done for e in evals], np.int32)
  owed = multihost_utils.broadcast_one_to_all(owed)
  return [e for e, is_owed in zip(evals, owed, strict=True) if is_owed]


def _log_evaluations(records: Dict[str, Dict[str, float]], step: int,
                     log: metrics_log.MetricsLog) -> Optional[Dict[str, float]]:
  """Logs `run_evaluators`' records; returns the main one, if there."""
  for name, values in records.items():
    logging.info('step %d %s: %s', step, name, _format_metrics(values))
    log.write(step, values, record=name)
  return records.get(evaluators.MAIN_RECORD)


def _format_metrics(values: Dict[str, float]) -> str:
  """'top1_accuracy 0.9110  loss 0.3817  num_examples 10000'."""
  return '  '.join(f'{k} {int(v)}' if k.endswith('num_examples')
                   else f'{k} {v:.4f}' for k, v in values.items())


class Progress:
  """The progress line: steps/s, images/s, ETA and the applied lr."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int,
               log_every: int):
    self._total, self._batch = total_steps, batch_size
    self._start_step, self._log_every = start_step, log_every
    self._last_step, self._last_time = start_step, time.time()

  def _window(self, step: int) -> str:
    """Says so when the mean is over fewer steps than usual: the first
    window after a resume between two log steps."""
    steps = step - self._last_step
    if self._last_step != self._start_step or self._start_step == 0 or (
        self._log_every and steps >= self._log_every):
      return ''
    return f' (mean of the {steps} steps since the resume at step ' \
           f'{self._start_step})'

  def report(self, step: int, metrics: Dict[str, float]) -> Dict[str, float]:
    now = time.time()
    window = self._window(step)
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta_min = (self._total - step) / max(steps_per_sec, 1e-9) / 60
    logging.info(
        'step %d/%d  loss %.4f%s  lr %.3g  %.2f steps/s  %.0f img/s  '
        'ETA %.1f min', step, self._total, metrics['loss'], window,
        metrics['lr'], steps_per_sec, steps_per_sec * self._batch, eta_min)
    return {'steps_per_sec': steps_per_sec,
            'images_per_sec': steps_per_sec * self._batch}


# Metrics that are a state of the run at a step, not an average over the
# window: the schedule's lr and the params' norm at the logged step.
_AT_THE_STEP = ('lr', 'param_norm')


def _window_metrics(history) -> Dict[str, float]:
  """The window's mean of each step metric (its last value for those of
  `_AT_THE_STEP`), and how many steps it spans."""
  history = jax.device_get(history)
  window = {k: float(np.mean([h[k] for h in history])) for k in history[0]
            if k != 'finite'}
  window.update({k: float(history[-1][k]) for k in _AT_THE_STEP
                 if k in history[-1]})
  window['window_steps'] = len(history)
  return window


def _validate(config) -> RunSpec:
  """Every check of the config, before the workdir is touched."""
  models.check_model_config(config)
  return run_spec.from_config(config)


def _run_steps(spec: RunSpec, setup: setup_lib.Setup, state,
               start_step: int, batches, evals, checkpointer,
               log: metrics_log.MetricsLog):
  """Steps `start_step + 1` to `spec.total_steps`, with their logging,
  checkpoints and evaluations.

  Nothing non-finite is kept: the steps' `finite` flags are read before
  every save, log line, evaluation and stop (`divergence.FiniteWatch`).
  Pending checkpoint writes finish whatever ends the loop: a failing step or
  evaluation, or a stop signal (`preemption.Preempted`, after the
  checkpoint of its step); the process would otherwise end in the middle
  of them.

  Returns:
    (the final state, the last main evaluation record or None).
  """
  total_steps = spec.total_steps
  progress = Progress(start_step, total_steps, spec.data.batch_size,
                      spec.log_every)
  watch = divergence.FiniteWatch()
  check_finite = lambda: watch.check(checkpointer.latest_step,
                                     str(checkpointer.directory))
  history, record = [], None
  try:
    with preemption.StopRequest() as stop:
      for step in range(start_step + 1, total_steps + 1):
        checkpointer.check_saves(step - 1)
        batch = sharding.global_batch(next(batches), setup.mesh)
        state, metrics = setup.train_step(state, batch)
        history.append(metrics)
        watch.add(step, metrics)
        if is_due(step, spec.log_every, total_steps):
          check_finite()
          train_metrics = _window_metrics(history)
          history = []
          train_metrics.update(progress.report(step, train_metrics))
          log.write(step, {f'train_{k}': v for k, v in train_metrics.items()})
        # Saved before the evaluations: one that fails loses no training.
        saved = is_due(step, spec.checkpoint_every, total_steps)
        if saved:
          check_finite()
          checkpointer.save(state, step)
        if any(is_due(step, e.every, total_steps) for e in evals):
          check_finite()
        record = _log_evaluations(
            run_evaluators(evals, state, step, total_steps), step,
            log) or record
        if stop.due(step):
          if not saved:
            check_finite()
            checkpointer.save(state, step)
          log.flush()
          raise preemption.Preempted(step, stop.signal_name)
  finally:
    checkpointer.close()
  return state, record


def _repeat_owed_evaluations(evals, state, step: int, total_steps: int,
                             done: Set[str], log: metrics_log.MetricsLog
                             ) -> Optional[Dict[str, float]]:
  """Runs and logs `owed_evaluators`; returns the main record if owed."""
  owed = owed_evaluators(evals, step, total_steps, done)
  if owed:
    logging.info('Evaluating step %d again: its evaluation was not recorded '
                 '(the run stopped during it)', step)
  return _log_evaluations(run_evaluators(owed, state, step, total_steps),
                          step, log)


def train_and_evaluate(config, workdir, *, allow_config_change: bool = False
                       ) -> Optional[Dict[str, float]]:
  """Trains per `config`, evaluating, checkpointing and exporting to workdir.

  Everything that can be checked is, before the workdir is touched: the
  config (`run_spec.from_config`), the data and the model. A workdir holding
  a checkpoint is resumed, with the config it was trained with
  (`run_identity`).

  Args:
    config: the experiment's ml_collections config.
    workdir: the run's directory.
    allow_config_change: resume even when `config` changes the
      computation of the run in `workdir` (each change is recorded).

  Returns:
    The last record of the main evaluation ('eval': the main eval set, its
    EMA and extra variants), None if none ran.
  """
  run_start = time.time()
  spec = _validate(config)
  source = spec.data.source()
  setup = setup_lib.make_setup(spec, spec.data.resolve_num_classes(source))
  inputs = _inputs(spec, setup, source)
  with workdir_lib.claim(workdir):
    with train_checkpoints.Checkpointer(workdir,
                                        spec.keep_checkpoints) as checkpointer:
      return _train(spec, epath.Path(workdir), setup, inputs, checkpointer,
                    run_start, allow_config_change)


@dataclasses.dataclass(frozen=True)
class _Inputs:
  """What a run reads, made (and so checked) before the workdir is claimed.

  Attributes:
    source: the training data (`sources.make_source`).
    normalization: the pixel normalisation (`preprocessing`).
    evals: the evaluators, their data sources made.
  """
  source: object
  normalization: models.Preprocessing
  evals: List[evaluators.Evaluator]


def _inputs(spec: RunSpec, setup: setup_lib.Setup, source) -> _Inputs:
  normalization = setup_lib.preprocessing(spec.pretrained_path, setup.model)
  read_eval = functools.partial(spec.data.eval_batches,
                                normalization=normalization)
  evals = evaluators.make_evaluators(spec.evals, setup, read_eval(source),
                                     read_eval)
  return _Inputs(source, normalization, evals)


def _claim_identity(spec: RunSpec, workdir: epath.Path, checkpointer,
                    allow_config_change: bool) -> List[run_identity.Change]:
  """Refuses, before restoring, a resume that changes the computation."""
  if checkpointer.latest_step() is None:
    return []
  return run_identity.check_resume(workdir, spec.config_json,
                                   allow_config_change=allow_config_change)


def _record_identity(spec: RunSpec, workdir: epath.Path, start_step: int,
                     changes: List[run_identity.Change]) -> None:
  if start_step == 0:  # Nothing of an earlier run is kept.
    run_identity.record_config(workdir, spec.config_json)
  else:
    run_identity.record_changes(workdir, changes, start_step)


def _train(spec: RunSpec, workdir: epath.Path, setup: setup_lib.Setup,
           inputs: _Inputs, checkpointer, run_start: float,
           allow_config_change: bool) -> Optional[Dict[str, float]]:
  """`train_and_evaluate` in a claimed workdir."""
  changes = _claim_identity(spec, workdir, checkpointer, allow_config_change)
  state = setup_lib.initial_state(spec, setup, checkpointer)
  start_step = int(jax.device_get(state.step))
  if start_step < spec.total_steps:
    checkpointer.check_space(state)
  _record_identity(spec, workdir, start_step, changes)
  recorded = workdir_lib.record_run(workdir, state.params)
  logging.info('%s: %s', spec.model_name, recorded)

  log = metrics_log.MetricsLog(workdir, start_time=run_start)
  done = log.drop_after(start_step)
  source, normalization, evals = (inputs.source, inputs.normalization,
                                  inputs.evals)
  batches = spec.data.train_batches(source, normalization=normalization,
                                    start_step=start_step)
  record = _repeat_owed_evaluations(evals, state, start_step,
                                    spec.total_steps, done, log)
  state, last = _run_steps(spec, setup, state, start_step, batches, evals,
                           checkpointer, log)
  record = last or record
  if record is None and start_step >= spec.total_steps:
    # A finished run started again: report its accuracy, log nothing twice.
    record = _evaluate_main(evals, state)
    logging.info('Already trained to step %d; evaluation: %s', start_step,
                 _format_metrics(record))
  log.flush()
  if spec.export_npz:
    exported = npz_export.export_npz(
        state, workdir, spec.step.ema_decay > 0, model=setup.model,
        image_size=spec.data.image_size, normalization=normalization,
        names=npz_export.class_names(spec.data.label_map, source,
                          setup.model.num_classes))
    for name, path in exported.items():
      logging.info('Exported %s (released .npz layout) to %s', name, path)
  log.close()
  return record
