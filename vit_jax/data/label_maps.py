"""VTAB-1k tasks whose label is derived from a dataset's other features.

Seven of VTAB's 19 tasks (Zhai et al. 2019, "The Visual Task Adaptation
Benchmark") are not the dataset's own `label`: they count objects, bin a
distance or coarsen a latent factor. Each function below maps one TFDS
example (a dict of tensors, inside tf.data) to
  {'image': uint8 (H, W, 1 or 3), 'label': int64 scalar},
with VTAB's thresholds and binnings. `config.label_map` names one of
`LABEL_MAPS`; `vit_jax.data.sources` applies it to every example it reads,
before resizing and augmentation, for training and evaluation alike.

Distance bins are right-closed: a value equal to an edge falls in the lower
class, as VTAB's "largest threshold strictly below the value" rule gives.
Values outside the outer edges fall into the first or last class.
"""

import dataclasses
from typing import Callable, Dict, Sequence, Tuple

import tensorflow as tf

Example = Dict[str, tf.Tensor]

# Depth of the closest object (CLEVR pixel_coords[:, 2]) -> 6 classes.
CLEVR_DISTANCE_EDGES = (8.0, 8.5, 9.0, 9.5, 10.0)
# Fewest objects in a CLEVR scene; the count task has classes 3..10 objects.
CLEVR_MIN_OBJECTS = 3
# KITTI object types that count as vehicles: Car, Van, Truck (ids 0, 1, 2).
KITTI_VEHICLE_TYPES = 3
# Depth in metres of the closest vehicle -> 4 classes; the last is "none".
KITTI_DISTANCE_EDGES = (8.0, 20.0, 999.0)
# Stands for "no vehicle in the image": beyond the last edge.
KITTI_NO_VEHICLE_DEPTH = 1000.0
DSPRITES_POSITIONS, DSPRITES_ORIENTATIONS, DSPRITES_CLASSES = 32, 40, 16


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """A task's example mapping and what it needs.

  Attributes:
    fn: TFDS example -> {'image', 'label'}.
    num_classes: classes of the derived label.
    features: TFDS features `fn` reads (checked when the dataset is opened).
  """
  fn: Callable[[Example], Example]
  num_classes: int
  features: Tuple[str, ...]


def bin_right_closed(value, edges: Sequence[float]):
  """Class of `value` for bins (-inf, e0], (e0, e1], ..., (e_last, inf).

  Args:
    value: float scalar tensor.
    edges: increasing inner bin edges; there are len(edges) + 1 classes.

  Returns:
    int64 scalar in [0, len(edges)].
  """
  below = tf.constant(edges, tf.float32) < tf.cast(value, tf.float32)
  return tf.reduce_sum(tf.cast(below, tf.int64))


def coarsen(value, num_values: int, num_classes: int):
  """Groups `num_values` consecutive integer values into `num_classes` bins.

  floor(value * num_classes / num_values), in integers so no rounding
  moves a value across a bin border (40 orientations / 16 = 2.5 each).
  """
  return tf.cast(value, tf.int64) * num_classes // num_values


def _example(image, label) -> Example:
  return {'image': image, 'label': tf.cast(label, tf.int64)}


def clevr_count(example: Example) -> Example:
  """CLEVR: number of objects (3 to 10) as 8 classes, 0 = 3 objects."""
  num_objects = tf.shape(example['objects']['size'])[0]
  return _example(example['image'], num_objects - CLEVR_MIN_OBJECTS)


def clevr_distance(example: Example) -> Example:
  """CLEVR: depth of the closest object, binned into 6 classes."""
  depth = tf.reduce_min(example['objects']['pixel_coords'][:, 2])
  return _example(example['image'],
                  bin_right_closed(depth, CLEVR_DISTANCE_EDGES))


def kitti_distance(example: Example) -> Example:
  """KITTI: depth of the closest vehicle in 3 bins, or 3 when there is none."""
  objects = example['objects']
  is_vehicle = objects['type'] < KITTI_VEHICLE_TYPES
  depths = tf.boolean_mask(objects['location'][:, 2], is_vehicle)
  # The sentinel makes "no vehicle" the farthest class, and keeps
  # reduce_min away from an empty tensor.
  depths = tf.concat([depths, [KITTI_NO_VEHICLE_DEPTH]], axis=0)
  return _example(example['image'],
                  bin_right_closed(tf.reduce_min(depths),
                                   KITTI_DISTANCE_EDGES))


def _dsprites_image(example):
  # dSprites pixels are 0/1; VTAB scales them to the usual 0..255.
  return example['image'] * 255


def dsprites_location(example: Example) -> Example:
  """dSprites: horizontal position, 32 values grouped into 16 classes."""
  return _example(_dsprites_image(example),
                  coarsen(example['label_x_position'], DSPRITES_POSITIONS,
                          DSPRITES_CLASSES))


def dsprites_orientation(example: Example) -> Example:
  """dSprites: orientation, 40 values grouped into 16 classes."""
  return _example(_dsprites_image(example),
                  coarsen(example['label_orientation'], DSPRITES_ORIENTATIONS,
                          DSPRITES_CLASSES))


def smallnorb_azimuth(example: Example) -> Example:
  """SmallNORB: camera azimuth of the first camera's image, 18 classes."""
  return _example(example['image'], example['label_azimuth'])


def smallnorb_elevation(example: Example) -> Example:
  """SmallNORB: camera elevation of the first camera's image, 9 classes."""
  return _example(example['image'], example['label_elevation'])


LABEL_MAPS: Dict[str, LabelMap] = {
    'clevr_count': LabelMap(clevr_count, 8, ('image', 'objects')),
    'clevr_distance': LabelMap(clevr_distance, len(CLEVR_DISTANCE_EDGES) + 1,
                               ('image', 'objects')),
    'kitti_distance': LabelMap(kitti_distance, len(KITTI_DISTANCE_EDGES) + 1,
                               ('image', 'objects')),
    'dsprites_location': LabelMap(dsprites_location, DSPRITES_CLASSES,
                                  ('image', 'label_x_position')),
    'dsprites_orientation': LabelMap(dsprites_orientation, DSPRITES_CLASSES,
                                     ('image', 'label_orientation')),
    'smallnorb_azimuth': LabelMap(smallnorb_azimuth, 18,
                                  ('image', 'label_azimuth')),
    'smallnorb_elevation': LabelMap(smallnorb_elevation, 9,
                                    ('image', 'label_elevation')),
}


def get_label_map(name: str) -> LabelMap:
  """The LabelMap called `name`; raises ValueError listing the known ones."""
  if name not in LABEL_MAPS:
    raise ValueError(f'config.label_map={name!r} is unknown; known: '
                     f'{sorted(LABEL_MAPS)} (None reads the \'label\' '
                     'feature).')
  return LABEL_MAPS[name]
