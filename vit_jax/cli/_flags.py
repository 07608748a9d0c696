"""Flags and error handling shared by the programs.

Every program defines its flags in `define_flags(flag_values=flags.FLAGS)`,
called only when it runs as a program, so tests can import several programs
(and define their flags on a fresh `flags.FlagValues`) without
duplicate-flag errors; `definer` keeps such a table one flag a line. An
enum flag takes its choices from the tuple the code checks against; a model
name is a string that `models.canonical_name` resolves when the program
runs. Every program reports USER_ERRORS in one line (`exit_on_user_error`).

`vit_jax.cli.predict`, `visualize` and `fewshot` take a checkpoint (any
source `vit_jax.weights.pretrained.load` reads) and optionally a resolution and a
model name the file must fit, with the architecture overrides it was
trained with (`define_model_flags`): one flag per variant key of the
registered families (`vit_jax.models.variant_keys`).
"""

import re
import sys
from typing import (Any, Callable, Dict, List, NoReturn, Optional, Sequence,
                    Tuple)

from absl import app
from absl import flags

from vit_jax.cli import _process
from vit_jax import extras
from vit_jax import models

# Flags defined here belong to the program whose define_flags asks for them:
# its --help lists them as its own.
flags.disclaim_key_flags()

# What a user can fix by changing the command line, the config or the
# machine, in every program: reported in one line, not traced. ValueError
# covers npz.CheckpointMismatchError (a subclass) and unknown model names
# (`models.canonical_name`); OSError missing files, full disks and
# permissions (train_checkpoints.CheckpointSaveError among them);
# FloatingPointError is a training run whose loss stopped being finite,
# fixed by the config's learning rate or clipping; MissingExtraError an
# optional dependency to install (its message names the extra).
USER_ERRORS = (OSError, ValueError, FloatingPointError,
               extras.MissingExtraError)

# What ml_collections' config flags raise for a config file or override they
# cannot use: a missing file (OSError), a misspelt key (AttributeError holding
# a KeyError, with its "Did you mean" suggestion), a config file's arguments
# (TypeError), a value of the wrong type (ValueError).
_CONFIG_ERRORS = (AttributeError, KeyError, OSError, TypeError, ValueError)


def definer(flag_values: flags.FlagValues = flags.FLAGS
            ) -> Callable[..., Any]:
  """`define(kind, name, default, help_text, **kwargs)` on `flag_values`.

  Args:
    flag_values: where the flags go.

  Returns:
    A function that calls `kind` (an `absl.flags.DEFINE_*`) with the help
    text and any further arguments (e.g. `enum_values`) as keywords.
  """
  def define(kind, name, default, help_text, **kwargs):
    return kind(name, default, help=help_text, flag_values=flag_values,
                **kwargs)
  return define


def define_model_name(
    default: Optional[str], flag_values: flags.FlagValues = flags.FLAGS,
    help_text: str = 'Model name, e.g. ViT-B_16 or its short form B/16.'
) -> None:
  """Defines --model, checked by `models.canonical_name` when it is used.

  Not a parse-time validator: an unknown name is a ValueError like any other
  bad input, printed by `exit_on_user_error` as `error: unknown model ...`.
  """
  flags.DEFINE_string('model', default, help_text, flag_values=flag_values)


