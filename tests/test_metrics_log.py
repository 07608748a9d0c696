"""metrics.jsonl on resume: records past the step dropped, a torn last line
tolerated, the file replaced whole."""

import json

import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
import tensorflow as tf

from vit_jax.training import metrics_log


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


def _tensorboard_points(logdir, tag):
  """(step, value) of `tag` as TensorBoard's server shows them."""
  accumulator = plugin_event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return [(event.step, float(tf.make_ndarray(event.tensor_proto)))
          for event in accumulator.Tensors(tag)]


def test_tensorboard_forgets_the_steps_a_resumed_run_repeats(tmp_path):
  stopped = metrics_log.MetricsLog(str(tmp_path))
  stopped.drop_after(0)
  for step in (10, 20, 30, 40):
    stopped.write(step, {'train_loss': step})
  stopped.close()
  resumed = metrics_log.MetricsLog(str(tmp_path))
  resumed.drop_after(20)
  for step in (30, 40):
    resumed.write(step, {'train_loss': -step})
  resumed.close()
  assert _tensorboard_points(tmp_path, 'train/loss') == [
      (10, 10.0), (20, 20.0), (30, -30.0), (40, -40.0)]


def test_tensorboard_groups_tags_by_record_and_plots_no_counts(tmp_path):
  log = metrics_log.MetricsLog(str(tmp_path))
  log.drop_after(0)
  log.write(10, {'train_loss': 1.5, 'train_lr': 0.25, 'train_window_steps': 10})
  log.write(10, {'top1_accuracy': 0.75, 'ema_top1_accuracy': 0.5,
                 'num_examples': 100, 'ema_num_examples': 100},
            record='eval')
  log.close()
  accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert sorted(accumulator.Tags()['tensors']) == [
      'eval/ema_top1_accuracy', 'eval/top1_accuracy', 'train/loss',
      'train/lr']
  assert _tensorboard_points(tmp_path, 'eval/top1_accuracy') == [(10, 0.75)]
  # metrics.jsonl keeps every key as written, counts included.
  assert [json.loads(line) for line in log.jsonl_path.read_text().splitlines()
          ] == [
      {'step': 10, 'record': 'train', 'elapsed_s': pytest.approx(0, abs=60),
       'train_loss': 1.5, 'train_lr': 0.25, 'train_window_steps': 10.0},
      {'step': 10, 'record': 'eval', 'elapsed_s': pytest.approx(0, abs=60),
       'top1_accuracy': 0.75, 'ema_top1_accuracy': 0.5, 'num_examples': 100.0,
       'ema_num_examples': 100.0}]
