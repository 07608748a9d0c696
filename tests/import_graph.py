"""The import graph of a package, read from its source with `ast`.

For tests/test_layout.py (the package's floors) and tests/test_fast_tier.py
(what the fast tier reaches). Every import counts, the ones inside functions
too: they run sooner or later.
"""

import ast
import pathlib
from typing import Dict, List, Optional, Set

PROGRAM_PREFIXES = ('vit_jax.main', 'vit_jax.cli')


def _module_name(path: pathlib.Path, package_dir: pathlib.Path) -> str:
  parts = path.relative_to(package_dir.parent).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def find_modules(package_dir: pathlib.Path) -> Dict[str, pathlib.Path]:
  """Every module under `package_dir`, by its dotted name."""
  return {_module_name(path, package_dir): path
          for path in sorted(package_dir.rglob('*.py'))}


def _import_nodes(tree: ast.AST, import_time_only: bool):
  """The import statements of `tree`; with `import_time_only`, only those
  that run when the module is imported: not inside a function."""
  if not import_time_only:
    yield from ast.walk(tree)
    return
  stack = [tree]
  while stack:
    node = stack.pop()
    yield node
    stack.extend(
        child for child in ast.iter_child_nodes(node)
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                  ast.Lambda)))


def imported_names(module: str, path: pathlib.Path,
                   import_time_only: bool = False) -> Set[str]:
  """The absolute names `module` imports, anywhere in the file (or, with
  `import_time_only`, outside functions): `a.b` for `import a.b` and for
  `from a import b` (b a module or an attribute of a), relative imports made
  absolute."""
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  names = set()
  tree = ast.parse(path.read_text(), str(path))
  for node in _import_nodes(tree, import_time_only):
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


def enclosing_packages(module: str) -> Set[str]:
  parts = module.split('.')
  return {'.'.join(parts[:i]) for i in range(1, len(parts))}


def is_program(module: str) -> bool:
  """The programs: vit_jax.main, vit_jax.cli and a package's `__main__`
  (`python -m vit_jax.export` runs vit_jax/export/__main__.py)."""
  return module.endswith('.__main__') or any(
      module == p or module.startswith(p + '.') for p in PROGRAM_PREFIXES)


def import_graph(package_dir: pathlib.Path, programs: bool = False,
                 import_time_only: bool = False) -> Dict[str, Set[str]]:
  """Library module (and program, if `programs`) -> the modules of ours that
  importing it runs (with `import_time_only`: at once, not from inside a
  function): the ones it names and the __init__ of their packages."""
  modules = find_modules(package_dir)
  graph = {}
  for module, path in modules.items():
    if is_program(module) and not programs:
      continue
    named = named_modules(imported_names(module, path, import_time_only),
                          set(modules))
    # Its own packages' __init__ already runs (or ran) before it; one it
    # names (`from vit_jax.models import VARIANTS`) must have finished.
    packages = set().union(*map(enclosing_packages, named)) & set(modules)
    graph[module] = (named | packages - enclosing_packages(module)) - {module}
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


def write_tree(root: pathlib.Path, files: Dict[str, str]) -> pathlib.Path:
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
