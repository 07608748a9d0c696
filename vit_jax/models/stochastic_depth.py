"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic
Depth"), shared by the families whose blocks have residual branches (ViT,
MLP-Mixer): in training each example's branch is dropped with a rate that
grows linearly from 0 at the first block to the model's `drop_path_rate` at
the last, and scaled by 1 / (1 - rate) when kept; evaluation is unaffected.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def rates(rate: float, num_layers: int) -> Tuple[float, ...]:
  """Stochastic-depth rate of each block: linear from 0 at the first block
  to `rate` at the last (Huang et al. 2016, the linear decay rule)."""
  return tuple(float(r) for r in np.linspace(0.0, rate, num_layers))


def check_rate(rate: float) -> None:
  """Raises ValueError unless 0 <= `rate` < 1 (a rate of 1 drops every
  branch and divides by zero)."""
  if not 0 <= rate < 1:
    raise ValueError(f'drop_path_rate must be in [0, 1), got {rate}')


def drop_path(module: nn.Module, y, rate, train: bool):
  """Stochastic depth on one residual branch.

  In training each example's branch `y` is kept with probability 1 - rate
  and then scaled by 1 / (1 - rate), so its expectation is `y`; at
  evaluation it is `y`. Draws from the module's 'dropout' rng stream.
  `rate` may be a traced scalar (the scanned encoder's per-layer rate).
  """
  if not train or (isinstance(rate, (int, float)) and rate == 0):
    return y
  keep = 1.0 - rate
  mask_B = jax.random.bernoulli(module.make_rng('dropout'), keep,
                                (y.shape[0],) + (1,) * (y.ndim - 1))
  return y * jnp.where(mask_B, 1.0 / keep, 0.0).astype(y.dtype)
