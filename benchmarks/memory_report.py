r"""Does a pre-training train state fit per device? Measured without devices.

  .venv/bin/python -m benchmarks.memory_report --model=ViT-H_14 \
      --num_devices=8 \
      [--device_memory_gib=16] [--batch_size=4096] [--grad_accum_steps=N] \
      [--remat_policy=full] [--image_size=224] [--num_classes=21843] \
      [--ema_decay=0] [--json_out=FILE]

The run is configs/vit_pretrain.py's ImageNet-21k recipe (Adam, bf16 matmul
operands on float32 params, FSDP over the 'data' axis) with the encoder
scanned (`model.scan_layers`) and rematerialised (`model.remat_policy`).
`--num_devices` fake XLA:CPU devices stand in for the accelerators (the
program asks for them before JAX starts, `process.use_cpu_devices`), and
nothing model-sized is ever allocated (ViT-g's params alone are 4 GB). The
state bytes per device are exact; the step's memory is XLA's estimate for
the compiled per-device program (`memory_measure` says how).

Without --grad_accum_steps, the smallest number of micro-batches that
leaves at most 32 images per device per micro-batch is used.

The report also says how many images per device the compiled program's
attention runs on: if that is the whole micro-batch rather than its
1/devices share, the partitioner replicated the activations instead of
gathering the FSDP-sharded weights, and the temp memory is that of the
whole micro-batch on every device.

Caveat: the step's numbers come from XLA:CPU's fusion, layouts and buffer
assignment, a proxy for what the TPU/GPU compilers do; only the state bytes
are exact on every backend.

Runtime on two (shared) CPU cores: 20-60 s per model and device count, of
which compiling is 6-30 s (the scanned encoder is compiled once, whatever
the depth); about 1.2 GB of host memory.
"""

import json
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from benchmarks import memory_measure
from vit_jax.cli import _flags as cli_flags
from vit_jax.cli import _process
from vit_jax import models
from vit_jax.models import vit_blocks

DEFAULT_NUM_DEVICES = 8
GIB = memory_measure.GIB


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / GIB:.2f}'


def _headline(report: Dict[str, Any]) -> str:
  """The model, the devices and the run's settings, in one line."""
  auto = (', grad_accum_steps chosen automatically'
          if report.get('grad_accum_auto') else '')
  return (
      f'{report["model"]} ({report["params"]:,} params) on '
      f'{report["num_devices"]} devices of {report["device_memory_gib"]:g} '
      f'GiB: batch {report["batch_size"]} = {report["grad_accum_steps"]} x '
      f'{report["micro_batch"]} ({report["images_per_device"]} images per '
      f'device per micro-batch{auto}), {report["image_size"]} px, '
      f'{report["compute_dtype"]} compute on {report["param_dtype"]} params, '
      f'remat {report["remat_policy"]}, scan {report["scan_layers"]}, '
      f'fsdp {report["fsdp"]}')


def _table(report: Dict[str, Any]) -> List[str]:
  """The per-device table in Markdown, as lines."""
  state, step = report['state_bytes'], report['step_bytes']
  rows = [
      ('params', state['params']),
      ('optimizer state (Adam mu, nu)', state['opt_state']),
      ('EMA params', state['ema_params']),
      ('train state, exact', state['total']),
      ('step arguments (state + batch)', step['argument']),
      ('step temp (activations, grads, gathers)', step['temp']),
      ('step outputs not donated', step['output'] - step['alias']),
      ('peak ~ arguments + temp + outputs', step['peak']),
  ]
  return ([f'| {"per device":<40} | {"GiB":>7} |', f'|{"-" * 42}|{"-" * 9}|']
          + [f'| {name:<40} | {_gib(value):>7} |' for name, value in rows])


def _verdict(report: Dict[str, Any]) -> str:
  peak = report['step_bytes']['peak']
  limit = report['device_memory_gib'] * GIB
  if report['fits']:
    return (f'verdict: FITS in {report["device_memory_gib"]:g} GiB '
            f'({_gib(limit - peak)} GiB to spare)')
  return (f'verdict: DOES NOT FIT in {report["device_memory_gib"]:g} '
          f'GiB (short by {_gib(peak - limit)} GiB)')


