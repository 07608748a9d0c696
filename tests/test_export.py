"""Export for serving: each file in its own runtime against predict's logits.

Tiny random models of each family (ViT, R+ViT hybrid, Mixer, a timm
family) are exported with only --checkpoint and --out; their SavedModel,
ONNX and TFLite files then run in TensorFlow, ONNX Runtime and LiteRT on
generated PNGs, at batch sizes 3 and 1 (the files have a symbolic batch),
and must give the logits of `python -m vit_jax.cli.predict --logits_out`.
The command and serving code of docs/deploy.md run as they are written.
"""

import errno
import glob
import os
import re
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from tests import timm_fixtures
from vit_jax.cli import export as export_cli
from vit_jax.cli import predict
from vit_jax import export
from vit_jax.export import serving
from vit_jax.export import to_onnx
from vit_jax import models
from vit_jax.weights import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_DOC = os.path.join(REPO, 'docs', 'deploy.md')
IMAGENET = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))
CLASS_NAMES = ('ankle boot', 'bag', 'coat')
FASHION_MNIST_TEST_IMAGES = (
    '/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz')


def _cli(argv):
  """Parses `argv` on fresh flags and runs the program's main, as `-m`."""
  flag_values = flags.FlagValues()
  export_cli.define_flags(flag_values)
  return export_cli.main(flag_values(['export', *argv]), flag_values)


def _write_pngs(directory, size, names, seed=0, channels=3):
  """Random PNGs of `size` x `size`, RGB or (channels=1) greyscale."""
  rng = np.random.default_rng(seed)
  paths = []
  for name in names:
    paths.append(str(directory / name))
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels
                    ).save(paths[-1])
  return paths


def _pixels(paths):
  return np.stack([np.asarray(Image.open(path).convert('RGB'))
                   for path in paths])


def _predict_logits(checkpoint, paths, tmp_path):
  out = str(tmp_path / 'predict_logits.npy')
  predict.run(checkpoint, None, paths, logits_out=out)
  return np.load(out)


def _ours(tmp_path, model, size, **sidecar):
  path = str(tmp_path / 'model.npz')
  pretrained.save_npz(helpers.random_params(model, size), path, model=model,
                      image_size=size, **sidecar)
  return path, size


def _checkpoint(family, tmp_path):
  """(checkpoint, native size) of a tiny random model of `family`."""
  if family == 'hybrid':
    return _ours(tmp_path, helpers.tiny_hybrid(num_classes=4), 32,
                 preprocessing=IMAGENET)
  if family == 'released':
    # The released layout alone, no sidecar: the architecture, size and
    # normalisation come from the arrays and the family.
    path = str(tmp_path / 'released.npz')
    pretrained.save_npz(helpers.random_params(
        helpers.tiny_model(num_classes=5), helpers.TINY_IMAGE_SIZE), path)
    return path, helpers.TINY_IMAGE_SIZE
  if family == 'mixer':
    model = models.create_model(
        'Mixer-B_16', num_classes=3, hidden_size=32, num_layers=2,
        patch_size=4, tokens_mlp_dim=16, channels_mlp_dim=32)
    return _ours(tmp_path, model, 16)
  spec = timm_fixtures.FAMILIES[family]
  directory = timm_fixtures.write_family(tmp_path / 'hub', family)
  return str(directory), spec.image_size


def _assert_each_file_gives(expected, out, images, label):
  """Each file of `out`, run in its runtime on `images`, gives `expected`."""
  for name, run in export.RUNTIMES.items():
    logits = run(os.path.join(out, name), images)
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    error = serving.relative_error(logits, expected)
    print(f'{label} {name}: {error:.2e}')
    assert error <= export.TOLERANCE[name], (name, error)


# DINOv2-style timm model with a head: register tokens, LayerScale, a
# position embedding over the patches only, average pooling and fc_norm.
@pytest.mark.slow
@pytest.mark.parametrize('family', ['released', 'hybrid', 'mixer',
                                    'gap_fc_norm_registers'])
def test_each_file_gives_predicts_logits_in_its_runtime(family, tmp_path,
                                                        capsys):
  checkpoint, size = _checkpoint(family, tmp_path)
  paths = _write_pngs(tmp_path, size, ['a.png', 'b.png', 'c.png'])
  expected = _predict_logits(checkpoint, paths, tmp_path)
  out = str(tmp_path / 'exported')
  _cli([f'--checkpoint={checkpoint}', f'--out={out}'])
  assert sorted(os.listdir(out)) == ['model.onnx', 'model.tflite',
                                     'saved_model']
  assert 'largest relative difference' in capsys.readouterr().out
  images = _pixels(paths)
  _assert_each_file_gives(expected, out, images, f'{family} B=3')

  # One 28-px greyscale image, as Fashion-MNIST's: the files resize it as
  # predict does, and take a batch of one (export checked them on batches
  # of 2, `bundle.CHECK_BATCH`).
  fashion = tmp_path / 'fashion'
  fashion.mkdir()
  paths = _write_pngs(fashion, 28, ['a.png'], seed=1, channels=1)
  expected = _predict_logits(checkpoint, paths, tmp_path)
  images = _pixels(paths)
  assert images.shape == (1, 28, 28, 3) and size != 28
  _assert_each_file_gives(expected, out, images, f'{family} B=1, 28 px')


