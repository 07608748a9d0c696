"""The package layout as a rule, read from the import statements.

Floors, bottom up: `atomic` and `sharding` (foundations), `models`, `data`,
`weights`, `analysis`, `export`, `evaluators` and `training`; the programs
(`vit_jax.main`, `vit_jax.cli`, any `__main__`) sit on top. A package imports
only the packages its floor names (`FLOORS`); no library module imports a
program; no module imports the repository's `configs` or `benchmarks`
(neither is installed); library modules import each other without cycles.
Every import counts, the ones inside functions too: they run sooner or later.

The core tier (`pip install .`: build, load and run models, predict,
analyses, weights) imports nothing of the extras (`CORE`, `EXTRAS_MODULES`):
at import time none at all, and from inside a function only the optional
features `CORE_OPTIONAL` names.
"""

import pathlib
from typing import Dict, List, Set

import pytest

from tests import import_graph as graph_lib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'vit_jax'
# Repository directories that are not installed: a library import of them
# works in a checkout and fails in an installed package.
NOT_INSTALLED = ('configs', 'benchmarks')

# The vit_jax packages each package may import, besides itself and the
# foundations used everywhere (`EVERYWHERE`). A new package needs a line here.
FLOORS = {
    'atomic': set(),
    'commands': set(),
    'extras': set(),
    'sharding': set(),
    'models': {'sharding'},
    'data': {'sharding'},
    'weights': {'models'},
    'analysis': {'models', 'data'},
    'export': {'weights', 'models', 'data'},
    'evaluators': {'models', 'data', 'weights', 'sharding', 'training'},
    'training': {'models', 'data', 'weights', 'sharding', 'evaluators'},
}
# Atomic file writes, optional dependencies, and printed commands.
EVERYWHERE = {'atomic', 'extras', 'commands'}


_INSIDE_A_FUNCTION = 'def f():\n  {}\n'

# The modules (and packages) of the core tier, and so the __init__ of
# vit_jax: importing them needs only install_requires.
CORE = ('vit_jax.atomic', 'vit_jax.sharding', 'vit_jax.models',
        'vit_jax.weights', 'vit_jax.analysis', 'vit_jax.data.image_file',
        'vit_jax.cli.predict', 'vit_jax.cli.visualize', 'vit_jax.cli.weights')
# Top-level modules of the extras (setup.py's extras_require): train, export,
# notebook, benchmark.
EXTRAS_MODULES = ('tensorflow', 'tensorflow_datasets', 'orbax', 'clu',
                  'tensorboard', 'jax2onnx', 'onnx', 'onnxruntime',
                  'ai_edge_litert', 'torch', 'torchvision', 'timm',
                  'IPython', 'ipykernel', 'notebook', 'jupyterlab')
# Extras a core module imports inside a function, for one optional feature.
CORE_OPTIONAL = {
    # --labels=imagenet2012 reads the label file TFDS ships.
    ('vit_jax.cli.predict', 'tensorflow_datasets'),
    # hide_gpus_from_tensorflow, which only the training programs call.
    ('vit_jax.cli._process', 'tensorflow'),
}


