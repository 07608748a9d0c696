"""tf.data input pipelines yielding host-local numpy batches.

Sources (`config.dataset`, `config.label_map`): any prepared TFDS
image-classification dataset or an image folder, never downloaded; see
`vit_jax.input_sources`.

Public API:
  get_dataset_info(config) -> DatasetInfo
  get_train_iterator(config, *, start_step=0) -> iterator of batches, endless
  get_eval_iterator(config) -> EvalIterable: each `iter()` is one full pass
  local_batch_size(global_batch_size) -> int

Batches are host-local numpy dicts:
  {'image': float32 (b, H, W, 3) in [-1, 1], 'label': int32 (b,),
   'mask': float32 (b,)}
with b = global batch size // jax.process_count(), H = W = config.image_size.
Each process reads its own slice of every split (`tfds.even_splits`), so
the global batch is the concatenation of the processes' batches; arranging
them on devices is the caller's business. 'mask' is 1 for real examples and
0 for padding: training batches are all real; the last evaluation batches are
padded so that one pass visits every example exactly once and every process
runs the same number of batches.

Determinism and resuming: the training order depends only on `config.seed`,
the process index and the data. Epoch e is the process's slice shuffled with
a seed derived from (seed, process, e), and the augmentation of the example
at stream position p uses the stateless seed (seed, process, p). So
`get_train_iterator(config, start_step=s)` yields exactly the batches that
iterating from step 0 yields from batch s onwards. Its cost: it starts at
epoch floor(s * b / n) directly and skips the remaining (s * b) mod n < n
examples of that epoch (n = examples per process), i.e. reading at most one
epoch of the underlying data without augmenting it: cheap for cached data,
up to one epoch's reading for large uncached datasets.

Caching (`config.cache`): 'auto' keeps the decoded uint8 images in memory
when their estimated size is under about 1 GB (Fashion-MNIST: 47 MB, CIFAR:
184 MB); 'true' / 'false' force it. The cache sits before augmentation, so
every epoch still gets fresh crops and flips.
"""

import dataclasses
import os

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax import input_sources
from vit_jax import preprocess

