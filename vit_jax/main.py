r"""Trains and evaluates a ViT: flags in, `vit_jax.training.loop` does the rest.

  .venv/bin/python -m vit_jax.main --config=configs/vit.py:ViT-B_16,cifar10 \
      --workdir=/tmp/vit_cifar10 [--config.lr=0.01 ...]

Many processes: pass --coordinator_address, --num_processes and --process_id
(or nothing, on clusters where jax.distributed detects them itself, e.g.
Cloud TPU or SLURM with --distributed).
"""

import sys
import time

from vit_jax.cli import _process

if __name__ == '__main__':
  # Before TensorFlow is imported: keep its banner out of the logs.
  _process.quiet_tensorflow()
  # Before TensorFlow and JAX start their threads: on the CPU, XLA's
  # per-step buffers are then reused instead of faulted in every step.
  _process.keep_freed_memory_on_cpu()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vit_jax.cli import _flags as cli_flags
from vit_jax import commands
from vit_jax.training import loop
from vit_jax.training import preemption
# pylint: enable=g-import-not-at-top,wrong-import-position


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags; only when run as a program, so that
  importing this module next to other programs does not clash."""
  config_flags.DEFINE_config_file(
      'config', None, 'Config file, e.g. configs/default.py.',
      lock_config=True, flag_values=flag_values)
  define = cli_flags.definer(flag_values)
  define(flags.DEFINE_string, 'workdir', None,
         'Checkpoints, metrics and exports go here.')
  define(flags.DEFINE_string, 'coordinator_address', None,
         'host:port of process 0 (multi-process).')
  define(flags.DEFINE_integer, 'num_processes', None,
         'Number of processes (multi-process).')
  define(flags.DEFINE_integer, 'process_id', None,
         'This process\'s index (multi-process).')
  define(flags.DEFINE_bool, 'allow_config_change', False,
         'Resume a --workdir whose run had another config (e.g. a new lr); '
         'each change is recorded with its step in config_changes.jsonl.')
  define(flags.DEFINE_bool, 'distributed', False,
         'Call jax.distributed.initialize() and let it detect the cluster '
         '(implied by --coordinator_address).')
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)


def _initialize_distributed(flag_values: flags.FlagValues):
  if flag_values.coordinator_address or flag_values.distributed:
    jax.distributed.initialize(
        coordinator_address=flag_values.coordinator_address,
        num_processes=flag_values.num_processes,
        process_id=flag_values.process_id)
  logging.info('Process %d of %d; %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def _split_over_cpu_devices(config) -> None:
  """Gives XLA:CPU `config.cpu_devices` devices before JAX starts.

  Each device runs its share of the batch side by side with the others,
  which kept small models' operations busy on an AVX2 machine (the default
  config on 2 cores: 749 against 581 images/s). On 2 cores the devices'
  gradient all-reduce can time out while other processes load the machine
  (XLA:CPU then aborts after 40 s; seen once on a Zen 4 machine), and there
  one device was faster anyway: the configs here keep 1.
  """
  if config.cpu_devices < 1:
    raise ValueError(f'cpu_devices must be >= 1, got {config.cpu_devices}')
  if config.cpu_devices > 1 and _process.runs_on_cpu():
    _process.use_cpu_devices(config.cpu_devices)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
  """Trains on the parsed flags; user errors exit with status 1."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli_flags.exit_on_user_error(_split_over_cpu_devices, flag_values.config)
  # Before the input pipeline's first TensorFlow operation.
  _process.hide_gpus_from_tensorflow()
  _initialize_distributed(flag_values)
  start = time.time()
  workdir = flag_values.workdir
  try:
    record = cli_flags.exit_on_user_error(
        loop.train_and_evaluate, flag_values.config, workdir,
        allow_config_change=flag_values.allow_config_change)
  except preemption.Preempted as e:
    print(f'{e} (--workdir={workdir})', file=sys.stderr)
    sys.exit(preemption.EXIT_STATUS[e.signal_name])
  if record and jax.process_index() == 0:
    print(closing_summary(record, workdir, (time.time() - start) / 60))


def closing_summary(record, workdir: str, minutes: float) -> str:
  """What a finished run prints: the test accuracy, where the logs and the
  exported model are, and the command (runnable as printed) that
  classifies with the model."""
  predict = commands.python_m('vit_jax.cli.predict')
  return '\n'.join([
      f'Final test top-1 accuracy: {record["top1_accuracy"]:.4f} '
      f'({int(record["num_examples"])} examples), {minutes:.1f} min wall '
      'time',
      f'TensorBoard logs and metrics.jsonl: {workdir}',
      f'Exported released-layout params: {workdir}/model.npz (and '
      f'model.json, what the arrays cannot say); classify with: {predict} '
      f'--checkpoint={workdir}/model.npz IMAGE...'])

if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
