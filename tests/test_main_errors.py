"""vit_jax.main's bad command lines and configs: one `error:` line, exit
status 1, no traceback, nothing written.

Errors of the flags and of the config run vit_jax.main's parse and main in
this process (`_parse`, `_run_in_process`); the run-time error runs the real
program (`_run_default_config`), whose stderr must hold the one line and the
run's log line alone, at both verbosities.
"""

import os
import re
import subprocess
import sys

from absl import flags
import pytest

from tests import data_helpers
from vit_jax.cli import _flags as cli_flags
from vit_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the run logs before it reads the config (vit_jax.main), as printed.
DEVICES_LINE = r'Process 0 of 1; \d+ local / \d+ global devices'


def _errors(stderr):
  """stderr's lines less the run's own plain INFO line (`DEVICES_LINE`):
  what a failing run says besides how it started."""
  return [line for line in stderr.splitlines()
          if not re.fullmatch(DEVICES_LINE, line)]


def _run_default_config(*arguments):
  """`python -m vit_jax.main --config=configs/default.py ARGUMENTS...`."""
  return subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/default.py',
       *arguments], cwd=REPO, capture_output=True, text=True, timeout=120)


def _parse(capsys, monkeypatch, *arguments):
  flag_values = flags.FlagValues()
  main.define_flags(flag_values)
  argv = ['main', *arguments]
  # Config flags find their `--config.<key>` overrides in sys.argv.
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit) as stopped:
    cli_flags.parse_flags(argv, flag_values)
  assert stopped.value.code == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def _run_in_process(capsys, monkeypatch, *arguments):
  """vit_jax.main's parse and main on `--config=configs/default.py
  ARGUMENTS...`, which must exit with status 1: stderr's lines less the
  run's log line (`_errors`)."""
  flag_values = flags.FlagValues()
  main.define_flags(flag_values)
  argv = ['main', '--config=configs/default.py', *arguments]
  monkeypatch.setattr(sys, 'argv', argv)
  monkeypatch.chdir(REPO)
  with pytest.raises(SystemExit) as stopped:
    main.main(cli_flags.parse_flags(argv, flag_values), flag_values)
  assert stopped.value.code == 1
  captured = capsys.readouterr()
  assert 'Traceback' not in captured.err
  return _errors(captured.err)


@pytest.mark.parametrize('arguments,message', [
    (['--config.bach_size=3'],
     'error: --config: the config has no key \'bach_size\'. Did you mean '
     '"batch_size" instead of "bach_size"?'),
    (['--config.model.no_such_key=1'],
     'error: --config: the config has no key \'no_such_key\'.'),
    (['--config.batch_size=abc'], 'invalid literal for int()'),
    (['--no_such_flag'], 'Unknown command line flag \'no_such_flag\''),
])
def test_bad_overrides_and_flags_are_one_line(capsys, monkeypatch, tmp_path,
                                              arguments, message):
  line = _parse(capsys, monkeypatch, '--config=configs/default.py',
                f'--workdir={tmp_path}/run', *arguments)
  assert message in line
  assert not (tmp_path / 'run').exists()


def test_a_missing_config_file_is_named(capsys, monkeypatch, tmp_path):
  line = _parse(capsys, monkeypatch, '--config=configs/no_such_config.py',
                f'--workdir={tmp_path}')
  assert line == ("error: --config: [Errno 2] No such file or directory: "
                  "'configs/no_such_config.py'")


def test_arguments_to_a_config_without_any_are_one_line(capsys, monkeypatch,
                                                       tmp_path):
  line = _parse(capsys, monkeypatch, '--config=configs/default.py:B_16',
                f'--workdir={tmp_path}')
  assert line == ('error: --config: get_config() takes 0 positional '
                  'arguments but 1 was given')


@pytest.mark.slow
@pytest.mark.parametrize('verbosity', [0, 1])
def test_a_bad_value_found_at_run_time_is_one_line(tmp_path, verbosity):
  # The dtype is checked by the run, after the flags: the same one line.
  result = _run_default_config(
      f'--workdir={tmp_path}/run', '--config.model.dtype=float17',
      f'--verbosity={verbosity}')
  assert result.returncode == 1
  error = ("error: unknown dtype 'float17': choose one of ('auto', "
           "'float32', 'bfloat16')")
  lines = result.stderr.splitlines()
  if verbosity == 0:
    # The run's own line as it is, without absl's prefix.
    assert len(lines) == 2 and re.fullmatch(DEVICES_LINE, lines[0]), lines
    assert lines[1] == error
  else:
    # absl's prefix (level, date, time, thread, source line) is back, and
    # with it the libraries' INFO lines.
    assert error in lines
    assert any(re.fullmatch(r'I\d{4} [\d:.]+ +\d+ main\.py:\d+\] '
                            + DEVICES_LINE, line) for line in lines), lines
  assert not (tmp_path / 'run').exists()


def test_a_misspelt_mixer_key_is_one_line(capsys, monkeypatch, tmp_path):
  line = _parse(capsys, monkeypatch, '--config=configs/fashion_mnist_mixer.py',
                f'--workdir={tmp_path}/run',
                '--config.model.tokens_mlp_dimm=8')
  assert line == ('error: --config: the config has no key '
                  '\'tokens_mlp_dimm\'. Did you mean "tokens_mlp_dim" '
                  'instead of "tokens_mlp_dimm"?')
  assert not (tmp_path / 'run').exists()


def test_another_familys_name_with_vit_keys_is_one_line(capsys, monkeypatch,
                                                       tmp_path):
  # configs/default.py's config.model holds ViT keys: naming a Mixer alone
  # is refused before the workdir exists.
  errors = _run_in_process(capsys, monkeypatch, f'--workdir={tmp_path}/run',
                           '--config.model_name=Mixer-B_16')
  assert len(errors) == 1, errors
  assert errors[0].startswith(
      'error: config.model has keys the mixer family does not have: '
      'attention, attention_dropout_rate, ')
  # The list is shortened in the middle; the Mixer's own keys end it.
  assert errors[0].endswith(
      'tokens_mlp_dim (a config file switches family with '
      'configs.common.set_model(config, MODEL_NAME))')
  assert not (tmp_path / 'run').exists()


def test_a_missing_data_dir_is_one_line(capsys, monkeypatch, tmp_path):
  errors = _run_in_process(capsys, monkeypatch, f'--workdir={tmp_path}',
                           '--config.dataset=imagefolder',
                           f'--config.data_dir={tmp_path}/nope')
  assert len(errors) == 1 and errors[0].startswith('error: '), errors
  assert 'nope' in errors[0]


def test_a_class_only_in_test_is_one_line_before_the_workdir(
    capsys, monkeypatch, tmp_path):
  # train {cat, dog} + test {cat, bird} would train a 3-way head whose
  # 'bird' is never trained.
  for split, classes in (('train', ('cat', 'dog')), ('test', ('cat', 'bird'))):
    for name in classes:
      os.makedirs(tmp_path / 'data' / split / name)
      data_helpers.write_png(tmp_path / 'data' / split / name / 'a.png', 4, 4)
  errors = _run_in_process(capsys, monkeypatch, f'--workdir={tmp_path}/run',
                           '--config.dataset=imagefolder',
                           f'--config.data_dir={tmp_path}/data')
  assert len(errors) == 1, errors
  assert errors[0].startswith(
      "error: Split 'test' has class folders that the training split 'train' "
      "lacks: 'bird' (in "), errors
  assert not (tmp_path / 'run').exists()
