"""A run's config is its identity: what a resume may change, what is
refused, what is recorded."""

import json

import pytest

from configs import common
from vit_jax.training import run_identity


def _config_json(**overrides):
  config = common.get_config()
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _started(tmp_path, **overrides):
  run_identity.record_config(tmp_path, _config_json(**overrides))
  return (tmp_path / run_identity.CONFIG_NAME).read_text()


def test_the_same_config_resumes_with_no_change(tmp_path):
  _started(tmp_path)
  assert run_identity.check_resume(tmp_path, _config_json(),
                                   allow_config_change=False) == []


def test_reporting_keys_may_change_and_are_returned_to_be_recorded(
    tmp_path):
  _started(tmp_path)
  changes = run_identity.check_resume(
      tmp_path, _config_json(log_every=7, eval_every=3, keep_checkpoints=9),
      allow_config_change=False)
  assert [str(c) for c in changes] == [
      'eval_every: 1000 -> 3', 'keep_checkpoints: 3 -> 9', 'log_every: 50 -> 7']
  assert not any(c.changes_computation for c in changes)


def test_a_change_of_the_computation_is_refused_one_line_per_key(tmp_path):
  _started(tmp_path)
  with pytest.raises(run_identity.ConfigChangedError) as refusal:
    run_identity.check_resume(
        tmp_path, _config_json(lr=0.01, batch_size=16, total_steps=20_000,
                               log_every=7, **{'model.hidden_size': 64}),
        allow_config_change=False)
  # The reporting key is not among the refused ones.
  assert refusal.value.details == [
      '  batch_size: 512 -> 16', '  lr: 0.03 -> 0.01',
      '  model.hidden_size: null -> 64', '  total_steps: 10000 -> 20000']
  message = str(refusal.value)
  assert '\n' not in message
  assert 'use a fresh --workdir, or pass --allow_config_change' in message


def test_allowed_changes_are_recorded_and_config_json_is_kept(tmp_path):
  original = _started(tmp_path)
  new = _config_json(lr=0.01)
  changes = run_identity.check_resume(tmp_path, new,
                                      allow_config_change=True)
  run_identity.record_changes(tmp_path, changes, step=300)
  assert (tmp_path / run_identity.CONFIG_NAME).read_text() == original
  recorded = [json.loads(line) for line in
              (tmp_path / run_identity.CHANGES_NAME).read_text().splitlines()]
  assert [(r['step'], r['key'], r['before'], r['after'], r['computation'])
          for r in recorded] == [(300, 'lr', 0.03, 0.01, True)]
  # The next resume compares with the config the run goes on with.
  assert run_identity.check_resume(tmp_path, new,
                                   allow_config_change=False) == []
  with pytest.raises(run_identity.ConfigChangedError, match='1 change'):
    run_identity.check_resume(tmp_path, _config_json(),
                              allow_config_change=False)


def test_a_key_only_one_side_has_is_a_change(tmp_path):
  stored = json.loads(_config_json())
  del stored['seed']
  stored['retired_key'] = 1
  (tmp_path / run_identity.CONFIG_NAME).write_text(json.dumps(stored))
  with pytest.raises(run_identity.ConfigChangedError) as refusal:
    run_identity.check_resume(tmp_path, _config_json(),
                              allow_config_change=False)
  assert refusal.value.details == ['  retired_key: 1 -> (absent)',
                                   '  seed: (absent) -> 0']
  changes = run_identity.check_resume(tmp_path, _config_json(),
                                      allow_config_change=True)
  run_identity.record_changes(tmp_path, changes, step=5)
  effective = run_identity.effective_config(tmp_path)
  assert 'retired_key' not in effective and effective['seed'] == 0
  assert run_identity.check_resume(tmp_path, _config_json(),
                                   allow_config_change=False) == []


def test_a_workdir_of_an_older_version_without_config_json_resumes(tmp_path):
  assert run_identity.check_resume(tmp_path, _config_json(lr=1.0),
                                   allow_config_change=False) == []


def test_every_reporting_key_is_a_config_key():
  keys = set(common.get_config().keys())
  assert run_identity.REPORTING_KEYS <= keys
