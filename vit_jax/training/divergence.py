"""Catching a diverged run before it is kept.

Every train step returns a `finite` flag (its loss, gradient norm and the
updated parameters' norm are all finite). Reading it every step would make
the host wait for every step; `FiniteWatch` keeps the flags as device arrays
and reads them only where the run is about to keep or report something (a
checkpoint, a log line, an evaluation, a stop), where the host waits for
the state anyway. So a non-finite state is never saved, and the error names
the first step that went wrong, not the step where it was noticed.
"""

from typing import Callable, Dict, List, Optional, Tuple

import jax
import numpy as np


class DivergedError(FloatingPointError):
  """The training state stopped being finite."""


class FiniteWatch:
  """The `finite` flags of the steps since the last check."""

  def __init__(self):
    self._pending: List[Tuple[int, Dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: Dict[str, jax.Array]) -> None:
    """Keeps `step`'s metrics (with their 'finite' flag) until `check`."""
    self._pending.append((step, metrics))

  def check(self, newest_checkpoint: Callable[[], Optional[int]],
            checkpoint_dir: str) -> None:
    """Raises DivergedError if a step since the last check was not finite.

    Args:
      newest_checkpoint: gives the newest saved step (None: none), which is
        finite: every save is checked first. Asked only for the message,
        so a finite run never lists the checkpoints here.
      checkpoint_dir: where the checkpoints are, for the message.
    """
    pending, self._pending = self._pending, []
    if not pending:
      return
    flags = jax.device_get([metrics['finite'] for _, metrics in pending])
    for (step, metrics), finite in zip(pending, flags, strict=True):
      if not finite:
        raise DivergedError(_message(step, jax.device_get(metrics),
                                     newest_checkpoint(), checkpoint_dir))


def _message(step: int, metrics: Dict[str, np.ndarray],
             newest_checkpoint: Optional[int], checkpoint_dir: str) -> str:
  values = ', '.join(f'{name} {float(metrics[name]):.4g}'
                     for name in ('loss', 'grad_norm', 'param_norm'))
  if newest_checkpoint is None:
    kept = 'no checkpoint was saved before it'
  else:
    kept = (f'the newest checkpoint, step {newest_checkpoint} in '
            f'{checkpoint_dir}, is finite and kept')
  return (f'training diverged: the training state is not finite from step '
          f'{step} on ({values}); nothing after step {step - 1} was saved and '
          f'{kept}. Lower config.lr, keep config.grad_clip_norm > 0 or check '
          'the data, then use a fresh --workdir (or resume with '
          '--allow_config_change)')
