"""A training run's workdir: claimed by one live run, and what it records.

`claim` creates the workdir, proves it can be written and takes its lock, so
that two runs never write the same checkpoints and metrics (the second one
stops before its first step with the first one's process and host).
`record_run` writes the parameter table beside the checkpoints, instead of
into the log (the config is `run_identity`'s).

The lock is an advisory `flock` on `workdir/.lock`: the kernel releases it
when its process ends, however it ends (kill -9 included), so a stopped run
never leaves a stale lock behind. Remote workdirs (gs://...) have no such
lock; only process 0 of a multi-process run takes it.
"""

import fcntl
import os
import socket
import time
from typing import Any, Optional, TextIO

from clu import parameter_overview
from etils import epath
import jax

from vit_jax import atomic

LOCK_NAME = '.lock'
PARAMETERS_NAME = 'parameters.txt'


class WorkdirInUseError(ValueError):
  """Another live run holds the workdir's lock."""


class Claim:
  """The lock of a claimed workdir; `release` (or the process's end) frees
  it."""

  def __init__(self, lock_file: Optional[TextIO]):
    self._lock_file = lock_file

  def release(self) -> None:
    if self._lock_file is not None:
      self._lock_file.close()  # Closing the descriptor drops the flock.
      self._lock_file = None

  def __enter__(self) -> 'Claim':
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.release()


def claim(workdir) -> Claim:
  """Creates `workdir` if needed and locks it for this run.

  Raises:
    ValueError: the workdir cannot be created or written (named, with the
      system's reason).
    WorkdirInUseError: another live run holds it.
  """
  workdir = epath.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0 or '://' in str(workdir):
      return Claim(None)
    lock_file = open(os.path.join(workdir, LOCK_NAME), 'a+')
  except OSError as e:
    raise ValueError(
        f'cannot write to --workdir={workdir} ({e.strerror or e}); choose a '
        'directory you can write to') from e
  try:
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock_file.seek(0)
    holder = lock_file.read().strip() or 'another process'
    lock_file.close()
    raise WorkdirInUseError(
        f'--workdir={workdir} is in use by another run ({holder}); wait for '
        'it to end, stop it, or choose another --workdir') from None
  lock_file.truncate(0)
  lock_file.write(f'pid {os.getpid()} on {socket.gethostname()}, since '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
  lock_file.flush()
  return Claim(lock_file)


def record_run(workdir, params: Any) -> str:
  """Writes `parameters.txt` (process 0) and returns the line that says so,
  with the parameter count, for the log.

  Args:
    workdir: the run's directory.
    params: the parameters, tabled.
  """
  workdir = epath.Path(workdir)
  # Every process computes the table: its mean and std columns are
  # computations over the global arrays, in which all processes take part.
  table = parameter_overview.get_parameter_overview(params)
  if jax.process_index() == 0:
    atomic.write_text(workdir / PARAMETERS_NAME, table + '\n')
  count = parameter_overview.count_parameters(params)
  return (f'{count:,} parameters; config and parameter table in '
          f'{workdir / "config.json"} and {workdir / PARAMETERS_NAME}')
