"""Stopping a run cleanly when asked: SIGTERM (what TPU and GPU schedulers
send before they take a machine away) and SIGINT (Ctrl-C).

Two ways, for two kinds of work:
  StopRequest             work that can pause (training): the signal is
                          noted and the loop stops after its current step
  raise_on_stop_signals   work that cannot (an export): the signal raises
                          `Interrupted` where the program is, so the
                          cleanup on the way out runs (a temporary
                          directory removed) and the program ends in one
                          line with `Interrupted.exit_status`

The training loop asks `StopRequest.due(step)` after every step; once a
signal has arrived it finishes that step, saves its checkpoint and raises
`Preempted`, which the program turns into one line saying how to resume.

With many processes the stop step must be the same everywhere, or the
collective checkpoint save would hang: JAX's distributed runtime catches
SIGTERM itself and agrees on a step (`multihost_utils.
reached_preemption_sync_point`), so no signal is caught here then.
"""

import contextlib
import signal
import threading
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils

# Exit statuses of a process ended by these signals (128 + signal number).
EXIT_STATUS = {'SIGTERM': 128 + signal.SIGTERM, 'SIGINT': 128 + signal.SIGINT}


class Preempted(Exception):
  """The loop stopped on a signal after saving the checkpoint of `step`."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f'stopped by {signal_name} after step {step}, whose '
                     'checkpoint is saved: run the same command to resume')
    self.step = step
    self.signal_name = signal_name


class StopRequest:
  """Catches the stop signals while training (a context manager).

  A second Ctrl-C while the checkpoint is being written falls through to
  Python's default: the user insists.
  """

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}

  def _signals(self):
    if jax.process_count() > 1:
      return ()  # The distributed runtime's (see the module docstring).
    return (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    # Handlers can only be installed from the main thread.
    if threading.current_thread() is threading.main_thread():
      for signum in self._signals():
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def due(self, step: int) -> bool:
    """Whether to stop after `step` (every process gets the same answer)."""
    if jax.process_count() > 1:
      try:
        reached = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # The runtime's preemption service is off.
        return False
      if reached:
        self.signal_name = 'SIGTERM'
      return reached
    return self.signal_name is not None


class Interrupted(BaseException):
  """A stop signal arrived inside `raise_on_stop_signals`.

  A BaseException, as KeyboardInterrupt is: `except Exception` clauses let
  it through to the program.
  """

  def __init__(self, signal_name: str):
    super().__init__(f'interrupted by {signal_name}')
    self.signal_name = signal_name

  @property
  def exit_status(self) -> int:
    return EXIT_STATUS[self.signal_name]


# The stop signal `raise_on_stop_signals` raised, while inside it: code it
# runs (a library's broad except) can swallow the exception.
_raised_signal: Optional[str] = None


def raise_if_stopped() -> None:
  """Raises `Interrupted` again if a stop signal arrived inside
  `raise_on_stop_signals` and its exception was swallowed on the way; a
  program calls it before it commits its work."""
  if _raised_signal is not None:
    raise Interrupted(_raised_signal)


@contextlib.contextmanager
def raise_on_stop_signals() -> Iterator[None]:
  """Within it, SIGTERM and SIGINT raise `Interrupted` in the main thread.

  Once one has, the signals are ignored until the context is left: the
  work is already stopping, and a second Ctrl-C must not cut its cleanup
  short. Outside the main thread (where handlers cannot be installed) it
  changes nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {}

  def interrupt(signum, frame):
    del frame
    global _raised_signal
    for stop_signal in previous:
      signal.signal(stop_signal, signal.SIG_IGN)
    _raised_signal = signal.Signals(signum).name
    raise Interrupted(_raised_signal)

  for stop_signal in (signal.SIGTERM, signal.SIGINT):
    previous[stop_signal] = signal.signal(stop_signal, interrupt)
  try:
    yield
  finally:
    for stop_signal, handler in previous.items():
      signal.signal(stop_signal, handler)
    _forget_raised_signal()


def _forget_raised_signal() -> None:
  global _raised_signal
  _raised_signal = None
