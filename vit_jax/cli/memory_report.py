r"""Does a pre-training train state fit per device? Measured without devices.

  python -m vit_jax.cli.memory_report --model=ViT-H_14 --num_devices=8 \
      [--device_memory_gib=16] [--batch_size=4096] [--grad_accum_steps=N] \
      [--remat_policy=full] [--image_size=224] [--num_classes=21843] \
      [--ema_decay=0] [--json_out=FILE]

The run is configs/vit_pretrain.py's ImageNet-21k recipe (Adam, bf16 matmul
operands on float32 params, FSDP over the 'data' axis) with the encoder
scanned (`model.scan_layers`) and rematerialised (`model.remat_policy`).
`--num_devices` fake XLA:CPU devices stand in for the accelerators, and
nothing model-sized is ever allocated (ViT-g's params alone are 4 GB):

1. State, exact: `jax.eval_shape` of the initial train state and the
   shardings `train.make_setup` gives it yield every array's per-device
   shard shape; their bytes, summed, are what one device holds for params,
   optimizer state and EMA.
2. Step, estimated: the jitted train step is lowered and compiled for
   abstract inputs (ShapeDtypeStructs that carry the shardings), and XLA's
   memory analysis of the per-device program gives its argument, output,
   alias (donated) and temp bytes. Peak ~ arguments + temp + the outputs
   not written into donated arguments.

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

import os
import re
import sys


def _flag_value(argv, name):
  """The value of --name=V or --name V in argv, or None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def force_host_device_count(num_devices: int) -> None:
  """Makes XLA:CPU expose `num_devices` devices (and jax use only the CPU).

  Effective only before jax starts its backend, which reads XLA_FLAGS once.
  """
  flags_now = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                     os.environ.get('XLA_FLAGS', ''))
  os.environ['XLA_FLAGS'] = (
      f'{flags_now} --xla_force_host_platform_device_count={num_devices}'
  ).strip()
  # The fake devices are CPU ones; an accelerator would add nothing but a
  # second backend to start.
  os.environ['JAX_PLATFORMS'] = 'cpu'


DEFAULT_NUM_DEVICES = 8

if __name__ == '__main__':
  # Must precede `import jax`: a 64-device mesh needs 64 CPU devices.
  _requested = _flag_value(sys.argv[1:], 'num_devices')
  force_host_device_count(int(_requested) if _requested and
                          _requested.isdigit() else DEFAULT_NUM_DEVICES)

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.cli import flags as cli_flags
from vit_jax import models
from vit_jax.models import vit
from vit_jax import sharding
from vit_jax import train
# pylint: enable=g-import-not-at-top,wrong-import-position

GIB = 2**30
# Images per device per micro-batch that the automatic choice stays under.
MAX_IMAGES_PER_DEVICE = 32
CAVEAT = ('Step memory is XLA:CPU\'s buffer assignment, a proxy for TPU/GPU '
          '(other fusion, layouts, scheduling); state bytes are exact.')


def auto_grad_accum_steps(batch_size: int, data_devices: int,
                          max_per_device: int = MAX_IMAGES_PER_DEVICE) -> int:
  """The fewest micro-batches with at most `max_per_device` images per device.

  Args:
    batch_size: global batch size.
    data_devices: devices on the 'data' axis.
    max_per_device: the bound on images per device per micro-batch.

  Returns:
    Steps that divide the batch into micro-batches that split evenly over
    the devices.

  Raises:
    ValueError: if no number of micro-batches does.
  """
  for steps in range(1, batch_size + 1):
    if batch_size % steps:
      continue
    micro = batch_size // steps
    if micro % data_devices == 0 and micro // data_devices <= max_per_device:
      return steps
  raise ValueError(f'batch_size {batch_size} has no micro-batch that splits '
                   f'over {data_devices} devices; choose a multiple')


