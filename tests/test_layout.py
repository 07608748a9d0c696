"""The package layout as a rule, read from the import statements.

Floors, bottom up: `atomic` and `sharding` (foundations), `models`, `data`,
`weights`, `analysis`, `export`, `evaluators` and `training`; the programs
(`vit_jax.main`, `vit_jax.cli`, any `__main__`) sit on top. A package imports
only the packages its floor names (`FLOORS`); no library module imports a
program; no module imports the repository's `configs` or `benchmarks`
(neither is installed); library modules import each other without cycles.
Every import counts, the ones inside functions too: they run sooner or later.
"""

import ast
import pathlib
from typing import Dict, List, Optional, Sequence, Set

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'vit_jax'
PROGRAM_PREFIXES = ('vit_jax.main', 'vit_jax.cli')
# Repository directories that are not installed: a library import of them
# works in a checkout and fails in an installed package.
NOT_INSTALLED = ('configs', 'benchmarks')

# The vit_jax packages each package may import, besides itself and `atomic`
# (atomic file writes, used everywhere). A new package needs a line here.
FLOORS = {
    'atomic': set(),
    'sharding': set(),
    'models': {'sharding'},
    'data': {'sharding'},
    'weights': {'models'},
    'analysis': {'models', 'data'},
    'export': {'weights', 'models', 'data'},
    'evaluators': {'models', 'data', 'weights', 'sharding', 'training'},
    'training': {'models', 'data', 'weights', 'sharding', 'evaluators'},
}
# Single module edges that break a floor today, each with its reason and the
# change that removes it.
ALLOWED_EDGES = {
    # The families read and write released .npz checkpoints through
    # weights.npz; the weight-reader registry (issue 23, item 3) moves that
    # reading into weights/. Delete this entry when it lands.
    ('models', 'vit_jax.weights.npz'),
}


def _module_name(path: pathlib.Path, package_dir: pathlib.Path) -> str:
  parts = path.relative_to(package_dir.parent).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def find_modules(package_dir: pathlib.Path) -> Dict[str, pathlib.Path]:
  """Every module under `package_dir`, by its dotted name."""
  return {_module_name(path, package_dir): path
          for path in sorted(package_dir.rglob('*.py'))}


