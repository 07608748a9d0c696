r"""Throughput benchmark of a ViT variant, optionally against timm (PyTorch).

  .venv/bin/python -m benchmarks.benchmark --model=ViT-B_16 --batch_size=8 \
      --image_size=224 --mode=inference --dtype=bfloat16 --compare=timm \
      --json_out=/tmp/bench.json
  # The training loop's own step of any experiment config:
  .venv/bin/python -m benchmarks.benchmark --config=configs/default.py \
      --mode=train
  # An exported file in its runtime beside JAX (`exported`), here made now
  # from ViT-B/16 with random weights, against timm's own ONNX export:
  .venv/bin/python -m benchmarks.benchmark --mode=exported --exported=onnx \
      --model=ViT-B_16 --num_classes=10 --compare=timm_onnx

How it measures (warm-up, interleaved timing, FLOPs, memory) is
`protocol`; our step is `jax_side`, timm's `timm_side`.
`--mode=train` times a whole training step: forward, backward and an SGD
momentum update.

As a program on the CPU it first has glibc keep freed memory for reuse
(`process.keep_freed_memory_on_cpu`): otherwise XLA:CPU's per-step buffers
are faulted in afresh every step. The setting holds for both frameworks in
the process; it left timm's step time unchanged.

`--host_devices=N` splits the batch over N XLA:CPU devices (set before JAX
starts, `process.use_cpu_devices`). On two cores that sped up float32
inference by 10-15%, but not training or bfloat16; the default follows
(`default_host_devices`).
"""

import json
import os
import sys
from typing import Any, Dict, Sequence

from vit_jax.cli import _process

if __name__ == '__main__':
  # Before JAX and PyTorch start their threads (see host_memory).
  _process.keep_freed_memory_on_cpu()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from ml_collections import config_flags

from benchmarks import exported
from benchmarks import jax_side
from benchmarks import protocol
from vit_jax.cli import _flags as cli_flags
from vit_jax.models import vit_sublayers
# pylint: enable=g-import-not-at-top,wrong-import-position

EXPORTED = 'exported'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags; only when run as a program, so that
  importing several command-line modules in one process does not clash."""
  define = cli_flags.definer(flag_values)
  cli_flags.define_model_name('ViT-B_16', flag_values)
  define(flags.DEFINE_integer, 'batch_size', 8, 'Images per step.')
  define(flags.DEFINE_integer, 'image_size', 224, 'Square input size.')
  define(flags.DEFINE_integer, 'num_classes', 1000, 'Head size.')
  define(flags.DEFINE_enum, 'mode', 'inference',
         'What one step does; exported: an exported file in its runtime '
         'beside the JAX model (--exported).',
         enum_values=(*jax_side.MODES, EXPORTED))
  define(flags.DEFINE_enum, 'dtype', 'float32',
         'Matmul operand dtype (parameters stay float32).',
         enum_values=jax_side.DTYPES)
  define(flags.DEFINE_integer, 'steps', 10, 'Timed steps (median reported).')
  define(flags.DEFINE_integer, 'warmup', 2, 'Untimed steps first (>= 2).')
  define(flags.DEFINE_enum, 'compare', None,
         'Also time the same model in this framework (timm_onnx: timm\'s '
         'own ONNX export in ONNX Runtime, with --mode=exported).',
         enum_values=(*protocol.COMPARISONS, *exported.COMPARISONS))
  define(flags.DEFINE_string, 'json_out', None, 'Write the results here.')
  define(flags.DEFINE_enum, 'attention', 'auto',
         'Attention implementation (vit_sublayers.MultiHeadAttention).',
         enum_values=vit_sublayers.ATTENTION_IMPLEMENTATIONS)
  config_flags.DEFINE_config_file(
      'config', None, 'An experiment config (with --config.<key>=value '
      'overrides): times its model, batch, image size and dtype with the '
      "training loop's own step; --model, --batch_size, --image_size and "
      '--dtype are then ignored.', flag_values=flag_values,
      lock_config=True)
  define(flags.DEFINE_string, 'exported', None,
         '--mode=exported: a .onnx or .tflite file or a SavedModel '
         'directory, or onnx, tflite or saved_model to export the model '
         '(--checkpoint, or --model with random weights) now.')
  define(flags.DEFINE_string, 'checkpoint', None,
         '--mode=exported: the model the file was exported from.')
  define(flags.DEFINE_enum, 'precision', 'float32',
         '--mode=exported: precision of a file exported now.',
         enum_values=('float32', 'float16', 'int8'))
  define(flags.DEFINE_integer, 'threads', None,
         '--mode=exported: threads of each runtime (default: CPU count).')
  define(flags.DEFINE_string, 'agreement_split', None,
         '--mode=exported: also measure top-1 agreement with the float32 '
         'JAX model and both accuracies on this split of --dataset.')
  define(flags.DEFINE_string, 'dataset', 'fashion_mnist_local',
         'The dataset of --agreement_split.')
  define(flags.DEFINE_integer, 'host_devices', None,
         'Split the batch over this many XLA:CPU devices. Must divide the '
         'batch size. Default: default_host_devices() (2 for float32 '
         'inference on a CPU with 2+ cores, else 1).')


def format_result(result: Dict[str, Any]) -> str:
  """Our figures, and timm's beside them if it ran, as printed lines."""
  lines = [
      f"{result['model']} {result['mode']} {result['dtype']} "
      f"batch {result['batch_size']} @ {result['image_size']}px on "
      f"{result['host_devices']} device(s)",
      f"  ours: {result['images_per_sec']:.2f} img/s, "
      f"{result['step_time_ms']:.1f} ms/step "
      f"({result['cpu_time_ms']:.0f} ms CPU), "
      f"{result['gflops_per_image']:.1f} GFLOP/img, "
      f"{result['achieved_tflops']:.3f} TFLOP/s = "
      f"{result['fraction_of_peak']:.0%} of the "
      f"{result['matmul_peak_tflops']:.3f} TFLOP/s matmul peak",
  ]
  if 'timm' in result:
    timm = result['timm']
    lines.append(
        f"  timm: {timm['images_per_sec']:.2f} img/s, "
        f"{timm['step_time_ms']:.1f} ms/step "
        f"({timm['cpu_time_ms']:.0f} ms CPU); ours/timm = "
        f"{result['ratio_vs_timm']:.2f}x (by CPU time "
        f"{result['cpu_ratio_vs_timm']:.2f}x)")
  return '\n'.join(lines)