def pretrain_config(model_name: str, *, batch_size: int,
                    grad_accum_steps: int, remat_policy: str = 'full',
                    image_size: int = 224, ema_decay: float = 0.0):
  """configs/vit_pretrain.py's ImageNet-21k recipe, scanned and remat'ed."""
  # A command line may read a config; library modules never do.
  from configs import vit_pretrain  # pylint: disable=g-import-not-at-top
  config = vit_pretrain.get_config(f'{model_name},imagenet21k')
  config.model.scan_layers = True
  config.model.remat_policy = remat_policy
  config.image_size = image_size
  config.batch_size = batch_size
  config.grad_accum_steps = grad_accum_steps
  config.ema_decay = ema_decay
  return config


def _shard_bytes(leaf, leaf_sharding) -> int:
  shard = leaf_sharding.shard_shape(leaf.shape)
  return int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def _tree_bytes(tree, shardings) -> int:
  return sum(_shard_bytes(leaf, s) for leaf, s in zip(
      jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)))


def state_bytes_per_device(state_shapes, state_shardings) -> Dict[str, int]:
  """Bytes of the train state's shards on one device, by part.

  Args:
    state_shapes: the TrainState of ShapeDtypeStructs (jax.eval_shape).
    state_shardings: the matching TrainState of NamedShardings.

  Returns:
    {'params', 'opt_state', 'ema_params', 'other' (step, rng), 'total'}.
    Shardings are uneven nowhere (FSDP splits only divisible dimensions), so
    every device holds the same.
  """
  parts = {name: _tree_bytes(getattr(state_shapes, name),
                             getattr(state_shardings, name))
           for name in ('params', 'opt_state', 'ema_params')}
  parts['other'] = (_tree_bytes(state_shapes, state_shardings)
                    - sum(parts.values()))
  parts['total'] = sum(parts.values())
  return parts


def abstract_batch(config, mesh) -> Dict[str, jax.ShapeDtypeStruct]:
  """A training batch as input_pipeline makes it, sharded, never allocated."""
  batch_sharding = sharding.batch_sharding(mesh)
  size, batch = config.image_size, config.batch_size
  return {
      'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32,
                                    sharding=batch_sharding),
      'label': jax.ShapeDtypeStruct((batch,), jnp.int32,
                                    sharding=batch_sharding),
      'mask': jax.ShapeDtypeStruct((batch,), jnp.float32,
                                   sharding=batch_sharding),
  }


