"""Every command README.md shows runs as written in a fresh shell.

Nothing activates the set-up's .venv, so a command names its interpreter
(`.venv/bin/python -m MODULE`, `.venv/bin/vit-jax PROGRAM`) or is a
script (`bash scripts/...`). The commands are the lines of the ```sh
blocks and the inline `code` spans that start with `.venv/bin/`. Each
program must exist and define every --flag the command passes; the slow
test runs each with --help, as the README spells it.
"""

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from typing import List, Set, Tuple

from absl import flags
import pytest

from vit_jax.cli import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
VENV_PYTHON = '.venv/bin/python'
VENV_CONSOLE = '.venv/bin/vit-jax'
# `python -m vit_jax.export` runs its package's __main__, which parses the
# flags as it is imported: the program it runs defines them.
FLAG_MODULE = {'vit_jax.export': 'vit_jax.cli.export'}
# Executables of .venv/bin that are not our programs, with what they need.
OTHER_EXECUTABLES = {'.venv/bin/tfds': 'tensorflow_datasets',
                     '.venv/bin/jupyter': 'notebook'}


def readme_commands(text: str) -> List[str]:
  """The shell commands of `text`: each ```sh block line (continuations
  joined, comments dropped) and each inline span starting with .venv/bin/.
  """
  commands = []
  for block in re.findall(r'```sh\n(.*?)```', text, flags=re.S):
    joined = re.sub(r'\\\n\s*', ' ', block)
    commands += [line.strip() for line in joined.splitlines()
                 if line.strip() and not line.strip().startswith('#')]
  without_blocks = re.sub(r'```.*?```', '', text, flags=re.S)
  commands += [span for span in re.findall(r'`([^`\n]+)`', without_blocks)
               if span.startswith('.venv/bin/') and ' ' in span and
               not _PLACEHOLDER.search(span)]
  return commands


# Prose about the spelling, not a command: `.venv/bin/vit-jax PROGRAM`.
_PLACEHOLDER = re.compile(r'^\S+ (-m )?(PROGRAM|MODULE)\b')


def program_of(command: str) -> Tuple[str, List[str]]:
  """(module `python -m` would run, the arguments) of a README command;
  ('', words) for a command that runs no module of ours.

  Raises:
    AssertionError: a `python`, `python3` or `vit-jax` a fresh shell does
      not find (not through .venv/bin).
  """
  words = shlex.split(command.replace('...', ''))
  assert words[0] not in ('python', 'python3', 'vit-jax', 'pip'), (
      f'{command!r} needs an activated environment: spell it with '
      f'{VENV_PYTHON} or {VENV_CONSOLE}')
  if words[0] == VENV_PYTHON and words[1] == '-m':
    return words[2], words[3:]
  if words[0] == VENV_CONSOLE and not words[1].startswith('-'):
    return console.PROGRAMS[words[1]][0], words[2:]
  return '', words


def flag_names(arguments: List[str]) -> Set[str]:
  """The flags `arguments` pass ('--config.lr=0.01' -> 'config'), brackets
  of optional ones included."""
  names = set()
  for argument in arguments:
    for match in re.finditer(r'(?:^|\[)--([a-z_]+)', argument):
      names.add(match.group(1))
  return names


COMMANDS = readme_commands(open(README).read())
PROGRAMS = sorted({program_of(c)[0] for c in COMMANDS} - {''})


def test_the_readme_has_commands_of_every_program():
  assert {'vit_jax.main', 'vit_jax.cli.predict', 'vit_jax.cli.weights',
          'vit_jax.export', 'vit_jax.cli.fewshot', 'vit_jax.cli.visualize',
          'benchmarks.benchmark'} <= set(PROGRAMS)


@pytest.mark.parametrize('command', COMMANDS)
def test_each_command_names_a_program_and_flags_it_defines(command):
  module, arguments = program_of(command)
  if not module:
    words = arguments
    if words[0] == 'bash':
      assert os.path.isfile(os.path.join(REPO, words[1])), command
    elif words[0] == VENV_CONSOLE:
      with pytest.raises(SystemExit) as exit_info:
        console.main(words)
      assert exit_info.value.code == 0, command
    else:
      assert words[0] in OTHER_EXECUTABLES, (
          f'{command!r}: not a program of ours; add its executable to '
          'OTHER_EXECUTABLES')
      assert importlib.util.find_spec(OTHER_EXECUTABLES[words[0]])
    return
  assert importlib.util.find_spec(module) is not None, command
  program = importlib.import_module(FLAG_MODULE.get(module, module))
  flag_values = flags.FlagValues()
  program.define_flags(flag_values)
  missing = flag_names(arguments) - set(flag_values)
  assert not missing, f'{command!r}: {module} has no flag {sorted(missing)}'


def test_a_bare_python_is_refused():
  with pytest.raises(AssertionError, match='activated environment'):
    program_of('python -m vit_jax.cli.predict --checkpoint=X IMAGE...')


# `vit-jax PROGRAM --help` runs PROGRAM's module as `python -m MODULE` does
# (runpy, `console.main`), so a subprocess per PROGRAM whose module the
# README's commands run would repeat `python -m MODULE --help`: the console
# is run for one of those, and for each program whose module no README
# command runs (`vit-jax export` runs vit_jax.cli.export, the README's
# `python -m vit_jax.export` its package's __main__).
CONSOLE_HELP = sorted({'weights'} | {
    name for name, (module, _) in console.PROGRAMS.items()
    if module not in PROGRAMS})


@pytest.mark.slow
@pytest.mark.parametrize('spelling', [
    *([program] for program in PROGRAMS),
    *(['vit_jax.cli', name] for name in CONSOLE_HELP)])
def test_help_of_each_program_lists_its_flags(spelling):
  """`python -m MODULE --help` (as the README's commands) and
  `vit-jax PROGRAM --help` (through `python -m vit_jax.cli`,
  `CONSOLE_HELP`)."""
  module = spelling[0] if len(spelling) == 1 else (
      console.PROGRAMS[spelling[1]][0])
  result = subprocess.run(
      [sys.executable, '-m', *spelling, '--help'], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  # absl's --help exits with status 1 after printing the help.
  assert result.returncode in (0, 1), result.stderr
  assert 'Traceback' not in result.stderr and 'error' not in result.stderr
  passed = set()
  for command in COMMANDS:
    if program_of(command)[0] == module:
      passed |= flag_names(program_of(command)[1])
  flag_values = flags.FlagValues()
  importlib.import_module(FLAG_MODULE.get(module, module)).define_flags(
      flag_values)
  for name in passed | set(flag_values):
    assert re.search(rf'--(\[no\])?{name}\b', result.stdout), (
        f'{" ".join(spelling)} --help does not list --{name}')
