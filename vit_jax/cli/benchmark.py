r"""Throughput benchmark of a ViT variant, optionally against timm (PyTorch).

  python -m vit_jax.cli.benchmark --model=ViT-B_16 --batch_size=8 \
      --image_size=224 --mode=inference --dtype=bfloat16 --compare=timm \
      --json_out=/tmp/bench.json

Protocol: every step is compiled and run `--warmup` (>= 2) times before the
clock starts; then each of `--steps` steps is timed on its own up to
`block_until_ready` and the median is reported. With `--compare=timm` the two
frameworks' timed steps alternate, so a change in machine load during the run
hits both alike and the ratio stays meaningful.

`--mode=train` times a whole training step: forward, backward and an SGD
momentum update, jitted with the parameters and optimizer state donated.
FLOPs come from XLA's cost analysis of the compiled step (forward + backward
for training), so `fraction_of_peak` compares the achieved rate with a large
matmul of the same dtype, timed in the same rounds as the steps. Under the
token head our last block computes the class token alone (see
vit.EncoderBlock); timm's computes every token, so its rate is
counted on the FLOPs of our step computing every token. Memory:
XLA's compiled memory analysis (its peak estimate, and arguments + outputs
+ temporaries as an upper bound) and the process's max RSS, read before timm
is loaded (timm's figure is the whole process's).

As a program it first has glibc keep freed memory for reuse
(`host_memory.keep_freed_memory`): otherwise XLA:CPU's per-step buffers are
faulted in afresh every step. The setting holds for both frameworks in the
process; it left timm's step time unchanged.

On a machine that other processes share, wall time depends on how the OS
shares the cores out; `cpu_time_ms` (this process's CPU seconds per step)
and `cpu_ratio_vs_timm` are the steadier figures there.

`--host_devices=N` splits the batch over N XLA:CPU devices (the flag sets
`jax_num_cpu_devices` before JAX starts). On two cores that sped up float32
inference by 10-15%, but not training or bfloat16; the default follows
(`default_host_devices`).
"""

import dataclasses
import functools
import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from vit_jax.cli import host_memory

if __name__ == '__main__':
  # Before JAX and PyTorch start their threads (see host_memory).
  host_memory.keep_freed_memory()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import models


def define_flags():
  """Defines the command-line flags; only when run as a program, so that
  importing several command-line modules in one process does not clash."""
  global _MODEL, _BATCH_SIZE, _IMAGE_SIZE, _NUM_CLASSES, _MODE, _DTYPE, _STEPS
  global _WARMUP, _COMPARE, _JSON_OUT, _HOST_DEVICES, _ATTENTION
  _MODEL = flags.DEFINE_string('model', 'ViT-B_16', 'Variant name.')
  _BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Images per step.')
  _IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input size.')
  _NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Head size.')
  _MODE = flags.DEFINE_enum('mode', 'inference', ['inference', 'train'],
                            'What one step does.')
  _DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                             'Matmul operand dtype (parameters stay float32).')
  _STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (median reported).')
  _WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps first (>= 2).')
  _COMPARE = flags.DEFINE_enum('compare', None, ['timm'],
                               'Also time the same model in this framework.')
  _JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the results here.')
  _ATTENTION = flags.DEFINE_enum(
      'attention', 'auto', ['auto', 'fused', 'einsum'],
      'Attention implementation (vit.MultiHeadAttention).')
  _HOST_DEVICES = flags.DEFINE_integer(
      'host_devices', None,
      'Split the batch over this many XLA:CPU devices. Must divide the batch '
      'size. Default: default_host_devices() (2 for float32 inference on a '
      'CPU with 2+ cores, else 1).')



# Side of the square matmul that measures the peak: 2 * 4096^3 is 137 GFLOP,
# about 0.3-0.7 s on two cores, large enough to reach the library's best.
_PEAK_MATMUL_SIZE = 4096

Step = Callable[[], None]


def matmul_step(dtype: Any, size: int = _PEAK_MATMUL_SIZE):
  """A large square matmul to time against the model: (step, flops).

  Bfloat16 operands accumulate in float32 as the model's matmuls do. Its
  fastest run is the `matmul_peak_tflops` of the results: the best the
  matrix units manage under the conditions the model ran in.

  Args:
    dtype: operand dtype.
    size: the side of the square matrices.

  Returns:
    A callable that runs one matmul to completion, and its FLOPs.
  """
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda a, b: jnp.dot(a, b,
                                        preferred_element_type=jnp.float32))
  return lambda: matmul(a, b).block_until_ready(), 2.0 * size**3