CACHE_AUTO_MAX_BYTES = 1 << 30
# tf.data threads: the TF pool must leave cores to XLA, which runs the step.
_INPUT_THREADS = max(1, (os.cpu_count() or 2) // 2)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a training loop need to know about the data.

  Attributes:
    num_classes: config.num_classes, or the dataset's class count.
    num_train_examples: examples in config.train_split, all processes.
    num_eval_examples: examples in config.eval_split, all processes.
    image_shape: the model's input shape per example, (H, W, 3).
  """
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple[int, int, int]


def local_batch_size(global_batch_size, process_count=None):
  """Returns the per-process share of a global batch size.

  Args:
    global_batch_size: examples per step over all processes.
    process_count: defaults to jax.process_count().

  Raises:
    ValueError: the batch does not split evenly over the processes.
  """
  process_count = process_count or jax.process_count()
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f'Batch size {global_batch_size} must be a positive multiple of the '
        f'number of JAX processes ({process_count}); change config.batch_size '
        'or config.eval_batch_size.')
  return global_batch_size // process_count


def _num_classes(config, source):
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


def get_dataset_info(config):
  """Returns the DatasetInfo of config.dataset (preparing a local builder).

  Raises:
    ValueError / FileNotFoundError: unknown dataset, missing data_dir or
      split, dataset not prepared (see the module docstring).
  """
  source = input_sources.get_source(config)
  return DatasetInfo(
      num_classes=_num_classes(config, source),
      num_train_examples=source.num_examples(config.train_split),
      num_eval_examples=source.num_examples(config.eval_split),
      image_shape=(config.image_size, config.image_size, 3))


# ----------------------------------------------------------------------------
# Pipelines.
# ----------------------------------------------------------------------------


def _should_cache(config, source, split):
  setting = str(config.cache).lower()
  if setting in ('true', '1'):
    return True
  if setting in ('false', '0', 'none'):
    return False
  if setting == 'auto':
    return source.decoded_bytes(split) < CACHE_AUTO_MAX_BYTES
  raise ValueError(f"config.cache={config.cache!r}; use 'auto', 'true' or "
                   "'false'.")


def _options():
  options = tf.data.Options()
  options.threading.private_threadpool_size = _INPUT_THREADS
  # One thread per op: parallelism comes from parallel map calls instead.
  options.threading.max_intra_op_parallelism = 1
  options.deterministic = True
  return options


def _process_key(seed, process_index, purpose):
  """A well-mixed non-negative int from (seed, process, purpose)."""
  entropy = [seed, process_index, purpose]
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def _to_model_input(image, label, mask):
  return {'image': image, 'label': tf.cast(label, tf.int32),
          'mask': tf.cast(mask, tf.float32)}


def _process_args(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  return process_index, process_count


def get_train_iterator(config, *, start_step=0, process_index=None,
                       process_count=None):
  """Returns an endless iterator of host-local training batches.

  Args:
    config: the experiment config (data keys of configs/common.py).
    start_step: index of the first batch to yield; a resumed run passes its
      step to see the same data as an uninterrupted run (cost: see module
      docstring).
    process_index: defaults to jax.process_index() (for tests).
    process_count: defaults to jax.process_count() (for tests).

  Returns:
    Iterator of {'image', 'label', 'mask'} numpy dicts (module docstring).
  """
  ds = make_train_dataset(config, start_step=start_step,
                          process_index=process_index,
                          process_count=process_count)
  return iter(tfds.as_numpy(ds))


def make_train_dataset(config, *, start_step=0, process_index=None,
                       process_count=None):
  """The tf.data.Dataset behind `get_train_iterator` (same arguments)."""
  process_index, process_count = _process_args(process_index, process_count)
  batch = local_batch_size(config.batch_size, process_count)
  source = input_sources.get_source(config)
  split = config.train_split
  num_local = source.num_examples(split, process_index, process_count)
  if num_local == 0:
    raise ValueError(f'Process {process_index} has no training examples in '
                     f'split {split!r}.')
  data = source.read(split, process_index, process_count)
  if _should_cache(config, source, split):
    data = data.cache()

  shuffle_key = _process_key(config.seed, process_index, 0)
  augment_key = _process_key(config.seed, process_index, 1)

  def one_epoch(epoch):
    epoch_seed = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(shuffle_key, tf.int64), epoch]),
        minval=None, maxval=None, dtype=tf.int64)
    shuffled = data.shuffle(min(config.shuffle_buffer, num_local),
                            seed=epoch_seed, reshuffle_each_iteration=False)
    # Stream position of each example: the key of its augmentation seed.
    return shuffled.enumerate(start=epoch * num_local)

  def augment(position, example):
    seed = tf.stack([tf.constant(augment_key, tf.int64), position])
    image = preprocess.train_preprocess(
        example['image'], config.image_size, seed,
        augment=config.train_augment, flip=config.random_flip)
    return _to_model_input(image, example['label'], 1)

  start_epoch, offset = divmod(start_step * batch, num_local)
  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
  ds = ds.flat_map(one_epoch).skip(offset)
  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.prefetch(config.prefetch)
  return ds.with_options(_options())


class EvalIterable:
  """One evaluation pass per `iter()`; the (cached) dataset is kept.

  Attributes:
    num_batches: batches per pass, the same on every process.
    num_examples: real examples of this process (the masks' sum).
    dataset: the underlying tf.data.Dataset.
  """

  def __init__(self, dataset, num_batches, num_examples):
    self.dataset = dataset
    self.num_batches = num_batches
    self.num_examples = num_examples

  def __iter__(self):
    return iter(tfds.as_numpy(self.dataset))

  def __len__(self):
    return self.num_batches


def get_eval_iterator(config, *, source=None, split=None, process_index=None,
                      process_count=None):
  """Returns a re-iterable over padded, masked host-local eval batches.

  Args:
    config: the experiment config (data keys of configs/common.py).
    source: read this `vit_jax.input_sources` source instead of
      config.dataset's (evaluators read other datasets so).
    split: read this split instead of config.eval_split.
    process_index: defaults to jax.process_index() (for tests).
    process_count: defaults to jax.process_count() (for tests).

  Returns:
    EvalIterable: each iteration yields every example of this process's
    slice of the split exactly once (mask 1), then padding (mask 0) up to
    `num_batches` full batches. Features the source adds besides 'image' and
    'label' (e.g. a multi-hot label set) pass through, zero in the padding.
  """
  process_index, process_count = _process_args(process_index, process_count)
  batch = local_batch_size(config.eval_batch_size, process_count)
  source = source or input_sources.get_source(config)
  split = split or config.eval_split
  num_local = source.num_examples(split, process_index, process_count)
  # Every process must run as many batches as the largest slice needs.
  largest = max(source.num_examples(split, i, process_count)
                for i in range(process_count))
  num_batches = -(-largest // batch)

  data = source.read(split, process_index, process_count)
  if _should_cache(config, source, split):
    data = data.cache()  # uint8, before resizing: small.
  extras = {k: spec for k, spec in data.element_spec.items()
            if k not in ('image', 'label')}

  def to_model_input(example):
    image = preprocess.eval_preprocess(example['image'], config.image_size)
    return {**_to_model_input(image, example['label'], 1),
            **{k: example[k] for k in extras}}

  ds = data.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
  size = config.image_size
  padding = tf.data.Dataset.from_tensors({
      **_to_model_input(tf.zeros([size, size, 3], tf.float32), 0, 0),
      **{k: tf.zeros(spec.shape, spec.dtype) for k, spec in extras.items()},
  }).repeat()
  ds = ds.concatenate(padding).take(num_batches * batch)
  ds = ds.batch(batch, drop_remainder=True).prefetch(config.prefetch)
  return EvalIterable(ds.with_options(_options()), num_batches, num_local)
