"""Printed commands name this environment's interpreter; a missing optional
dependency is one line naming its extra."""

import os
import sys

import pytest

from benchmarks import protocol
from vit_jax.cli import _flags as cli_flags
from vit_jax.cli import export as export_program
from vit_jax import commands
from vit_jax import extras


def test_an_interpreter_below_the_working_directory_is_relative(
    tmp_path, monkeypatch):
  python = tmp_path / '.venv' / 'bin' / 'python'
  monkeypatch.setattr(sys, 'executable', str(python))
  monkeypatch.chdir(tmp_path)
  assert commands.python_m('vit_jax.cli.predict') == (
      os.path.join('.venv', 'bin', 'python') + ' -m vit_jax.cli.predict')


def test_an_interpreter_elsewhere_is_absolute(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, 'executable', '/opt/my env/bin/python')
  monkeypatch.chdir(tmp_path)
  assert commands.python_m('pip') == "'/opt/my env/bin/python' -m pip"


def _without(monkeypatch, *missing):
  real_import = extras.importlib.import_module

  def import_module(name, package=None):
    if name.split('.')[0] in missing:
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return real_import(name, package)
  monkeypatch.setattr(extras.importlib, 'import_module', import_module)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
  monkeypatch.setattr(sys, 'executable', '/env/bin/python')
  monkeypatch.chdir(tmp_path)
  _without(monkeypatch, 'torch')
  with pytest.raises(extras.MissingExtraError) as error:
    extras.require('torch', '--compare=timm')
  assert str(error.value) == (
      "torch is not installed: --compare=timm needs the `benchmark` extra "
      "(/env/bin/python -m pip install -e '.[benchmark]' from the repository "
      'root)')
  assert error.value.name == 'torch'


def test_an_installed_module_is_returned():
  assert extras.require('json').dumps([1]) == '[1]'


def test_every_extra_named_is_one_setup_py_declares():
  setup_py = open(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'setup.py')).read()
  for extra in set(extras.EXTRA_OF.values()):
    assert f"'{extra}':" in setup_py, extra


def test_export_without_its_converters_names_the_extra(monkeypatch,
                                                         tmp_path):

  def export_without_onnxruntime(loaded, out, **options):
    del loaded, out, options
    raise ModuleNotFoundError("No module named 'onnxruntime'",
                              name='onnxruntime')
  monkeypatch.setattr(export_program.pretrained, 'load',
                      lambda *args, **kwargs: object())
  monkeypatch.setattr(export_program.export, 'export',
                      export_without_onnxruntime)
  monkeypatch.setattr(sys, 'executable', '/env/bin/python')
  with pytest.raises(extras.MissingExtraError, match=(
      r"^onnxruntime is not installed: export needs the `export` extra "
      r"\(/env/bin/python -m pip install -e '\.\[export\]' from the "
      r'repository root\)$')):
    export_program.run('model.npz', str(tmp_path / 'out'))


def test_benchmark_against_timm_without_torch_names_the_extra(monkeypatch):
  _without(monkeypatch, 'torch', 'timm')
  with pytest.raises(extras.MissingExtraError,
                     match=r'^torch is not installed: --compare=timm needs '
                     'the `benchmark` extra'):
    protocol.require_comparison('timm')


def test_a_missing_extra_is_one_error_line_of_a_program(capsys, monkeypatch):
  _without(monkeypatch, 'onnx')
  with pytest.raises(SystemExit) as exit_info:
    cli_flags.exit_on_user_error(extras.require, 'onnx')
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: onnx is not installed: export needs the '
                          '`export` extra') and len(error.splitlines()) == 1


def test_training_ends_with_a_predict_command_this_shell_runs(
    tmp_path, monkeypatch):
  from vit_jax import main  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sys, 'executable', str(tmp_path / '.venv/bin/python'))
  monkeypatch.chdir(tmp_path)
  summary = main.closing_summary(
      {'top1_accuracy': 0.91234, 'num_examples': 10000.0}, 'runs/default',
      7.04)
  assert summary.splitlines() == [
      'Final test top-1 accuracy: 0.9123 (10000 examples), 7.0 min wall '
      'time',
      'TensorBoard logs and metrics.jsonl: runs/default',
      'Exported released-layout params: runs/default/model.npz (and '
      'model.json, what the arrays cannot say); classify with: '
      '.venv/bin/python -m vit_jax.cli.predict '
      '--checkpoint=runs/default/model.npz IMAGE...']
