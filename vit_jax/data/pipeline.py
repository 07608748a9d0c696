"""tf.data input pipelines yielding host-local numpy batches.

Sources: any prepared TFDS image-classification dataset or an image folder,
never downloaded; see `vit_jax.data.sources`. Every function takes what it
reads explicitly (a source, a split, sizes, seeds); `vit_jax.data.spec`'s
DataSpec holds a run's settings and calls them.

Public API:
  get_train_iterator(source, split, *, image_size, batch_size, augmentation,
                     seed, shuffle_buffer, ...) -> iterator of batches, endless
  get_eval_iterator(source, split, *, image_size, batch_size, ...)
      -> EvalIterable: each `iter()` is one full pass
  local_batch_size(global_batch_size) -> int

Batches are host-local numpy dicts:
  {'image': float32 (b, H, W, 3), normalised (default [-1, 1]; random
   erasing adds noise outside it), 'label': int32 (b,),
   'mask': float32 (b,)}
with b = global batch size // jax.process_count(), H = W = image_size.
Each process reads its own slice of every split (`tfds.even_splits`), so
the global batch is the concatenation of the processes' batches; arranging
them on devices is the caller's business. 'mask' is 1 for real examples and
0 for padding: training batches are all real; the last evaluation batches are
padded so that one pass visits every example exactly once and every process
runs the same number of batches.

Determinism and resuming: the training order depends only on `seed`, the
process index and the data. Epoch e is the process's slice shuffled with
a seed derived from (seed, process, e), and the augmentation of the example
at stream position p uses the stateless seed (seed, process, p). So
`get_train_iterator(..., start_step=s)` yields exactly the batches that
iterating from step 0 yields from batch s onwards. Its cost: it starts at
epoch floor(s * b / n) directly and skips the remaining (s * b) mod n < n
examples of that epoch (n = examples per process), i.e. reading at most one
epoch of the underlying data without augmenting it: cheap for cached data,
up to one epoch's reading for large uncached datasets.

Caching (`cache`): 'auto' keeps the decoded uint8 images in memory when
their estimated size is under about 1 GB (Fashion-MNIST: 47 MB, CIFAR:
184 MB); 'true' / 'false' force it. The cache sits before augmentation, so
every epoch still gets fresh crops, flips, RandAugment ops and erasings.
"""

import os
from typing import Optional

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import preprocess

CACHE_AUTO_MAX_BYTES = 1 << 30
# tf.data threads: the TF pool must leave cores to XLA, which runs the step.
_INPUT_THREADS = max(1, (os.cpu_count() or 2) // 2)


# The per-example augmentation, an argument of `make_train_dataset`.
Augmentation = preprocess.Augmentation


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


def cache_setting(cache) -> str:
  """'auto', 'true' or 'false' for a `cache` argument (config.cache).

  Raises:
    ValueError: any other value.
  """
  setting = str(cache).lower()
  for name, spellings in (('true', ('true', '1')),
                          ('false', ('false', '0', 'none')),
                          ('auto', ('auto',))):
    if setting in spellings:
      return name
  raise ValueError(f"config.cache={cache!r} is unknown; use 'auto', 'true' "
                   "or 'false'.")


def _should_cache(cache, source, split):
  setting = cache_setting(cache)
  if setting == 'auto':
    return source.decoded_bytes(split) < CACHE_AUTO_MAX_BYTES
  return setting == 'true'


def _options():
  options = tf.data.Options()
  options.threading.private_threadpool_size = _INPUT_THREADS
  # One thread per op: parallelism comes from parallel map calls instead.
  options.threading.max_intra_op_parallelism = 1
  options.deterministic = True
  # No autotuning: its thread sleeps up to a minute between passes, and an
  # iterator's destructor waits for it to wake (TF 2.21). The end of a
  # training run, which drops its train iterator, stalled 8 to 49 s (the
  # default run, measured with py-spy: the main thread in
  # RootDataset::Iterator's destructor, every thread asleep). Parallel maps
  # use the private pool's threads instead (AUTOTUNE resolves to them).
  options.autotune.enabled = False
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


def get_train_iterator(source, split, **options):
  """Returns an endless iterator of host-local training batches.

  Args:
    source: a `vit_jax.data.sources` source.
    split: the split to train on.
    **options: the keyword arguments of `make_train_dataset`.

  Returns:
    Iterator of {'image', 'label', 'mask'} numpy dicts (module docstring).
  """
  return iter(tfds.as_numpy(make_train_dataset(source, split, **options)))


def make_train_dataset(source, split, *, image_size: int, batch_size: int,
                       augmentation: Augmentation, seed: int,
                       shuffle_buffer: int, cache='auto', prefetch: int = 2,
                       start_step: int = 0,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       normalization=None):
  """The tf.data.Dataset behind `get_train_iterator`.

  Args:
    source: a `vit_jax.data.sources` source.
    split: the split to train on.
    image_size: side of the square model input, in pixels.
    batch_size: global batch size (all processes).
    augmentation: the per-example augmentation.
    seed: the data seed: shuffling and augmentation (module docstring).
    shuffle_buffer: examples in the shuffle buffer.
    cache: 'auto', 'true' or 'false' (module docstring).
    prefetch: batches prefetched.
    start_step: index of the first batch to yield; a resumed run passes its
      step to see the same data as an uninterrupted run (cost: see module
      docstring).
    process_index: defaults to jax.process_index() (for tests).
    process_count: defaults to jax.process_count() (for tests).
    normalization: the model's pixel normalisation
      (`preprocess.scale_pixels`); None: [-1, 1].

  Returns:
    The batched, prefetched dataset.
  """
  process_index, process_count = _process_args(process_index, process_count)
  batch = local_batch_size(batch_size, process_count)
  num_local = source.num_examples(split, process_index, process_count)
  if num_local == 0:
    raise ValueError(f'Process {process_index} has no training examples in '
                     f'split {split!r}.')
  data = source.read(split, process_index, process_count)
  if _should_cache(cache, source, split):
    data = data.cache()

  shuffle_key = _process_key(seed, process_index, 0)
  augment_key = _process_key(seed, process_index, 1)

  def one_epoch(epoch):
    epoch_seed = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(shuffle_key, tf.int64), epoch]),
        minval=None, maxval=None, dtype=tf.int64)
    shuffled = data.shuffle(min(shuffle_buffer, num_local),
                            seed=epoch_seed, reshuffle_each_iteration=False)
    # Stream position of each example: the key of its augmentation seed.
    return shuffled.enumerate(start=epoch * num_local)

  def augment(position, example):
    example_seed = tf.stack([tf.constant(augment_key, tf.int64), position])
    image = preprocess.train_preprocess(
        example['image'], image_size, example_seed, augmentation,
        normalization)
    return _to_model_input(image, example['label'], 1)

  start_epoch, offset = divmod(start_step * batch, num_local)
  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
  ds = ds.flat_map(one_epoch).skip(offset)
  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.prefetch(prefetch)
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


