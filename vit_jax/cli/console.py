"""`vit-jax PROGRAM [FLAGS] [ARGS]`: every program under one command.

  vit-jax train --config=configs/default.py --workdir=runs/default
  vit-jax predict --checkpoint=runs/default/model.npz IMAGE...
  vit-jax PROGRAM --help                  that program's flags

The console script setup.py installs (also `python -m vit_jax.cli`). Each
subcommand runs its module exactly as `python -m MODULE` does (runpy, as
`__main__`, the rest of the command line its arguments), so flags, --help,
errors and exit statuses are the program's own. Nothing heavy is imported
here: a program quiets TensorFlow's banner before TensorFlow loads.
"""

import runpy
import sys
from typing import List, Optional

from vit_jax import commands

# Subcommand -> (module `python -m` runs, what it does).
PROGRAMS = {
    'train': ('vit_jax.main', 'train, fine-tune, evaluate (configs/*.py)'),
    'predict': ('vit_jax.cli.predict',
                'classify images, folders or globs with any checkpoint'),
    'visualize': ('vit_jax.cli.visualize',
                  'attention rollout, distances, embeddings as PNGs'),
    'fewshot': ('vit_jax.cli.fewshot',
                'few-shot linear evaluation of a checkpoint'),
    'export': ('vit_jax.cli.export',
               'SavedModel, ONNX and TFLite files to serve'),
    'weights': ('vit_jax.cli.weights',
                'list or fetch the released checkpoints by name'),
}
COMMAND = 'vit-jax'
_HELP = ('-h', '--help', '-help', 'help')


def usage() -> str:
  """The text `vit-jax --help` prints: the subcommands and their modules."""
  width = max(map(len, PROGRAMS))
  lines = [f'usage: {COMMAND} PROGRAM [FLAGS] [ARGS]', '',
           'programs (each the same as the command below it):']
  for name, (module, summary) in PROGRAMS.items():
    lines += [f'  {name:<{width}}  {summary}',
              f'  {"":<{width}}  {commands.python_m(module)}']
  lines += ['', f'{COMMAND} PROGRAM --help lists the flags of PROGRAM.']
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> None:
  """Runs the program `argv[1]` names with the arguments after it.

  Args:
    argv: the command line, the command's name first; default sys.argv.

  Raises:
    SystemExit: the program's exit, or status 1 for an unknown or missing
      program (after one `error:` line), 0 after --help.
  """
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in _HELP:
    print(usage(), file=sys.stdout if len(argv) > 1 else sys.stderr)
    sys.exit(0 if len(argv) > 1 else 1)
  name = argv[1]
  if name not in PROGRAMS:
    print(f'error: {COMMAND} has no program {name!r}; choose one of '
          f'{", ".join(PROGRAMS)} ({COMMAND} --help describes them)',
          file=sys.stderr)
    sys.exit(1)
  module, _ = PROGRAMS[name]
  # runpy puts the module's file in sys.argv[0], as `python -m` does: absl's
  # --help lists the key flags of the module named there.
  sys.argv = [argv[0], *argv[2:]]
  runpy.run_module(module, run_name='__main__', alter_sys=True)
