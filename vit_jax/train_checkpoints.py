"""Train-state checkpoints with orbax: asynchronous, keep-last-N, resharding.

A checkpoint holds the whole TrainState (step, params, optimizer state, EMA
params, rng). Restoring takes the target shardings, so a run saved on 8
devices resumes on 1 or 64. Orbax coordinates multi-process saves: every
process calls `save`, each writes its shards once.
"""

import os
from typing import Optional

from etils import epath
import orbax.checkpoint as ocp


class Checkpointer:
  """The workdir's `checkpoints/` directory."""

  def __init__(self, workdir, keep: int):
    directory = epath.Path(workdir) / 'checkpoints'
    if '://' not in str(directory):
      # Orbax refuses relative paths (e.g. the README's runs/default).
      directory = epath.Path(os.path.abspath(directory))
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True,
            create=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state, step: int) -> None:
    """Starts writing `state` in the background (`close` waits for it)."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, abstract_state, step: Optional[int] = None):
    """Restores into the shapes, dtypes and shardings of `abstract_state`
    (a tree of jax.ShapeDtypeStruct with .sharding, as
    `sharding.abstract_arrays` makes)."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
