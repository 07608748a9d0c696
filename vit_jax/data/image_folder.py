"""The 'imagefolder' source: images in `root/<split>/<class>/<file>`.

The classes are the training split's class folders; a class's index is its
name's position in their sorted names, in every split. Image files are
`*.{jpg,jpeg,png}` in any case of the extension; other files (notes, a
README) are ignored. Nothing is dropped unsaid: a class folder the training
split lacks (its label would never be trained), an empty class folder, a
folder inside a class folder and an image outside the class folders are
errors. Every file of a split is decoded by `FolderSource.check_images`
(`vit_jax.data.sources.make_source` runs it for the splits it is given), so
a corrupt file is named before training starts, not at the first evaluation
minutes in.
"""

import os
import time
from typing import List, NamedTuple, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from vit_jax.data import preprocess

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Decoded size / file size assumed for image folders (JPEG is ~5-15x, PNG
# ~2-3x), and how many files are measured to estimate it.
_DECODE_EXPANSION = 8
_SIZE_SAMPLE = 100
# Undecodable files named in the error; the rest are counted.
_BAD_SHOWN = 5


def _even_slice(num_examples, process_index, process_count):
  """[start, stop) of this process's share, as `tfds.even_splits` cuts it."""
  size, remainder = divmod(num_examples, process_count)
  start = process_index * size + min(process_index, remainder)
  return start, start + size + (process_index < remainder)


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
    sample = paths[:_SIZE_SAMPLE]
    mean_size = np.mean([tf.io.gfile.stat(p).length for p in sample])
    return int(mean_size * len(paths) * _DECODE_EXPANSION)


def undecodable_images(paths: Sequence[str]) -> List[str]:
  """The files of `paths` that `FolderSource.read` could not decode, sorted.

  Reads and decodes with the ops `read` uses, in a tf.data parallel map
  like `read`'s (C++ threads, not Python ones). tf.data cannot catch an
  error per element, so each element carries its path, `ignore_errors` drops
  the ones that fail and the failures are the paths that never come out.

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
  """One line: the count, the first `_BAD_SHOWN` files, the fix."""
  shown = [repr(path) + (' (empty)' if tf.io.gfile.stat(path).length == 0
                         else '')
           for path in bad[:_BAD_SHOWN]]
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
              for name in entries.dirs[:_BAD_SHOWN]]
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
