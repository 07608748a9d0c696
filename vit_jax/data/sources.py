"""Dataset sources: one split's per-process slice as uint8 images + labels.

A source turns (split, process index, process count) into a tf.data.Dataset
of examples {'image': uint8 (H, W, 1 or 3), 'label': int, ...} and counts
them; `vit_jax.data.pipeline` builds the training and evaluation pipelines on
top. Sources:
  * any TFDS dataset read from a data_dir (None: TFDS's default). Nothing is
    ever downloaded: a dataset that is not prepared there is an error that
    says how to prepare it, except `fashion_mnist_local` (`vit_jax.data.datasets`),
    which needs no network and is prepared on first use (about 10 s). By
    default an example is its 'image' and 'label' features; a `label_map`
    (`config.label_map`, see `vit_jax.data.label_maps`) derives them from other
    features instead, and evaluators pass their own example function to keep
    more (e.g. ImageNet-ReaL's label sets).
  * 'imagefolder': `root/<split>/<class>/*.{jpg,jpeg,png}` (any extension
    case). The classes are the training split's class folders; a class's
    index is its name's position in their sorted names, in every split.
    Nothing is dropped unsaid: a class folder the training split lacks, an
    empty class folder, a folder inside a class folder or an image outside
    the class folders is an error (other files are ignored). Every file of
    every split given is decoded when the source is made (`check_images`),
    so a corrupt file is named before training starts, not at the first
    evaluation minutes in.

Every process reads its own slice of a split (`tfds.even_splits`), so
the processes' slices partition it.
"""

import math
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import datasets as local_datasets
from vit_jax.data import label_maps
from vit_jax.data import preprocess


IMAGEFOLDER = 'imagefolder'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Builders that read local files only; they are prepared on first use.
LOCAL_BUILDERS = (local_datasets.fashion_mnist_local.FashionMnistLocal.name,)
# Decoded size / file size assumed for image folders (JPEG is ~5-15x, PNG
# ~2-3x), and how many files are measured to estimate it.
_FOLDER_DECODE_EXPANSION = 8
_FOLDER_SIZE_SAMPLE = 100
# Undecodable files named in the error; the rest are counted.
_FOLDER_BAD_SHOWN = 5

ExampleFn = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


def _even_slice(num_examples, process_index, process_count):
  """[start, stop) of this process's share, as `tfds.even_splits` cuts it."""
  size, remainder = divmod(num_examples, process_count)
  start = process_index * size + min(process_index, remainder)
  return start, start + size + (process_index < remainder)


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
  if not builder.is_prepared():
    if name in LOCAL_BUILDERS:
      builder.download_and_prepare()
    else:
      root = data_dir or os.environ.get('TFDS_DATA_DIR',
                                        '~/tensorflow_datasets')
      raise FileNotFoundError(
          f'Dataset {name!r} is not prepared in {builder.data_dir!r} and this '
          f'code never downloads. On a machine with internet run `tfds build '
          f'{name} --data_dir={root}` (or prepare it with tfds), then copy '
          f'the prepared files to {root}.')
  return builder


