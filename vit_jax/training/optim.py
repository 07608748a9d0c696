"""Learning-rate schedules and optimisers of the paper, built from optax.

Schedule: linear warm-up, then cosine, linear or constant. Step `s` (the
number of updates already applied) gets `lr * (s + 1) / warmup_steps` during
warm-up, so the very first update is not wasted with a zero learning rate,
and `learning_rate(s)` is exactly the rate the update at step `s` applies.

Weight decay (see configs/common.py): decoupled, scaled by the current
learning rate (AdamW convention), applied to kernels only by default.
"""

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]

DECAY_TYPES = ('cosine', 'linear', 'constant')
OPTIMIZERS = ('adam', 'sgd')
WEIGHT_DECAY_MASKS = ('kernels', 'all')


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """The optimiser and its schedule: the config keys of the same names
  (configs/common.py), checked once on construction.

  Attributes:
    optimizer: 'sgd' (momentum) or 'adam'.
    lr: the peak learning rate.
    total_steps: the steps of the whole schedule.
    warmup_steps: linear warm-up steps, in [0, total_steps).
    decay_type: 'cosine', 'linear' (to `end_lr`) or 'constant'.
    end_lr: the final rate of the linear decay.
    momentum: SGD's momentum.
    momentum_dtype: the dtype of SGD's momentum buffer.
    adam_b1: Adam's beta1.
    adam_b2: Adam's beta2.
    weight_decay: decoupled, scaled by the current lr; 0: off.
    weight_decay_mask: 'kernels' or 'all' (`weight_decay_mask`).
    grad_clip_norm: global-norm clipping; 0: off.
  """
  optimizer: str = 'sgd'
  lr: float = 0.03
  total_steps: int = 10_000
  warmup_steps: int = 500
  decay_type: str = 'cosine'
  end_lr: float = 0.0
  momentum: float = 0.9
  momentum_dtype: str = 'float32'
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  weight_decay: float = 0.0
  weight_decay_mask: str = 'kernels'
  grad_clip_norm: float = 1.0

  def __post_init__(self):
    for key, known in (('optimizer', OPTIMIZERS), ('decay_type', DECAY_TYPES),
                       ('weight_decay_mask', WEIGHT_DECAY_MASKS)):
      if getattr(self, key) not in known:
        raise ValueError(f'config.{key}={getattr(self, key)!r} is unknown; '
                         f'expected one of {", ".join(known)}')
    if self.total_steps < 1:
      raise ValueError(f'config.total_steps must be >= 1, got '
                       f'{self.total_steps}')
    if not 0 <= self.warmup_steps < self.total_steps:
      raise ValueError(f'config.warmup_steps ({self.warmup_steps}) must be in '
                       f'[0, total_steps={self.total_steps})')
    for key in ('weight_decay', 'grad_clip_norm'):
      if getattr(self, key) < 0:
        raise ValueError(f'config.{key} must be >= 0 (0 turns it off), got '
                         f'{getattr(self, key)}')


def learning_rate_schedule(spec: OptimSpec) -> Schedule:
  """The lr applied by the update at a given step (0-based)."""
  peak, warmup, total = spec.lr, spec.warmup_steps, spec.total_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    if spec.decay_type == 'cosine':
      lr = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif spec.decay_type == 'linear':
      lr = peak + (spec.end_lr - peak) * progress
    else:
      lr = jnp.asarray(peak, jnp.float32)
    if warmup:
      lr = jnp.where(step < warmup, peak * (step + 1) / warmup, lr)
    return lr

  return schedule


def weight_decay_mask(mode: str, no_weight_decay: Sequence[str] = ()) -> Any:
  """Which parameters decay: `mode` 'kernels' or 'all' (None: no mask).

  'kernels' decays arrays of ndim >= 2 except biases: norm scales and most
  biases are 1-d, but the query/key/value biases are (heads, head_dim), so
  biases are left out by name. Parameters named in `no_weight_decay` (the
  model family's: ViT's class token and position embedding have ndim 3 but
  are not kernels) are left out too.
  """
  if mode == 'all':
    return None

  def mask(params):
    def decays(path, leaf):
      names = [getattr(k, 'key', str(k)) for k in path]
      name = names[-1]
      return leaf.ndim >= 2 and name != 'bias' and name not in no_weight_decay
    return jax.tree_util.tree_map_with_path(decays, params)

  return mask


def make_optimizer(spec: OptimSpec, no_weight_decay: Sequence[str] = ()
                   ) -> optax.GradientTransformation:
  """Clip -> (Adam | SGD momentum) -> decoupled weight decay -> lr.

  `no_weight_decay`: parameter names the 'kernels' mask leaves out (the model
  family's `no_weight_decay`).
  """
  if spec.optimizer == 'adam':
    direction = optax.scale_by_adam(b1=spec.adam_b1, b2=spec.adam_b2)
  else:
    direction = optax.trace(decay=spec.momentum,
                            accumulator_dtype=jnp.dtype(spec.momentum_dtype))
  parts = []
  if spec.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(spec.grad_clip_norm))
  parts.append(direction)
  if spec.weight_decay:
    # After the direction: decay is decoupled from Adam's normalisation and
    # from the momentum, and the lr scaling below multiplies it by lr_t.
    parts.append(optax.add_decayed_weights(
        spec.weight_decay,
        weight_decay_mask(spec.weight_decay_mask, no_weight_decay)))
  parts.append(optax.scale_by_learning_rate(learning_rate_schedule(spec)))
  return optax.chain(*parts)
