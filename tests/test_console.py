"""`vit-jax PROGRAM ...` (vit_jax.cli.console) and the --help of each
spelling of a program."""

import os
import runpy
import subprocess
import sys

import pytest

from vit_jax.cli import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ran(monkeypatch):
  """What console.main asked runpy to run: (module, run_name, sys.argv)."""
  calls = []

  def run_module(module, run_name, alter_sys):
    assert alter_sys
    calls.append((module, run_name, list(sys.argv)))
  monkeypatch.setattr(console.runpy, 'run_module', run_module)
  monkeypatch.setattr(sys, 'argv', list(sys.argv))
  return calls


@pytest.mark.parametrize('name,module', [
    ('train', 'vit_jax.main'), ('predict', 'vit_jax.cli.predict'),
    ('visualize', 'vit_jax.cli.visualize'), ('fewshot', 'vit_jax.cli.fewshot'),
    ('export', 'vit_jax.cli.export'), ('weights', 'vit_jax.cli.weights')])
def test_each_program_runs_its_module_as_main(ran, name, module):
  console.main(['/venv/bin/vit-jax', name, '--top_k=3', 'a.png'])
  assert ran == [(module, '__main__',
                  ['/venv/bin/vit-jax', '--top_k=3', 'a.png'])]


@pytest.mark.parametrize('argv', [['vit-jax', '--help'], ['vit-jax', 'help']])
def test_help_lists_every_program(ran, capsys, argv):
  with pytest.raises(SystemExit) as exit_info:
    console.main(argv)
  assert exit_info.value.code == 0 and not ran
  out = capsys.readouterr().out
  assert out.startswith('usage: vit-jax PROGRAM [FLAGS] [ARGS]\n')
  for name, (module, summary) in console.PROGRAMS.items():
    assert f'  {name:<9}  {summary}\n' in out
    assert f' -m {module}\n' in out


def test_python_m_vit_jax_cli_is_the_console(capsys, monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['vit_jax/cli/__main__.py', '--help'])
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_module('vit_jax.cli', run_name='__main__')
  assert exit_info.value.code == 0
  assert capsys.readouterr().out == console.usage() + '\n'


def test_no_program_prints_the_usage_and_fails(ran, capsys):
  with pytest.raises(SystemExit) as exit_info:
    console.main(['vit-jax'])
  assert exit_info.value.code == 1 and not ran
  assert capsys.readouterr().err.startswith('usage: vit-jax')


def test_an_unknown_program_is_one_error_line(ran, capsys):
  with pytest.raises(SystemExit) as exit_info:
    console.main(['vit-jax', 'pridict', '--checkpoint=x'])
  assert exit_info.value.code == 1 and not ran
  assert capsys.readouterr().err == (
      "error: vit-jax has no program 'pridict'; choose one of train, "
      'predict, visualize, fewshot, export, weights (vit-jax --help '
      'describes them)\n')


def test_setup_py_installs_the_console_script():
  setup_py = open(os.path.join(REPO, 'setup.py')).read()
  assert "'vit-jax=vit_jax.cli.console:main'" in setup_py


def _help(*module_and_args):
  return subprocess.run(
      [sys.executable, '-m', *module_and_args, '--help'], cwd=REPO,
      capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize('spelling', [
    ['vit_jax.export'], ['vit_jax.cli.export'], ['vit_jax.cli', 'export']])
def test_every_spelling_of_export_lists_its_flags(spelling):
  result = _help(*spelling)
  assert 'Writes a checkpoint out for serving' in result.stdout
  for flag in ('--checkpoint:', '--out:', '--image_size:', '--model:'):
    assert flag in result.stdout, (spelling, result.stdout)


@pytest.mark.slow
def test_the_console_runs_a_program_to_its_end(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli', 'weights', '--names'], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0] == 'imagenet21k/ViT-B_16'
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli', 'weights', '--nmes'], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith('error: Unknown command')
