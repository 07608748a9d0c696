"""Tests of the fashion_mnist_local builder and of preparing it on first use.

Fashion-MNIST idx files with a few dozen examples are generated here;
nothing touches the network.
"""

import fcntl
import gzip
import os
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import common
from vit_jax.data.datasets import fashion_mnist_local
from vit_jax.data import sources
from vit_jax.training import run_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = fashion_mnist_local.FashionMnistLocal.name
WAITING = f'waiting for another process preparing {NAME} in '


def _data(**overrides):
  """The DataSpec of an experiment config with `overrides`."""
  config = common.get_config()
  config.update(dict(
      image_size=28, batch_size=8, eval_batch_size=8, shuffle_buffer=100,
      prefetch=1, train_augment='resize', random_flip=False), **overrides)
  return run_spec.data_spec(config)


def _write_idx(path, array, magic):
  header = magic.to_bytes(4, 'big') + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(directory, sizes=(('train', 40), ('t10k', 15))):
  """Writes small idx files; returns {split: (images, labels)}."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.RandomState(0)
  data = {}
  for prefix, n in sizes:
    images = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
               images, 0x803)
    _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'),
               labels, 0x801)
    data['test' if prefix == 't10k' else prefix] = (images, labels)
  return data


def test_fashion_mnist_local_is_prepared_on_first_use(tmp_path, monkeypatch,
                                                     capsys, caplog):
  idx = _write_fashion_mnist(str(tmp_path / 'idx'))
  monkeypatch.setenv(fashion_mnist_local.ENV_VAR, str(tmp_path / 'idx'))
  data = _data(dataset='fashion_mnist_local',
               data_dir=str(tmp_path / 'new_tfds_dir'), image_size=28,
               eval_batch_size=4)
  caplog.set_level('INFO', logger='absl')
  source = data.source()
  # One line says where the data goes; TFDS's banner and bars are kept out.
  assert [r.getMessage() for r in caplog.records
          if 'preparing' in r.getMessage()] == [
              f'preparing {NAME} (once) into {tmp_path}/new_tfds_dir/{NAME}/'
              '1.0.0; config.data_dir sets where']
  assert capsys.readouterr() == ('', '')
  assert tfds.core.utils.tqdm_utils._active  # Restored for everyone else.
  assert (data.resolve_num_classes(source), source.num_examples('train'),
          source.num_examples('test')) == (10, 40, 15)
  builder = tfds.builder('fashion_mnist_local', data_dir=data.data_dir)
  assert builder.info.features['label'].names[0] == 'T-shirt/top'
  assert builder.info.features['label'].names[9] == 'Ankle boot'
  # Decoded PNGs reproduce the idx pixels exactly, as 3 equal channels.
  images, labels = idx['test']
  batches = list(data.eval_batches(source))
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 15 and len(mask) == 16
  got = np.concatenate([b['image'] for b in batches])[mask == 1]
  got_labels = np.concatenate([b['label'] for b in batches])[mask == 1]
  np.testing.assert_array_equal(got[..., 0], got[..., 1])
  np.testing.assert_array_equal(got[..., 0], got[..., 2])
  pixels = np.round(got[..., 0] * 127.5 + 127.5).astype(np.uint8)
  order = [next(i for i in range(15) if np.array_equal(p, images[i]))
           for p in pixels]
  assert sorted(order) == list(range(15))
  np.testing.assert_array_equal(got_labels, labels[order])


def test_fashion_mnist_missing_idx_dir_says_how_to_install(tmp_path,
                                                           monkeypatch):
  monkeypatch.setenv(fashion_mnist_local.ENV_VAR, str(tmp_path / 'no_idx'))
  with pytest.raises(FileNotFoundError,
                     match='apt-get install dataset-fashion-mnist'):
    _data(dataset='fashion_mnist_local',
          data_dir=str(tmp_path / 'tfds')).source()


def test_idx_parser_rejects_wrong_magic_and_truncation(tmp_path):
  path = str(tmp_path / 'labels.gz')
  _write_idx(path, np.zeros(5, np.uint8), 0x803)  # Image magic on labels.
  with pytest.raises(ValueError, match='magic number'):
    fashion_mnist_local.read_idx(path, 0x801)
  with gzip.open(path, 'wb') as f:
    f.write((0x801).to_bytes(4, 'big') + (10).to_bytes(4, 'big') + b'\0' * 3)
  with pytest.raises(ValueError, match='truncated'):
    fashion_mnist_local.read_idx(path, 0x801)


def test_idx_parser_rejects_mismatched_counts(tmp_path):
  _write_fashion_mnist(str(tmp_path))
  _write_idx(str(tmp_path / 't10k-labels-idx1-ubyte.gz'),
             np.zeros(3, np.uint8), 0x801)
  with pytest.raises(ValueError, match='15 images but .* 3 labels'):
    fashion_mnist_local.load_split(str(tmp_path), 'test')


def test_png_encoder_round_trips(tmp_path):
  image = np.random.RandomState(1).randint(0, 256, (5, 9)).astype(np.uint8)
  path = tmp_path / 'x.png'
  path.write_bytes(fashion_mnist_local.encode_png_grey(image))
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(fashion_mnist_local.DEFAULT_DIR),
                    reason='dataset-fashion-mnist is not installed')
def test_real_fashion_mnist_test_split():
  images, labels = fashion_mnist_local.load_split(
      fashion_mnist_local.DEFAULT_DIR, 'test')
  assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
  assert sorted(set(labels.tolist())) == list(range(10))


# --- Preparation, one process at a time ---------------------------------------


def _hold_prepare_lock(data_dir):
  """Opens and locks the lock file that preparing `NAME` in `data_dir` takes.

  Returns:
    The open lock file; closing it releases the lock.
  """
  lock_dir = os.path.join(data_dir, NAME)
  os.makedirs(lock_dir)
  lock_file = open(os.path.join(lock_dir, sources.PREPARE_LOCK_NAME), 'a')
  fcntl.flock(lock_file, fcntl.LOCK_EX)
  return lock_file


def test_a_process_that_waited_finds_the_dataset_prepared(
    tmp_path, monkeypatch, caplog):
  _write_fashion_mnist(str(tmp_path / 'idx'))
  monkeypatch.setenv(fashion_mnist_local.ENV_VAR, str(tmp_path / 'idx'))
  data_dir = str(tmp_path / 'tfds')
  lock_file = _hold_prepare_lock(data_dir)
  got = {}
  waiter = threading.Thread(target=lambda: got.update(
      builder=sources.tfds_builder(NAME, data_dir)))
  waiter.start()
  deadline = time.monotonic() + 60
  while WAITING not in caplog.text:
    assert time.monotonic() < deadline and waiter.is_alive()
    time.sleep(0.05)
  # Another process prepares it meanwhile; the waiter must not again.
  tfds.builder(NAME, data_dir=data_dir).download_and_prepare()
  monkeypatch.setattr(fashion_mnist_local.FashionMnistLocal,
                      'download_and_prepare', None)  # Fails if called.
  lock_file.close()
  waiter.join(60)
  assert caplog.text.count(WAITING) == 1
  assert WAITING + os.path.join(data_dir, NAME) in caplog.text
  splits = got['builder'].info.splits
  assert (splits['train'].num_examples, splits['test'].num_examples) == (
      40, 15)


# Prepares (or waits for) the dataset in argv[1] and prints each split's
# size and the sha256 of its examples.
_PREPARE = '''
import hashlib, sys
from absl import logging
from vit_jax.data import sources
logging.set_verbosity(logging.INFO)  # For the line saying it prepares.
source = sources.make_source('fashion_mnist_local', sys.argv[1],
                             ('train', 'test'))
for split in ('train', 'test'):
  digest = hashlib.sha256()
  for example in source.read(split, 0, 1).as_numpy_iterator():
    digest.update(example['image'].tobytes() + bytes([example['label']]))
  print(split, source.num_examples(split), digest.hexdigest())
'''


@pytest.mark.slow
def test_two_first_runs_preparing_at_once_both_succeed(tmp_path):
  _write_fashion_mnist(str(tmp_path / 'idx'))
  data_dir = str(tmp_path / 'tfds')
  env = {**os.environ, fashion_mnist_local.ENV_VAR: str(tmp_path / 'idx'),
         'PYTHONPATH': REPO}
  logs = [tmp_path / f'run{i}.log' for i in range(2)]
  # Held until both runs wait for it, so their preparations overlap however
  # the two are scheduled.
  lock_file = _hold_prepare_lock(data_dir)
  runs = []
  try:
    for log in logs:
      with open(log, 'w') as stderr:
        runs.append(subprocess.Popen(
            [sys.executable, '-c', _PREPARE, data_dir], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=stderr, text=True))
    deadline = time.monotonic() + 300
    while not all(WAITING in log.read_text() for log in logs):
      assert time.monotonic() < deadline and all(
          run.poll() is None for run in runs), [
              log.read_text()[-2000:] for log in logs]
      time.sleep(0.2)
    lock_file.close()
    outputs = [run.communicate(timeout=300)[0] for run in runs]
  finally:
    lock_file.close()
    for run in runs:
      run.kill()
  assert [run.returncode for run in runs] == [0, 0], [
      log.read_text()[-2000:] for log in logs]
  # One run prepared (it says so), the other read its dataset.
  assert sorted(f'preparing {NAME} (once) into ' in log.read_text()
                for log in logs) == [False, True]
  splits = [[line for line in out.splitlines()
             if line.startswith(('train ', 'test '))] for out in outputs]
  assert splits[0] == splits[1]
  assert [line.split()[:2] for line in splits[0]] == [
      ['train', '40'], ['test', '15']]
  # One prepared version; no leftover `incomplete.*` copy.
  assert sorted(os.listdir(os.path.join(data_dir, NAME))) == [
      sources.PREPARE_LOCK_NAME, '1.0.0']