def with_shardings(shapes, shardings):
  """ShapeDtypeStructs that carry their sharding, as jit's lower expects."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)


def attention_batch_sizes(hlo_text: str, num_heads: int,
                          num_tokens: int) -> List[int]:
  """Leading sizes of the (batch, heads, tokens, tokens) arrays in HLO text.

  In the per-device program of an SPMD step these are the images each device
  computes attention for.
  """
  pattern = rf'\[(\d+),{num_heads},{num_tokens},{num_tokens}\]'
  return sorted({int(b) for b in re.findall(pattern, hlo_text)})


def compiled_step_memory(train_step, state_in, batch_in) -> Dict[str, Any]:
  """Lowers and compiles `train_step` for abstract inputs; XLA's numbers.

  Returns:
    Per-device bytes ('argument', 'output', 'alias', 'temp',
    'generated_code', 'peak' = argument + temp + output - alias), the
    seconds to lower and compile, and the compiled per-device HLO text.
  """
  start = time.perf_counter()
  lowered = train_step.lower(state_in, batch_in)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  stats = compiled.memory_analysis()
  memory = {
      'argument': stats.argument_size_in_bytes,
      'output': stats.output_size_in_bytes,
      'alias': stats.alias_size_in_bytes,
      'temp': stats.temp_size_in_bytes,
      'generated_code': stats.generated_code_size_in_bytes,
  }
  # Donated state buffers are rewritten in place (alias); only the rest of
  # the outputs (the metrics) need new memory while the arguments live.
  memory['peak'] = (memory['argument'] + memory['temp'] + memory['output']
                    - memory['alias'])
  return {'bytes': memory, 'lower_s': lowered_at - start,
          'compile_s': compiled_at - lowered_at, 'hlo': compiled.as_text()}


def _images_per_device(config, data_devices: int) -> int:
  """Rows of one micro-batch on one device; raises if they do not split."""
  micro_batch = config.batch_size // config.grad_accum_steps
  if config.batch_size % config.grad_accum_steps or micro_batch % data_devices:
    raise ValueError(
        f'batch_size {config.batch_size} / grad_accum_steps '
        f'{config.grad_accum_steps} does not give a micro-batch that splits '
        f'over {data_devices} devices')
  return micro_batch // data_devices


def _num_tokens(model, image_size: int) -> int:
  """Sequence length of a pure ViT: patches plus the class token."""
  patches = image_size // model.patch_size[0]
  return patches * patches + (
      model.classifier in vit.TOKEN_CLASSIFIERS)


def measure(config, num_classes: int, num_devices: int,
            device_memory_gib: float = 16.0) -> Dict[str, Any]:
  """Per-device state bytes and compiled step memory of `config`'s training.

  Args:
    config: an experiment config (configs/common.py keys).
    num_classes: size of the head.
    num_devices: devices of the mesh, the first ones of jax.devices().
    device_memory_gib: memory of one device, for the verdict.

  Returns:
    A JSON-ready report (see `format_report`).
  """
  devices = jax.devices()
  if num_devices > len(devices):
    raise ValueError(
        f'{num_devices} devices requested but jax has {len(devices)}; run '
        f'python -m vit_jax.cli.memory_report --num_devices={num_devices} (it '
        'sets XLA_FLAGS=--xla_force_host_platform_device_count before jax '
        'starts)')
  start = time.perf_counter()
  setup = train.make_setup(config, num_classes, devices=devices[:num_devices])
  state_shapes = setup.init_state.eval_shape(jax.random.PRNGKey(0))
  setup_s = time.perf_counter() - start
  data_devices = setup.mesh.shape[sharding.DATA_AXIS]
  images_per_device = _images_per_device(config, data_devices)

  state = state_bytes_per_device(state_shapes, setup.state_shardings)
  step = compiled_step_memory(
      setup.train_step, with_shardings(state_shapes, setup.state_shardings),
      abstract_batch(config, setup.mesh))
  attention_batches = attention_batch_sizes(
      step.pop('hlo'), setup.model.num_heads,
      _num_tokens(setup.model, config.image_size))
  memory = step['bytes']
  return {
      'model': config.model_name,
      'num_devices': num_devices,
      'data_devices': data_devices,
      'device_memory_gib': device_memory_gib,
      'params': sum(int(np.prod(x.shape)) for x in
                    jax.tree_util.tree_leaves(state_shapes.params)),
      'batch_size': config.batch_size,
      'grad_accum_steps': config.grad_accum_steps,
      'micro_batch': config.batch_size // config.grad_accum_steps,
      'images_per_device': images_per_device,
      'image_size': config.image_size,
      'num_classes': num_classes,
      'remat_policy': config.model.remat_policy,
      'scan_layers': config.model.scan_layers,
      'fsdp': config.fsdp,
      'compute_dtype': config.model.dtype,
      'param_dtype': config.model.param_dtype,
      'state_bytes': state,
      'step_bytes': memory,
      'attention_images_per_device': attention_batches,
      # None where no attention was recognised (e.g. a hybrid's token count).
      'activations_sharded': (attention_batches == [images_per_device]
                              if attention_batches else None),
      'fits': memory['peak'] <= device_memory_gib * GIB,
      'setup_s': setup_s,
      'lower_s': step['lower_s'],
      'compile_s': step['compile_s'],
      'caveat': CAVEAT,
  }


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / GIB:.2f}'


def format_report(report: Dict[str, Any]) -> str:
  """A verdict, the per-device table and the warnings, as printed lines."""
  state, step = report['state_bytes'], report['step_bytes']
  auto = (', grad_accum_steps chosen automatically'
          if report.get('grad_accum_auto') else '')
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
  lines = [
      f'{report["model"]} ({report["params"]:,} params) on '
      f'{report["num_devices"]} devices of {report["device_memory_gib"]:g} '
      f'GiB: batch {report["batch_size"]} = {report["grad_accum_steps"]} x '
      f'{report["micro_batch"]} ({report["images_per_device"]} images per '
      f'device per micro-batch{auto}), {report["image_size"]} px, '
      f'{report["compute_dtype"]} compute on {report["param_dtype"]} params, '
      f'remat {report["remat_policy"]}, scan {report["scan_layers"]}, '
      f'fsdp {report["fsdp"]}',
      '',
      f'| {"per device":<40} | {"GiB":>7} |',
      f'|{"-" * 42}|{"-" * 9}|',
  ]
  lines += [f'| {name:<40} | {_gib(value):>7} |' for name, value in rows]
  limit = report['device_memory_gib'] * GIB
  lines.append('')
  if report['fits']:
    lines.append(f'verdict: FITS in {report["device_memory_gib"]:g} GiB '
                 f'({_gib(limit - step["peak"])} GiB to spare)')
  else:
    lines.append(f'verdict: DOES NOT FIT in {report["device_memory_gib"]:g} '
                 f'GiB (short by {_gib(step["peak"] - limit)} GiB)')
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
  config = pretrain_config(
      models.canonical_name(model), batch_size=batch_size,
      grad_accum_steps=grad_accum_steps or 1, remat_policy=remat_policy,
      image_size=image_size, ema_decay=ema_decay)
  if grad_accum_steps is None:
    config.grad_accum_steps = auto_grad_accum_steps(
        batch_size, num_devices // config.mesh_model_axis)
  report = measure(config, num_classes, num_devices, device_memory_gib)
  report['grad_accum_auto'] = grad_accum_steps is None
  print(format_report(report))
  if json_out:
    with open(json_out, 'w') as f:
      json.dump(report, f, indent=2)
  return report


def define_flags():
  """Defines the command-line flags; only when run as a program, so that
  importing several command-line modules in one process does not clash."""
  global _MODEL, _NUM_DEVICES, _DEVICE_MEMORY_GIB, _BATCH_SIZE
  global _GRAD_ACCUM_STEPS, _REMAT_POLICY, _IMAGE_SIZE, _NUM_CLASSES, _EMA_DECAY
  global _JSON_OUT
  _MODEL = flags.DEFINE_string('model', 'ViT-H_14', 'Variant name.')
  _NUM_DEVICES = flags.DEFINE_integer(
      'num_devices', DEFAULT_NUM_DEVICES,
      'Devices of the mesh (fake XLA:CPU devices).')
  _DEVICE_MEMORY_GIB = flags.DEFINE_float(
      'device_memory_gib', 16.0, 'Memory of one device, for the verdict.')
  _BATCH_SIZE = flags.DEFINE_integer('batch_size', 4096, 'Global batch size.')
  _GRAD_ACCUM_STEPS = flags.DEFINE_integer(
      'grad_accum_steps', None,
      f'Micro-batches per step; default: the fewest with at most '
      f'{MAX_IMAGES_PER_DEVICE} images per device.')
  _REMAT_POLICY = flags.DEFINE_enum(
      'remat_policy', 'full', ['none', 'full', 'dots', 'dots_no_batch'],
      'config.model.remat_policy.')
  _IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input size.')
  _NUM_CLASSES = flags.DEFINE_integer('num_classes', 21843,
                                      'Head size (ImageNet-21k: 21843).')
  _EMA_DECAY = flags.DEFINE_float('ema_decay', 0.0,
                                  'config.ema_decay; > 0 adds an EMA copy.')
  _JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the report here.')




def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # A bad model name or batch split prints one line, not a traceback.
  cli_flags.exit_on_user_error(
      run, _MODEL.value, _NUM_DEVICES.value,
      device_memory_gib=_DEVICE_MEMORY_GIB.value,
      batch_size=_BATCH_SIZE.value,
      grad_accum_steps=_GRAD_ACCUM_STEPS.value,
      remat_policy=_REMAT_POLICY.value, image_size=_IMAGE_SIZE.value,
      num_classes=_NUM_CLASSES.value, ema_decay=_EMA_DECAY.value,
      json_out=_JSON_OUT.value)


if __name__ == '__main__':
  define_flags()
  app.run(main)
