"""Tests of vit_jax.data.pipeline.

The pipeline is called with explicit arguments; the tests of what a config
selects (dataset, classes, splits) go through its DataSpec
(`vit_jax.training.run_spec.data_spec`).

All data is generated here: a tiny TFDS builder whose images carry their own
example id. Nothing touches the network.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
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
