"""Tests of vit_jax.data.pipeline and the fashion_mnist_local builder.

The pipeline is called with explicit arguments; the tests of what a config
selects (dataset, classes, splits) go through its DataSpec
(`vit_jax.training.run_spec.data_spec`).

All data is generated here: a tiny TFDS builder whose images carry their own
example id, Fashion-MNIST idx files with a few dozen examples, and
image-folder trees written with PIL. Nothing touches the network.
"""

import gzip
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import common
from vit_jax.data.datasets import fashion_mnist_local
from vit_jax.data import pipeline as input_pipeline
from vit_jax.data import sources
from vit_jax.models import family
from vit_jax.training import run_spec

TINY_SPLITS = {'train': 37, 'test': 23}  # Not multiples of any batch size.
TINY_SIZE = 6


def _tiny_image(example_id):
  """Channel 0 is the id everywhere (crop-proof); 1, 2 are gradients."""
  rows, cols = np.mgrid[:TINY_SIZE, :TINY_SIZE]
  return np.stack([np.full_like(rows, example_id), 40 * cols, 40 * rows],
                  axis=-1).astype(np.uint8)


class VitJaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """60 tiny RGB images whose pixels encode their example id."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(TINY_SIZE, TINY_SIZE, 3)),
            'label': tfds.features.ClassLabel(num_classes=5),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    offsets = {'train': 100, 'test': 0}
    return {split: self._generate_examples(offsets[split], n)
            for split, n in TINY_SPLITS.items()}

  def _generate_examples(self, offset, n):
    for i in range(offset, offset + n):
      yield i, {'image': _tiny_image(i), 'label': i % 5}


def _ids(images):
  """Recovers example ids from channel 0 of [-1, 1] images (B, H, W, 3)."""
  return np.round(images[:, :, :, 0].mean(axis=(1, 2)) * 127.5 + 127.5
                  ).astype(int)


@pytest.fixture(scope='module')
def tiny_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('vit_jax_tiny_images', data_dir=data_dir).download_and_prepare()
  return data_dir


def _data(**overrides):
  """The DataSpec of an experiment config reading the tiny dataset."""
  config = common.get_config()
  config.update(dict(
      dataset='vit_jax_tiny_images', image_size=TINY_SIZE, batch_size=8,
      eval_batch_size=8, shuffle_buffer=100, prefetch=1,
      train_augment='resize', random_flip=False), **overrides)
  return run_spec.data_spec(config)


def _source(data_dir):
  return sources.make_source('vit_jax_tiny_images', data_dir,
                             ('train', 'test'))


def _train_batches(source, *, batch_size=8, crop='resize', flip=False,
                   seed=0, cache='auto', **options):
  """get_train_iterator on the train split, the tiny images' settings."""
  return input_pipeline.get_train_iterator(
      source, 'train', image_size=TINY_SIZE, batch_size=batch_size,
      augmentation=input_pipeline.Augmentation(train_augment=crop,
                                               random_flip=flip),
      seed=seed, shuffle_buffer=100, cache=cache, prefetch=1, **options)


def _augmented_batches(source, **options):
  return _train_batches(source, crop='inception_crop', flip=True, **options)


# Every optional augmentation on, sized for the 6 px images.
STRONG = input_pipeline.Augmentation(
    train_augment='pad_crop', random_flip=True, crop_padding=1,
    randaug_layers=2, randaug_magnitude=15.0, random_erasing=0.5)


def _strong_batches(source, **options):
  return input_pipeline.get_train_iterator(
      source, 'train', image_size=TINY_SIZE, batch_size=8,
      augmentation=STRONG, seed=0, shuffle_buffer=100, prefetch=1, **options)


def _eval_batches(source, split='test', **options):
  return input_pipeline.get_eval_iterator(
      source, split, image_size=TINY_SIZE, batch_size=8, prefetch=1,
      **options)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# --- Sources, classes and errors ----------------------------------------------


