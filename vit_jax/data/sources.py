"""Dataset sources: one split's per-process slice as uint8 images + labels.

A source turns (split, process index, process count) into a tf.data.Dataset
of examples {'image': uint8 (H, W, 1 or 3), 'label': int, ...} and counts
them; `vit_jax.data.pipeline` builds the training and evaluation pipelines on
top. Sources:
  * any TFDS dataset read from a data_dir (None: TFDS's default). Nothing is
    ever downloaded: a dataset that is not prepared there is an error that
    says how to prepare it, except `fashion_mnist_local`
    (`vit_jax.data.datasets`), which needs no network and is prepared on
    first use (about 10 s; a second process asking meanwhile waits for it,
    see `_prepare_once`). By
    default an example is its 'image' and 'label' features; a `label_map`
    (`config.label_map`, see `vit_jax.data.label_maps`) derives them from other
    features instead, and evaluators pass their own example function to keep
    more (e.g. ImageNet-ReaL's label sets).
  * 'imagefolder': `root/<split>/<class>/*.{jpg,jpeg,png}`, one class per
    folder (`vit_jax.data.image_folder`: what is checked, how classes get
    their ids). Every file of every split given is decoded when the source
    is made, so a corrupt file is named before training starts.

Every process reads its own slice of a split (`tfds.even_splits`), so
the processes' slices partition it.
"""

import contextlib
import fcntl
import io
import math
import os
from typing import Callable, Dict, Optional, Sequence

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import datasets as local_datasets
from vit_jax.data import image_folder
from vit_jax.data import label_maps


IMAGEFOLDER = 'imagefolder'
# Builders that read local files only; they are prepared on first use, by
# one process at a time (the others wait on this lock file in the dataset's
# folder of the data_dir).
LOCAL_BUILDERS = (local_datasets.fashion_mnist_local.FashionMnistLocal.name,)
PREPARE_LOCK_NAME = '.prepare.lock'

ExampleFn = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


def _image_and_label(example):
  return {'image': example['image'], 'label': example['label']}


class TfdsSource:
  """A prepared TFDS dataset.

  Attributes:
    num_classes: classes of the label, None when unknown.
  """

  def __init__(self, builder, *, example_fn: Optional[ExampleFn] = None,
               num_classes: Optional[int] = None,
               features: Sequence[str] = ('image', 'label')):
    """Checks the dataset has what `example_fn` reads.

    Args:
      builder: a prepared tfds builder.
      example_fn: TFDS example -> {'image', 'label', ...}; None keeps the
        'image' and 'label' features.
      num_classes: classes of the label `example_fn` makes; None with no
        example_fn: the 'label' feature's class count.
      features: TFDS features the examples are made from.
    """
    self._builder = builder
    self._example_fn = example_fn or _image_and_label
    available = builder.info.features
    missing = [name for name in features if name not in available]
    if missing:
      raise ValueError(
          f'Dataset {builder.name!r} has features {list(available)}, not '
          f'{missing}. An image classification dataset needs \'image\' and '
          "'label'; for a label derived from other features set "
          'config.label_map (vit_jax/data/label_maps.py).')
    if num_classes is None and example_fn is None:
      num_classes = getattr(available['label'], 'num_classes', None)
    self.num_classes = num_classes

  @property
  def builder(self):
    return self._builder

  def num_examples(self, split, process_index=0, process_count=1):
    subsplit = tfds.even_splits(split, n=process_count)[process_index]
    return self._builder.info.splits[subsplit].num_examples

  def read(self, split, process_index, process_count):
    subsplit = tfds.even_splits(split, n=process_count)[process_index]
    ds = self._builder.as_dataset(
        split=subsplit, shuffle_files=False,
        read_config=tfds.ReadConfig(add_tfds_id=False))
    return ds.map(self._example_fn, num_parallel_calls=tf.data.AUTOTUNE)

  def decoded_bytes(self, split):
    shape = self._builder.info.features['image'].shape
    if all(d is not None for d in shape):
      return self.num_examples(split) * math.prod(shape)
    # Unknown image sizes: the encoded size is the best cheap lower bound,
    # in proportion for a slice (VTAB-1k reads 1,000 examples of large sets).
    info = self._builder.info
    share = self.num_examples(split) / max(info.splits.total_num_examples, 1)
    return int(info.dataset_size * share)


def check_split(builder, split):
  """Raises ValueError naming the splits when `split` is not in `builder`."""
  try:
    builder.info.splits[split]  # pylint: disable=pointless-statement
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(
        f'Split {split!r} does not exist in dataset {builder.name!r} '
        f'(splits: {sorted(builder.info.splits)}); fix config.train_split / '
        f'config.eval_split. ({e})') from None