def default_host_devices(mode: str, dtype: str, batch_size: int) -> int:
  """The XLA:CPU device count that ran fastest on a 2-core machine.

  Splitting the batch over 2 devices cut float32 inference's CPU time by
  10-15% (each device runs its half with less cross-thread waiting); it did
  not help float32 training and slowed bfloat16 inference by about 8%.

  Args:
    mode: 'inference' or 'train'.
    dtype: 'float32' or 'bfloat16'.
    batch_size: images per step (the devices must divide it).

  Returns:
    The device count to split the batch over.
  """
  cores = os.cpu_count() or 1
  if (mode == 'inference' and dtype == 'float32' and cores >= 2
      and batch_size % 2 == 0):
    return 2
  return 1


def _write_result(result: Dict[str, Any], json_out: str) -> None:
  print(format_result(result))
  print(json.dumps(result, indent=1, sort_keys=True))
  if json_out:
    with open(json_out, 'w') as f:
      json.dump(result, f, indent=1, sort_keys=True)
    print(f'wrote {json_out}', file=sys.stderr)


def _run_exported(flag_values: flags.FlagValues) -> None:
  """--mode=exported (`benchmarks.exported`)."""
  _process.use_cpu_devices(1)  # One device: the files run whole batches.
  cli_flags.exit_on_user_error(cli_flags.check_required, flag_values,
                               'exported')
  result = cli_flags.exit_on_user_error(
      exported.run_exported, flag_values.exported,
      checkpoint=flag_values.checkpoint, model=flag_values.model,
      image_size=flag_values.image_size,
      num_classes=flag_values.num_classes,
      batch_size=flag_values.batch_size, precision=flag_values.precision,
      steps=flag_values.steps, warmup=flag_values.warmup,
      threads=flag_values.threads, compare=flag_values.compare,
      agreement_split=flag_values.agreement_split,
      dataset=flag_values.dataset)
  print(exported.format_result(result))
  print(json.dumps(result, indent=1, sort_keys=True))
  if flag_values.json_out:
    with open(flag_values.json_out, 'w') as f:
      json.dump(result, f, indent=1, sort_keys=True)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Runs the benchmark on the parsed flags; user errors exit with status 1."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if flag_values.mode == EXPORTED:
    _run_exported(flag_values)
    return
  config = flag_values.config
  if flag_values.compare:
    # Now, not after the JAX side's measurement.
    cli_flags.exit_on_user_error(protocol.require_comparison,
                                 flag_values.compare)
  # A config's step runs on the devices training would use: one CPU device.
  host_devices = flag_values.host_devices or (1 if config else
                                              default_host_devices(
      flag_values.mode, flag_values.dtype, flag_values.batch_size))
  # Must happen before the first JAX operation starts the CPU backend.
  _process.use_cpu_devices(host_devices)
  result = cli_flags.exit_on_user_error(
      protocol.run_benchmark,
      model=flag_values.model, batch_size=flag_values.batch_size,
      image_size=flag_values.image_size, num_classes=flag_values.num_classes,
      mode=flag_values.mode, dtype=flag_values.dtype, steps=flag_values.steps,
      warmup=flag_values.warmup, compare=flag_values.compare,
      host_devices=host_devices, attention=flag_values.attention,
      config=config)
  _write_result(result, flag_values.json_out)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
