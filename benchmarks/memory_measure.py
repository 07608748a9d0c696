"""What `benchmarks.memory_report` measures, without allocating the model.

The run is configs/vit_pretrain.py's ImageNet-21k recipe (`pretrain_config`)
on a mesh of the first `num_devices` devices (`measure`):

1. State, exact: `jax.eval_shape` of the initial train state and the
   shardings `train.make_setup` gives it yield every array's per-device
   shard shape; their bytes, summed, are what one device holds for params,
   optimizer state and EMA (`state_bytes_per_device`).
2. Step, estimated: the jitted train step is lowered and compiled for
   abstract inputs (`sharding.abstract_arrays`), and XLA's memory analysis
   of the per-device program gives its argument, output, alias (donated)
   and temp bytes (`compiled_step_memory`). Peak ~ arguments + temp + the
   outputs not written into donated arguments.

It also reads how many images per device the compiled program's attention
runs on (`attention_batch_sizes`): if that is the whole micro-batch rather
than its 1/devices share, the partitioner replicated the activations instead
of gathering the FSDP-sharded weights.
"""

import re
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import commands
from vit_jax import models
from vit_jax.models import precision
from vit_jax import sharding
from vit_jax.training import setup as setup_lib
from vit_jax.training import run_spec

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
  # A program may read a config; library modules never do.
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
  """Rows of one micro-batch on one device (`run_spec` checked they split)."""
  return config.batch_size // config.grad_accum_steps // data_devices


def _num_tokens(model, image_size: int) -> int:
  """Sequence length: patches plus the prefix (class) tokens."""
  model_family = models.family_of(model)
  patches = image_size // model_family.patch_pixels(model)[0]
  return patches * patches + model_family.num_prefix_tokens(model)


def _config_fields(config, num_classes: int) -> Dict[str, Any]:
  """The settings of the measured run, for the report."""
  return {
      'model': config.model_name,
      'batch_size': config.batch_size,
      'grad_accum_steps': config.grad_accum_steps,
      'micro_batch': config.batch_size // config.grad_accum_steps,
      'image_size': config.image_size,
      'num_classes': num_classes,
      'remat_policy': config.model.remat_policy,
      'scan_layers': config.model.scan_layers,
      'fsdp': config.fsdp,
      'compute_dtype': precision.resolve_dtype(config.model.dtype),
      'param_dtype': config.model.param_dtype,
  }


def measure(config, num_classes: int, num_devices: int,
            device_memory_gib: float = 16.0) -> Dict[str, Any]:
  """Per-device state bytes and compiled step memory of `config`'s training.

  Args:
    config: an experiment config (configs/common.py keys).
    num_classes: size of the head.
    num_devices: devices of the mesh, the first ones of jax.devices().
    device_memory_gib: memory of one device, for the verdict.

  Returns:
    A JSON-ready report (see `memory_report.format_report`).
  """
  command = commands.python_m('benchmarks.memory_report')
  devices = sharding.first_devices(
      num_devices, hint=f'; run {command} --num_devices={num_devices} (it '
      'asks XLA:CPU for that many devices before jax starts)')
  start = time.perf_counter()
  spec = run_spec.from_config(config, num_devices=num_devices)
  setup = setup_lib.make_setup(spec, num_classes, devices=devices)
  state_shapes = setup.init_state.eval_shape(jax.random.PRNGKey(0))
  setup_s = time.perf_counter() - start
  data_devices = setup.mesh.shape[sharding.DATA_AXIS]
  images_per_device = _images_per_device(config, data_devices)

  step = compiled_step_memory(
      setup.train_step,
      sharding.abstract_arrays(state_shapes, setup.state_shardings),
      abstract_batch(config, setup.mesh))
  attention_batches = attention_batch_sizes(
      step.pop('hlo'), setup.model.num_heads,
      _num_tokens(setup.model, config.image_size))
  memory = step['bytes']
  return {
      **_config_fields(config, num_classes),
      'num_devices': num_devices,
      'data_devices': data_devices,
      'device_memory_gib': device_memory_gib,
      'params': sum(int(np.prod(x.shape)) for x in
                    jax.tree_util.tree_leaves(state_shapes.params)),
      'images_per_device': images_per_device,
      'state_bytes': state_bytes_per_device(state_shapes,
                                            setup.state_shardings),
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
