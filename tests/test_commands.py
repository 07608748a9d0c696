"""Printed commands name this environment's interpreter; a missing optional
dependency is one line naming its extra."""

import os
import sys

import pytest

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
      "torch is not installed: --compare=timm needs the `bench` extra "
      "(/env/bin/python -m pip install -e '.[bench]' from the repository "
      'root)')
  assert error.value.name == 'torch'


def test_an_installed_module_is_returned():
  assert extras.require('json').dumps([1]) == '[1]'


def test_every_extra_named_is_one_setup_py_declares():
  setup_py = open(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'setup.py')).read()
  for extra in set(extras.EXTRA_OF.values()):
    assert f"'{extra}':" in setup_py, extra