def _time_steps(steps_fns: Sequence[Step], steps: int,
                warmup: int) -> List[Dict[str, List[float]]]:
  """Times each call of every step function, the functions interleaved.

  Args:
    steps_fns: callables that each run one step to completion.
    steps: timed calls of each.
    warmup: untimed calls of each first.

  Returns:
    Per function {'wall': seconds, 'cpu': process CPU seconds} of every
    call. CPU time is the steadier figure when other processes share the
    cores: it counts only the cycles this process got (spin-waits included).
  """
  for _ in range(warmup):
    for step in steps_fns:
      step()
  times = [{'wall': [], 'cpu': []} for _ in steps_fns]
  for _ in range(steps):
    for step, step_times in zip(steps_fns, times):
      start, start_cpu = time.perf_counter(), time.process_time()
      step()
      step_times['wall'].append(time.perf_counter() - start)
      step_times['cpu'].append(time.process_time() - start_cpu)
  return times


def _mesh(num_devices: Optional[int]) -> jax.sharding.Mesh:
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(
          f'--host_devices={num_devices} but there are only {len(devices)} '
          'devices; start the process with a larger '
          '--xla_force_host_platform_device_count')
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ('data',))


def _cost_flops(stage: Any) -> float:
  """FLOPs from XLA's cost analysis of a lowered or compiled step."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def _compiled_stats(compiled: Any, num_devices: int) -> Dict[str, float]:
  """FLOPs and memory of one compiled step (all devices together)."""
  memory = compiled.memory_analysis()
  # An SPMD program is the per-device program: scale to the whole step.
  stats = {'flops': _cost_flops(compiled) * num_devices}
  if memory is not None:
    # All buffers the step holds at once at worst; XLA's own peak estimate
    # (from its buffer assignment) can be lower, where buffers reuse space.
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    stats['xla_buffers_bytes'] = float(total) * num_devices
    stats['xla_peak_bytes'] = float(
        getattr(memory, 'peak_memory_in_bytes', 0) or total) * num_devices
    stats['xla_temp_bytes'] = float(memory.temp_size_in_bytes) * num_devices
  return stats


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


# The training step's update, as in timm's step (benchmark_timm).
_OPTIMIZER = optax.sgd(learning_rate=1e-3, momentum=0.9)


def _shardings(mesh: jax.sharding.Mesh):
  """(replicated, split over the batch) on `mesh`."""
  return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))


def _jitted_step(model: Any, train: bool, mesh: jax.sharding.Mesh):
  """`jit_step(every_token)`: our jitted step, on (params, images) for
  inference and on ((params, SGD state), images, labels) for training.

  `every_token=True` has the last block compute every token, as timm's does
  (capturing the block outputs turns models_vit's class-token-only block
  off); it is only lowered, for its FLOPs.
  """
  replicated, batch_sharding = _shardings(mesh)

  def logits_fn(params, images, every_token):
    if not every_token:
      return model.apply({'params': params}, images, train=train)
    logits, _ = model.apply({'params': params}, images, train=train,
                            capture_block_outputs=True,
                            mutable=['intermediates'])
    return logits

  if not train:
    return lambda every_token: jax.jit(
        functools.partial(logits_fn, every_token=every_token),
        in_shardings=(replicated, batch_sharding))

  def train_step(state, images, labels, every_token):
    params, opt_state = state
    loss_fn = lambda params: _cross_entropy(
        logits_fn(params, images, every_token), labels)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = _OPTIMIZER.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return lambda every_token: jax.jit(
      functools.partial(train_step, every_token=every_token),
      donate_argnums=0,
      in_shardings=(replicated, batch_sharding, batch_sharding),
      out_shardings=(replicated, replicated))


def _jax_steps(model_name: str, batch_size: int, image_size: int,
               num_classes: int, mode: str, dtype: Any,
               mesh: jax.sharding.Mesh, images_np: np.ndarray,
               labels_np: np.ndarray, overrides: Dict[str, Any],
               attention: str = 'auto'):
  """Builds and compiles one step of our model; returns (step, info)."""
  del batch_size  # implied by the images
  model = models.create_model(model_name, num_classes=num_classes, dtype=dtype,
                              attention=attention, **overrides)
  replicated, batch_sharding = _shardings(mesh)
  params = jax.device_put(models.init_params(
      model, jax.random.PRNGKey(0), (image_size, image_size)), replicated)
  images = jax.device_put(jnp.asarray(images_np), batch_sharding)
  labels = jax.device_put(jnp.asarray(labels_np), batch_sharding)
  train = mode == 'train'
  if train:
    state = (params, jax.device_put(_OPTIMIZER.init(params), replicated))
    args = (state, images, labels)
  else:
    args = (params, images)

  jit_step = _jitted_step(model, train, mesh)
  lowered = jit_step(False).lower(*args)
  compiled = lowered.compile()
  info = {'params': models.count_params(params),
          **_compiled_stats(compiled, mesh.size)}
  # Our step's FLOPs scaled by what computing every token adds (XLA's cost
  # analysis of the two lowered steps): the work timm's step does.
  info['every_token_flops'] = info['flops'] * (
      _cost_flops(jit_step(True).lower(*args)) / _cost_flops(lowered))

  if not train:
    return lambda: compiled(*args).block_until_ready(), info
  holder = [state]

  def step():
    holder[0], loss = compiled(holder[0], images, labels)
    loss.block_until_ready()
  return step, info


def _summary(times: Dict[str, List[float]],
             batch_size: int) -> Dict[str, float]:
  wall = times['wall']
  step_time = statistics.median(wall)
  return {
      'step_time_ms': step_time * 1e3,
      'images_per_sec': batch_size / step_time,
      'step_time_ms_min': min(wall) * 1e3,
      'step_time_ms_max': max(wall) * 1e3,
      'cpu_time_ms': statistics.median(times['cpu']) * 1e3,
  }


def _max_rss_bytes() -> float:
  return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _synthetic_batch(batch_size: int, image_size: int, num_classes: int):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(
      np.float32)
  labels = rng.integers(0, num_classes, (batch_size,)).astype(np.int32)
  return images, labels


def _comparison_step(compare: Optional[str], name: str,
                     model_overrides: Dict[str, Any], **step_kwargs: Any):
  """The other framework's step (an object with .step and .info), or None."""
  if compare is None:
    return None
  if compare != 'timm':
    raise ValueError(f'unknown --compare={compare!r}; only "timm" exists')
  from vit_jax.cli import benchmark_timm  # pylint: disable=g-import-not-at-top
  variant = dataclasses.replace(models.VARIANTS[name], **model_overrides)
  return benchmark_timm.TimmStep(variant, **step_kwargs)


