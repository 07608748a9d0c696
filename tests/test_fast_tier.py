"""The fast tier (`pytest -m "not slow"`) still reaches every module.

A test marked `@pytest.mark.slow` (or a file with `pytestmark =
pytest.mark.slow`) is left out of it; what the other tests import, and the
programs they name, must still load every module of vit_jax.
"""

import ast
import pathlib
from typing import List, Set

from tests import import_graph as graph_lib

TESTS = pathlib.Path(__file__).resolve().parent
PACKAGE = TESTS.parent / 'vit_jax'
# Tests that name modules as data, not as programs they run.
NAME_MODULES_AS_DATA = ('test_layout.py', 'test_fast_tier.py')


def _marked_slow(node: ast.AST) -> bool:
  """Whether a function or `pytestmark = ...` carries `pytest.mark.slow`
  (a test with only some parameters marked slow still runs in the tier)."""
  if isinstance(node, ast.FunctionDef):
    marks = node.decorator_list
  else:  # pytestmark = ... or marks=...
    marks = getattr(node.value, 'elts', [node.value])
  return any(isinstance(mark, ast.Attribute) and mark.attr == 'slow'
             for mark in marks)


def fast_tests(path: pathlib.Path) -> List[ast.FunctionDef]:
  """The tests of a file that the fast tier (-m "not slow") runs."""
  body = ast.parse(path.read_text(), str(path)).body
  if any(isinstance(node, ast.Assign) and _marked_slow(node) and any(
      getattr(t, 'id', None) == 'pytestmark' for t in node.targets)
         for node in body):
    return []
  return [node for node in body if isinstance(node, ast.FunctionDef)
          and node.name.startswith('test_') and not _marked_slow(node)]


def _fast_strings(node: ast.AST) -> Set[str]:
  """The string constants under `node`, bar those of parameters marked slow
  (`pytest.param(..., marks=pytest.mark.slow)`)."""
  if isinstance(node, ast.Call) and any(
      keyword.arg == 'marks' and _marked_slow(keyword)
      for keyword in node.keywords):
    return set()
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    return {node.value}
  return set().union(*map(_fast_strings, ast.iter_child_nodes(node)))


def reached_by_fast_tests(package_dir: pathlib.Path,
                          tests_dir: pathlib.Path) -> Set[str]:
  """The modules that the fast tier loads: what its test files import
  (through the test helpers too) and the programs its tests name as strings
  (`python -m vit_jax.cli.predict`; a package named runs its __main__),
  closed over the modules' own imports."""
  modules = graph_lib.find_modules(package_dir)
  graph = graph_lib.import_graph(package_dir, programs=True)
  test_files = {f'tests.{path.stem}': path
                for path in tests_dir.glob('*.py')}
  reached = set()
  for path in test_files.values():
    if (not path.name.startswith('test_')
        or path.name in NAME_MODULES_AS_DATA):
      continue
    # A program a fast test runs: named in the test or its parameters.
    strings = set().union(*map(_fast_strings, fast_tests(path))) & set(
        modules)
    reached |= strings | {f'{name}.__main__' for name in strings
                          if f'{name}.__main__' in modules}
  todo = [name for name, path in test_files.items()
          if path.name.startswith('test_') and fast_tests(path)]
  seen = set(todo)
  while todo:
    path = test_files[todo.pop()]
    names = graph_lib.imported_names(f'tests.{path.stem}', path)
    helpers_used = (names | {n.rpartition('.')[0] for n in names}) & set(
        test_files)
    todo.extend(helpers_used - seen)
    seen |= helpers_used
    reached |= graph_lib.named_modules(
        {n for n in names if n.split('.')[0] == package_dir.name},
        set(modules))
  todo = list(reached)
  while todo:
    module = todo.pop()
    loaded = graph[module] | (graph_lib.enclosing_packages(module)
                              & set(modules))
    todo.extend(loaded - reached)
    reached |= loaded
  return reached


def test_the_fast_tier_reaches_every_module():
  """`pytest -m "not slow"` loads every module of the package."""
  missing = set(graph_lib.find_modules(PACKAGE)) - reached_by_fast_tests(
      PACKAGE, TESTS)
  assert not missing, (
      f'no fast test reaches {sorted(missing)}: add one, or leave one test '
      'of the module unmarked')


def test_the_fast_tier_check_sees_slow_marks(tmp_path):
  package_dir = graph_lib.write_tree(tmp_path, {
      'models/vit.py': 'from vit_jax.models import layers\n',
      'models/layers.py': '', 'cli/predict.py': '', 'cli/visualize.py': '',
      'export/__main__.py': '', 'main.py': '', 'data/sources.py': '',
      'training/loop.py': ''})
  tests_dir = tmp_path / 'tests'
  tests_dir.mkdir()
  (tests_dir / 'helpers.py').write_text('from vit_jax.data import sources\n')
  (tests_dir / 'test_a.py').write_text(
      'import pytest\nfrom vit_jax.models import vit\nfrom tests import '
      'helpers\n\n@pytest.mark.slow\ndef test_slow():\n  pass\n\n'
      'def test_fast():\n  run("vit_jax.cli.predict", "vit_jax.export")\n\n'
      '@pytest.mark.slow\ndef test_slow_program():\n  run("vit_jax.main")\n'
      '\n@pytest.mark.parametrize("program", [pytest.param(\n'
      '    "vit_jax.cli.visualize", marks=pytest.mark.slow), "x"])\n'
      'def test_partly_slow(program):\n  run(program)\n')
  (tests_dir / 'test_b.py').write_text(
      'import pytest\nfrom vit_jax.training import loop\n\n'
      'pytestmark = [pytest.mark.slow]\n\ndef test_b():\n  pass\n')
  assert reached_by_fast_tests(package_dir, tests_dir) == {
      'vit_jax', 'vit_jax.models', 'vit_jax.models.vit',
      'vit_jax.models.layers', 'vit_jax.data', 'vit_jax.data.sources',
      'vit_jax.cli', 'vit_jax.cli.predict', 'vit_jax.export',
      'vit_jax.export.__main__'}
  (tests_dir / 'test_a.py').write_text(
      'import pytest\nfrom vit_jax.models import vit\n\n'
      '@pytest.mark.slow\ndef test_slow():\n  pass\n')
  assert 'vit_jax.models.vit' not in reached_by_fast_tests(package_dir,
                                                           tests_dir)