def _deploy_blocks():
  """The fenced blocks of docs/deploy.md: [(language, code)]."""
  with open(DEPLOY_DOC) as f:
    return re.findall(r'```(\w+)\n(.*?)```', f.read(), re.S)


@pytest.mark.slow
def test_deploy_doc_runs_as_written(tmp_path, monkeypatch):
  blocks = _deploy_blocks()
  commands = [code for language, code in blocks if language == 'sh']
  snippets = [code for language, code in blocks if language == 'python']
  assert len(commands) == 1 and len(snippets) == 6
  command = commands[0].split()
  assert command[:3] == ['python', '-m', 'vit_jax.export']
  write_images, load_images, *runtimes, show_labels = snippets
  assert [re.search(r'^(?:import|from) (\w+)', code, re.M).group(1)
          for code in runtimes] == ['tensorflow', 'onnxruntime',
                                    'ai_edge_litert']

  # The command as written, in a directory holding what it names.
  monkeypatch.chdir(tmp_path)
  checkpoint = re.search(r'--checkpoint=(\S+)', commands[0]).group(1)
  os.makedirs(os.path.dirname(checkpoint))
  model = helpers.tiny_model(num_classes=3)
  pretrained.save_npz(
      helpers.random_params(model, helpers.TINY_IMAGE_SIZE), checkpoint,
      model=model, class_names=CLASS_NAMES, preprocessing=IMAGENET,
      image_size=helpers.TINY_IMAGE_SIZE)
  names = re.findall(r"'([\w.-]+\.png)'", load_images)
  assert names == re.findall(r"'([\w.-]+\.png)'", write_images)
  if os.path.exists(FASHION_MNIST_TEST_IMAGES):
    _run_snippet(write_images, {})
  else:  # Without Debian's dataset-fashion-mnist: images of the same kind.
    _write_pngs(tmp_path, 28, names, channels=1)
  paths = [str(tmp_path / name) for name in names]
  assert all(Image.open(path).size == (28, 28) for path in paths)
  environment = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  environment['PYTHONPATH'] = REPO
  result = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path,
                          env=environment, capture_output=True, text=True,
                          timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("input 'images': uint8 (B, H, W, 3), any size, resized to 16 x 16 "
          'inside') in result.stdout
  out = re.search(r'--out=(\S+)', commands[0]).group(1)
  with open(os.path.join(out, export.LABELS)) as f:
    assert tuple(f.read().splitlines()) == CLASS_NAMES

  expected = _predict_logits(checkpoint, paths, tmp_path)
  namespace = _run_snippet(load_images, {})
  files = (export.SAVED_MODEL, export.ONNX, export.TFLITE)
  for name, code in zip(files, runtimes, strict=True):
    scope = _run_snippet(code, dict(namespace))
    assert serving.relative_error(scope['logits'], expected) <= (
        export.TOLERANCE[name]), name
    _run_snippet(show_labels, scope)


def _run_snippet(code, scope):
  exec(compile(code, DEPLOY_DOC, 'exec'), scope)  # pylint: disable=exec-used
  return scope


@pytest.fixture(name='vit_checkpoint', scope='module')
def _vit_checkpoint(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('vit') / 'model.npz')
  model = helpers.tiny_model(num_classes=3)
  pretrained.save_npz(helpers.random_params(model, helpers.TINY_IMAGE_SIZE),
                      path, model=model, image_size=helpers.TINY_IMAGE_SIZE)
  return path


def _fails_with(argv, capsys, message):
  with pytest.raises(SystemExit) as exit_info:
    _cli(argv)
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.count('\n') == 1, error
  assert message in error


def test_bad_input_is_one_line_and_writes_nothing(vit_checkpoint, tmp_path,
                                                  capsys):
  _fails_with([f'--out={tmp_path / "a"}'], capsys, '--checkpoint is required')
  _fails_with([f'--checkpoint={vit_checkpoint}'], capsys, '--out is required')
  _fails_with(['--checkpoint=/nonexistent/model.npz',
               f'--out={tmp_path / "a"}'], capsys, 'does not exist')
  busy = tmp_path / 'busy'
  busy.mkdir()
  (busy / 'keep.txt').write_text('mine')
  _fails_with([f'--checkpoint={vit_checkpoint}', f'--out={busy}'], capsys,
              'exists and is not empty')
  assert os.listdir(busy) == ['keep.txt']
  # Below a file: nobody, root included, can create it.
  _fails_with([f'--checkpoint={vit_checkpoint}',
               f'--out={busy / "keep.txt" / "out"}'], capsys,
              'is not a directory')
  assert sorted(os.listdir(tmp_path)) == ['busy']


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes anywhere')
def test_an_unwritable_parent_is_refused(vit_checkpoint, tmp_path, capsys):
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o555)
  try:
    _fails_with([f'--checkpoint={vit_checkpoint}', f'--out={locked / "x"}'],
                capsys, 'is not writable')
  finally:
    locked.chmod(0o755)