def tfds_builder(name, data_dir):
  """Returns a prepared builder, never downloading; see module docstring."""
  data_dir = data_dir and os.path.expanduser(data_dir)
  if data_dir is not None and not tf.io.gfile.isdir(data_dir):
    if name not in LOCAL_BUILDERS:
      raise FileNotFoundError(
          f'data_dir {data_dir!r} does not exist; set config.data_dir to the '
          f'folder holding the prepared TFDS dataset {name!r}.')
    tf.io.gfile.makedirs(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(
        f'Dataset {name!r} is not a registered TFDS dataset and is not '
        f'prepared in data_dir {data_dir!r}; check config.dataset (e.g. '
        f"'fashion_mnist_local', 'cifar10', or 'imagefolder').") from None
  if not _is_prepared(builder):
    if name in LOCAL_BUILDERS:
      builder = _prepare_once(name, data_dir, builder)
    else:
      root = data_dir or os.environ.get('TFDS_DATA_DIR',
                                        '~/tensorflow_datasets')
      raise FileNotFoundError(
          f'Dataset {name!r} is not prepared in {builder.data_dir!r} and this '
          f'code never downloads. On a machine with internet run `tfds build '
          f'{name} --data_dir={root}` (or prepare it with tfds), then copy '
          f'the prepared files to {root}.')
  return builder


def _is_prepared(builder) -> bool:
  # TFDS's own check warns that an absent version folder "has no
  # dataset_info.json"; a dataset not prepared yet is no cause for a warning.
  return ((builder.data_path / 'dataset_info.json').exists() and
          builder.is_prepared())


def _prepare_once(name, data_dir, builder):
  """Prepares a local builder's dataset, or waits for the process doing it.

  Two processes preparing the same data_dir at once (two first runs, or the
  processes of one run on a host) would both write it and the second to
  finish fail to rename its copy into place. The preparation holds a lock,
  and whoever waited for it finds the dataset prepared.

  Args:
    name: the builder's name.
    data_dir: the TFDS data_dir (None: TFDS's default).
    builder: `name`'s builder in `data_dir`, not prepared when it was made.

  Returns:
    A builder of the prepared dataset.
  """
  with _preparation_lock(name, os.path.dirname(builder.data_dir)):
    # Made again: one made before another process prepared the dataset
    # lacks the prepared dataset's info (its splits).
    builder = tfds.builder(name, data_dir=data_dir)
    if not _is_prepared(builder):
      logging.info('preparing %s (once) into %s; config.data_dir sets where',
                   name, builder.data_dir)
      with _without_tfds_progress():
        builder.download_and_prepare()
  return builder


@contextlib.contextmanager
def _without_tfds_progress():
  """Keeps TFDS's progress bars and its "Downloading and preparing dataset"
  lines (printed, not logged) out of the output: a local dataset downloads
  nothing, and its preparation is a few seconds. Its warnings still show.
  """
  was_shown = getattr(tfds.core.utils.tqdm_utils, '_active', True)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(was_shown)


@contextlib.contextmanager
def _preparation_lock(name, dataset_dir):
  """Holds an exclusive `flock` on `dataset_dir/.prepare.lock`.

  The kernel drops a flock when its process ends, however it ends, so a
  killed preparation leaves no stale lock. Remote folders (gs://) have no
  such lock and are prepared unlocked.

  Args:
    name: the dataset, for the waiting message.
    dataset_dir: the folder holding the dataset's versions.

  Yields:
    Nothing; the lock is held inside the `with`.
  """
  if '://' in dataset_dir:
    yield
    return
  os.makedirs(dataset_dir, exist_ok=True)
  with open(os.path.join(dataset_dir, PREPARE_LOCK_NAME), 'a') as lock_file:
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning('waiting for another process preparing %s in %s',
                      name, dataset_dir)
      fcntl.flock(lock_file, fcntl.LOCK_EX)
    yield  # Closing the file drops the lock.


def make_source(dataset: str, data_dir: Optional[str], splits: Sequence[str],
                label_map: Optional[str] = None):
  """Returns the source of `dataset` with every split in `splits` checked.

  Args:
    dataset: a TFDS name (optionally with config and version, e.g.
      'clevr:3.*.*') or 'imagefolder'.
    data_dir: the TFDS data_dir or the image-folder root.
    splits: splits that must exist; the first is the training split (an
      image folder's classes are its class folders).
    label_map: a key of `vit_jax.data.label_maps.LABEL_MAPS`, or None for
      the 'label' feature.

  Raises:
    ValueError / FileNotFoundError: unknown dataset or label map, missing
      data_dir or split, dataset not prepared, an image folder's file that
      does not decode (see the module docstring).
  """
  if dataset == IMAGEFOLDER:
    if label_map:
      raise ValueError('config.label_map applies to TFDS datasets only; an '
                       'image folder labels by class folder.')
    source = image_folder.FolderSource(data_dir, splits)
    splits = dict.fromkeys(splits)  # Once when train = eval split.
    # Every split's folders are checked before any decoding (minutes).
    for split in splits:
      source.num_examples(split)  # Raises for a missing or empty split.
    for split in splits:
      source.check_images(split)
    return source
  mapping = label_map and label_maps.get_label_map(label_map)
  builder = tfds_builder(dataset, data_dir)
  for split in splits:
    check_split(builder, split)
  if not mapping:
    return TfdsSource(builder)
  return TfdsSource(builder, example_fn=mapping.fn,
                    num_classes=mapping.num_classes, features=mapping.features)


