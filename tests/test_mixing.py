"""Mixup and CutMix on batches with known answers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from vit_jax.training import mixing
from vit_jax.training import steps

NUM_CLASSES = 5
SIZE = 8


def _batch(batch_size=4):
  """Example i is the constant image i + 1 with label i % NUM_CLASSES."""
  values = jnp.arange(1, batch_size + 1, dtype=jnp.float32)
  images = jnp.broadcast_to(values[:, None, None, None],
                            (batch_size, SIZE, SIZE, 3))
  return {'image': images, 'label': jnp.arange(batch_size) % NUM_CLASSES}


@functools.cache
def _jitted_mix_fn(spec):
  # One compilation per spec (jax.random.beta takes seconds to compile):
  # the tests' seeds and batches then reuse it.
  return jax.jit(mixing.make_mix_fn(spec, NUM_CLASSES))


def _mix(spec, seed, batch=None):
  return _jitted_mix_fn(spec)(batch or _batch(), jax.random.PRNGKey(seed))


def _partner_weight(mixed, batch):
  """The weight of each example's partner's class in its mixed label."""
  partners = np.roll(np.asarray(batch['label']), 1)
  return np.asarray(mixed['label'])[np.arange(len(partners)), partners]


def test_nothing_to_mix_gives_no_function():
  assert mixing.make_mix_fn(mixing.MixSpec(), NUM_CLASSES) is None
  assert mixing.make_mix_fn(mixing.MixSpec(mixup_alpha=0.2, mix_prob=0.0),
                            NUM_CLASSES) is None


@pytest.mark.parametrize('seed', range(4))
def test_mixup_blends_images_and_labels_by_the_same_weight(seed):
  batch = _batch()
  mixed = _mix(mixing.MixSpec(mixup_alpha=0.4), seed, batch)
  labels = np.asarray(mixed['label'])
  assert labels.shape == (4, NUM_CLASSES) and labels.dtype == np.float32
  np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-6)
  partner_weight = _partner_weight(mixed, batch)
  # Constant images: pixel = (1 - w) * own value + w * partner's value.
  own = np.arange(1, 5, dtype=np.float32)
  expected = (1 - partner_weight) * own + partner_weight * np.roll(own, 1)
  np.testing.assert_allclose(np.asarray(mixed['image'])[:, 0, 0, 0],
                             expected, rtol=1e-5)
  assert np.all(np.asarray(mixed['image']) == np.asarray(
      mixed['image'])[:, :1, :1, :1])  # Still constant: a blend, no box.


@pytest.mark.slow
@pytest.mark.parametrize('seed', range(6))
def test_cutmix_label_weight_equals_the_pasted_area(seed):
  batch = _batch()
  mixed = _mix(mixing.MixSpec(cutmix_alpha=1.0), seed, batch)
  images = np.asarray(mixed['image'])
  own = np.arange(1, 5, dtype=np.float32)[:, None, None]
  from_partner = images[..., 0] == np.roll(own, 1, axis=0)
  assert np.all(from_partner | (images[..., 0] == own))  # No blending.
  # One box, the same for the whole batch.
  assert np.all(from_partner == from_partner[:1])
  rows, cols = np.nonzero(from_partner[0])
  if rows.size:  # The pasted pixels form a rectangle.
    assert rows.size == ((rows.max() - rows.min() + 1)
                         * (cols.max() - cols.min() + 1))
  np.testing.assert_allclose(_partner_weight(mixed, batch),
                             from_partner.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(mixed['label']).sum(-1), 1.0,
                             rtol=1e-6)


def test_cutmix_box_area_follows_lam_away_from_the_border():
  # Jitted once per size, rather than dispatched op by op for every seed.
  cutmix_box = jax.jit(mixing.cutmix_box, static_argnums=(1, 2))
  box = cutmix_box(jax.random.PRNGKey(0), 100, 100, jnp.float32(0.75))
  # sqrt(1 - 0.75) = 0.5 of each side: 25% of the image unless clipped.
  assert float(box.mean()) <= 0.25 + 1e-6
  areas = [float(cutmix_box(jax.random.PRNGKey(seed), 100, 100,
                            jnp.float32(0.75)).mean())
           for seed in range(20)]
  assert 0.25 in areas and min(areas) > 0.0
  assert not np.any(cutmix_box(jax.random.PRNGKey(1), 10, 10,
                               jnp.float32(1.0)))


def test_mix_prob_zero_or_unlucky_batches_pass_through_exactly():
  batch = _batch()
  spec = mixing.MixSpec(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=1e-9)
  mixed = _mix(spec, 0, batch)
  np.testing.assert_array_equal(mixed['image'], batch['image'])
  np.testing.assert_array_equal(
      mixed['label'], jax.nn.one_hot(batch['label'], NUM_CLASSES))


@pytest.mark.slow
def test_mix_switch_prob_picks_both_methods_and_the_key_decides():
  spec = mixing.MixSpec(mixup_alpha=1.0, cutmix_alpha=1.0,
                        mix_switch_prob=0.5)
  kinds = set()
  for seed in range(16):
    images = np.asarray(_mix(spec, seed)['image'])
    blended = not np.all(np.isin(images, np.arange(1, 5)))
    kinds.add('mixup' if blended else 'cutmix')
    np.testing.assert_array_equal(images, _mix(spec, seed)['image'])
  assert kinds == {'mixup', 'cutmix'}


@pytest.mark.slow
def test_soft_labels_of_a_mixed_batch_train_through_the_step():
  """The hook runs inside the jitted step with both losses and smoothing."""
  # One block: the hook and the losses are what is tested, and each loss
  # compiles its own step.
  model = helpers.tiny_model(num_classes=NUM_CLASSES, num_layers=1)
  params = helpers.random_params(model, SIZE)
  optimizer = optax.sgd(0.1)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), ema_params={},
                           rng=jax.random.PRNGKey(0))
  mix = mixing.make_mix_fn(mixing.MixSpec(mixup_alpha=0.5, cutmix_alpha=1.0),
                           NUM_CLASSES)
  for loss in steps.LOSSES:
    step = jax.jit(functools.partial(
        steps.train_step, model=model, optimizer=optimizer,
        learning_rate=lambda _: 0.1, loss=loss, label_smoothing=0.1,
        grad_accum_steps=2, ema_decay=0.0, mix_batch=mix))
    new_state, metrics = step(state, _batch(8))
    assert np.isfinite(float(metrics['loss']))
    assert int(new_state.step) == 1


@pytest.mark.parametrize('field, value, message', [
    ('mixup_alpha', -1.0,
     'config.mixup_alpha must be >= 0 (0 turns it off), got -1.0'),
    ('cutmix_alpha', -0.1,
     'config.cutmix_alpha must be >= 0 (0 turns it off), got -0.1'),
    ('mix_prob', 1.5, 'config.mix_prob must be in [0, 1], got 1.5'),
    ('mix_switch_prob', -0.5,
     'config.mix_switch_prob must be in [0, 1], got -0.5')])
def test_bad_settings_name_their_config_key(field, value, message):
  with pytest.raises(ValueError) as error:
    mixing.MixSpec(**{field: value})
  assert str(error.value) == message
