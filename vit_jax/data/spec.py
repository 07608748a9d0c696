"""What a training run reads: `DataSpec`, and the reading of it.

A DataSpec holds the config's data keys under their config names, checked
once on construction (`vit_jax.training.run_spec` builds it from the
config). `source()` opens the dataset with both of its splits checked;
`train_batches` / `eval_batches` read them with the spec's batch sizes,
augmentation, seed and caching; `resolve_num_classes` is the size of the
model's head.
"""

import dataclasses
from typing import Dict, Iterator, Optional

import numpy as np

from vit_jax.data import pipeline
from vit_jax.data import preprocess
from vit_jax.data import sources


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The data of a training run (configs/common.py documents each key).

  Attributes:
    dataset: TFDS name, 'imagefolder' or a registered local dataset.
    data_dir: where it is prepared (None: TFDS's default).
    train_split: the split trained on.
    eval_split: the main evaluation's split.
    label_map: a `vit_jax.data.label_maps` name, or None.
    num_classes: the head size; None: the dataset's class count.
    image_size: side of the square model input, in pixels.
    batch_size: global training batch size.
    eval_batch_size: global evaluation batch size.
    seed: the data seed (shuffling and augmentation).
    shuffle_buffer: examples in the shuffle buffer.
    cache: 'auto', 'true' or 'false' (`vit_jax.data.pipeline`).
    prefetch: batches prefetched.
    augmentation: the per-example training augmentation.
  """
  dataset: str
  data_dir: Optional[str] = None
  train_split: str = 'train'
  eval_split: str = 'test'
  label_map: Optional[str] = None
  num_classes: Optional[int] = None
  image_size: int = 224
  batch_size: int = 512
  eval_batch_size: int = 512
  seed: int = 0
  shuffle_buffer: int = 50_000
  cache: str = 'auto'
  prefetch: int = 2
  augmentation: preprocess.Augmentation = preprocess.Augmentation()

  def __post_init__(self):
    for key in ('image_size', 'batch_size', 'eval_batch_size',
                'shuffle_buffer'):
      if getattr(self, key) < 1:
        raise ValueError(f'config.{key} must be >= 1, got '
                         f'{getattr(self, key)}')
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(f'config.num_classes must be >= 1 or None (the '
                       f"dataset's count), got {self.num_classes}")
    if self.prefetch < 0:
      raise ValueError(f'config.prefetch must be >= 0, got {self.prefetch}')
    pipeline.cache_setting(self.cache)

  def source(self):
    """The source of `dataset`, with both splits checked."""
    return sources.make_source(self.dataset, self.data_dir,
                               (self.train_split, self.eval_split),
                               self.label_map)

  def resolve_num_classes(self, source) -> int:
    """`num_classes`, or the dataset's class count when it is None.

    Raises:
      ValueError: the head is smaller than the dataset's class count, or
        neither says it.
    """
    if self.num_classes is not None:
      if source.num_classes and self.num_classes < source.num_classes:
        raise ValueError(
            f'config.num_classes={self.num_classes} but dataset '
            f'{self.dataset!r} has {source.num_classes} classes.')
      return self.num_classes
    if not source.num_classes:
      raise ValueError(f'Dataset {self.dataset!r} does not declare its '
                       'class count; set config.num_classes.')
    return source.num_classes

  def train_batches(self, source, *, normalization=None, start_step: int = 0
                    ) -> Iterator[Dict[str, np.ndarray]]:
    """`train_split`'s host-local training batches from `start_step` on.

    Args:
      source: `source()`'s.
      normalization: the model's pixel normalisation (None: [-1, 1]).
      start_step: the first batch (a resumed run's step).
    """
    return pipeline.get_train_iterator(
        source, self.train_split, image_size=self.image_size,
        batch_size=self.batch_size, augmentation=self.augmentation,
        seed=self.seed, shuffle_buffer=self.shuffle_buffer, cache=self.cache,
        prefetch=self.prefetch, start_step=start_step,
        normalization=normalization)

  def eval_batches(self, source, split: Optional[str] = None, *,
                   normalization=None) -> pipeline.EvalIterable:
    """Padded eval batches of `split` of `source` (None: `eval_split`)."""
    return pipeline.get_eval_iterator(
        source, split or self.eval_split, image_size=self.image_size,
        batch_size=self.eval_batch_size, cache=self.cache,
        prefetch=self.prefetch, normalization=normalization)
