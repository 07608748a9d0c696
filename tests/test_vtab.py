"""VTAB-1k: the derived-label functions, their place in the input pipeline,
and the 19 task configs.

The label functions run inside tf.data on generated examples shaped like the
TFDS features they read; dSprites is also generated as a TFDS dataset under
its real name, version and features and read through config.label_map.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
from configs import vtab as vtab_configs
from vit_jax.data import label_maps
from vit_jax.data import sources
from vit_jax.training import run_spec


def _labels(name, examples):
  """Runs LABEL_MAPS[name] in a tf.data graph over `examples`: labels."""
  fn = label_maps.get_label_map(name).fn
  labels = []
  for example in examples:
    ds = tf.data.Dataset.from_tensors(example).map(fn)
    labels.append(int(next(iter(ds))['label'].numpy()))
  return labels


def _image(channels=3):
  return tf.zeros([4, 4, channels], tf.uint8)


def _clevr(depths):
  """A CLEVR example with one object per depth (pixel_coords[:, 2])."""
  n = len(depths)
  pixel_coords = np.stack([np.full(n, 10.0), np.full(n, 20.0), depths],
                          axis=-1).astype(np.float32).reshape(n, 3)
  return {'image': _image(), 'objects': {
      'size': tf.zeros([n], tf.int64), 'pixel_coords': pixel_coords}}


def test_clevr_count_is_objects_minus_three():
  assert _labels('clevr_count', [_clevr([9.0] * n) for n in (3, 4, 7, 10)]) == [
      0, 1, 4, 7]


@pytest.mark.parametrize('closest,label', [
    (5.0, 0), (8.0, 0), (8.01, 1), (8.5, 1), (8.7, 2), (9.2, 3), (10.0, 4),
    (10.2, 5), (40.0, 5)])
def test_clevr_distance_bins_the_closest_objects_depth(closest, label):
  # The farther objects would land in other bins: only the closest counts.
  assert _labels('clevr_distance',
                 [_clevr([closest + 3.0, closest, closest + 0.4])]) == [label]


CAR, VAN, TRUCK, PEDESTRIAN, CYCLIST = 0, 1, 2, 3, 5


def _kitti(objects):
  """A KITTI example from (type, depth) pairs."""
  types = np.array([t for t, _ in objects], np.int64)
  location = np.array([[1.0, 2.0, z] for _, z in objects],
                      np.float32).reshape(-1, 3)
  return {'image': _image(), 'objects': {'type': types, 'location': location}}


@pytest.mark.parametrize('objects,label', [
    ([(CAR, 5.0)], 0),
    ([(VAN, 8.0)], 0),  # Edges belong to the nearer bin.
    ([(PEDESTRIAN, 3.0), (TRUCK, 15.0)], 1),  # Pedestrians do not count.
    ([(CAR, 30.0), (VAN, 21.0)], 2),
    ([(CYCLIST, 4.0), (PEDESTRIAN, 9.0)], 3),  # No vehicle.
    ([], 3),
])
def test_kitti_distance_bins_the_closest_vehicle(objects, label):
  assert _labels('kitti_distance', [_kitti(objects)]) == [label]


def _dsprites(**latents):
  example = {'image': tf.ones([4, 4, 1], tf.uint8),
             'label_x_position': tf.constant(0, tf.int64),
             'label_orientation': tf.constant(0, tf.int64)}
  example.update({k: tf.constant(v, tf.int64) for k, v in latents.items()})
  return example


def test_dsprites_location_and_orientation_group_into_16_classes():
  assert _labels('dsprites_location', [
      _dsprites(label_x_position=x) for x in (0, 1, 2, 17, 31)]) == [
          0, 0, 1, 8, 15]
  # 40 orientations, 2.5 per class.
  assert _labels('dsprites_orientation', [
      _dsprites(label_orientation=o) for o in (0, 2, 3, 5, 7, 8, 39)]) == [
          0, 0, 1, 2, 2, 3, 15]


def test_dsprites_pixels_are_scaled_to_255():
  mapped = label_maps.dsprites_location(_dsprites())
  assert mapped['image'].dtype == tf.uint8
  assert set(np.unique(mapped['image'].numpy())) == {255}


def test_smallnorb_reads_azimuth_and_elevation():
  example = {'image': _image(1), 'image2': _image(1),
             'label_azimuth': tf.constant(13, tf.int64),
             'label_elevation': tf.constant(6, tf.int64),
             'label_category': tf.constant(2, tf.int64)}
  assert _labels('smallnorb_azimuth', [example]) == [13]
  assert _labels('smallnorb_elevation', [example]) == [6]


def test_unknown_label_map_is_named():
  with pytest.raises(ValueError, match="'clevr_colour' is unknown"):
    label_maps.get_label_map('clevr_colour')


# --- Through the input pipeline -----------------------------------------------

NUM_DSPRITES = 20


def _x_position(i):
  return (7 * i) % 32


class Dsprites(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Generated stand-in with the features of TFDS's dsprites 2.0.0."""

  VERSION = tfds.core.Version('2.0.0')

  def _info(self):
    label = tfds.features.ClassLabel
    value = lambda: tfds.features.Tensor(shape=[], dtype=np.float32)
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(64, 64, 1)),
            'label_shape': label(num_classes=3),
            'label_scale': label(num_classes=6),
            'label_orientation': label(num_classes=40),
            'label_x_position': label(num_classes=32),
            'label_y_position': label(num_classes=32),
            'value_shape': value(), 'value_scale': value(),
            'value_orientation': value(), 'value_x_position': value(),
            'value_y_position': value(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM_DSPRITES):
      image = np.zeros((64, 64, 1), np.uint8)
      image[i:i + 8, 2 * i:2 * i + 8] = 1  # dSprites pixels are 0 or 1.
      yield i, {
          'image': image, 'label_shape': i % 3, 'label_scale': i % 6,
          'label_orientation': i, 'label_x_position': _x_position(i),
          'label_y_position': i, 'value_shape': 1.0, 'value_scale': 0.5,
          'value_orientation': 0.0, 'value_x_position': 0.0,
          'value_y_position': 0.0}


