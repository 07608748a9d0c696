"""The one adapter from the config's data keys to the input pipeline.

`data_source(config)` opens config.dataset with both of its splits checked;
`train_batches` / `eval_batches` read them with the config's batch sizes,
augmentation, seed and caching; `num_classes` and `augmentation` are the
config's answers to what the model and pipeline need to know.
"""

from typing import Dict, Iterator, Optional

import numpy as np

from vit_jax.data import pipeline as input_pipeline
from vit_jax.data import sources


def data_source(config):
  """The source of config.dataset, with both of the config's splits checked."""
  return sources.make_source(config.dataset, config.data_dir,
                             (config.train_split, config.eval_split),
                             config.label_map)


def num_classes(config, source) -> int:
  """config.num_classes, or the dataset's class count when it is None."""
  if config.num_classes is not None:
    if source.num_classes and config.num_classes < source.num_classes:
      raise ValueError(
          f'config.num_classes={config.num_classes} but dataset '
          f'{config.dataset!r} has {source.num_classes} classes.')
    return config.num_classes
  if not source.num_classes:
    raise ValueError(f'Dataset {config.dataset!r} does not declare its class '
                     'count; set config.num_classes.')
  return source.num_classes


def augmentation(config) -> input_pipeline.Augmentation:
  """The per-example training augmentation of the config (checked)."""
  return input_pipeline.Augmentation(
      crop=config.train_augment, flip=config.random_flip,
      crop_padding=config.crop_padding,
      randaug_layers=config.randaug_layers,
      randaug_magnitude=config.randaug_magnitude,
      random_erasing=config.random_erasing)


def train_batches(config, source, *, normalization=None, start_step: int = 0
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """config.train_split's host-local training batches from `start_step` on.

  `normalization`: the model family's pixel normalisation (None: [-1, 1]).
  """
  return input_pipeline.get_train_iterator(
      source, config.train_split, image_size=config.image_size,
      batch_size=config.batch_size,
      augmentation=augmentation(config),
      seed=config.seed, shuffle_buffer=config.shuffle_buffer,
      cache=config.cache, prefetch=config.prefetch, start_step=start_step,
      normalization=normalization)


def eval_batches(config, source, split: Optional[str] = None, *,
                 normalization=None) -> input_pipeline.EvalIterable:
  """Padded eval batches of `split` of `source` (None: config.eval_split)."""
  return input_pipeline.get_eval_iterator(
      source, split or config.eval_split, image_size=config.image_size,
      batch_size=config.eval_batch_size, cache=config.cache,
      prefetch=config.prefetch, normalization=normalization)