def _rates(flops: float, summary: Dict[str, float],
           peak_tflops: float) -> Dict[str, float]:
  achieved = flops / (summary['step_time_ms'] / 1e3) / 1e12
  return {'achieved_tflops': achieved,
          'fraction_of_peak': achieved / peak_tflops}


def _environment_fields() -> Dict[str, Any]:
  return {'jax_version': jax.__version__,
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'keeps_freed_memory': host_memory.keeps_freed_memory()}


def _compiled_fields(info: Dict[str, float], batch_size: int,
                     mode: str) -> Dict[str, Any]:
  """Size, FLOPs and XLA's memory figures of our compiled step."""
  return {
      'params': info['params'],
      'gflops_per_image': info['flops'] / batch_size / 1e9,
      'flops_counted': 'forward+backward' if mode == 'train' else 'forward',
      'xla_peak_memory_mb': info.get('xla_peak_bytes', 0.0) / 2**20,
      'xla_temp_memory_mb': info.get('xla_temp_bytes', 0.0) / 2**20,
      'xla_buffers_memory_mb': info.get('xla_buffers_bytes', 0.0) / 2**20,
  }


def _comparison_fields(ours: Dict[str, Any], other: Any,
                       times: Dict[str, List[float]], flops: float,
                       peak_tflops: float) -> Dict[str, Any]:
  """The other framework's figures and the ratios.

  Its FLOPs are those of our step computing every token (`flops`), which is
  the work it does.
  """
  batch_size = ours['batch_size']
  timm = {**other.info(), **_summary(times, batch_size),
          'process_max_rss_mb': _max_rss_bytes() / 2**20}
  timm['gflops_per_image'] = flops / batch_size / 1e9
  timm.update(_rates(flops, timm, peak_tflops))
  return {
      'timm': timm,
      'ratio_vs_timm': ours['images_per_sec'] / timm['images_per_sec'],
      # The same ratio from CPU time, steadier on a shared machine.
      'cpu_ratio_vs_timm': timm['cpu_time_ms'] / ours['cpu_time_ms'],
  }