def get_eval_iterator(source, split, *, image_size: int, batch_size: int,
                      cache='auto', prefetch: int = 2,
                      process_index: Optional[int] = None,
                      process_count: Optional[int] = None,
                      normalization=None) -> 'EvalIterable':
  """Returns a re-iterable over padded, masked host-local eval batches.

  Args:
    source: a `vit_jax.data.sources` source.
    split: the split to read.
    image_size: side of the square model input, in pixels.
    batch_size: global batch size (all processes).
    cache: 'auto', 'true' or 'false' (module docstring).
    prefetch: batches prefetched.
    process_index: defaults to jax.process_index() (for tests).
    process_count: defaults to jax.process_count() (for tests).
    normalization: the model's pixel normalisation
      (`preprocess.scale_pixels`); None: [-1, 1].

  Returns:
    EvalIterable: each iteration yields every example of this process's
    slice of the split exactly once (mask 1), then padding (mask 0) up to
    `num_batches` full batches. Features the source adds besides 'image' and
    'label' (e.g. a multi-hot label set) pass through, zero in the padding.
  """
  process_index, process_count = _process_args(process_index, process_count)
  batch = local_batch_size(batch_size, process_count)
  num_local = source.num_examples(split, process_index, process_count)
  # Every process must run as many batches as the largest slice needs.
  largest = max(source.num_examples(split, i, process_count)
                for i in range(process_count))
  num_batches = -(-largest // batch)

  data = source.read(split, process_index, process_count)
  if _should_cache(cache, source, split):
    data = data.cache()  # uint8, before resizing: small.
  extras = {k: spec for k, spec in data.element_spec.items()
            if k not in ('image', 'label')}

  def to_model_input(example):
    image = preprocess.eval_preprocess(example['image'], image_size,
                                       normalization)
    return {**_to_model_input(image, example['label'], 1),
            **{k: example[k] for k in extras}}

  ds = data.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      **_to_model_input(tf.zeros([image_size, image_size, 3], tf.float32), 0,
                        0),
      **{k: tf.zeros(spec.shape, spec.dtype) for k, spec in extras.items()},
  }).repeat()
  ds = ds.concatenate(padding).take(num_batches * batch)
  ds = ds.batch(batch, drop_remainder=True).prefetch(prefetch)
  return EvalIterable(ds.with_options(_options()), num_batches, num_local)
