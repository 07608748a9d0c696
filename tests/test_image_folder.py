"""Tests of vit_jax.data.image_folder: image folders as datasets.

The image-folder trees are written here with PIL.
"""

import os

import numpy as np
from PIL import Image
import pytest

from configs import common
from vit_jax.training import run_spec


def _data(**overrides):
  """The DataSpec of an experiment config reading an image folder."""
  config = common.get_config()
  config.update(dict(
      dataset='imagefolder', image_size=6, batch_size=8, eval_batch_size=8,
      shuffle_buffer=100, prefetch=1, train_augment='resize',
      random_flip=False), **overrides)
  return run_spec.data_spec(config)


# Class folder -> (solid colour, files). Sorted names: Dog, bird, cat.
_FOLDER_CLASSES = {
    'cat': ((250, 0, 0), ['a.png', 'b.PNG', 'c.jpg']),
    'Dog': ((0, 250, 0), ['d.JPEG', 'e.Jpg']),
    'bird': ((0, 0, 250), ['f.jpeg', 'g.png', 'notes.txt']),
}


def _write_image_folder(root):
  for split in ('train', 'test'):
    for name, (colour, files) in _FOLDER_CLASSES.items():
      os.makedirs(os.path.join(root, split, name))
      for f in files:
        path = os.path.join(root, split, name, f)
        if f.endswith('.txt'):
          with open(path, 'w') as txt:
            txt.write('not an image')
          continue
        fmt = 'PNG' if f.lower().endswith('png') else 'JPEG'
        Image.new('RGB', (10, 8), colour).save(path, format=fmt)


def test_image_folder_sorted_classes_and_any_extension_case(tmp_path):
  _write_image_folder(str(tmp_path))
  data = _data(data_dir=str(tmp_path), image_size=8, eval_batch_size=4)
  source = data.source()
  assert (data.resolve_num_classes(source), source.num_examples('train'),
          source.num_examples('test')) == (3, 7, 7)
  batches = list(data.eval_batches(source))
  mask = np.concatenate([b['mask'] for b in batches])
  assert len(mask) == 8 and mask.sum() == 7
  labels = np.concatenate([b['label'] for b in batches])[mask == 1]
  images = np.concatenate([b['image'] for b in batches])[mask == 1]
  assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2, 2]
  colour_channel = images.mean(axis=(1, 2)).argmax(axis=-1)
  # Dog (green) -> 0, bird (blue) -> 1, cat (red) -> 2.
  np.testing.assert_array_equal(colour_channel, np.array([1, 2, 0])[labels])
  batch = next(data.train_batches(source))
  assert batch['image'].shape == (8, 8, 8, 3)


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    _data(data_dir=str(tmp_path / 'absent')).source()
  _write_image_folder(str(tmp_path))
  with pytest.raises(ValueError, match="'val' does not exist"):
    _data(data_dir=str(tmp_path), eval_split='val').source()
  with pytest.raises(ValueError, match="'training' does not exist"):
    _data(data_dir=str(tmp_path), train_split='training').source()


def _write_classes(root, split, classes, per_class=1):
  """Writes `per_class` PNGs into root/split/<class>/ for each class."""
  for name in classes:
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(per_class):
      Image.new('RGB', (10, 8), (10 * i, 0, 0)).save(
          root / split / name / f'{i}.png')


def test_image_folder_classes_come_from_the_training_split(tmp_path):
  # Training has 3 classes; test lacks 'bird': an evaluation on fewer classes
  # keeps the training split's label ids (Dog 0, bird 1, eel 2).
  _write_classes(tmp_path, 'train', ('Dog', 'bird', 'eel'), per_class=2)
  _write_classes(tmp_path, 'test', ('eel', 'Dog'), per_class=3)
  data = _data(data_dir=str(tmp_path), image_size=8)
  source = data.source()
  assert source.class_names == ['Dog', 'bird', 'eel']
  assert data.resolve_num_classes(source) == 3
  labels = np.concatenate([b['label'][b['mask'] == 1]
                           for b in data.eval_batches(source)])
  assert sorted(labels.tolist()) == [0, 0, 0, 2, 2, 2]


