"""What a run keeps can be trusted: no non-finite checkpoint, evaluations
that survive a kill, no silent config change on resume, the error line
last."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import data_helpers
from tests import helpers
from vit_jax.training import checkpoints as train_checkpoints
from vit_jax.training import divergence
from vit_jax.training import loop
from vit_jax.training import run_identity


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder')
  data_helpers.write_image_folder(root, {'train': 8, 'test': 5}, 3,
                                  helpers.TINY_IMAGE_SIZE)
  return str(root)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


_TIMES = ('elapsed_s', 'train_steps_per_sec', 'train_images_per_sec')


def _without_time(records):
  return [{k: v for k, v in r.items() if k not in _TIMES} for r in records]


def _checkpoint_arrays(step_dir):
  """Every array of a saved train state, read without a target."""
  item = os.path.join(step_dir, 'default')
  restored = ocp.StandardCheckpointer().restore(item)
  return [np.asarray(x) for x in
          ocp.tree.to_flat_dict(restored).values()]


@pytest.mark.slow
def test_a_diverging_run_keeps_only_finite_checkpoints(image_folder,
                                                       tmp_path):
  # Plain SGD at lr 1e4 without clipping: finite for a few warm-up steps,
  # then not (step 6 on the machines tried).
  config = helpers.tiny_config(
      image_folder, optimizer='sgd', lr=1e4, grad_clip_norm=0.0,
      warmup_steps=6, total_steps=12, checkpoint_every=1, keep_checkpoints=2,
      log_every=0, eval_every=0)
  workdir = tmp_path / 'run'
  with pytest.raises(divergence.DivergedError) as error:
    loop.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  first = int(re.search(r'not finite from step (\d+) on', message).group(1))
  assert first >= 3
  kept = sorted(int(step) for step in os.listdir(workdir / 'checkpoints'))
  # Checkpointing every step: the last two before the first bad step.
  assert kept == [first - 2, first - 1]
  assert (f'the newest checkpoint, step {first - 1} in '
          f'{workdir / "checkpoints"}, is finite and kept') in message
  for step in kept:
    for array in _checkpoint_arrays(workdir / 'checkpoints' / str(step)):
      assert np.all(np.isfinite(array))


@pytest.mark.slow
def test_divergence_before_any_checkpoint_saves_none(image_folder, tmp_path):
  config = helpers.tiny_config(image_folder, lr=float('nan'),
                               grad_clip_norm=0.0, log_every=0)
  workdir = tmp_path / 'run'
  with pytest.raises(divergence.DivergedError,
                     match='from step 1 on .* no checkpoint was saved'):
    loop.train_and_evaluate(config, str(workdir))
  assert os.listdir(workdir / 'checkpoints') == []


_KILLED_IN_EVALUATION = """
import sys, time
from tests import helpers
from vit_jax.training import loop

real_evaluators = loop.run_evaluators

def hanging_second_evaluation(evals, state, step, total_steps):
  if step == 2 and evals:
    print('evaluating step 2', flush=True)
    time.sleep(600)
  return real_evaluators(evals, state, step, total_steps)

loop.run_evaluators = hanging_second_evaluation
loop.train_and_evaluate(helpers.tiny_config(sys.argv[1], eval_every=2),
                        sys.argv[2])
