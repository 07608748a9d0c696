"""vit_jax.cli._process: the programs' process set-up, and the programs
starting from any directory."""

import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import re
import subprocess
import sys

from absl import flags
from absl import logging as absl_logging
import pytest

from benchmarks import benchmark
from benchmarks import exported
from benchmarks import jax_side
from benchmarks import memory_report
from benchmarks import protocol
from tests import helpers
from vit_jax.cli import _flags as cli_flags
from vit_jax.cli import _process
from vit_jax.models import vit_blocks
from vit_jax.models import vit_family
from vit_jax.models import vit_sublayers


def _installed(*names):
  """A find_spec that finds only `names` (and nothing under jax_plugins)."""
  def find_spec(name, package=None):
    del package
    if name in names:
      return importlib.machinery.ModuleSpec(name, None)
    return None
  return find_spec


@pytest.fixture
def no_plugins(monkeypatch):
  """No JAX_PLATFORMS, no TPU library, no plugin module or entry point."""
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.delenv('TPU_LIBRARY_PATH', raising=False)
  monkeypatch.setattr(importlib.util, 'find_spec', _installed())
  monkeypatch.setattr(importlib.metadata, 'entry_points',
                      lambda group: [])
  return monkeypatch


def test_without_an_accelerator_plugin_jax_runs_on_the_cpu(no_plugins):
  assert _process.accelerator_plugins() == []
  assert _process.runs_on_cpu()


@pytest.mark.parametrize('plugin', ['jax_cuda12_plugin', 'jax_cuda13_plugin',
                                    'libtpu'])
def test_an_accelerator_plugin_means_not_the_cpu(no_plugins, plugin):
  no_plugins.setattr(importlib.util, 'find_spec', _installed(plugin))
  assert _process.accelerator_plugins() == [plugin]
  assert not _process.runs_on_cpu()
  # Nor is the allocator changed (it would be the same process's for good).
  assert not _process.keep_freed_memory_on_cpu()


def test_a_jax_plugins_entry_point_means_not_the_cpu(no_plugins):
  entry = importlib.metadata.EntryPoint(
      name='cuda', value='jax_plugins.xla_cuda12', group='jax_plugins')
  no_plugins.setattr(importlib.metadata, 'entry_points',
                     lambda group: [entry] if group == 'jax_plugins' else [])
  assert not _process.runs_on_cpu()


@pytest.mark.parametrize('platforms, on_cpu', [
    ('cpu', True), ('cpu,cuda', True), ('cuda', False), ('tpu,cpu', False)])
def test_jax_platforms_decides_before_any_plugin(no_plugins, platforms,
                                                 on_cpu):
  no_plugins.setattr(importlib.util, 'find_spec',
                     _installed('jax_cuda12_plugin'))
  no_plugins.setenv('JAX_PLATFORMS', platforms)
  assert _process.runs_on_cpu() == on_cpu


@pytest.mark.slow
def test_use_cpu_devices_replaces_an_earlier_count_and_platform():
  # A fresh process: this one's backend has started with its 8 devices.
  code = ('from vit_jax.cli import _process; '
          '_process.use_cpu_devices(3, cpu_only=True); import jax; '
          'print(jax.device_count(), jax.default_backend())')
  env = dict(os.environ, JAX_PLATFORMS='cuda',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  result = subprocess.run([sys.executable, '-c', code], env=env,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['3', 'cpu']


def _formatted(level, message):
  record = logging.LogRecord('absl', level, __file__, 7, message, None, None)
  return _process._PlainFormatter().format(record)


def test_log_lines_are_plain_with_warnings_saying_so():
  assert absl_logging.get_verbosity() < absl_logging.DEBUG
  assert _formatted(logging.INFO, 'step 50/100  loss 1.0') == (
      'step 50/100  loss 1.0')
  assert _formatted(logging.WARNING, 'disk nearly full') == (
      'warning: disk nearly full')
  assert _formatted(logging.ERROR, 'save failed') == 'error: save failed'


def test_verbosity_1_brings_back_absls_prefix():
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.DEBUG)
  try:
    line = _formatted(logging.INFO, 'step 50/100')
  finally:
    absl_logging.set_verbosity(verbosity)
  assert re.fullmatch(r'I\d{4} [\d:.]+ +\d+ test_process\.py:7\] step 50/100',
                      line), line


def test_flags_choose_from_the_lists_the_code_checks():
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values)
  enum = lambda name: tuple(flag_values[name].parser.enum_values)
  assert enum('mode') == (*jax_side.MODES, benchmark.EXPORTED)
  assert enum('dtype') == jax_side.DTYPES
  assert enum('attention') == vit_sublayers.ATTENTION_IMPLEMENTATIONS
  assert enum('compare') == (*protocol.COMPARISONS, *exported.COMPARISONS)
  flag_values = flags.FlagValues()
  memory_report.define_flags(flag_values)
  assert set(flag_values['remat_policy'].parser.enum_values) == set(
      vit_blocks.REMAT_POLICIES)
  flag_values = flags.FlagValues()
  cli_flags.define_model_flags(flag_values)
  for key in vit_family.ARCHITECTURE_KEYS:
    assert key in flag_values


# The others run in-process in their own tests; `python -m vit_jax.export`
# runs only here in the fast tier.
@pytest.mark.parametrize('program, flag', [
    pytest.param('vit_jax.main', '--workdir', marks=pytest.mark.slow),
    pytest.param('vit_jax.cli.predict', '--top_k', marks=pytest.mark.slow),
    pytest.param('vit_jax.cli.visualize', '--out_dir',
                 marks=pytest.mark.slow),
    ('vit_jax.export', '--out')])
def test_programs_start_from_any_directory(tmp_path, program, flag):
  _check_help(program, flag, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize('program, flag', [
    ('benchmarks.benchmark', '--host_devices'),
    ('benchmarks.memory_report', '--num_devices')])
def test_tools_start_from_the_repository_root(program, flag):
  """benchmarks/ is not installed: its commands run from the repository."""
  _check_help(program, flag, cwd=helpers.REPO)


def _check_help(program, flag, cwd):
  # --helpfull: the export's flags live in vit_jax.cli.export, not in the
  # __main__ module that --helpshort lists.
  result = subprocess.run([sys.executable, '-m', program, '--helpfull'],
                          cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
  # absl's help exits with status 1; what matters is that it got that far.
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  # The program's own flags, shared ones (--model) included.
  assert flag in result.stdout
  if program != 'vit_jax.main':
    assert '--model' in result.stdout
