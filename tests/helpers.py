"""Small shared builders for the tests: tiny models, random parameters and
the tiny training config."""

import os

import jax
import numpy as np

from configs import common
from vit_jax import models

# The repository root: the working directory of the repository's commands
# (`python -m vit_jax.main --config=configs/...`, `python -m benchmarks.X`).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A ViT small enough to run in milliseconds: 16x16 inputs, 4x4 patches.
TINY_VIT = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
                patch_size=4)
TINY_IMAGE_SIZE = 16


def tiny_model(num_classes=10, **overrides):
  return models.create_model('ViT-Ti_16', num_classes=num_classes,
                             **{**TINY_VIT, **overrides})


def tiny_hybrid(num_classes=10, **overrides):
  """R50-style stem with one unit in each of two stages (32x32 -> 4x4)."""
  fields = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2,
                patch_size=1, resnet_units=(1, 1))
  return models.create_model('R50+ViT-B_16', num_classes=num_classes,
                             **{**fields, **overrides})


# A run small enough for a test: a few steps on an image folder, evaluated at
# the end and checkpointed half-way (`shrink`).
TINY_RUN = dict(
    dataset='imagefolder', image_size=TINY_IMAGE_SIZE, batch_size=8,
    eval_batch_size=8, shuffle_buffer=64, total_steps=4, warmup_steps=1,
    log_every=1, eval_every=4, checkpoint_every=2)
# One step, evaluated and checkpointed: a run that only has to go through.
ONE_STEP = dict(total_steps=1, warmup_steps=0, eval_every=1,
                checkpoint_every=1)
# The training recipe of `tiny_config`: no augmentation to wait for, Adam.
TINY_RECIPE = dict(train_augment='resize', random_flip=False,
                   optimizer='adam', lr=1e-3)


def shrink(config, data_dir, **overrides):
  """Makes any experiment config a tiny run on the image folder `data_dir`.

  Args:
    config: an experiment config (configs/*.py); changed in place.
    data_dir: the image folder (`data_helpers.write_image_folder`).
    **overrides: config keys over `TINY_RUN`; `'model.KEY'` sets config.model
      (pass them as `**{'model.dropout_rate': 0.1}`). The model is `TINY_VIT`
      unless `model_name` is overridden, which takes that model's family
      section (`configs.common.set_model`) with its defaults.

  Returns:
    `config`; a locked one stays locked, so a misspelt override fails.
  """
  if 'model_name' in overrides:
    common.set_model(config, overrides.pop('model_name'))
  else:
    config.model.update(TINY_VIT)
  config.update(dict(TINY_RUN, data_dir=data_dir))
  for key, value in overrides.items():
    target = config.model if key.startswith('model.') else config
    target[key.removeprefix('model.')] = value
  return config


def tiny_config(data_dir, **overrides):
  """configs/common.py's config as a tiny run of `TINY_RECIPE` (`shrink`),
  locked against misspelt keys."""
  config = common.get_config()
  config.update(TINY_RECIPE)
  return common.lock(shrink(config, data_dir, **overrides))


def random_params(model, image_size, seed=0, scale=0.3):
  """Initialised params with every leaf perturbed, so zero-initialised heads,
  class tokens and biases take part in the computation."""
  params = models.init_params(model, jax.random.PRNGKey(seed),
                              (image_size, image_size))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float32) + scale * rng.standard_normal(
          x.shape).astype(np.float32), params)


def quick_random_params(model, image_size, seed=0, scale=0.3):
  """Random params of `model`'s tree without running its initialiser.

  `random_params` compiles the initialiser (seconds on a CPU, per model);
  this traces it for the shapes only and draws every leaf from NumPy:
  `scale` times a standard normal, around 1 for the 'scale' leaves (norms,
  layer scale) and around 0 for the rest, the magnitudes `random_params`
  gives. For tests of what a model computes from its params; the
  initialisation is tested on its own.

  Args:
    model: a model of any registered family.
    image_size: the input size, an int (square) or (H, W).
    seed: the NumPy seed.
    scale: the standard deviation of every leaf.

  Returns:
    The params tree of float32 NumPy arrays.
  """
  size = ((image_size, image_size) if isinstance(image_size, int)
          else tuple(image_size))
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    centre = 1.0 if getattr(path[-1], 'key', None) == 'scale' else 0.0
    return (centre + scale * rng.standard_normal(shape.shape)).astype(
        np.float32)

  return jax.tree_util.tree_map_with_path(
      draw, models.param_shapes(model, size))


def random_images(batch, image_size, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(
      np.float32)


def assert_trees_close(actual, expected, **tolerance):
  """The same tree (nesting, keys, leaf count) with close leaves.

  Args:
    actual: the tree under test.
    expected: the tree it should equal.
    **tolerance: rtol / atol of `np.testing.assert_allclose`.
  """
  assert (jax.tree_util.tree_structure(actual)
          == jax.tree_util.tree_structure(expected))
  leaves, _ = jax.tree_util.tree_flatten_with_path(expected)
  for (path, want), got in zip(leaves, jax.tree_util.tree_leaves(actual),
                               strict=True):
    np.testing.assert_allclose(got, want, err_msg=jax.tree_util.keystr(path),
                               **tolerance)