"""


@pytest.mark.slow
def test_evaluations_killed_or_failed_are_run_again_on_resume(
    image_folder, tmp_path, monkeypatch):
  config = helpers.tiny_config(image_folder, eval_every=2)
  straight = str(tmp_path / 'straight')
  loop.train_and_evaluate(config, straight)

  # A kill in the middle of step 2's evaluation, in a process of its own.
  killed = str(tmp_path / 'killed')
  run = subprocess.Popen(
      [sys.executable, '-c', _KILLED_IN_EVALUATION, image_folder, killed],
      cwd=helpers.REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
      text=True)
  manifest = os.path.join(killed, 'checkpoints', '2',
                          train_checkpoints.MANIFEST_NAME)
  try:
    assert run.stdout.readline().strip() == 'evaluating step 2'
    # The save runs on in the background while the evaluation hangs.
    deadline = time.time() + 120
    while not os.path.exists(manifest) and time.time() < deadline:
      time.sleep(0.1)
  finally:
    run.send_signal(signal.SIGKILL)
    run.wait()
  # Killed with step 2's checkpoint committed and its evaluation unwritten.
  assert os.path.exists(manifest)
  assert [r['record'] for r in _records(killed)] == ['train', 'train']

  # The resume evaluates step 2 again, then fails in the last evaluation:
  # the finished run's, whose checkpoint is saved.
  real_evaluators = loop.run_evaluators

  def failing_last_evaluation(evals, state, step, total_steps):
    if step == total_steps:
      raise OSError('the machine went away')
    return real_evaluators(evals, state, step, total_steps)

  monkeypatch.setattr(loop, 'run_evaluators', failing_last_evaluation)
  with pytest.raises(OSError):
    loop.train_and_evaluate(config, killed)
  assert [r['step'] for r in _records(killed)
          if r['record'] == 'eval'] == [2]
  monkeypatch.setattr(loop, 'run_evaluators', real_evaluators)
  record = loop.train_and_evaluate(config, killed)
  evaluations = [r for r in _records(killed) if r['record'] == 'eval']
  assert [r['step'] for r in evaluations] == [2, 4]
  assert evaluations[1]['top1_accuracy'] == record['top1_accuracy']
  assert _without_time(_records(killed)) == _without_time(_records(straight))


@pytest.mark.slow
def test_resuming_with_another_lr_is_refused_and_allowed_on_request(
    image_folder, tmp_path):
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(
      helpers.tiny_config(image_folder, total_steps=2), str(workdir))
  config_json = (workdir / 'config.json').read_text()
  records = _records(workdir)

  longer = helpers.tiny_config(image_folder, total_steps=4, lr=0.01)
  with pytest.raises(run_identity.ConfigChangedError) as refusal:
    loop.train_and_evaluate(longer, str(workdir))
  assert refusal.value.details == ['  lr: 0.001 -> 0.01',
                                   '  total_steps: 2 -> 4']
  assert _records(workdir) == records  # Nothing ran, nothing was dropped.

  loop.train_and_evaluate(longer, str(workdir), allow_config_change=True)
  assert (workdir / 'config.json').read_text() == config_json
  changes = [json.loads(line) for line in
             (workdir / 'config_changes.jsonl').read_text().splitlines()]
  assert [(c['step'], c['key']) for c in changes] == [(2, 'lr'),
                                                      (2, 'total_steps')]
  assert [r['step'] for r in _records(workdir)
          if r['record'] == 'train'] == [1, 2, 3, 4]


@pytest.mark.slow
def test_the_first_window_after_a_resume_says_how_many_steps_it_averages(
    image_folder, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger='absl')
  config = helpers.tiny_config(image_folder, total_steps=6, log_every=4,
                               checkpoint_every=2, eval_every=0)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(config, workdir)
  # As if killed after step 2's checkpoint: drop the later ones.
  for step in ('4', '6'):
    os.rename(os.path.join(workdir, 'checkpoints', step),
              os.path.join(tmp_path, step))
  before = _records(workdir)[-1]['elapsed_s']
  loop.train_and_evaluate(config, workdir)
  train = [r for r in _records(workdir) if r['record'] == 'train']
  assert [(r['step'], r['train_window_steps']) for r in train] == [
      (4, 2), (6, 2)]
  assert 'mean of the 2 steps since the resume at step 2' in caplog.text
  # elapsed_s goes on from the processes before.
  assert train[0]['elapsed_s'] > before


_CONFIG_FILE = """
from tests import helpers

def get_config():
  return helpers.tiny_config({folder!r}, total_steps=2, eval_every=0)
"""


def _program(config_file, workdir, *arguments):
  return subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', f'--config={config_file}',
       f'--workdir={workdir}', *arguments],
      cwd=helpers.REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_programs_refusal_is_its_last_line_without_orbax_noise(
    image_folder, tmp_path):
  config_file = tmp_path / 'tiny.py'
  config_file.write_text(textwrap.dedent(_CONFIG_FILE.format(
      folder=image_folder)))
  workdir = tmp_path / 'run'
  # The run to resume, trained in this process (a program's start is what
  # costs here) with the config file's config.
  loop.train_and_evaluate(
      helpers.tiny_config(image_folder, total_steps=2, eval_every=0),
      str(workdir))

  changed = _program(config_file, workdir, '--config.lr=0.5',
                     '--config.model.mlp_dim=48')
  lines = changed.stderr.strip().splitlines()
  assert changed.returncode == 1
  assert lines[-3:-1] == ['  lr: 0.001 -> 0.5',
                          '  model.mlp_dim: 64 -> 48']
  assert lines[-1].startswith(f'error: --workdir={workdir} holds a run of '
                              'another config')

  # Allowed, the model still cannot change under its checkpoint.
  forced = _program(config_file, workdir, '--config.model.mlp_dim=48',
                    '--allow_config_change')
  assert forced.returncode == 1
  assert 'Traceback' not in forced.stderr
  assert forced.stderr.strip().splitlines()[-1].startswith(
      f'error: {workdir}/checkpoints/2 holds a checkpoint of a different '
      'model')
