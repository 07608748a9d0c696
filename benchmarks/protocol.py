"""How `benchmarks.benchmark` measures: `run_benchmark` and its figures.

Protocol: every step is compiled and run `warmup` (>= 2) times before the
clock starts; then each of `steps` steps is timed on its own up to
`block_until_ready` and the median is reported. With `compare='timm'` the
two frameworks' timed steps alternate, so a change in machine load during
the run hits both alike and the ratio stays meaningful.

FLOPs are XLA's (jax_side), so `fraction_of_peak` compares the
achieved rate with a large matmul of the same dtype, timed in the same
rounds as the steps. timm's step computes every token in the last block,
so its rate is counted on the FLOPs of our step computing every token.
Memory: XLA's compiled memory analysis (its peak estimate, and arguments +
outputs + temporaries as an upper bound) and the process's max RSS, read
before timm is loaded (timm's figure is the whole process's).

On a machine that other processes share, wall time depends on how the OS
shares the cores out; `cpu_time_ms` (this process's CPU seconds per step)
and `cpu_ratio_vs_timm` are the steadier figures there.
"""

import dataclasses
import os
import resource
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import jax_side
from vit_jax.cli import _host_memory
from vit_jax import extras
from vit_jax import models
from vit_jax.models import precision
from vit_jax import sharding
from vit_jax.training import run_spec

# The frameworks `run_benchmark` can compare with.
COMPARISONS = ('timm',)


def time_steps(step_fns: Sequence[jax_side.Step], steps: int,
               warmup: int) -> List[Dict[str, List[float]]]:
  """Times each call of every step function, the functions interleaved.

  Args:
    step_fns: callables that each run one step to completion.
    steps: timed calls of each.
    warmup: untimed calls of each first.

  Returns:
    Per function {'wall': seconds, 'cpu': process CPU seconds} of every
    call. CPU time is the steadier figure when other processes share the
    cores: it counts only the cycles this process got (spin-waits included).
  """
  for _ in range(warmup):
    for step in step_fns:
      step()
  times = [{'wall': [], 'cpu': []} for _ in step_fns]
  for _ in range(steps):
    for step, step_times in zip(step_fns, times):
      start, start_cpu = time.perf_counter(), time.process_time()
      step()
      step_times['wall'].append(time.perf_counter() - start)
      step_times['cpu'].append(time.process_time() - start_cpu)
  return times


def synthetic_batch(batch_size: int, image_size: int, num_classes: int):
  """(images, labels) that both frameworks' steps run on."""
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(
      np.float32)
  labels = rng.integers(0, num_classes, (batch_size,)).astype(np.int32)
  return images, labels


def summary(times: Dict[str, List[float]],
             batch_size: int) -> Dict[str, float]:
  """Median step time and images/s (and CPU time) of one side's `times`."""
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


def require_comparison(compare: str) -> None:
  """Checks that the `compare` framework can run, before any measuring.

  Raises:
    ValueError: an unknown framework.
    extras.MissingExtraError: torch or timm is not installed.
  """
  if compare not in COMPARISONS:
    raise ValueError(f'unknown --compare={compare!r}; only "timm" exists')
  for module in ('torch', 'timm'):
    extras.require(module, f'--compare={compare}')


def _comparison_step(compare: Optional[str], name: str,
                     model_overrides: Dict[str, Any], **step_kwargs: Any):
  """The other framework's step (an object with .step and .info), or None."""
  if compare is None:
    return None
  # Imported only here: the package never needs torch otherwise.
  require_comparison(compare)
  from benchmarks import timm_side  # pylint: disable=g-import-not-at-top
  variant = dataclasses.replace(models.VARIANTS[name], **model_overrides)
  return timm_side.TimmStep(variant, **step_kwargs)


def _rates(flops: float, summary: Dict[str, float],
           peak_tflops: float) -> Dict[str, float]:
  achieved = flops / (summary['step_time_ms'] / 1e3) / 1e12
  return {'achieved_tflops': achieved,
          'fraction_of_peak': achieved / peak_tflops}


def _environment_fields() -> Dict[str, Any]:
  return {'jax_version': jax.__version__,
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'keeps_freed_memory': _host_memory.keeps_freed_memory()}


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
  timm = {**other.info(), **summary(times, batch_size),
          'process_max_rss_mb': _max_rss_bytes() / 2**20}
  timm['gflops_per_image'] = flops / batch_size / 1e9
  timm.update(_rates(flops, timm, peak_tflops))
  return {
      'timm': timm,
      'ratio_vs_timm': ours['images_per_sec'] / timm['images_per_sec'],
      # The same ratio from CPU time, steadier on a shared machine.
      'cpu_ratio_vs_timm': timm['cpu_time_ms'] / ours['cpu_time_ms'],
  }