def run_benchmark(model: str = 'ViT-B_16', batch_size: int = 8,
                  image_size: int = 224, num_classes: int = 1000,
                  mode: str = 'inference', dtype: str = 'float32',
                  steps: int = 10, warmup: int = 2,
                  compare: Optional[str] = None,
                  host_devices: Optional[int] = None,
                  peak_matmul_size: int = _PEAK_MATMUL_SIZE,
                  attention: str = 'auto',
                  **model_overrides: Any) -> Dict[str, Any]:
  """Times `steps` steps of the model (and of timm's with `compare`).

  Args:
    model: variant name (see `models.VARIANTS`).
    batch_size: images per step.
    image_size: square input side in pixels.
    num_classes: head size.
    mode: 'inference' or 'train'.
    dtype: 'float32' or 'bfloat16' matmul operands.
    steps: timed steps; the median is reported.
    warmup: untimed steps before timing; at least 2 (compilation and
      first-touch allocations must not be timed).
    compare: None or 'timm'.
    host_devices: XLA devices to split the batch over (default: all).
    peak_matmul_size: side of the square matmul that measures the peak.
    attention: our attention implementation ('auto', 'fused', 'einsum').
    **model_overrides: architecture overrides for `models.create_model`
      (e.g. num_layers=1 for a smoke test); timm gets the same.

  Returns:
    A JSON-ready dict of results (see the module docstring).
  """
  if warmup < 2:
    raise ValueError(f'warmup={warmup}: at least 2 untimed steps are needed '
                     'so compilation and first-touch costs are excluded')
  jnp_dtype = jnp.dtype(dtype)
  mesh = _mesh(host_devices)
  if batch_size % mesh.size:
    raise ValueError(f'batch_size={batch_size} is not divisible by the '
                     f'{mesh.size} devices; set --host_devices')
  images, labels = _synthetic_batch(batch_size, image_size, num_classes)
  name = models.canonical_name(model)
  step, info = _jax_steps(name, batch_size, image_size, num_classes, mode,
                          jnp_dtype, mesh, images, labels, model_overrides,
                          attention)
  step()  # Allocates what the step needs before the RSS is read.
  rss_ours = _max_rss_bytes()
  other = _comparison_step(
      compare, name, model_overrides, batch_size=batch_size,
      image_size=image_size, num_classes=num_classes, mode=mode, dtype=dtype,
      images_nhwc=images, labels=labels)

  # The peak matmul runs in every round too, so it sees the same load.
  peak_step, peak_flops = matmul_step(jnp_dtype, size=peak_matmul_size)
  step_fns = [step] + ([other.step] if other else []) + [peak_step]
  times = _time_steps(step_fns, steps=steps, warmup=warmup)
  peak = peak_flops / min(times[-1]['wall']) / 1e12

  result = {
      'model': name, 'mode': mode, 'dtype': dtype, 'batch_size': batch_size,
      'image_size': image_size, 'num_classes': num_classes, 'steps': steps,
      'warmup': warmup, 'host_devices': mesh.size, 'attention': attention,
      **_environment_fields(),
      **_compiled_fields(info, batch_size, mode),
      'matmul_peak_tflops': peak,
      'max_rss_mb': rss_ours / 2**20,
      **_summary(times[0], batch_size),
  }
  result.update(_rates(info['flops'], result, peak))
  if other is not None:
    result.update(_comparison_fields(result, other, times[1],
                                     info['every_token_flops'], peak))
  return result


def format_result(result: Dict[str, Any]) -> str:
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


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  host_devices = _HOST_DEVICES.value or default_host_devices(
      _MODE.value, _DTYPE.value, _BATCH_SIZE.value)
  # Must happen before the first JAX operation starts the CPU backend.
  jax.config.update('jax_num_cpu_devices', host_devices)
  result = run_benchmark(
      model=_MODEL.value, batch_size=_BATCH_SIZE.value,
      image_size=_IMAGE_SIZE.value, num_classes=_NUM_CLASSES.value,
      mode=_MODE.value, dtype=_DTYPE.value, steps=_STEPS.value,
      warmup=_WARMUP.value, compare=_COMPARE.value,
      host_devices=host_devices, attention=_ATTENTION.value)
  print(format_result(result))
  print(json.dumps(result, indent=1, sort_keys=True))
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(result, f, indent=1, sort_keys=True)
    print(f'wrote {_JSON_OUT.value}', file=sys.stderr)


if __name__ == '__main__':
  define_flags()
  app.run(main)
