"""Process set-up of the programs: what they do to the process as they start.

Only the programs' entry points call these (`if __name__ == '__main__'` or
`main`), never an import: a test or notebook that imports a program keeps
its own allocator, devices and TensorFlow settings.

  quiet_tensorflow()            before TensorFlow is imported
  quiet_library_logs()          in main, once absl has parsed --verbosity
  plain_log_lines()             in main, once absl's handler exists
  keep_freed_memory_on_cpu()    before JAX (or TensorFlow) starts threads
  use_cpu_devices(n)            before the first JAX operation
  hide_gpus_from_tensorflow()   before the first tf.data pipeline

This module imports neither JAX nor TensorFlow at import time, so a program
can call the first two before it imports either.
"""

import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
from typing import List

from vit_jax.cli import _host_memory

# Accelerator packages that are not PJRT plugins under `jax_plugins` (those
# are found by scanning, see `accelerator_plugins`): the CUDA and ROCm kernel
# plugins and TPU's runtime, which JAX loads as the module `libtpu`.
_ACCELERATOR_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin',
                        'jax_rocm60_plugin', 'jax_rocm7_plugin', 'libtpu')


def quiet_tensorflow() -> None:
  """Keeps TensorFlow's start-up banner and oneDNN notice out of the logs.

  Effective only before TensorFlow is imported. Settings already in the
  environment win.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


class _LibraryInfoFilter(logging.Filter):
  """Passes vit_jax's own records and every library's warnings and errors.

  What the libraries say at INFO (JAX's TPU probe, TFDS's dataset readers,
  orbax's every save) is how they work, not news about the run; it shows at
  --verbosity=1 and above.
  """

  _OWN_CODE = os.sep + 'vit_jax' + os.sep

  def filter(self, record: logging.LogRecord) -> bool:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    return (record.levelno >= logging.WARNING
            or self._OWN_CODE in record.pathname
            or absl_logging.get_verbosity() >= absl_logging.DEBUG)


def quiet_library_logs() -> None:
  """Keeps the libraries' INFO records out of the log (see
  `_LibraryInfoFilter`); call it in main, where absl's handler exists."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


# How a record of each level at WARNING and above starts its plain line.
_LEVEL_WORDS = {logging.WARNING: 'warning', logging.ERROR: 'error',
                logging.CRITICAL: 'fatal'}


class _PlainFormatter(logging.Formatter):
  """A log record as a person reads it: the message alone, what is not
  plain information led by its level (`warning: ...`).

  absl's prefix (level letter, date, thread id, source line) is for
  debugging the code; with --verbosity=1 and above it comes back.
  """

  def __init__(self):
    super().__init__()
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    self._absl_formatter = absl_logging.PythonFormatter()

  def format(self, record: logging.LogRecord) -> str:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    if absl_logging.get_verbosity() >= absl_logging.DEBUG:
      return self._absl_formatter.format(record)
    message = super().format(record)  # With an exception's traceback.
    level = max((level for level in _LEVEL_WORDS if record.levelno >= level),
                default=None)
    return f'{_LEVEL_WORDS[level]}: {message}' if level else message


def plain_log_lines() -> None:
  """Prints log records without absl's prefix (see `_PlainFormatter`);
  call it in main, where absl's handler exists."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().setFormatter(_PlainFormatter())


def accelerator_plugins() -> List[str]:
  """Installed modules that give JAX a backend other than the CPU.

  Found without importing them: the submodules of the `jax_plugins`
  namespace package and the `jax_plugins` entry points (how JAX itself
  discovers PJRT plugins, e.g. `jax_plugins.xla_cuda12`), and the modules of
  `_ACCELERATOR_MODULES`.
  """
  found = [name for name in _ACCELERATOR_MODULES
           if importlib.util.find_spec(name) is not None]
  namespace = importlib.util.find_spec('jax_plugins')
  if namespace is not None and namespace.submodule_search_locations:
    found += [f'jax_plugins.{module.name}' for module in pkgutil.iter_modules(
        namespace.submodule_search_locations)]
  found += [entry.value for entry in
            importlib.metadata.entry_points(group='jax_plugins')]
  return sorted(set(found))


def runs_on_cpu() -> bool:
  """Whether JAX will run on the CPU, decided without starting JAX.

  A heuristic from cheap signals, for set-up that must precede JAX's
  threads (so no backend can be asked):
    1. JAX_PLATFORMS, if set: its first platform is the one JAX prefers;
    2. else an installed accelerator plugin (`accelerator_plugins`) or a
       TPU_LIBRARY_PATH means not the CPU;
    3. else the CPU, the only backend jaxlib has on its own.
  It errs towards 'not the CPU': a CUDA plugin on a machine without a GPU
  falls back to the CPU, but counts as an accelerator here.
  """
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if os.environ.get('TPU_LIBRARY_PATH'):
    return False
  return not accelerator_plugins()


def keep_freed_memory_on_cpu() -> bool:
  """`host_memory.keep_freed_memory()` if JAX will run on the CPU.

  The glibc settings were measured on XLA:CPU only (its per-step buffers);
  on an accelerator the host does not hold them, and a process that never
  returns freed memory has nothing to gain. Call it before JAX or TensorFlow
  starts its threads.

  Returns:
    Whether the settings were applied.
  """
  return runs_on_cpu() and _host_memory.keep_freed_memory()


def use_cpu_devices(num_devices: int, *, cpu_only: bool = False) -> None:
  """Makes XLA:CPU expose `num_devices` devices.

  The count replaces any --xla_force_host_platform_device_count of
  XLA_FLAGS. Must precede the first JAX operation, which starts the
  backends: JAX raises RuntimeError afterwards.

  Args:
    num_devices: the CPU devices to have.
    cpu_only: also keep JAX off any accelerator, for programs whose devices
      are these CPU ones (an accelerator would add nothing but a second
      backend to start).
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', num_devices)
  if cpu_only:
    jax.config.update('jax_platforms', 'cpu')


def hide_gpus_from_tensorflow() -> None:
  """Keeps TensorFlow (tf.data) off the GPUs, whose memory JAX needs.

  TensorFlow would otherwise reserve most of each GPU's memory. Call it
  before the first TensorFlow operation; later it is too late and a no-op.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF's devices were initialised already: too late.
    pass