def _mesh(host_devices: Optional[int], batch_size: int) -> jax.sharding.Mesh:
  """The first `host_devices` devices, over which the batch must split."""
  mesh = sharding.make_mesh(1, sharding.first_devices(
      host_devices, hint='; lower --host_devices, or (from Python) call '
      'vit_jax.cli._process.use_cpu_devices before JAX starts'))
  if batch_size % mesh.size:
    raise ValueError(f'batch_size={batch_size} is not divisible by the '
                     f'{mesh.size} devices; set --host_devices')
  return mesh


def run_benchmark(model: str = 'ViT-B_16', batch_size: int = 8,
                  image_size: int = 224, num_classes: int = 1000,
                  mode: str = 'inference', dtype: str = 'float32',
                  steps: int = 10, warmup: int = 2,
                  compare: Optional[str] = None,
                  host_devices: Optional[int] = None,
                  peak_matmul_size: int = jax_side.PEAK_MATMUL_SIZE,
                  attention: str = 'auto', config: Any = None,
                  **model_overrides: Any) -> Dict[str, Any]:
  """Times `steps` steps of the model (and of timm's with `compare`).

  With `config` (an experiment config), the model, batch size, image size
  dtype and head are the config's and the step is the training loop's own
  (`jax_side.build_config_step`); the arguments naming those are
  ignored and `compare` must be None.

  Args:
    model: variant name (see `models.VARIANTS`).
    batch_size: images per step.
    image_size: square input side in pixels.
    num_classes: head size.
    mode: one of jax_side.MODES.
    dtype: one of jax_side.DTYPES, the matmul operands.
    steps: timed steps; the median is reported.
    warmup: untimed steps before timing; at least 2 (compilation and
      first-touch allocations must not be timed).
    compare: None or one of COMPARISONS.
    host_devices: XLA devices to split the batch over (default: all).
    peak_matmul_size: side of the square matmul that measures the peak.
    attention: our attention implementation
      (vit_sublayers.ATTENTION_IMPLEMENTATIONS).
    **model_overrides: architecture overrides for `models.create_model`
      (e.g. num_layers=1 for a smoke test); timm gets the same.

  Returns:
    A JSON-ready dict of results (see the module docstring).
  """
  if warmup < 2:
    raise ValueError(f'warmup={warmup}: at least 2 untimed steps are needed '
                     'so compilation and first-touch costs are excluded')
  if config is not None:
    if compare:
      raise ValueError('--compare times a named variant; use --model, not '
                       '--config')
    model, batch_size, image_size = (config.model_name, config.batch_size,
                                     config.image_size)
    dtype = precision.resolve_dtype(config.model.dtype)
    attention = config.model.attention
    spec = run_spec.from_config(config)
    # The head training would build: config.num_classes or the dataset's.
    num_classes = spec.data.resolve_num_classes(spec.data.source())
  jnp_dtype = jnp.dtype(dtype)
  mesh = _mesh(host_devices, batch_size)
  images, labels = synthetic_batch(batch_size, image_size, num_classes)
  name = models.canonical_name(model)
  if config is not None:
    step, info = jax_side.build_config_step(spec, num_classes, mode,
                                            images, labels)
  else:
    step, info = jax_side.build_step(
        name, image_size, num_classes, mode, jnp_dtype, mesh, images, labels,
        model_overrides, attention)
  step()  # Allocates what the step needs before the RSS is read.
  rss_ours = _max_rss_bytes()
  other = _comparison_step(
      compare, name, model_overrides, image_size=image_size,
      num_classes=num_classes, mode=mode, dtype=dtype, images_nhwc=images,
      labels=labels)

  # The peak matmul runs in every round too, so it sees the same load.
  peak_step, peak_flops = jax_side.matmul_step(jnp_dtype,
                                               size=peak_matmul_size)
  step_fns = [step] + ([other.step] if other else []) + [peak_step]
  times = time_steps(step_fns, steps=steps, warmup=warmup)
  peak = peak_flops / min(times[-1]['wall']) / 1e12

  result = {
      'model': name, 'mode': mode, 'dtype': dtype, 'batch_size': batch_size,
      'image_size': image_size, 'num_classes': num_classes, 'steps': steps,
      'warmup': warmup, 'host_devices': mesh.size, 'attention': attention,
      **_environment_fields(),
      **_compiled_fields(info, batch_size, mode),
      'matmul_peak_tflops': peak,
      'max_rss_mb': rss_ours / 2**20,
      **summary(times[0], batch_size),
  }
  result.update(_rates(info['flops'], result, peak))
  if other is not None:
    result.update(_comparison_fields(result, other, times[1],
                                     info['every_token_flops'], peak))
  return result
