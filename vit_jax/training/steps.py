"""The pure train and eval steps (jitted once, in vit_jax.training.loop).

`train_step(state, batch) -> (state, metrics)` knows nothing about devices:
the caller passes globally sharded arrays and XLA partitions the step. Its
configuration is keyword-only, bound with functools.partial before jax.jit.

Labels are integer class ids (B,) or, after a batch-level augmentation such
as Mixup (the train step's `mix_batch` hook), label distributions (B, C).
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

LOSSES = ('softmax_xent', 'sigmoid_xent')
# fold_in data of the mix_batch key stream: the step counter never reaches
# it, so mixing keys never repeat a dropout key.
_MIX_STREAM = 0xFFFFFFFF

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]
# (batch, key) -> batch: a batch-level augmentation (Mixup, CutMix).
MixFn = Callable[[Batch, jax.Array], Batch]


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The train step's settings: the config keys of the same names,
  checked once on construction.

  Attributes:
    loss: one of LOSSES.
    label_smoothing: in [0, 1).
    grad_accum_steps: micro-batches per step, >= 1.
    ema_decay: the params' EMA decay, in [0, 1); 0: no EMA.
  """
  loss: str = 'softmax_xent'
  label_smoothing: float = 0.0
  grad_accum_steps: int = 1
  ema_decay: float = 0.0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f'config.loss={self.loss!r} is unknown; expected one '
                       f'of {", ".join(LOSSES)}')
    for key in ('label_smoothing', 'ema_decay'):
      if not 0 <= getattr(self, key) < 1:
        raise ValueError(f'config.{key} must be in [0, 1), got '
                         f'{getattr(self, key)}')
    if self.grad_accum_steps < 1:
      raise ValueError(f'config.grad_accum_steps must be >= 1, got '
                       f'{self.grad_accum_steps}')


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, checkpointed as one pytree."""
  step: jax.Array  # int32 scalar: updates applied so far.
  params: Any
  opt_state: Any
  ema_params: Any  # Polyak average of params; an empty dict when disabled.
  rng: jax.Array  # Base key; step and micro-batch keys are folded from it.


def label_distributions(labels, num_classes: int):
  """Class ids (B,) -> one-hot (B, C); label distributions (B, C) as given."""
  if labels.ndim == 1:
    return jax.nn.one_hot(labels, num_classes)
  return labels.astype(jnp.float32)


def per_example_loss(logits_BC, labels, *, loss: str,
                     label_smoothing: float = 0.0):
  """Softmax (optionally smoothed) or sigmoid cross-entropy, shape (B,).

  Sigmoid cross-entropy is summed over classes, as in the paper's ImageNet-21k
  pre-training (multi-label style, with head bias init -10).

  Args:
    logits_BC: (B, C) logits.
    labels: integer class ids (B,), or float label distributions (B, C) (a
      one-hot row gives exactly the loss of its class id).
    loss: 'softmax_xent' or 'sigmoid_xent'.
    label_smoothing: softmax only: the targets' mass spread uniformly.

  Returns:
    (B,) losses.
  """
  targets_BC = label_distributions(labels, logits_BC.shape[-1])
  if loss == 'softmax_xent':
    if label_smoothing:
      targets_BC = optax.smooth_labels(targets_BC, label_smoothing)
    return optax.softmax_cross_entropy(logits_BC, targets_BC)
  if loss == 'sigmoid_xent':
    return optax.sigmoid_binary_cross_entropy(logits_BC, targets_BC).sum(-1)
  raise ValueError(f'unknown loss {loss!r}; expected one of {LOSSES}')


def _micro_batches(x, accum_steps: int):
  """(B, ...) -> (accum, B / accum, ...), micro-batch i = rows i::accum.

  Strided rows keep every micro-batch spread over all data shards, so no
  device-to-device traffic is needed to form them.
  """
  return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps,
                                *x.shape[1:]), 0, 1)


def train_step(state: TrainState, batch: Batch, *, model,
               optimizer: optax.GradientTransformation,
               learning_rate: Callable[[Any], Any], loss: str,
               label_smoothing: float, grad_accum_steps: int,
               ema_decay: float,
               mix_batch: Optional[MixFn] = None
               ) -> Tuple[TrainState, Metrics]:
  """One update on `batch` ({'image': (B,H,W,3), 'label': (B,) or (B, C)}).

  With grad_accum_steps > 1 the batch is split into micro-batches whose
  gradients are averaged inside the step: the update equals the one-batch
  update.
  `mix_batch(batch, key)`, when given, transforms the whole batch before the
  loss (e.g. Mixup, returning (B, C) labels); its key is the step's own, from
  a stream apart from dropout's, so dropout is the same with or without it.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  if mix_batch is not None:
    mix_rng = jax.random.fold_in(
        jax.random.fold_in(state.rng, _MIX_STREAM), state.step)
    batch = mix_batch(batch, mix_rng)

  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': rng})
    return jnp.mean(per_example_loss(logits, labels, loss=loss,
                                     label_smoothing=label_smoothing))

  grad_fn = jax.value_and_grad(loss_fn)
  if grad_accum_steps == 1:
    loss_value, grads = grad_fn(state.params, batch['image'], batch['label'],
                                step_rng)
  else:
    def accumulate(carry, micro):
      index, images, labels = micro
      value, grads = grad_fn(state.params, images, labels,
                             jax.random.fold_in(step_rng, index))
      return jax.tree_util.tree_map(jnp.add, carry, (value, grads)), None

    zeros = (jnp.zeros((), jnp.float32),
             jax.tree_util.tree_map(jnp.zeros_like, state.params))
    micro = (jnp.arange(grad_accum_steps),
             _micro_batches(batch['image'], grad_accum_steps),
             _micro_batches(batch['label'], grad_accum_steps))
    (loss_value, grads), _ = jax.lax.scan(accumulate, zeros, micro)
    loss_value, grads = jax.tree_util.tree_map(lambda x: x / grad_accum_steps,
                                               (loss_value, grads))

  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_decay:
    ema_params = jax.tree_util.tree_map(
        lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema_params, params)
  grad_norm, param_norm = optax.tree.norm(grads), optax.tree.norm(params)
  metrics = {
      'loss': loss_value,
      'grad_norm': grad_norm,
      'param_norm': param_norm,
      'lr': learning_rate(state.step),
      # Read only before the state is kept (vit_jax.training.divergence).
      'finite': (jnp.isfinite(loss_value) & jnp.isfinite(grad_norm) &
                 jnp.isfinite(param_norm)),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, ema_params=ema_params)
  return new_state, metrics


def eval_step(params, batch: Batch, *, model, loss: str) -> Metrics:
  """Sums over the real (mask 1) examples of `batch`: loss, top-1, top-5.

  Returning sums, not means, lets the caller count every example exactly
  once however the last batch is padded.
  """
  logits_BC = model.apply({'params': params}, batch['image'], train=False)
  mask_B = batch['mask'].astype(jnp.float32)
  labels_B = batch['label']
  losses_B = per_example_loss(logits_BC, labels_B, loss=loss)
  top_k = min(5, logits_BC.shape[-1])
  _, predicted_BK = jax.lax.top_k(logits_BC, top_k)
  hits_BK = predicted_BK == labels_B[:, None]
  return {
      'loss_sum': jnp.sum(losses_B * mask_B),
      'top1_correct': jnp.sum(hits_BK[:, 0] * mask_B),
      'top5_correct': jnp.sum(jnp.any(hits_BK, axis=1) * mask_B),
      'count': jnp.sum(mask_B),
  }
