"""Flags and error handling shared by the command lines that load a model.

`vit_jax.cli.visualize` and `vit_jax.cli.fewshot` both take a checkpoint, a model
name, a resolution and, for files trained with `config.model` architecture
overrides, the same overrides. Flags are defined by a call, not on import, so
tests can import several command-line modules (and define their flags on a
fresh `flags.FlagValues`) without duplicate-flag errors.
"""

import sys
from typing import Any, Callable, Dict

from absl import flags

from vit_jax import npz

# The architecture keys that `config.model` can override (configs/common.py);
# a checkpoint trained with overrides needs the same ones to load.
ARCHITECTURE_FLAGS = ('patch_size', 'hidden_size', 'mlp_dim', 'num_heads',
                      'num_layers')

# What a user can fix by changing the command line: reported, not traced.
USER_ERRORS = (FileNotFoundError, ValueError,
               npz.CheckpointMismatchError)


def define_model_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --checkpoint, --model, --image_size and the overrides."""
  flags.DEFINE_string('checkpoint', None, 'Path of the .npz file.',
                      flag_values=flag_values)
  flags.DEFINE_string('model', None, 'Model name, e.g. ViT-B_16.',
                      flag_values=flag_values)
  flags.DEFINE_integer(
      'image_size', None, 'Resolution; default: the checkpoint\'s native one.',
      flag_values=flag_values)
  for name in ARCHITECTURE_FLAGS:
    flags.DEFINE_integer(
        name, None, f'Override the variant\'s {name}, for a checkpoint '
        f'trained with config.model.{name} set.', flag_values=flag_values)


def architecture_overrides(flag_values: flags.FlagValues = flags.FLAGS
                           ) -> Dict[str, int]:
  """The architecture flags that were set, as create_model overrides."""
  return {name: flag_values[name].value for name in ARCHITECTURE_FLAGS
          if flag_values[name].value is not None}


def check_required(flag_values: flags.FlagValues, *names: str) -> None:
  """Raises ValueError naming the first required flag left unset."""
  for name in names:
    if flag_values[name].value in (None, ''):
      raise ValueError(f'--{name} is required')


def exit_on_user_error(function: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls `function`; a USER_ERRORS exception prints `error: ...` to stderr
  and exits with status 1, as `vit_jax.cli.predict` does."""
  try:
    return function(*args, **kwargs)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