class FolderSource:
  """Images in `root/<split>/<class>/<file>`, one class per folder.

  The training split's class folders are the classes; see `_list` for what
  every split is checked for.
  """

  def __init__(self, root, splits):
    """Reads the classes from the training split's folder.

    Args:
      root: the image-folder root.
      splits: split folder names; the first is the training split.
    """
    if not root:
      raise ValueError("config.dataset='imagefolder' needs config.data_dir "
                       'set to the image-folder root.')
    if not tf.io.gfile.isdir(root):
      raise FileNotFoundError(f'data_dir {root!r} (the image-folder root) '
                              'does not exist.')
    self._root = root
    self._train_split = splits[0]
    self.class_names = sorted(_subdirs(self._split_dir(self._train_split)))
    self.num_classes = len(self.class_names)
    self._files = {}

  def _split_dir(self, split):
    split_dir = os.path.join(self._root, split)
    if not tf.io.gfile.isdir(split_dir):
      raise ValueError(
          f'Split {split!r} does not exist: no folder {split_dir!r} '
          f'(found: {sorted(_subdirs(self._root))}); fix '
          'config.train_split / config.eval_split.')
    return split_dir

  def _list(self, split):
    """Returns (paths, labels) of a split, in a fixed shuffled order.

    Nothing in a split is dropped unsaid: a class folder the training split
    lacks (its label would never be trained), a class folder without
    images, a folder inside a class folder and an image outside the class
    folders are errors. A split may lack some training classes (an
    evaluation on fewer classes); its labels are the training split's.
    """
    if split not in self._files:
      split_dir = self._split_dir(split)
      entries = _entries(split_dir)
      unknown = sorted(set(entries.dirs) - set(self.class_names))
      if unknown:
        raise ValueError(
            f'Split {split!r} has class folders that the training split '
            f'{self._train_split!r} lacks: {", ".join(map(repr, unknown))} '
            f'(in {split_dir!r}); a model never learns a class it is not '
            'trained on: add training images of them or remove the folders.')
      loose = _images(entries.files)
      if loose:
        more = f' ({len(loose):,} in all)' if len(loose) > 1 else ''
        raise ValueError(
            f'Image {os.path.join(split_dir, loose[0])!r} is outside the '
            f'class folders of split {split!r}{more}; move images into '
            f'{split_dir}/<class>/.')
      paths, labels = [], []
      for label, name in enumerate(self.class_names):
        if name not in entries.dirs:
          continue
        class_dir = os.path.join(split_dir, name)
        files = _class_images(class_dir)
        paths.extend(files)
        labels.extend([label] * len(files))
      if not paths:
        raise ValueError(f'No {"/".join(IMAGE_EXTENSIONS)} files found in '
                         f'{split_dir!r}/<class>/.')
      # Files sorted by class would give each process a few classes only.
      order = np.random.RandomState(0).permutation(len(paths))
      self._files[split] = ([paths[i] for i in order],
                            [labels[i] for i in order])
    return self._files[split]

  def check_images(self, split):
    """Raises ValueError naming the files of `split` that do not decode.

    `read` decodes lazily, so without this check one corrupt file stops
    training when an epoch or evaluation first reaches it, with a TF error
    that names no file. Every process checks the whole split (not only its
    slice), so all of them stop with the same message.

    Args:
      split: a split folder's name.

    Raises:
      ValueError: one line with how many files fail, the first few of them
        and what to do.
    """
    paths = self._list(split)[0]
    start = time.perf_counter()
    bad = undecodable_images(paths)
    logging.info('Decoding check of %r: %d files, %d undecodable, %.1f s.',
                 os.path.join(self._root, split), len(paths), len(bad),
                 time.perf_counter() - start)
    if bad:
      raise ValueError(_undecodable_message(
          os.path.join(self._root, split), len(paths), bad))

  def num_examples(self, split, process_index=0, process_count=1):
    start, stop = _even_slice(len(self._list(split)[0]), process_index,
                              process_count)
    return stop - start

  def read(self, split, process_index, process_count):
    paths, labels = self._list(split)
    start, stop = _even_slice(len(paths), process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices(
        {'path': paths[start:stop], 'label': labels[start:stop]})
    return ds.map(
        lambda ex: {'image': preprocess.decode_image(tf.io.read_file(
            ex['path'])), 'label': ex['label']},
        num_parallel_calls=tf.data.AUTOTUNE)

  def decoded_bytes(self, split):
    paths = self._list(split)[0]
    sample = paths[:_FOLDER_SIZE_SAMPLE]
    mean_size = np.mean([tf.io.gfile.stat(p).length for p in sample])
    return int(mean_size * len(paths) * _FOLDER_DECODE_EXPANSION)


def undecodable_images(paths: Sequence[str]) -> List[str]:
  """The files of `paths` that `FolderSource.read` could not decode, sorted.

  Reads and decodes with the ops `read` uses, in a tf.data parallel map
  like `read`'s (C++ threads, not Python ones). tf.data cannot catch an error per
  element, so each element carries its path, `ignore_errors` drops the ones
  that fail and the failures are the paths that never come out.

  Args:
    paths: image files.

  Returns:
    The paths that cannot be read or decoded (empty files included).
  """
  def decode(path):
    # The image's shape is enough to force the decoding, and is small.
    image = preprocess.decode_image(tf.io.read_file(path))
    return path, tf.shape(image)

  if not paths:
    return []
  decoded = tf.data.Dataset.from_tensor_slices(list(paths)).map(
      decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ok = {path.decode() for path, _ in
        decoded.ignore_errors().as_numpy_iterator()}
  return sorted(path for path in paths if path not in ok)


def _undecodable_message(split_dir, num_files, bad):
  """One line: the count, the first `_FOLDER_BAD_SHOWN` files, the fix."""
  shown = [repr(path) + (' (empty)' if tf.io.gfile.stat(path).length == 0
                         else '')
           for path in bad[:_FOLDER_BAD_SHOWN]]
  if len(bad) > len(shown):
    shown.append(f'... ({len(bad) - len(shown):,} more)')
  return (f'{len(bad):,} of {num_files:,} files in {split_dir!r} cannot be '
          f'read or decoded as images: {", ".join(shown)}; remove '
          'or replace them.')


class _Entries(NamedTuple):
  dirs: List[str]
  files: List[str]


def _entries(path) -> _Entries:
  """The sorted names of the folders and of the files in `path`.

  A name with an image extension is taken for a file unchecked: a stat per
  image would cost a request each on remote storage (gs://), and a folder
  so named fails `check_images` by its name.
  """
  dirs, files = [], []
  for name in sorted(tf.io.gfile.listdir(path)):
    is_dir = name.endswith('/') or (
        not name.lower().endswith(IMAGE_EXTENSIONS) and
        tf.io.gfile.isdir(os.path.join(path, name)))
    (dirs if is_dir else files).append(name.rstrip('/'))
  return _Entries(dirs, files)


def _subdirs(path):
  return _entries(path).dirs


def _images(names):
  return [name for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]


def _class_images(class_dir) -> List[str]:
  """The sorted image paths of a class folder; raises unless it is flat and
  holds at least one image (other files, e.g. notes, are not examples)."""
  entries = _entries(class_dir)
  if entries.dirs:
    nested = [repr(os.path.join(class_dir, name))
              for name in entries.dirs[:_FOLDER_BAD_SHOWN]]
    if len(entries.dirs) > len(nested):
      nested.append(f'... ({len(entries.dirs) - len(nested):,} more)')
    raise ValueError(
        f'Class folder {class_dir!r} holds folders: {", ".join(nested)}; '
        'images are read from class folders only, not from folders inside '
        'them: move their images up into the class folder or remove them.')
  images = _images(entries.files)
  if not images:
    raise ValueError(
        f'Class folder {class_dir!r} has no {"/".join(IMAGE_EXTENSIONS)} '
        'files; add images of the class or remove the folder.')
  return [os.path.join(class_dir, name) for name in images]


def make_source(dataset: str, data_dir: Optional[str], splits: Sequence[str],
                label_map: Optional[str] = None):
  """Returns the source of `dataset` with every split in `splits` checked.

  Args:
    dataset: a TFDS name (optionally with config and version, e.g.
      'clevr:3.*.*') or 'imagefolder'.
    data_dir: the TFDS data_dir or the image-folder root.
    splits: splits that must exist; the first is the training split (an
      image folder's classes are its class folders).
    label_map: a key of `vit_jax.data.label_maps.LABEL_MAPS`, or None for the 'label'
      feature.

  Raises:
    ValueError / FileNotFoundError: unknown dataset or label map, missing
      data_dir or split, dataset not prepared, an image folder's file that
      does not decode (see the module docstring).
  """
  if dataset == IMAGEFOLDER:
    if label_map:
      raise ValueError('config.label_map applies to TFDS datasets only; an '
                       'image folder labels by class folder.')
    source = FolderSource(data_dir, splits)
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