def _example_ids(images_BHWC):
  """The generator's index i: the square starts at row i."""
  return [int(np.argmax(image[..., 0].max(axis=1) > 0))
          for image in images_BHWC]


@pytest.fixture(scope='module')
def dsprites_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  Dsprites(data_dir=data_dir).download_and_prepare()
  return data_dir


def _dsprites_config(data_dir, task='dsprites_location'):
  config = vtab_configs.get_config(f'ViT-Ti_16,{task},train800')
  # The real val200 lies beyond 20 generated examples: split them here.
  config.update(dict(data_dir=data_dir, train_split='train[:12]',
                     eval_split='train[12:]', image_size=64, batch_size=8,
                     eval_batch_size=8, prefetch=1))
  return config


def test_label_map_applies_in_training_and_evaluation(dsprites_dir):
  data = run_spec.data_spec(_dsprites_config(dsprites_dir))
  source = data.source()
  assert (data.resolve_num_classes(source),
          source.num_examples(data.train_split),
          source.num_examples(data.eval_split)) == (16, 12, 8)
  batches = list(data.eval_batches(source))
  labels = np.concatenate([b['label'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])
  ids = _example_ids(images)
  assert len(set(ids)) == 8
  np.testing.assert_array_equal(labels, [_x_position(i) // 2 for i in ids])
  # 0/1 pixels became 0/255, then [-1, 1]; one channel became three.
  assert set(np.unique(images)) == {-1.0, 1.0}
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  train_batch = next(data.train_batches(source))
  np.testing.assert_array_equal(
      train_batch['label'],
      [_x_position(i) // 2 for i in _example_ids(train_batch['image'])])


def test_label_map_class_count_stands_when_the_config_gives_none(
    dsprites_dir):
  config = _dsprites_config(dsprites_dir, 'dsprites_orientation')
  config.num_classes = None
  data = run_spec.data_spec(config)
  assert data.resolve_num_classes(data.source()) == 16


def test_label_map_reading_absent_features_fails_clearly(dsprites_dir):
  with pytest.raises(ValueError, match=r"not \['objects'\].*label_map"):
    sources.make_source('dsprites', dsprites_dir, ('train',),
                        'clevr_count')
  with pytest.raises(ValueError, match='image folder'):
    sources.make_source('imagefolder', dsprites_dir, ('train',),
                        'clevr_count')


# --- The 19 task configs ------------------------------------------------------


def _slice_size(split):
  """Examples in a 'name[a:b]' slice with explicit ends (None: open end)."""
  start, stop = re.fullmatch(r'\w+\[(\d*):(\d*)\]', split).groups()
  return None if not stop else int(stop) - int(start or 0)


def test_there_are_19_tasks():
  assert len(vtab_configs.TASKS) == 19


@pytest.mark.parametrize('name', sorted(vtab_configs.TASKS))
def test_every_task_config_follows_the_paper(name):
  task = vtab_configs.TASKS[name]
  config = vtab_configs.get_config(f'ViT-B_16,{name}')
  with pytest.raises(AttributeError):
    config.lerning_rate = 0.1  # pylint: disable=attribute-defined-outside-init
  assert (config.total_steps, config.lr, config.batch_size) == (2500, 0.01,
                                                                512)
  assert (config.optimizer, config.momentum, config.decay_type) == (
      'sgd', 0.9, 'cosine')
  assert (config.grad_clip_norm, config.weight_decay) == (1.0, 0.0)
  assert config.image_size == 384
  assert (config.train_augment, config.random_flip) == ('resize', False)
  assert config.num_classes == task.num_classes
  assert config.dataset == task.dataset and config.label_map == task.label_map
  if task.label_map:
    assert label_maps.get_label_map(task.label_map).num_classes == task.num_classes
  # 800 + 200 training examples, evaluated on the test split.
  assert config.train_split == f'{task.train800}+{task.val200}'
  assert config.eval_split == task.test
  assert _slice_size(task.train800) == 800 and _slice_size(task.val200) == 200
  tuning = vtab_configs.get_config(f'ViT-B_16,{name},train800')
  assert (tuning.train_split, tuning.eval_split) == (task.train800,
                                                     task.val200)


def test_docstring_table_matches_the_tasks():
  doc = vtab_configs.__doc__
  for name, task in vtab_configs.TASKS.items():
    row = next(line for line in doc.splitlines()
               if line.startswith(f'| {name} |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == task.dataset
    assert cells[3:] == [str(task.num_classes), task.train800, task.val200,
                         task.test]


def test_task_and_mode_errors_are_named():
  with pytest.raises(ValueError, match="unknown VTAB task 'mnist'"):
    vtab_configs.get_config('ViT-B_16,mnist')
  with pytest.raises(ValueError, match='MODE'):
    vtab_configs.get_config('ViT-B_16,dtd,test')


def test_common_config_has_the_label_map_key():
  assert common.get_config().label_map is None
