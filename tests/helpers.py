"""Small shared builders for the tests: tiny models and random parameters."""

import os

import jax
import numpy as np

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


def random_params(model, image_size, seed=0, scale=0.3):
  """Initialised params with every leaf perturbed, so zero-initialised heads,
  class tokens and biases take part in the computation."""
  params = models.init_params(model, jax.random.PRNGKey(seed),
                              (image_size, image_size))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float32) + scale * rng.standard_normal(
          x.shape).astype(np.float32), params)


def random_images(batch, image_size, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(
      np.float32)
