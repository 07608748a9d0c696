"""metrics.jsonl on resume: records past the step dropped, a torn last line
tolerated, the file replaced whole."""

import json

import pytest

from vit_jax import metrics_log


def _write_lines(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))


def _records(steps):
  return [json.dumps({'step': step, 'elapsed_s': 1.0, 'loss': step / 10})
          for step in steps]


def test_drop_after_keeps_records_up_to_the_step(tmp_path):
  log = metrics_log.MetricsLog(str(tmp_path))
  _write_lines(log.jsonl_path, _records([10, 20, 30, 40]))
  log.drop_after(20)
  assert [json.loads(line)['step'] for line in
          log.jsonl_path.read_text().splitlines()] == [10, 20]
  assert sorted(p.name for p in tmp_path.glob('metrics.jsonl*')) == [
      'metrics.jsonl']
  log.close()


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  log = metrics_log.MetricsLog(str(tmp_path))
  torn = '{"step": 30, "elapsed_s": 3.0, "lo'
  _write_lines(log.jsonl_path, _records([10, 20]) + [torn])
  log.drop_after(30)
  assert log.jsonl_path.read_text().splitlines() == _records([10, 20])
  assert 'torn last line 3' in caplog.text
  log.write(30, {'loss': 3.0})
  assert [json.loads(line)['step'] for line in
          log.jsonl_path.read_text().splitlines()] == [10, 20, 30]
  log.close()


def test_damage_before_the_last_line_is_an_error(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  _write_lines(path, _records([10]) + ['not json'] + _records([20]))
  with pytest.raises(ValueError, match='line 2 is not a metrics record'):
    metrics_log.read_records(path)