def test_a_failed_export_leaves_nothing_behind(vit_checkpoint, tmp_path,
                                               monkeypatch):
  # Fails after the SavedModel and the TFLite file are written.
  def broken(*args, **kwargs):
    del args, kwargs
    raise ValueError('converter broke')
  monkeypatch.setattr(to_onnx, 'write_serving', broken)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='converter broke'):
    export_cli.run(vit_checkpoint, str(tmp_path / 'empty'))
  assert os.listdir(tmp_path) == ['empty']
  assert not os.listdir(tmp_path / 'empty')


def test_a_full_disk_names_the_path_and_leaves_nothing(vit_checkpoint,
                                                       tmp_path, monkeypatch):
  def full(serve, params, image_size, path, precision):
    del serve, params, image_size, precision
    with open(path, 'wb') as f:
      f.write(b'half a graph')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
  monkeypatch.setattr(to_onnx, 'write_serving', full)
  out = str(tmp_path / 'out')
  with pytest.raises(OSError) as error:
    export_cli.run(vit_checkpoint, out)
  assert str(error.value) == (
      f'cannot write model.onnx of {out} (No space left on device): free '
      f'space on the disk of {tmp_path} or export to a directory on another '
      'disk; '
      'nothing was written')
  assert error.value.errno == errno.ENOSPC
  assert not os.listdir(tmp_path)


def _export_process(checkpoint, out):
  return subprocess.Popen(
      [sys.executable, '-m', 'vit_jax.export', f'--checkpoint={checkpoint}',
       f'--out={out}'], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'PYTHONPATH': REPO})


def _wait_for(pattern, process, timeout=120):
  """Polls until a file matches `pattern` (True) or `process` ends
  (False)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and process.poll() is None:
    if glob.glob(pattern):
      return True
    time.sleep(0.01)
  return False


@pytest.mark.slow
@pytest.mark.parametrize('stop_signal,status', [('SIGTERM', 143),
                                                ('SIGINT', 130)])
def test_a_stopped_export_ends_in_one_line_and_leaves_nothing(
    vit_checkpoint, tmp_path, stop_signal, status):
  out = tmp_path / 'exported'
  process = _export_process(vit_checkpoint, out)
  # Stopped while it writes: once the SavedModel's directory is there.
  writing = str(tmp_path / '.exported.*.partial' / export.SAVED_MODEL)
  try:
    assert _wait_for(writing, process), process.communicate()[1][-3000:]
    process.send_signal(getattr(signal, stop_signal))
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == status, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  assert stderr.splitlines()[-1] == (
      f'error: export interrupted by {stop_signal}; nothing was written')
  assert [line for line in stderr.splitlines() if 'error' in line.lower()
          ] == [stderr.splitlines()[-1]], stderr[-3000:]
  assert not os.listdir(tmp_path)


def test_a_model_without_head_is_refused(tmp_path):
  directory = str(timm_fixtures.write_family(tmp_path / 'hub', 'dino'))
  with pytest.raises(ValueError, match='has no head'):
    export_cli.run(directory, str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.slow
def test_large_onnx_weights_go_beside_the_graph(tmp_path, monkeypatch):
  monkeypatch.setattr(to_onnx, 'INLINE_WEIGHTS_LIMIT', 0)
  model = models.create_model(
      'Mixer-B_16', num_classes=3, hidden_size=16, num_layers=1,
      patch_size=4, tokens_mlp_dim=8, channels_mlp_dim=16)
  loaded = pretrained.LoadedModel(
      model=model, params=helpers.random_params(model, 8), image_size=8,
      preprocessing=IMAGENET)
  path = str(tmp_path / export.ONNX)
  to_onnx.write_serving(export.serving_function(loaded), loaded.params, 8,
                        path)
  assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'model.onnx.data']
  images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), np.uint8)
  assert serving.relative_error(
      to_onnx.run(path, images),
      serving.reference_logits(loaded, images)) <= export.TOLERANCE[export.ONNX]


@pytest.mark.slow
def test_the_library_imports_no_converter_or_runtime():
  code = ('import sys, vit_jax.export; print(sorted(m for m in ('
          '"jax2onnx", "onnx", "onnxruntime", "ai_edge_litert") '
          'if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'
