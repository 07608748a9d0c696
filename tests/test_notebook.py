"""notebooks/vit_jax.ipynb: valid nbformat 4, up to date, and it runs.

There is no Jupyter here: a fresh Python process reads the notebook's JSON
and executes its code cells in order in one namespace, with matplotlib's Agg
backend and a single CPU device, as a fresh kernel would have. Any exception
fails the test.
"""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'vit_jax.ipynb')
sys.path.insert(0, os.path.join(REPO, 'notebooks'))
# pylint: disable=g-import-not-at-top,wrong-import-position
import make_notebook
from vit_jax.datasets import fashion_mnist_local
# pylint: enable=g-import-not-at-top,wrong-import-position

# Executes the code cells of the notebook argv[1] in order in one namespace,
# the first argv[2] of them (all when 0).
RUNNER = r'''
import json
import sys

import matplotlib
matplotlib.use('Agg')

with open(sys.argv[1]) as f:
  cells = [(i, c) for i, c in enumerate(json.load(f)['cells'])
           if c['cell_type'] == 'code']
limit = int(sys.argv[2]) or len(cells)
namespace = {'__name__': '__main__'}
for index, cell in cells[:limit]:
  exec(compile(''.join(cell['source']), f'<cell {index}>', 'exec'),
       namespace)
'''


def _load():
  with open(NOTEBOOK) as f:
    return json.load(f)


def test_notebook_is_nbformat_4_and_matches_its_generator():
  with open(NOTEBOOK) as f:
    assert f.read() == make_notebook.render(), (
        'run `python notebooks/make_notebook.py` after editing its cells')
  notebook = _load()
  assert (notebook['nbformat'], notebook['nbformat_minor']) == (4, 5)
  assert notebook['metadata']['kernelspec']['language'] == 'python'
  ids = [cell['id'] for cell in notebook['cells']]
  assert len(set(ids)) == len(ids)
  for cell in notebook['cells']:
    assert cell['cell_type'] in ('markdown', 'code')
    assert isinstance(cell['source'], list) and cell['metadata'] == {}
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [] and cell['execution_count'] is None
      # Plain Python: no IPython magics or shell escapes.
      assert not any(line.lstrip().startswith(('%', '!'))
                     for line in cell['source'])


def _run(tmp_path, code_cells=0, **env):
  environment = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  environment.update(MPLBACKEND='Agg', PYTHONPATH=REPO, TMPDIR=str(tmp_path),
                     **env)
  return subprocess.run(
      [sys.executable, '-c', RUNNER, NOTEBOOK, str(code_cells)],
      cwd=str(tmp_path), env=environment, capture_output=True, text=True,
      timeout=400)


def _cells_through_the_config():
  """How many code cells lead up to and include the fine-tuning config."""
  code = [c for c in _load()['cells'] if c['cell_type'] == 'code']
  return 1 + next(i for i, c in enumerate(code)
                  if 'config = common.lock(config)' in ''.join(c['source']))


def _accuracy(stdout):
  return float(re.search(r'test top-1 ([0-9.]+) on', stdout).group(1))


def _check(result):
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'few-shot top-1' in result.stdout
  assert 'each row of the rollout sums to 1: True' in result.stdout
  return _accuracy(result.stdout)


FASHION_MNIST = os.path.isdir(fashion_mnist_local.source_dir())


def test_notebook_runs_top_to_bottom(tmp_path):
  # Real Fashion-MNIST where Debian's package is installed, else the
  # generated image folder.
  result = _run(tmp_path)
  assert _check(result) > (0.65 if FASHION_MNIST else 0.9)
  expected = 'fashion_mnist_local' if FASHION_MNIST else 'imagefolder'
  assert f"'dataset': '{expected}'" in result.stdout


@pytest.mark.skipif(not FASHION_MNIST, reason='the full run used the folder')
def test_notebook_data_cells_also_work_with_a_generated_folder(tmp_path):
  result = _run(tmp_path, _cells_through_the_config(),
                VIT_JAX_NOTEBOOK_DATA='generated')
  assert result.returncode == 0, result.stderr[-3000:]
  assert "'dataset': 'imagefolder'" in result.stdout
