"""Batch-level augmentation: Mixup and CutMix, for the train step's hook.

Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") blends
each image with a partner, `lam * x + (1 - lam) * x'`, and its label the same
way. CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train
Strong Classifiers with Localizable Features") pastes a box of the partner
instead, and the label weight of the partner is the pasted area exactly.

Per batch, as the recipes do (AugReg, Steiner et al. 2021; DeiT, Touvron et
al. 2021): one `lam ~ Beta(alpha, alpha)`, applied with probability
`mix_prob`; with both on, CutMix is chosen with probability `mix_switch_prob`
(DeiT: Mixup 0.8, CutMix 1.0, switch 0.5). AugReg's "Mixup p" is the Beta
alpha. The partner of example i is example i - 1 (the batch rolled by one),
so every example is used once as the partner; under a data-sharded batch XLA
moves only the boundary rows between devices.

Labels leave as (B, C) distributions that sum to 1, which the step's
softmax and sigmoid cross-entropies (with label smoothing) accept.
Evaluation never mixes.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from vit_jax.training import steps


@dataclasses.dataclass(frozen=True)
class MixSpec:
  """What to mix: the config keys of the same names, checked once on
  construction. alpha 0 turns a method off; both off: no mixing."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0  # Chance that a batch is mixed at all.
  mix_switch_prob: float = 0.5  # With both on: chance of CutMix over Mixup.

  def __post_init__(self):
    for key in ('mixup_alpha', 'cutmix_alpha'):
      if getattr(self, key) < 0:
        raise ValueError(f'config.{key} must be >= 0 (0 turns it off), got '
                         f'{getattr(self, key)}')
    for key in ('mix_prob', 'mix_switch_prob'):
      if not 0 <= getattr(self, key) <= 1:
        raise ValueError(f'config.{key} must be in [0, 1], got '
                         f'{getattr(self, key)}')

  @property
  def enabled(self) -> bool:
    return ((self.mixup_alpha > 0 or self.cutmix_alpha > 0)
            and self.mix_prob > 0)


def partner(x: jax.Array) -> jax.Array:
  """The partner of row i is row i - 1 (row 0 takes the last)."""
  return jnp.roll(x, 1, axis=0)


def mixup(images, targets, lam):
  """Blends images and (B, C) targets with their partners' by `lam`."""
  mixed = lam * images + (1 - lam) * partner(images)
  return mixed.astype(images.dtype), lam * targets + (1 - lam) * partner(
      targets)


def cutmix_box(key, height: int, width: int, lam):
  """A (H, W) boolean box of about (1 - lam) of the image, clipped to it.

  The box has sides sqrt(1 - lam) * (H, W) around a uniform random centre;
  clipping at the border can make it smaller, so callers take the label
  weight from the box itself (`mask.mean()`), not from `lam`.
  """
  centre_key_y, centre_key_x = jax.random.split(key)
  side = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * side).astype(jnp.int32) // 2
  half_w = jnp.floor(width * side).astype(jnp.int32) // 2
  cy = jax.random.randint(centre_key_y, (), 0, height)
  cx = jax.random.randint(centre_key_x, (), 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return ((rows >= cy - half_h) & (rows < cy + half_h)
          & (cols >= cx - half_w) & (cols < cx + half_w))


def cutmix(images, targets, box_HW):
  """Pastes the partners' pixels inside `box_HW`; targets weighted by area."""
  pasted = box_HW.mean(dtype=jnp.float32)
  mixed = jnp.where(box_HW[None, :, :, None], partner(images), images)
  return mixed, (1 - pasted) * targets + pasted * partner(targets)


def make_mix_fn(spec: MixSpec, num_classes: int) -> Optional[steps.MixFn]:
  """The `steps.train_step(mix_batch=...)` function of `spec`, or None.

  It takes {'image': (B, H, W, 3), 'label': (B,) ids or (B, C)} and a key and
  returns the batch with mixed images and (B, C) float32 labels. Unmixed
  batches (probability 1 - mix_prob) get exact one-hot labels.
  """
  if not spec.enabled:
    return None

  def mix_batch(batch: steps.Batch, key: jax.Array) -> steps.Batch:
    images = batch['image']
    targets = steps.label_distributions(batch['label'], num_classes)
    apply_key, switch_key, lam_key, box_key = jax.random.split(key, 4)
    use_cutmix = _chooses_cutmix(spec, switch_key)
    alpha = jnp.where(use_cutmix, spec.cutmix_alpha, spec.mixup_alpha)
    lam = jax.random.beta(lam_key, alpha, alpha)
    # No mixing: lam = 1 gives back the batch (and an empty CutMix box).
    lam = jnp.where(jax.random.uniform(apply_key) < spec.mix_prob, lam, 1.0)
    box = cutmix_box(box_key, images.shape[1], images.shape[2], lam)
    mixed_images, mixed_targets = jax.lax.cond(
        use_cutmix, lambda: cutmix(images, targets, box),
        lambda: mixup(images, targets, lam))
    return {**batch, 'image': mixed_images, 'label': mixed_targets}

  return mix_batch


def _chooses_cutmix(spec: MixSpec, key: jax.Array) -> jax.Array:
  if spec.mixup_alpha > 0 and spec.cutmix_alpha > 0:
    return jax.random.uniform(key) < spec.mix_switch_prob
  return jnp.asarray(spec.cutmix_alpha > 0)
