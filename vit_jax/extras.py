"""Optional dependencies, each named with the setup.py extra that installs it.

  module = extras.require('onnxruntime')   # the module, or ImportError
  extras.missing_message('torch')          # the one line a program prints

The core install leaves these out; a feature that needs one imports it
through `require`, so a missing one is an ImportError whose message is one
line naming the extra to install (`.venv/bin/python -m pip install -e
'.[export]'`, with the running interpreter, from the repository root: the
package is not on any index) instead of Python's bare
"No module named ...". `EXTRA_OF` is the one table of which extra provides
which module; the extras themselves are setup.py's `extras_require`.
"""

import importlib
import types
from typing import Optional

from vit_jax import commands

# Top-level module -> the setup.py extra that installs it.
EXTRA_OF = {
    # `vit_jax.export`: the ONNX converter and the runtimes each written
    # file is checked in (TensorFlow writes the SavedModel).
    'jax2onnx': 'export',
    'onnx': 'export',
    'onnxruntime': 'export',
    'ai_edge_litert': 'export',
    # `benchmarks.benchmark --compare=timm`.
    'torch': 'benchmark',
    'torchvision': 'benchmark',
    'timm': 'benchmark',
    # Training: the input pipeline, train-state checkpoints, metrics.
    'tensorflow': 'train',
    'tensorflow_datasets': 'train',
    'orbax': 'train',
    'clu': 'train',
    'tensorboard': 'train',
}


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names its extra.

  The programs report it in one line (`vit_jax.cli._flags.USER_ERRORS`).
  """


def is_optional(module: Optional[str]) -> bool:
  """Whether `module` (e.g. ImportError.name) belongs to an extra."""
  return bool(module) and module.split('.')[0] in EXTRA_OF


def install_command(extra: str) -> str:
  """The command that installs `extra` into the running environment, from
  the repository root."""
  return f"{commands.python_m('pip')} install -e '.[{extra}]'"


def missing_message(module: str, purpose: str = '') -> str:
  """One line: `module` is missing, and the extra that installs it.

  Args:
    module: the (top-level) module name, e.g. 'onnxruntime'.
    purpose: what needs it, e.g. '--compare=timm'; '' for the extra's name.

  Returns:
    E.g. "onnxruntime is not installed: export needs the `export` extra
    (.venv/bin/python -m pip install -e '.[export]' from the repository
    root)".
  """
  top = module.split('.')[0]
  extra = EXTRA_OF.get(top)
  if extra is None:
    return (f'{top} is not installed ({commands.python_m("pip")} install '
            f'{top})')
  return (f'{top} is not installed: {purpose or extra} needs the `{extra}` '
          f'extra ({install_command(extra)} from the repository root)')


def require(module: str, purpose: str = '') -> types.ModuleType:
  """Imports `module`, an optional dependency.

  Args:
    module: a module name; its top-level package is looked up in EXTRA_OF.
    purpose: what needs it, for the message (see `missing_message`).

  Returns:
    The imported module.

  Raises:
    MissingExtraError: it (or an optional module it imports) is not
      installed; the message is `missing_message`'s line for the module
      that is missing.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    missing = e.name or module
    if not is_optional(missing) and missing != module:
      raise  # A broken install of something else: keep its traceback.
    raise MissingExtraError(missing_message(missing, purpose),
                            name=missing) from e
