"""notebooks/vit_jax.ipynb: valid nbformat 4, up to date, and it runs.

The notebook runs as a user's Jupyter runs it: nbclient starts the kernel
its metadata names (`python3`, ipykernel) and executes the code cells in
order, in a fresh directory, with a single CPU device and the kernel's own
matplotlib backend (inline: each figure becomes an image/png output). An
error in any cell fails the test.
"""

import json
import os
import re
import sys

import nbclient
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'vit_jax.ipynb')
sys.path.insert(0, os.path.join(REPO, 'notebooks'))
# pylint: disable=g-import-not-at-top,wrong-import-position
import make_notebook
from tests import helpers
from vit_jax.weights import pretrained
from vit_jax.data.datasets import fashion_mnist_local
# pylint: enable=g-import-not-at-top,wrong-import-position

# Seconds a cell may run (the fine-tuning cell is the longest).
CELL_TIMEOUT = 400


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


class _Run:
  """An executed notebook: its stdout, image outputs and error, if any."""

  def __init__(self, notebook, error):
    outputs = [output for cell in notebook.cells
               if cell.cell_type == 'code' for output in cell.outputs]
    self.stdout = ''.join(output.get('text', '') for output in outputs
                          if output.output_type == 'stream' and
                          output.name == 'stdout')
    self.stderr = ''.join(output.get('text', '') for output in outputs
                          if output.output_type == 'stream' and
                          output.name == 'stderr')
    self.images = sum('image/png' in output.get('data', {})
                      for output in outputs)
    self.error = error


def _run(tmp_path, code_cells=0, **env):
  """Runs the first `code_cells` code cells of the notebook (all when 0) in
  its kernel, through nbclient, with `tmp_path` as working directory."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  if code_cells:
    code = [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == 'code']
    notebook.cells = notebook.cells[:code[code_cells - 1] + 1]
  # One CPU device, as a fresh kernel has; the kernel picks its own
  # matplotlib backend.
  environment = {k: v for k, v in os.environ.items()
                 if k not in ('XLA_FLAGS', 'MPLBACKEND')}
  environment.update(PYTHONPATH=REPO, TMPDIR=str(tmp_path), **env)
  client = nbclient.NotebookClient(
      notebook, timeout=CELL_TIMEOUT,
      kernel_name=notebook.metadata.kernelspec.name,
      resources={'metadata': {'path': str(tmp_path)}})
  try:
    client.execute(env=environment)
    error = None
  except nbclient.exceptions.CellExecutionError as e:
    error = re.sub(r'\x1b\[[0-9;]*m', '', str(e))  # IPython's colours.
  return _Run(notebook, error)


def _accuracy(stdout):
  return float(re.search(r'test top-1 ([0-9.]+) on', stdout).group(1))


def _check(result):
  assert result.error is None, result.error[-3000:]
  assert 'few-shot top-1' in result.stdout
  assert 'each row of the rollout sums to 1: True' in result.stdout
  return _accuracy(result.stdout)


FASHION_MNIST = os.path.isdir(fashion_mnist_local.source_dir())


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
  # Real Fashion-MNIST where Debian's package is installed, else the
  # generated image folder.
  result = _run(tmp_path)
  assert _check(result) > (0.65 if FASHION_MNIST else 0.9)
  # Every plt.show() drew its figure inline.
  assert result.images == sum(''.join(cell['source']).count('plt.show()')
                              for cell in _load()['cells']
                              if cell['cell_type'] == 'code')
  expected = 'fashion_mnist_local' if FASHION_MNIST else 'imagefolder'
  assert f"'dataset': '{expected}'" in result.stdout
  _check_quiet_and_clean(result, tmp_path)
  assert 'no runs/default/model.npz (the set-up trains it)' in result.stdout


def _check_quiet_and_clean(result, tmp_path):
  """No progress-bar warning or bar; nothing left in the temporary
  directory (the notebook's TMPDIR)."""
  assert 'IProgress' not in result.stderr, result.stderr[-2000:]
  assert '%|' not in result.stderr, result.stderr[-2000:]
  assert not [name for name in os.listdir(tmp_path)
              if name.startswith('vit_jax_notebook_')]


def _cells_through_the_default_run():
  code = [c for c in _load()['cells'] if c['cell_type'] == 'code']
  return 1 + next(i for i, c in enumerate(code)
                  if 'DEFAULT_RUN = ' in ''.join(c['source']))


@pytest.mark.slow
def test_notebook_classifies_with_the_default_run_on_a_generated_folder(
    tmp_path):
  """The cells up to the default run's guesses, in one kernel: the
  default-run branch (the top-to-bottom run takes the other one) and the
  generated image folder's data cells (that run uses Fashion-MNIST where
  it is installed)."""
  # A stand-in for the set-up's run: a tiny random hybrid at 32 px.
  model = helpers.tiny_hybrid(num_classes=10)
  os.makedirs(tmp_path / 'runs' / 'default')
  pretrained.save_npz(helpers.random_params(model, 32),
                      str(tmp_path / 'runs' / 'default' / 'model.npz'),
                      model=model, image_size=32)
  result = _run(tmp_path, _cells_through_the_default_run(),
                VIT_JAX_NOTEBOOK_DATA='generated')
  assert result.error is None, result.error[-3000:]
  assert "'dataset': 'imagefolder'" in result.stdout
  assert ("the default run's model (runs/default/model.npz):"
          in result.stdout)
  assert result.stdout.count('guesses:') == 6
  # Stopping the kernel removes the temporary directory too.
  _check_quiet_and_clean(result, tmp_path)