def floor_of(module: str) -> str:
  """The package a module belongs to: `vit_jax.models.vit` -> 'models'."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def violations(package_dir: pathlib.Path) -> List[str]:
  """Every broken rule of the layout under `package_dir`, one line each."""
  found = []
  modules = graph_lib.find_modules(package_dir)
  for module, path in modules.items():
    names = graph_lib.imported_names(module, path)
    # The programs are installed too.
    for name in sorted(n for n in names if n.split('.')[0] in NOT_INSTALLED):
      found.append(f'{module} imports {name}, which is not installed')
    if graph_lib.is_program(module):
      continue
    targets = graph_lib.named_modules(names, set(modules)) - {module}
    for target in sorted(targets):
      found.extend(_floor_violations(module, target))
    if "if __name__ == '__main__'" in path.read_text():
      found.append(f'{module} runs as a program: move it to vit_jax/cli/')
  cycle = graph_lib.find_cycle(graph_lib.import_graph(package_dir))
  if cycle:
    found.append('import cycle: ' + ' -> '.join(cycle))
  return found


def _floor_violations(module: str, target: str) -> List[str]:
  if graph_lib.is_program(target):
    return [f'{module} imports the program {target}']
  floor, target_floor = floor_of(module), floor_of(target)
  if floor not in FLOORS and floor:
    return [f'{module}: package {floor!r} has no floor in FLOORS']
  allowed = FLOORS.get(floor, set()) | {floor} | EVERYWHERE
  if target_floor in allowed or not target_floor:
    return []
  return [f'{module} imports {target}: {floor} may import only '
          f'{sorted(allowed - {floor})}']


def is_core(module: str) -> bool:
  return any(module == c or module.startswith(c + '.') for c in CORE)


def _reached(graph: Dict[str, Set[str]], start: str) -> Dict[str, List[str]]:
  """Every module importing `start` runs -> the chain of imports to it."""
  chains = {start: [start]}
  chains.update({package: [start, package] for package
                 in graph_lib.enclosing_packages(start) if package in graph})
  todo = list(chains)
  while todo:
    module = todo.pop()
    for target in sorted(graph[module]):
      if target not in chains:
        chains[target] = chains[module] + [target]
        todo.append(target)
  return chains


def core_violations(package_dir: pathlib.Path,
                    import_time_only: bool) -> List[str]:
  """Every import of an extra's module that a core module reaches (at import
  time, or anywhere outside `CORE_OPTIONAL`), one line each."""
  found = set()
  modules = graph_lib.find_modules(package_dir)
  graph = graph_lib.import_graph(package_dir, programs=True,
                                 import_time_only=import_time_only)
  for start in sorted(m for m in modules if is_core(m)):
    for module, chain in _reached(graph, start).items():
      names = graph_lib.imported_names(module, modules[module],
                                       import_time_only)
      for name in sorted({n.split('.')[0] for n in names} &
                         set(EXTRAS_MODULES)):
        if not import_time_only and (module, name) in CORE_OPTIONAL:
          continue
        found.add(f'core module {start} imports {name} '
                  f'({" -> ".join(chain)}): the core tier does not '
                  f'install it')
  return sorted(found)


def test_the_walk_finds_library_and_programs():
  graph = graph_lib.import_graph(PACKAGE)
  assert {'vit_jax.training.loop', 'vit_jax.models',
          'vit_jax.models.vit_family', 'vit_jax.weights.npz',
          'vit_jax.export.to_onnx'} <= set(graph)
  assert not any(graph_lib.is_program(name) for name in graph)
  programs = set(graph_lib.find_modules(PACKAGE)) - set(graph)
  assert {'vit_jax.main', 'vit_jax.cli.predict', 'vit_jax.cli._flags',
          'vit_jax.export.__main__'} <= programs
  # The __init__ of another package a module imports from counts too.
  assert {'vit_jax.weights.timm_hub', 'vit_jax.models.family',
          'vit_jax.models'} <= graph['vit_jax.weights.formats']


def test_the_library_keeps_its_floors():
  assert violations(PACKAGE) == []


def test_importing_the_core_imports_no_extra():
  assert core_violations(PACKAGE, import_time_only=True) == []


def test_the_core_calls_no_extra_but_its_optional_features():
  assert core_violations(PACKAGE, import_time_only=False) == []


@pytest.mark.parametrize('files, import_time_only, message', [
    ({'cli/predict.py': 'from vit_jax.data import preprocess\n',
      'data/preprocess.py': 'import tensorflow as tf\n'}, True,
     'core module vit_jax.cli.predict imports tensorflow (vit_jax.cli.predict'
     ' -> vit_jax.data.preprocess): the core tier does not install it'),
    ({'models/vit.py': _INSIDE_A_FUNCTION.format('import orbax.checkpoint')},
     False,
     'core module vit_jax.models.vit imports orbax (vit_jax.models.vit)'),
    ({'weights/__init__.py': 'import clu\n', 'weights/npz.py': ''}, True,
     'core module vit_jax.weights.npz imports clu (vit_jax.weights.npz -> '
     'vit_jax.weights)'),
])
def test_the_core_rule_catches_an_extra(tmp_path, files, import_time_only,
                                        message):
  package_dir = graph_lib.write_tree(tmp_path, files)
  found = core_violations(package_dir, import_time_only)
  assert any(line.startswith(message) for line in found), found


def test_lazy_and_optional_imports_keep_the_core_importable(tmp_path):
  package_dir = graph_lib.write_tree(tmp_path, {
      'models/vit.py': _INSIDE_A_FUNCTION.format('import tensorflow'),
      'cli/predict.py': _INSIDE_A_FUNCTION.format(
          'import tensorflow_datasets'),
      'training/loop.py': 'import orbax.checkpoint\n'})
  assert core_violations(package_dir, import_time_only=True) == []
  assert core_violations(package_dir, import_time_only=False) == [
      'core module vit_jax.models.vit imports tensorflow (vit_jax.models.vit)'
      ': the core tier does not install it']


def test_every_package_has_a_floor():
  packages = {floor_of(m) for m in graph_lib.find_modules(PACKAGE)} - {''}
  programs = {'main', 'cli'}
  assert packages - programs == set(FLOORS)



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
     "only ['atomic', 'commands', 'extras', 'sharding']"),
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
     "['atomic', 'commands', 'extras']"),
    ({'newpackage/bad.py': 'from vit_jax import atomic\n', 'atomic.py': ''},
     "vit_jax.newpackage.bad: package 'newpackage' has no floor in FLOORS"),
    ({'training/bad.py': "if __name__ == '__main__':\n  pass\n"},
     'vit_jax.training.bad runs as a program: move it to vit_jax/cli/'),
])
def test_each_rule_catches_a_violation(tmp_path, files, message):
  found = violations(graph_lib.write_tree(tmp_path, files))
  assert any(line.startswith(message) for line in found), found


def test_allowed_imports_are_no_violation(tmp_path):
  package_dir = graph_lib.write_tree(tmp_path, {
      'models/vit.py': 'from vit_jax import atomic, sharding\n',
      'models/__init__.py': 'from vit_jax.models import vit\n',
      'weights/npz.py': 'from vit_jax import atomic\n',
      'weights/pretrained.py': 'from vit_jax import models\n',
      'evaluators/common.py': 'from vit_jax.training import steps\n',
      'training/steps.py': 'from vit_jax.models import vit\n',
      'training/loop.py': 'from vit_jax import evaluators\n',
      'cli/predict.py': 'from vit_jax.training import loop\n',
      'atomic.py': '', 'sharding.py': ''})
  assert violations(package_dir) == []