def define_model_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --checkpoint, --model, --image_size and the overrides."""
  define = definer(flag_values)
  define(flags.DEFINE_string, 'checkpoint', None,
         'An .npz (ours, with its model.json sidecar, or a released one), '
         'a timm checkpoint (hf-hub:ORG/NAME or a directory with '
         'config.json) or the name of a released file.')
  define_model_name(
      None, flag_values,
      'Optional: the variant the checkpoint must be, e.g. ViT-B_16 or B/16 '
      '(the architecture is read off the file).')
  define(flags.DEFINE_integer, 'image_size', None,
         'Resolution; default: the checkpoint\'s native one.')
  for name, key in models.variant_keys().items():
    kind, form = flags.DEFINE_integer, ''
    if key.value_type is tuple:
      kind, form = flags.DEFINE_string, ' (comma-separated, e.g. 3,4,9)'
    define(kind, name, None,
           f'{" and ".join(key.families)} models: with --model, the '
           f'variant\'s {name}{form} as config.model.{name} changed it in '
           'training; without, checked against the file.')


def architecture_overrides(flag_values: flags.FlagValues = flags.FLAGS
                           ) -> Dict[str, Any]:
  """The variant-key flags that were set, as create_model overrides."""
  overrides = {}
  for name, key in models.variant_keys().items():
    value = flag_values[name].value if name in flag_values else None
    if value is not None and key.value_type is tuple:
      value = parse_int_tuple(name, value)
    if value is not None:
      overrides[name] = value
  return overrides


def parse_int_tuple(name: str, text: str) -> Tuple[int, ...]:
  """--name's '3,4,9' -> (3, 4, 9); '' -> () (e.g. a hybrid's root only).

  Raises:
    ValueError: an entry that is not a positive integer.
  """
  entries = [entry.strip() for entry in text.split(',') if entry.strip()]
  if not all(entry.isdigit() and int(entry) > 0 for entry in entries):
    raise ValueError(f'--{name}={text!r}: give positive integers separated '
                     'by commas, e.g. 3,4,9 (or an empty value for none)')
  return tuple(int(entry) for entry in entries)


def check_required(flag_values: flags.FlagValues, *names: str) -> None:
  """Raises ValueError naming the first required flag left unset."""
  for name in names:
    if flag_values[name].value in (None, ''):
      raise ValueError(f'--{name} is required')


def run(main: Callable[[List[str]], Any]) -> None:
  """How every program starts: `absl.app.run(main)` with flag and config
  errors in one line (`parse_flags`), the libraries' INFO records out of
  the log (`process.quiet_library_logs`) and log lines without absl's
  prefix (`process.plain_log_lines`)."""
  def quiet_main(argv):
    _process.quiet_library_logs()
    _process.plain_log_lines()
    return main(argv)
  app.run(quiet_main, flags_parser=parse_flags)


def parse_flags(argv: List[str],
                flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`) with
  every error in one `error: ...` line and exit status 1, those of config
  files and `--config.<key>` overrides included.

  Returns:
    The arguments left after the flags, the program's name first.
  """
  try:
    remaining = flag_values(argv)
    if 'config' in flag_values:
      # ml_collections defers a config file's load error to the config's
      # first use: make it now.
      getattr(flag_values['config'].value, 'keys', None)
    return remaining
  except flags.Error as e:
    if _cause(e) is e:
      _exit_with_error(f'{e} (--helpshort lists the flags)')
    _exit_with_error(_config_error_message(e))
  except _CONFIG_ERRORS as e:
    _exit_with_error(_config_error_message(e))


def _cause(error: BaseException) -> BaseException:
  """The exception at the bottom of `error`'s chain."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  return error


def _config_error_message(error: BaseException) -> str:
  """A config flag's error in one line: a misspelt key with ml_collections'
  suggestion, else the last line of the cause at the bottom of the chain
  (the top is a generic "Failed loading config file" or a flag error that
  quotes a whole traceback)."""
  # ml_collections raises an AttributeError holding the KeyError that makes
  # the suggestion.
  while len(error.args) == 1 and isinstance(error.args[0], BaseException):
    error = error.args[0]
  if isinstance(error, KeyError):
    key, _, suggestion = str(error.args[0]).partition('\n')
    return f'--config: the config has no key {key}. {suggestion}'.strip()
  lines = [line.strip() for line in str(_cause(error)).splitlines()]
  return f'--config: {[line for line in lines if line][-1]}'


def _exit_with_error(message: str, details: Sequence[str] = ()) -> NoReturn:
  """Prints `details` (lines the message refers to) and then the error line:
  the last line a failed program prints."""
  for line in details:
    print(line, file=sys.stderr)
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


# The library's messages name its arguments (`pretrained.load(model_name=
# ...)`, the architecture overrides); a program's user sets them with flags.
_ARGUMENTS_AS_FLAGS = (
    (re.compile(r"\bmodel_name='([^']*)'"), r'--model=\1'),
    (re.compile(r"\b(\w+)=(\S+) was asked for"), r'--\1=\2 was asked for'),
)


def flag_spelling(message: str) -> str:
  """`message` with the library's argument spellings as the flags that set
  them (`model_name='B/16'` -> `--model=B/16`)."""
  for pattern, flag in _ARGUMENTS_AS_FLAGS:
    message = pattern.sub(flag, message)
  return message


def exit_on_user_error(function: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls `function`; a USER_ERRORS exception prints `error: ...` to stderr
  (after its `details` lines, when it has them, e.g.
  `run_identity.ConfigChangedError`), in flags (`flag_spelling`), and exits
  with status 1."""
  try:
    return function(*args, **kwargs)
  except USER_ERRORS as e:
    _exit_with_error(flag_spelling(str(e)), getattr(e, 'details', ()))