def test_split_sizes_and_classes(tiny_data_dir):
  source = _source(tiny_data_dir)
  assert _data().resolve_num_classes(source) == 5
  assert (source.num_examples('train'), source.num_examples('test')) == (37,
                                                                         23)


def test_unknown_dataset_is_named(tmp_path):
  with pytest.raises(ValueError, match="'no_such_dataset_x'.*not a registered"):
    _data(dataset='no_such_dataset_x', data_dir=str(tmp_path)).source()


def test_missing_data_dir_is_named(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere.*does not exist'):
    _data(data_dir=missing).source()


def test_unprepared_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match='not prepared.*tfds build vit_jax_tiny_images'):
    _data(data_dir=str(tmp_path)).source()


def test_missing_split_is_named(tiny_data_dir):
  with pytest.raises(ValueError, match="'validation' does not exist"):
    _data(data_dir=tiny_data_dir, eval_split='validation').source()


def test_batch_not_divisible_by_processes(tiny_data_dir):
  with pytest.raises(ValueError, match='multiple of the number of JAX'):
    _train_batches(_source(tiny_data_dir), batch_size=9, process_count=2,
                   process_index=0)


def test_num_classes_smaller_than_dataset_rejected(tiny_data_dir):
  with pytest.raises(ValueError, match='has 5 classes'):
    _data(num_classes=3).resolve_num_classes(_source(tiny_data_dir))


# --- Evaluation ---------------------------------------------------------------


def test_eval_visits_every_example_once_with_padding(tiny_data_dir):
  evals = _eval_batches(_source(tiny_data_dir))
  assert len(evals) == 3 and evals.num_examples == 23
  for _ in range(2):  # Re-iterable: each pass is complete.
    batches = list(evals)
    assert len(batches) == 3
    for batch in batches:
      assert batch['image'].shape == (8, TINY_SIZE, TINY_SIZE, 3)
      assert batch['image'].dtype == np.float32
      assert batch['label'].dtype == np.int32
    mask = np.concatenate([b['mask'] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 23 + [0] * 1)
    ids = np.concatenate([_ids(b['image']) for b in batches])[mask == 1]
    labels = np.concatenate([b['label'] for b in batches])[mask == 1]
    assert sorted(ids) == list(range(23))
    np.testing.assert_array_equal(labels, ids % 5)


def test_eval_shards_over_processes_partition_the_split(tiny_data_dir):
  source = _source(tiny_data_dir)
  seen = []
  for index in range(2):
    evals = _eval_batches(source, process_index=index, process_count=2)
    batches = list(evals)
    assert len(batches) == len(evals) == 3  # ceil(12 / 4) on both processes.
    assert all(b['image'].shape[0] == 4 for b in batches)
    mask = np.concatenate([b['mask'] for b in batches])
    ids = np.concatenate([_ids(b['image']) for b in batches])[mask == 1]
    assert len(ids) == evals.num_examples
    seen.extend(ids)
  assert sorted(seen) == list(range(23))


# --- Training -----------------------------------------------------------------


def test_train_batches_are_host_local(tiny_data_dir):
  batch = next(_augmented_batches(_source(tiny_data_dir), process_index=1,
                                  process_count=2))
  assert batch['image'].shape == (4, TINY_SIZE, TINY_SIZE, 3)
  assert batch['image'].dtype == np.float32
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['mask'], np.ones(4))


def test_each_epoch_is_a_permutation_of_the_split(tiny_data_dir):
  batches = _take(_train_batches(_source(tiny_data_dir)),
                  9)  # 72 examples: 37 + 35.
  ids = np.concatenate([_ids(b['image']) for b in batches])
  assert sorted(ids[:37]) == list(range(100, 137))
  assert len(set(ids[37:])) == 35
  assert not np.array_equal(ids[:35], ids[37:])  # Reshuffled.