def test_image_folder_refuses_a_class_the_training_split_lacks(tmp_path):
  _write_classes(tmp_path, 'train', ('cat', 'dog'))
  _write_classes(tmp_path, 'test', ('cat', 'bird', 'ant'))
  with pytest.raises(ValueError) as error:
    _data(data_dir=str(tmp_path)).source()
  assert str(error.value) == (
      "Split 'test' has class folders that the training split 'train' "
      f"lacks: 'ant', 'bird' (in {str(tmp_path / 'test')!r}); a model never "
      'learns a class it is not trained on: add training images of them or '
      'remove the folders.')


@pytest.mark.parametrize('split', ['train', 'test'])
def test_image_folder_refuses_an_empty_class_folder(tmp_path, split):
  _write_classes(tmp_path, 'train', ('cat', 'dog'))
  _write_classes(tmp_path, 'test', ('cat', 'dog'))
  empty = tmp_path / split / 'dog'
  for image in empty.iterdir():
    image.unlink()
  (empty / 'notes.txt').write_text('not an image')  # Not an example either.
  with pytest.raises(ValueError) as error:
    _data(data_dir=str(tmp_path)).source()
  assert str(error.value) == (
      f'Class folder {str(empty)!r} has no .jpg/.jpeg/.png files; add images '
      'of the class or remove the folder.')


def test_image_folder_refuses_folders_inside_a_class_folder(tmp_path):
  _write_classes(tmp_path, 'train', ('cat', 'dog'))
  _write_classes(tmp_path, 'test', ('cat', 'dog'))
  _write_classes(tmp_path / 'test' / 'dog', 'puppies', ('small', 'tall'))
  nested = [str(tmp_path / 'test' / 'dog' / 'puppies')]
  with pytest.raises(ValueError) as error:
    _data(data_dir=str(tmp_path)).source()
  assert str(error.value) == (
      f"Class folder {str(tmp_path / 'test' / 'dog')!r} holds folders: "
      f'{nested[0]!r}; images are read from class folders only, not from '
      'folders inside them: move their images up into the class folder or '
      'remove them.')


def test_image_folder_refuses_images_outside_the_class_folders(tmp_path):
  _write_classes(tmp_path, 'train', ('cat', 'dog'))
  _write_classes(tmp_path, 'test', ('cat', 'dog'))
  Image.new('RGB', (10, 8)).save(tmp_path / 'train' / 'stray.JPG',
                                 format='JPEG')
  (tmp_path / 'train' / 'README').write_text('ignored: not an image')
  with pytest.raises(ValueError) as error:
    _data(data_dir=str(tmp_path)).source()
  train = tmp_path / 'train'
  assert str(error.value) == (
      f"Image {str(train / 'stray.JPG')!r} is outside the class folders of "
      f"split 'train'; move images into {train}/<class>/.")


def _truncated_jpeg(path):
  """A JPEG cut inside its pixel data, as an interrupted copy leaves it."""
  noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  Image.fromarray(noise).save(path, format='JPEG')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) * 3 // 4])


def test_image_folder_undecodable_files_are_named_before_training(tmp_path):
  _write_image_folder(str(tmp_path))
  test_dir = tmp_path / 'test'
  _truncated_jpeg(test_dir / 'cat' / 'cut.jpg')
  (test_dir / 'bird' / 'text.png').write_text('not an image')
  (test_dir / 'Dog' / 'empty.jpeg').write_bytes(b'')
  with pytest.raises(ValueError) as error:
    _data(data_dir=str(tmp_path)).source()
  bad = sorted(str(test_dir / name) for name in
               ('cat/cut.jpg', 'bird/text.png', 'Dog/empty.jpeg'))
  assert str(error.value) == (
      f'3 of 10 files in {str(test_dir)!r} cannot be read or decoded as '
      f"images: {bad[0]!r} (empty), {bad[1]!r}, {bad[2]!r}; remove or "
      'replace them.')


def test_image_folder_error_lists_the_first_few_undecodable_files(tmp_path):
  _write_image_folder(str(tmp_path))
  bad = [tmp_path / 'train' / 'cat' / f'bad{i}.png' for i in range(7)]
  for path in bad:
    path.write_text('not an image')
  with pytest.raises(ValueError, match=r"^7 of 14 files in '.*/train' ") as e:
    _data(data_dir=str(tmp_path)).source()
  message = str(e.value)
  assert [str(path) in message for path in bad] == [True] * 5 + [False] * 2
  assert message.endswith(', ... (2 more); remove or replace them.')