def imported_names(module: str, path: pathlib.Path) -> Set[str]:
  """The absolute names `module` imports, anywhere in the file: `a.b` for
  `import a.b` and for `from a import b` (b a module or an attribute of a),
  relative imports made absolute."""
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        anchor = parts[:len(parts) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      names.update(f'{base}.{alias.name}' for alias in node.names)
  return names


def named_modules(names: Set[str], modules: Set[str]) -> Set[str]:
  """The modules of ours that `names` name: a name that is a module, else the
  innermost module holding it (`vit_jax.models.VARIANTS` -> vit_jax.models)."""
  found = set()
  for name in names:
    while name and name not in modules:
      name = name.rpartition('.')[0]
    if name:
      found.add(name)
  return found


def _enclosing_packages(module: str) -> Set[str]:
  parts = module.split('.')
  return {'.'.join(parts[:i]) for i in range(1, len(parts))}


def is_program(module: str) -> bool:
  """The programs: vit_jax.main, vit_jax.cli and a package's `__main__`
  (`python -m vit_jax.export` runs vit_jax/export/__main__.py)."""
  return module.endswith('.__main__') or any(
      module == p or module.startswith(p + '.') for p in PROGRAM_PREFIXES)


def floor_of(module: str) -> str:
  """The package a module belongs to: `vit_jax.models.vit` -> 'models'."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def import_graph(package_dir: pathlib.Path,
                 programs: bool = False) -> Dict[str, Set[str]]:
  """Library module (and program, if `programs`) -> the modules of ours that
  importing it runs: the ones it names and the __init__ of their packages."""
  modules = find_modules(package_dir)
  graph = {}
  for module, path in modules.items():
    if is_program(module) and not programs:
      continue
    named = named_modules(imported_names(module, path), set(modules))
    # Its own packages' __init__ already runs (or ran) before it; one it
    # names (`from vit_jax.models import VARIANTS`) must have finished.
    packages = set().union(*map(_enclosing_packages, named)) & set(modules)
    graph[module] = (named | packages - _enclosing_packages(module)) - {module}
  return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """One import cycle [a, b, ..., a] of `graph`, or None."""
  done, path = set(), []

  def visit(module):
    if module in path:
      return path[path.index(module):] + [module]
    if module in done or module not in graph:
      return None
    path.append(module)
    for target in sorted(graph[module]):
      cycle = visit(target)
      if cycle:
        return cycle
    path.pop()
    done.add(module)
    return None

  for module in sorted(graph):
    cycle = visit(module)
    if cycle:
      return cycle
  return None


def violations(package_dir: pathlib.Path) -> List[str]:
  """Every broken rule of the layout under `package_dir`, one line each."""
  found = []
  modules = find_modules(package_dir)
  for module, path in modules.items():
    names = imported_names(module, path)
    # The programs are installed too.
    for name in sorted(n for n in names if n.split('.')[0] in NOT_INSTALLED):
      found.append(f'{module} imports {name}, which is not installed')
    if is_program(module):
      continue
    for target in sorted(named_modules(names, set(modules)) - {module}):
      found.extend(_floor_violations(module, target))
    if "if __name__ == '__main__'" in path.read_text():
      found.append(f'{module} runs as a program: move it to vit_jax/cli/')
  cycle = find_cycle(import_graph(package_dir))
  if cycle:
    found.append('import cycle: ' + ' -> '.join(cycle))
  return found


def _floor_violations(module: str, target: str) -> List[str]:
  if is_program(target):
    return [f'{module} imports the program {target}']
  floor, target_floor = floor_of(module), floor_of(target)
  if floor not in FLOORS and floor:
    return [f'{module}: package {floor!r} has no floor in FLOORS']
  allowed = FLOORS.get(floor, set()) | {floor, 'atomic'}
  if (target_floor in allowed or not target_floor
      or (floor, target) in ALLOWED_EDGES):
    return []
  return [f'{module} imports {target}: {floor} may import only '
          f'{sorted(allowed - {floor})}']


def _marked_slow(node: ast.AST) -> bool:
  """Whether a function or `pytestmark = ...` carries `pytest.mark.slow`."""
  marks = (node.decorator_list if isinstance(node, ast.FunctionDef)
           else [node.value])
  return any(isinstance(n, ast.Attribute) and n.attr == 'slow'
             for mark in marks for n in ast.walk(mark))


def fast_tests(path: pathlib.Path) -> List[ast.FunctionDef]:
  """The tests of a file that the fast tier (-m "not slow") runs."""
  body = ast.parse(path.read_text(), str(path)).body
  if any(isinstance(node, ast.Assign) and _marked_slow(node) and any(
      getattr(t, 'id', None) == 'pytestmark' for t in node.targets)
         for node in body):
    return []
  return [node for node in body if isinstance(node, ast.FunctionDef)
          and node.name.startswith('test_') and not _marked_slow(node)]


def reached_by_fast_tests(package_dir: pathlib.Path,
                          tests_dir: pathlib.Path) -> Set[str]:
  """The modules that the fast tier loads: what its test files import
  (through the test helpers too) and the programs its tests name as strings
  (`python -m vit_jax.cli.predict`; a package named runs its __main__),
  closed over the modules' own imports."""
  modules = find_modules(package_dir)
  graph = import_graph(package_dir, programs=True)
  test_files = {f'tests.{path.stem}': path
                for path in tests_dir.glob('*.py')}
  reached = set()
  for path in test_files.values():
    # A program a fast test runs: named in the test or its parameters.
    strings = {node.value for test in (fast_tests(path)
                                       if path.name.startswith('test_')
                                       else [])
               for node in ast.walk(test)
               if isinstance(node, ast.Constant) and node.value in modules}
    reached |= strings | {f'{name}.__main__' for name in strings
                          if f'{name}.__main__' in modules}
  todo = [name for name, path in test_files.items()
          if path.name.startswith('test_') and fast_tests(path)]
  seen = set(todo)
  while todo:
    path = test_files[todo.pop()]
    names = imported_names(f'tests.{path.stem}', path)
    helpers_used = (names | {n.rpartition('.')[0] for n in names}) & set(
        test_files)
    todo.extend(helpers_used - seen)
    seen |= helpers_used
    reached |= named_modules(
        {n for n in names if n.split('.')[0] == package_dir.name},
        set(modules))
  todo = list(reached)
  while todo:
    module = todo.pop()
    loaded = graph[module] | _enclosing_packages(module) & set(modules)
    todo.extend(loaded - reached)
    reached |= loaded
  return reached


def test_the_fast_tier_reaches_every_module():
  """`pytest -m "not slow"` loads every module of the package."""
  tests_dir = pathlib.Path(__file__).resolve().parent
  missing = set(find_modules(PACKAGE)) - reached_by_fast_tests(
      PACKAGE, tests_dir)
  assert not missing, (
      f'no fast test reaches {sorted(missing)}: add one, or leave one test '
      'of the module unmarked')


def test_the_fast_tier_check_sees_slow_marks(tmp_path):
  package_dir = _write_tree(tmp_path, {
      'models/vit.py': 'from vit_jax.models import layers\n',
      'models/layers.py': '', 'cli/predict.py': '', 'export/__main__.py': '',
      'data/sources.py': '', 'training/loop.py': ''})
  tests_dir = tmp_path / 'tests'
  tests_dir.mkdir()
  (tests_dir / 'helpers.py').write_text('from vit_jax.data import sources\n')
  (tests_dir / 'test_a.py').write_text(
      'import pytest\nfrom vit_jax.models import vit\nfrom tests import '
      'helpers\n\n@pytest.mark.slow\ndef test_slow():\n  pass\n\n'
      'def test_fast():\n  run("vit_jax.cli.predict", "vit_jax.export")\n\n'
      '@pytest.mark.slow\ndef test_slow_program():\n  run("vit_jax.main")\n')
  (tests_dir / 'test_b.py').write_text(
      'import pytest\nfrom vit_jax.training import loop\n\n'
      'pytestmark = pytest.mark.slow\n\ndef test_b():\n  pass\n')
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


def test_the_walk_finds_library_and_programs():
  graph = import_graph(PACKAGE)
  assert {'vit_jax.training.loop', 'vit_jax.models',
          'vit_jax.models.vit_family', 'vit_jax.weights.npz',
          'vit_jax.export.to_onnx'} <= set(graph)
  assert not any(is_program(name) for name in graph)
  programs = set(find_modules(PACKAGE)) - set(graph)
  assert {'vit_jax.main', 'vit_jax.cli.predict', 'vit_jax.cli._flags',
          'vit_jax.export.__main__'} <= programs
  # An import inside a function counts (the timm reader loads on demand),
  # and so does the __init__ of a package a module imports from.
  assert {'vit_jax.weights.timm_hub', 'vit_jax.weights.zoo'} <= graph[
      'vit_jax.weights.pretrained']
  assert {'vit_jax.weights.npz', 'vit_jax.weights'} <= graph[
      'vit_jax.models.vit_family']


def test_the_library_keeps_its_floors():
  assert violations(PACKAGE) == []


def test_every_package_has_a_floor():
  packages = {floor_of(m) for m in find_modules(PACKAGE)} - {''}
  programs = {'main', 'cli'}
  assert packages - programs == set(FLOORS)


def test_the_known_exception_is_still_needed():
  """An allow-list entry nothing uses any more is deleted, not kept."""
  modules = find_modules(PACKAGE)
  used = {(floor_of(module), target) for module, path in modules.items()
          for target in named_modules(imported_names(module, path),
                                      set(modules))}
  assert ALLOWED_EDGES <= used


def _write_tree(root: pathlib.Path, files: Dict[str, str]) -> pathlib.Path:
  """A fake vit_jax package under `root`: `files` maps a path inside it to its
  text; every directory gets an __init__.py."""
  package_dir = root / 'vit_jax'
  for relative, text in files.items():
    path = package_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  for directory in [package_dir, *package_dir.rglob('*')]:
    if directory.is_dir() and not (directory / '__init__.py').exists():
      (directory / '__init__.py').write_text('')
  return package_dir


_INSIDE_A_FUNCTION = 'def f():\n  {}\n'


@pytest.mark.parametrize('files, message', [
    ({'training/bad.py': 'from vit_jax.cli import _flags\n',
      'cli/_flags.py': ''},
     'vit_jax.training.bad imports the program vit_jax.cli._flags'),
    ({'data/bad.py': 'import vit_jax.main\n', 'main.py': ''},
     'vit_jax.data.bad imports the program vit_jax.main'),
    ({'export/bad.py': 'from vit_jax.export import __main__\n',
      'export/__main__.py': ''},
     'vit_jax.export.bad imports the program vit_jax.export.__main__'),
    ({'models/bad.py': _INSIDE_A_FUNCTION.format('import configs.common')},
     'vit_jax.models.bad imports configs.common, which is not installed'),
    ({'cli/bad.py': 'from benchmarks import protocol\n'},
     'vit_jax.cli.bad imports benchmarks.protocol, which is not '
     'installed'),
    ({'data/a.py': _INSIDE_A_FUNCTION.format('from vit_jax.data import b'),
      'data/b.py': 'from . import a\n'},
     'import cycle: vit_jax.data.a -> vit_jax.data.b -> vit_jax.data.a'),
    ({'models/__init__.py': 'from vit_jax.models import vit\nX = 1\n',
      'models/vit.py': 'from vit_jax.models import X\n'},
     'import cycle: vit_jax.models -> vit_jax.models.vit -> vit_jax.models'),
    ({'models/vit.py': 'from vit_jax.weights import npz\n',
      'weights/__init__.py': 'from vit_jax.models import vit\n',
      'weights/npz.py': ''},
     'import cycle: vit_jax.models.vit -> vit_jax.weights -> '
     'vit_jax.models.vit'),
    ({'models/bad.py': 'from vit_jax.training import loop\n',
      'training/loop.py': ''},
     "vit_jax.models.bad imports vit_jax.training.loop: models may import "
     "only ['atomic', 'sharding']"),
    ({'models/bad.py': 'from vit_jax.weights import sidecar\n',
      'weights/sidecar.py': ''},
     'vit_jax.models.bad imports vit_jax.weights.sidecar'),
    ({'data/bad.py': 'from vit_jax import models\n', 'models/vit.py': ''},
     'vit_jax.data.bad imports vit_jax.models:'),
    ({'weights/bad.py': 'from vit_jax.data import sources\n',
      'data/sources.py': ''},
     'vit_jax.weights.bad imports vit_jax.data.sources:'),
    ({'weights/bad.py': 'from vit_jax import sharding\n', 'sharding.py': ''},
     'vit_jax.weights.bad imports vit_jax.sharding:'),
    ({'analysis/bad.py': 'from vit_jax.weights import pretrained\n',
      'weights/pretrained.py': ''},
     'vit_jax.analysis.bad imports vit_jax.weights.pretrained:'),
    ({'export/bad.py': 'from vit_jax.training import loop\n',
      'training/loop.py': ''},
     'vit_jax.export.bad imports vit_jax.training.loop:'),
    ({'evaluators/bad.py': 'from vit_jax.analysis import measures\n',
      'analysis/measures.py': ''},
     'vit_jax.evaluators.bad imports vit_jax.analysis.measures:'),
    ({'training/bad.py': 'from vit_jax.export import to_onnx\n',
      'export/to_onnx.py': ''},
     'vit_jax.training.bad imports vit_jax.export.to_onnx:'),
    ({'sharding.py': 'from vit_jax import models\n', 'models/vit.py': ''},
     "vit_jax.sharding imports vit_jax.models: sharding may import only "
     "['atomic']"),
    ({'newpackage/bad.py': 'from vit_jax import atomic\n', 'atomic.py': ''},
     "vit_jax.newpackage.bad: package 'newpackage' has no floor in FLOORS"),
    ({'training/bad.py': "if __name__ == '__main__':\n  pass\n"},
     'vit_jax.training.bad runs as a program: move it to vit_jax/cli/'),
])
def test_each_rule_catches_a_violation(tmp_path, files, message):
  found = violations(_write_tree(tmp_path, files))
  assert any(line.startswith(message) for line in found), found


def test_allowed_imports_are_no_violation(tmp_path):
  package_dir = _write_tree(tmp_path, {
      'models/vit.py': 'from vit_jax import atomic, sharding\n'
                       'from vit_jax.weights import npz\n',
      'models/__init__.py': 'from vit_jax.models import vit\n',
      'weights/npz.py': 'from vit_jax import atomic\n',
      'weights/pretrained.py': 'from vit_jax import models\n',
      'evaluators/common.py': 'from vit_jax.training import steps\n',
      'training/steps.py': 'from vit_jax.models import vit\n',
      'training/loop.py': 'from vit_jax import evaluators\n',
      'cli/predict.py': 'from vit_jax.training import loop\n',
      'atomic.py': '', 'sharding.py': ''})
  assert violations(package_dir) == []
