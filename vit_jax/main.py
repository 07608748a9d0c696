r"""Trains and evaluates a ViT: flags in, `vit_jax.train` does the rest.

  python -m vit_jax.main --config=configs/vit.py:ViT-B_16,cifar10 \
      --workdir=/tmp/vit_cifar10 [--config.lr=0.01 ...]

Many processes: pass --coordinator_address, --num_processes and --process_id
(or nothing, on clusters where jax.distributed detects them itself, e.g.
Cloud TPU or SLURM with --distributed).
"""

import logging as logging_lib
import os
import sys
import time

# Before TensorFlow is imported: keep its start-up banner and oneDNN notice
# out of the logs.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from vit_jax.cli import host_memory  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  # Before TensorFlow and JAX start their threads: XLA:CPU's per-step
  # buffers are then reused instead of faulted in every step.
  host_memory.keep_freed_memory()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vit_jax import npz
from vit_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/default.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Checkpoints, metrics and exports go here.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (multi-process).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process\'s index (multi-process).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() and let it '
    'detect the cluster (implied by --coordinator_address).')


class _LibraryInfoFilter(logging_lib.Filter):
  """Keeps orbax's per-save INFO chatter out of the training log."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or (
        '/orbax/' not in record.pathname)


def _initialize_distributed():
  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  logging.info('Process %d of %d; %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging_lib.getLogger('absl').addFilter(_LibraryInfoFilter())
  _initialize_distributed()
  start = time.time()
  try:
    record = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError, FloatingPointError,
          npz.CheckpointMismatchError) as e:
    logging.error('%s: %s', type(e).__name__, e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  if record and jax.process_index() == 0:
    print(f'Final test top-1 accuracy: {record["top1_accuracy"]:.4f} '
          f'({int(record["num_examples"])} examples), '
          f'{(time.time() - start) / 60:.1f} min wall time')
    print(f'TensorBoard logs and metrics.jsonl: {_WORKDIR.value}')
    print(f'Exported released-layout params: {_WORKDIR.value}/model.npz')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