def test_same_seed_same_batches_other_seed_other_order(tiny_data_dir):
  source = _source(tiny_data_dir)
  first = _take(_augmented_batches(source), 6)
  again = _take(_augmented_batches(source), 6)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other = _take(_augmented_batches(source, seed=1), 6)
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_augmentation_differs_between_epochs(tiny_data_dir):
  batches = _take(_augmented_batches(_source(tiny_data_dir)), 9)
  images = np.concatenate([b['image'] for b in batches])
  ids = _ids(images)
  first, second = (np.flatnonzero(ids == ids[0])[:2])
  assert second >= 37  # The same example, one epoch later.
  assert not np.array_equal(images[first], images[second])


@pytest.mark.parametrize('start_step', [3, 5, 14])
def test_start_step_resumes_the_same_stream(tiny_data_dir, start_step):
  # Steps 5 and 14 start mid-epoch (40 and 112 examples into a 37 split).
  source = _source(tiny_data_dir)
  reference = _take(_augmented_batches(source), start_step + 2)
  resumed = _take(_augmented_batches(source, start_step=start_step), 2)
  for a, b in zip(reference[start_step:], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.parametrize('start_step', [3, 5])
def test_start_step_resumes_the_same_stream_with_every_augmentation(
    tiny_data_dir, start_step):
  source = _source(tiny_data_dir)
  reference = _take(_strong_batches(source), start_step + 2)
  resumed = _take(_strong_batches(source, start_step=start_step), 2)
  for a, b in zip(reference[start_step:], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # The options are really on: the images are not those of plain resizing.
  plain = _take(_train_batches(source), start_step + 2)
  assert not np.array_equal(plain[start_step]['image'],
                            reference[start_step]['image'])


def test_config_augmentation_keys_reach_the_pipeline(tiny_data_dir):
  source = _source(tiny_data_dir)
  data = _data(data_dir=tiny_data_dir, train_augment='pad_crop',
               random_flip=True, crop_padding=1, randaug_layers=2,
               randaug_magnitude=15.0, random_erasing=0.5)
  for a, b in zip(_take(data.train_batches(source), 2),
                  _take(_strong_batches(source), 2), strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.parametrize('fields,key', [
    (dict(train_augment='mixup'), 'config.train_augment'),
    (dict(train_augment='inception_crop', crop_padding=4),
     'config.crop_padding'),
    (dict(randaug_layers=2, randaug_magnitude=-5.0),
     'config.randaug_magnitude'),
    (dict(random_erasing=1.25), 'config.random_erasing'),
])
def test_bad_augmentation_fails_on_construction_naming_the_key(fields, key):
  with pytest.raises(ValueError, match=key):
    input_pipeline.Augmentation(**fields)


def test_bad_augmentation_config_fails_in_the_data_spec():
  with pytest.raises(ValueError, match=r'^config\.random_erasing=-1\.0 is a '
                     r'probability: use a value in \[0, 1\]\.$'):
    _data(random_erasing=-1.0)


@pytest.mark.parametrize('overrides,message', [
    (dict(batch_size=0), 'config.batch_size must be >= 1, got 0'),
    (dict(image_size=0), 'config.image_size must be >= 1, got 0'),
    (dict(num_classes=0), 'config.num_classes must be >= 1 or None'),
    (dict(cache='sometimes'), "config.cache='sometimes' is unknown; use "
     "'auto', 'true' or 'false'."),
])
def test_data_spec_rejects_a_bad_value_in_one_line(overrides, message):
  with pytest.raises(ValueError) as error:
    _data(**overrides)
  assert str(error.value).startswith(message)
  assert '\n' not in str(error.value)


def test_cache_setting_does_not_change_the_data(tiny_data_dir):
  source = _source(tiny_data_dir)
  batches = {}
  for cache in ('true', 'false'):
    batches[cache] = _take(_train_batches(source, cache=cache), 3)
  for a, b in zip(batches['true'], batches['false'], strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
  with pytest.raises(ValueError, match='config.cache'):
    next(_train_batches(source, cache='sometimes'))


def test_normalization_reaches_train_and_eval_batches(tiny_data_dir):
  """A (mean, std) normalisation is affine in the default [-1, 1] pixels."""
  source = _source(tiny_data_dir)
  mean, std = (10.0, 100.0, 200.0), (2.0, 50.0, 25.0)
  normalization = family.Preprocessing(mean=mean, std=std)

  def renormalized(minus_one_one):  # [-1, 1] back to uint8 units, then ours.
    return (minus_one_one * 127.5 + 127.5 - np.float32(mean)) / np.float32(std)

  pairs = [(_take(_train_batches(source), 2),
            _take(_train_batches(source, normalization=normalization), 2)),
           (list(_eval_batches(source)),
            list(_eval_batches(source, normalization=normalization)))]
  for default, normalized in pairs:
    for a, b in zip(default, normalized, strict=True):
      real = a['mask'] > 0
      np.testing.assert_allclose(b['image'][real], renormalized(
          a['image'][real]), rtol=1e-5, atol=1e-4)


# --- fashion_mnist_local ------------------------------------------------------


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


def test_fashion_mnist_local_is_prepared_on_first_use(tmp_path, monkeypatch):
  idx = _write_fashion_mnist(str(tmp_path / 'idx'))
  monkeypatch.setenv(fashion_mnist_local.ENV_VAR, str(tmp_path / 'idx'))
  data = _data(dataset='fashion_mnist_local',
               data_dir=str(tmp_path / 'new_tfds_dir'), image_size=28,
               eval_batch_size=4)
  source = data.source()
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


# --- Image folders ------------------------------------------------------------


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
  data = _data(dataset='imagefolder', data_dir=str(tmp_path),
               image_size=8, eval_batch_size=4)
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
    _data(dataset='imagefolder',
          data_dir=str(tmp_path / 'absent')).source()
  _write_image_folder(str(tmp_path))
  with pytest.raises(ValueError, match="'val' does not exist"):
    _data(dataset='imagefolder', data_dir=str(tmp_path),
          eval_split='val').source()


def _write_classes(root, split, classes, per_class=1):
  """Writes `per_class` PNGs into root/split/<class>/ for each class."""
  for name in classes:
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(per_class):
      Image.new('RGB', (10, 8), (10 * i, 0, 0)).save(
          root / split / name / f'{i}.png')


def test_image_folder_classes_come_from_the_training_split(tmp_path):
  # Training has 3 classes; test lacks 'cat': an evaluation on fewer classes
  # keeps the training split's label ids (Dog 0, bird 1, eel 2).
  _write_classes(tmp_path, 'train', ('Dog', 'bird', 'eel'), per_class=2)
  _write_classes(tmp_path, 'test', ('eel', 'Dog'), per_class=3)
  data = _data(dataset='imagefolder', data_dir=str(tmp_path),
               image_size=8, eval_batch_size=8)
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
    _data(dataset='imagefolder', data_dir=str(tmp_path)).source()
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
    _data(dataset='imagefolder', data_dir=str(tmp_path)).source()
  assert str(error.value) == (
      f'Class folder {str(empty)!r} has no .jpg/.jpeg/.png files; add images '
      'of the class or remove the folder.')


def test_image_folder_refuses_folders_inside_a_class_folder(tmp_path):
  _write_classes(tmp_path, 'train', ('cat', 'dog'))
  _write_classes(tmp_path, 'test', ('cat', 'dog'))
  _write_classes(tmp_path / 'test' / 'dog', 'puppies', ('small', 'tall'))
  nested = [str(tmp_path / 'test' / 'dog' / 'puppies')]
  with pytest.raises(ValueError) as error:
    _data(dataset='imagefolder', data_dir=str(tmp_path)).source()
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
    _data(dataset='imagefolder', data_dir=str(tmp_path)).source()
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
    _data(dataset='imagefolder', data_dir=str(tmp_path)).source()
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
    _data(dataset='imagefolder', data_dir=str(tmp_path)).source()
  message = str(e.value)
  assert [str(path) in message for path in bad] == [True] * 5 + [False] * 2
  assert message.endswith(', ... (2 more); remove or replace them.')