def format_report(report: Dict[str, Any]) -> str:
  """A verdict, the per-device table and the warnings, as printed lines."""
  lines = [_headline(report), '', *_table(report), '', _verdict(report)]
  if report['activations_sharded'] is False:
    lines.append(
        f'warning: the compiled attention runs on '
        f'{report["attention_images_per_device"]} images per device, not '
        f'{report["images_per_device"]}: the partitioner replicated the '
        'activations instead of gathering the FSDP-sharded weights, so temp '
        'memory (and compute) is that of a larger batch. Constraining the '
        'encoder\'s activations to batch-over-\'data\' avoids it')
  lines.append(f'time: setup {report["setup_s"]:.1f} s, lower '
               f'{report["lower_s"]:.1f} s, compile '
               f'{report["compile_s"]:.1f} s')
  lines.append(f'caveat: {report["caveat"]}')
  return '\n'.join(lines)


def run(model: str, num_devices: int, *, device_memory_gib: float = 16.0,
        batch_size: int = 4096, grad_accum_steps: Optional[int] = None,
        remat_policy: str = 'full', image_size: int = 224,
        num_classes: int = 21843, ema_decay: float = 0.0,
        json_out: Optional[str] = None) -> Dict[str, Any]:
  """Builds the pre-training config, measures it, prints and saves it."""
  config = memory_measure.pretrain_config(
      models.canonical_name(model), batch_size=batch_size,
      grad_accum_steps=grad_accum_steps or 1, remat_policy=remat_policy,
      image_size=image_size, ema_decay=ema_decay)
  if grad_accum_steps is None:
    config.grad_accum_steps = memory_measure.auto_grad_accum_steps(
        batch_size, num_devices // config.mesh_model_axis)
  report = memory_measure.measure(config, num_classes, num_devices,
                                  device_memory_gib)
  report['grad_accum_auto'] = grad_accum_steps is None
  print(format_report(report))
  if json_out:
    with open(json_out, 'w') as f:
      json.dump(report, f, indent=2)
  return report


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags; only when run as a program, so that
  importing several command-line modules in one process does not clash."""
  define = cli_flags.definer(flag_values)
  cli_flags.define_model_name('ViT-H_14', flag_values)
  define(flags.DEFINE_integer, 'num_devices', DEFAULT_NUM_DEVICES,
         'Devices of the mesh (fake XLA:CPU devices).')
  define(flags.DEFINE_float, 'device_memory_gib', 16.0,
         'Memory of one device, for the verdict.')
  define(flags.DEFINE_integer, 'batch_size', 4096, 'Global batch size.')
  define(flags.DEFINE_integer, 'grad_accum_steps', None,
         f'Micro-batches per step; default: the fewest with at most '
         f'{memory_measure.MAX_IMAGES_PER_DEVICE} images per device.')
  define(flags.DEFINE_enum, 'remat_policy', 'full',
         'config.model.remat_policy.',
         enum_values=list(vit_blocks.REMAT_POLICIES))
  define(flags.DEFINE_integer, 'image_size', 224, 'Square input size.')
  define(flags.DEFINE_integer, 'num_classes', 21843,
         'Head size (ImageNet-21k: 21843).')
  define(flags.DEFINE_float, 'ema_decay', 0.0,
         'config.ema_decay; > 0 adds an EMA copy.')
  define(flags.DEFINE_string, 'json_out', None, 'Write the report here.')


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Measures on the parsed flags; user errors exit with status 1."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Before the first JAX operation: a 64-device mesh needs 64 CPU devices.
  _process.use_cpu_devices(flag_values.num_devices, cpu_only=True)
  # A bad model name or batch split prints one line, not a traceback.
  cli_flags.exit_on_user_error(
      run, flag_values.model, flag_values.num_devices,
      device_memory_gib=flag_values.device_memory_gib,
      batch_size=flag_values.batch_size,
      grad_accum_steps=flag_values.grad_accum_steps,
      remat_policy=flag_values.remat_policy,
      image_size=flag_values.image_size, num_classes=flag_values.num_classes,
      ema_decay=flag_values.ema_decay, json_out=flag_values.json_out)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
