"""Learning-rate schedules and optimisers of the paper, built from optax.

Schedule: linear warm-up, then cosine, linear or constant. Step `s` (the
number of updates already applied) gets `lr * (s + 1) / warmup_steps` during
warm-up, so the very first update is not wasted with a zero learning rate,
and `learning_rate(s)` is exactly the rate the update at step `s` applies.

Weight decay (see configs/common.py): decoupled, scaled by the current
learning rate (AdamW convention), applied to kernels only by default.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]


def learning_rate_schedule(config) -> Schedule:
  """The lr applied by the update at a given step (0-based)."""
  peak, warmup, total = config.lr, config.warmup_steps, config.total_steps
  if config.decay_type not in ('cosine', 'linear', 'constant'):
    raise ValueError(f'unknown decay_type {config.decay_type!r}; expected '
                     'cosine, linear or constant')
  if not 0 <= warmup < total:
    raise ValueError(f'warmup_steps ({warmup}) must be in [0, total_steps='
                     f'{total})')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    if config.decay_type == 'cosine':
      lr = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif config.decay_type == 'linear':
      lr = peak + (config.end_lr - peak) * progress
    else:
      lr = jnp.asarray(peak, jnp.float32)
    if warmup:
      lr = jnp.where(step < warmup, peak * (step + 1) / warmup, lr)
    return lr

  return schedule


def weight_decay_mask(config, no_weight_decay: Sequence[str] = ()) -> Any:
  """Which parameters decay: 'kernels' or 'all'.

  'kernels' decays arrays of ndim >= 2 except biases: norm scales and most
  biases are 1-d, but the query/key/value biases are (heads, head_dim), so
  biases are left out by name. Parameters named in `no_weight_decay` (the
  model family's: ViT's class token and position embedding have ndim 3 but
  are not kernels) are left out too.
  """
  if config.weight_decay_mask == 'all':
    return None
  if config.weight_decay_mask != 'kernels':
    raise ValueError(f'unknown weight_decay_mask {config.weight_decay_mask!r};'
                     ' expected kernels or all')

  def mask(params):
    def decays(path, leaf):
      names = [getattr(k, 'key', str(k)) for k in path]
      name = names[-1]
      return leaf.ndim >= 2 and name != 'bias' and name not in no_weight_decay
    return jax.tree_util.tree_map_with_path(decays, params)

  return mask


def make_optimizer(config, no_weight_decay: Sequence[str] = ()
                   ) -> optax.GradientTransformation:
  """Clip -> (Adam | SGD momentum) -> decoupled weight decay -> lr.

  `no_weight_decay`: parameter names the 'kernels' mask leaves out (the model
  family's `no_weight_decay`).
  """
  schedule = learning_rate_schedule(config)
  if config.optimizer == 'adam':
    direction = optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2)
  elif config.optimizer == 'sgd':
    direction = optax.trace(decay=config.momentum,
                            accumulator_dtype=jnp.dtype(config.momentum_dtype))
  else:
    raise ValueError(f'unknown optimizer {config.optimizer!r}; expected adam '
                     'or sgd')
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(direction)
  if config.weight_decay:
    # After the direction: decay is decoupled from Adam's normalisation and
    # from the momentum, and the lr scaling below multiplies it by lr_t.
    parts.append(optax.add_decayed_weights(config.weight_decay,
                                           weight_decay_mask(config, no_weight_decay)))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
