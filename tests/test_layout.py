"""The package layout as a rule: the library never imports the programs
(`vit_jax.main`, `vit_jax.cli`) or the repository's `configs`."""

import ast
import os
import pathlib
from typing import Set

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'vit_jax'
PROGRAM_PREFIXES = ('vit_jax.main', 'vit_jax.cli')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imports(path: pathlib.Path) -> Set[str]:
  """Every module `path` imports, by absolute name (for `from a import b`
  both `a` and `a.b`, since b may be a module)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _is_program(module: str) -> bool:
  """The programs: vit_jax.main, vit_jax.cli and a package's `__main__`
  (`python -m vit_jax.export` runs vit_jax/export/__main__.py)."""
  return module.endswith('.__main__') or any(
      module == p or module.startswith(p + '.') for p in PROGRAM_PREFIXES)


LIBRARY = sorted(
    (_module_name(path), path) for path in PACKAGE.rglob('*.py')
    if not _is_program(_module_name(path)))


def test_the_walk_finds_library_and_programs():
  names = [name for name, _ in LIBRARY]
  assert {'vit_jax.training.loop', 'vit_jax.models', 'vit_jax.models.vit_family',
          'vit_jax.weights.npz'} <= set(names)
  assert not any(_is_program(name) for name in names)
  assert (PACKAGE / 'cli' / 'predict.py').exists()


@pytest.mark.parametrize('module,path', LIBRARY, ids=[n for n, _ in LIBRARY])
def test_library_modules_import_no_program_and_no_config(module, path):
  forbidden = sorted(
      name for name in _imports(path)
      if _is_program(name) or name == 'configs' or name.startswith('configs.'))
  assert not forbidden, f'{module} imports {forbidden}'


def test_the_rule_catches_a_program_import(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('from vit_jax.cli import _flags\nimport configs.common\n')
  assert {'vit_jax.cli._flags', 'configs.common'} <= _imports(bad)
  assert _is_program('vit_jax.cli._flags') and not _is_program('vit_jax.training.loop')


def test_programs_live_in_cli_or_main():
  """A module that runs as a program (`__main__` guard) is a program."""
  for module, path in LIBRARY:
    text = path.read_text()
    assert "if __name__ == '__main__'" not in text, (
        f'{module} is a program: move it to vit_jax/cli/')
  assert os.path.exists(PACKAGE / 'main.py')
