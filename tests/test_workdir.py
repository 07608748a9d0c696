"""The workdir claim: one live run at a time, released however the run ends;
what a run records beside its checkpoints."""

import os
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

from vit_jax.training import workdir


def test_a_claimed_workdir_is_refused_to_a_second_run(tmp_path):
  with workdir.claim(tmp_path / 'run'):
    with pytest.raises(workdir.WorkdirInUseError,
                       match=f'in use by another run \\(pid {os.getpid()} '):
      workdir.claim(tmp_path / 'run')
  # Released: the next run may have it.
  workdir.claim(tmp_path / 'run').release()


@pytest.mark.slow
def test_a_killed_run_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', textwrap.dedent(f"""
          import sys, time
          from vit_jax.training import workdir
          claim = workdir.claim({str(tmp_path)!r})
          print('claimed', flush=True)
          time.sleep(600)
          """)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'claimed'
    with pytest.raises(workdir.WorkdirInUseError, match=f'pid {holder.pid}'):
      workdir.claim(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  workdir.claim(tmp_path).release()


def test_an_unwritable_workdir_is_named(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(ValueError, match='cannot write to --workdir=.*file/run '
                     r'\(Not a directory\)'):
    workdir.claim(tmp_path / 'file' / 'run')


def test_record_run_writes_the_parameter_table(tmp_path):
  params = {'head': {'kernel': jnp.zeros((3, 5)), 'bias': jnp.zeros(5)}}
  line = workdir.record_run(tmp_path, params)
  assert line.startswith('20 parameters; ')
  table = (tmp_path / workdir.PARAMETERS_NAME).read_text()
  assert 'head/kernel' in table and '(3, 5)' in table
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      workdir.PARAMETERS_NAME]
