"""Commands as a program prints them: runnable as written, in a fresh shell.

  commands.python_m('vit_jax.cli.predict')
      -> '.venv/bin/python -m vit_jax.cli.predict' (in the repository root)

A hint such as "classify with: python -m vit_jax.cli.predict ..." fails in
a shell where the environment's `bin/` is not on PATH (nothing activates the
set-up's .venv): `python` there is another interpreter, without jax. The
interpreter running now (`sys.executable`) is the one that has this
package, so hints name it, relative to the working directory when it lies
below it.
"""

import os
import shlex
import sys


def interpreter() -> str:
  """The running Python, as a path a shell in the working directory runs:
  relative ('.venv/bin/python') below it, else absolute."""
  path = sys.executable or 'python3'
  try:
    relative = os.path.relpath(path)
  except ValueError:  # Another drive (Windows).
    return shlex.quote(path)
  if relative.startswith(os.pardir) or os.path.isabs(relative):
    return shlex.quote(path)
  return shlex.quote(relative if os.sep in relative else
                     os.path.join(os.curdir, relative))


def python_m(module: str) -> str:
  """`python -m module` with this environment's interpreter."""
  return f'{interpreter()} -m {module}'
