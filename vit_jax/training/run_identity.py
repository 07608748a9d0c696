"""A run's config is its identity: a resumed run computes what it started.

A workdir's `config.json` is written once, when its run starts from step 0,
and never again. Resuming from a checkpoint with a config that differs in a
key that changes the computation (model, data, augmentation, optimizer,
schedule, total_steps, batch size, precision, seed, ...) is refused before
any step, one line per changed key, unless the caller allows it; each
allowed change is then appended, with the step it applies after, to
`config_changes.jsonl`: `config.json` plus those lines (`effective_config`)
is the config of every step, and what the next resume is compared with. Keys that only change what is reported or where and how often
(REPORTING_KEYS) may change freely, and are recorded the same way.

Keys are compared by their dotted path in the config's JSON (`model.
hidden_size`); a key that only one side has differs too (a config written
by another version of this code).
"""

import dataclasses
import json
import time
from typing import Any, Dict, List, Optional, Sequence

from etils import epath
import jax

from vit_jax import atomic

CONFIG_NAME = 'config.json'
CHANGES_NAME = 'config_changes.jsonl'

# Keys that change what is logged, evaluated, saved or exported, or how the
# same computation is laid out on devices and read from disk: a resumed run
# may change them. Every other key is part of the computation.
REPORTING_KEYS = frozenset({
    # Cadence and retention.
    'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
    'export_npz',
    # Evaluation only: what is measured, never what is trained.
    'eval_split', 'eval_batch_size', 'extra_evals', 'extra_evals_data_dir',
    'fewshot_every', 'fewshot_dataset', 'fewshot_data_dir',
    'fewshot_train_split', 'fewshot_test_split', 'fewshot_shots',
    'fewshot_seeds', 'fewshot_val_per_class',
    # The same data, read faster or slower.
    'cache', 'prefetch',
    # Placement: checkpoints reshard onto any mesh (vit_jax.sharding).
    'cpu_devices', 'mesh_model_axis', 'fsdp', 'sharding_rules',
})

_ABSENT = '(absent)'


@dataclasses.dataclass(frozen=True)
class Change:
  """One key whose value differs between the stored and the new config."""
  key: str
  before: Any
  after: Any

  @property
  def changes_computation(self) -> bool:
    return self.key.split('.')[0] not in REPORTING_KEYS

  def __str__(self) -> str:
    return f'{self.key}: {_show(self.before)} -> {_show(self.after)}'


class ConfigChangedError(ValueError):
  """Resuming would change the computation; `details` lists the keys, one
  line each (programs print them above the error line)."""

  def __init__(self, message: str, changes: Sequence[Change]):
    super().__init__(message)
    self.details = [f'  {change}' for change in changes]


def _show(value: Any) -> str:
  return _ABSENT if value is _ABSENT else json.dumps(value)


def _value(value: Any) -> Any:
  return None if value is _ABSENT else value


def _flat(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def effective_config(workdir) -> Optional[Dict[str, Any]]:
  """The flat config the run in `workdir` goes on with: config.json with
  every recorded change applied; None without a config.json (a run of an
  older version of this code)."""
  workdir = epath.Path(workdir)
  if not (workdir / CONFIG_NAME).exists():
    return None
  config = _flat(json.loads((workdir / CONFIG_NAME).read_text()))
  if (workdir / CHANGES_NAME).exists():
    for line in (workdir / CHANGES_NAME).read_text().splitlines():
      change = json.loads(line)
      if change['after_absent']:
        config.pop(change['key'], None)
      else:
        config[change['key']] = change['after']
  return config


def differences(stored: Dict[str, Any], config_json: str) -> List[Change]:
  """The keys whose values differ between a flat config and a config's
  JSON, sorted."""
  current = _flat(json.loads(config_json))
  return [Change(key, stored.get(key, _ABSENT), current.get(key, _ABSENT))
          for key in sorted(stored.keys() | current.keys())
          if stored.get(key, _ABSENT) != current.get(key, _ABSENT)]


def check_resume(workdir, config_json: str, *,
                 allow_config_change: bool) -> List[Change]:
  """The changes a run resuming in `workdir` with `config_json` makes.

  Args:
    workdir: the run's directory, holding a checkpoint.
    config_json: the new config as JSON (`run_spec.RunSpec.config_json`).
    allow_config_change: accept changes to the computation.

  Returns:
    Every change from `effective_config` (none without a config.json), to
    pass to `record_changes`.

  Raises:
    ConfigChangedError: a change of the computation, not allowed.
  """
  stored = effective_config(workdir)
  if stored is None:
    return []
  changes = differences(stored, config_json)
  refused = [change for change in changes if change.changes_computation]
  if refused and not allow_config_change:
    raise ConfigChangedError(
        f'--workdir={workdir} holds a run of another config: resuming it '
        f'with the {len(refused)} change(s) above would change what it '
        'computes; use a fresh --workdir, or pass --allow_config_change to '
        f'go on with them (each is recorded with its step in '
        f'{epath.Path(workdir) / CHANGES_NAME})', refused)
  return changes


def record_changes(workdir, changes: Sequence[Change], step: int) -> None:
  """Appends `changes`, in force from the step after `step`, to
  config_changes.jsonl (process 0)."""
  if not changes or jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CHANGES_NAME
  when = time.strftime('%Y-%m-%d %H:%M:%S')
  old = path.read_text() if path.exists() else ''
  new = ''.join(
      json.dumps({'step': step, 'key': change.key,
                  'before': _value(change.before),
                  'after': _value(change.after),
                  'after_absent': change.after is _ABSENT,
                  'computation': change.changes_computation, 'time': when}
                 ) + '\n'
      for change in changes)
  atomic.write_text(path, old + new)


def record_config(workdir, config_json: str) -> None:
  """Writes config.json (process 0): only for a run that starts at step 0."""
  if jax.process_index() == 0:
    atomic.write_text(epath.Path(workdir) / CONFIG_NAME, config_json + '\n')
