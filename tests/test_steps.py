"""Tests of vit_jax.training.steps: soft-label losses and the mix_batch hook."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from vit_jax.training import steps

NUM_CLASSES = 5
BATCH = 8


def _logits_and_labels(seed=0):
  rng = np.random.default_rng(seed)
  logits_BC = rng.normal(0, 3, (BATCH, NUM_CLASSES)).astype(np.float32)
  labels_B = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
  return jnp.asarray(logits_BC), jnp.asarray(labels_B)


@pytest.mark.parametrize('loss, label_smoothing', [
    ('softmax_xent', 0.0), ('softmax_xent', 0.1), ('sigmoid_xent', 0.0)])
def test_one_hot_distributions_give_exactly_the_integer_label_loss(
    loss, label_smoothing):
  logits_BC, labels_B = _logits_and_labels()
  soft_BC = np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(labels_B)]
  loss_fn = functools.partial(steps.per_example_loss, loss=loss,
                              label_smoothing=label_smoothing)
  from_ids_B = loss_fn(logits_BC, labels_B)
  assert from_ids_B.shape == (BATCH,)
  np.testing.assert_array_equal(loss_fn(logits_BC, jnp.asarray(soft_BC)),
                                from_ids_B)


def test_a_label_distribution_is_the_mixture_of_its_losses():
  # Cross-entropy is linear in the targets: half of two classes is the mean
  # of their losses.
  logits_BC, labels_B = _logits_and_labels()
  other_B = (labels_B + 1) % NUM_CLASSES
  eye = jnp.eye(NUM_CLASSES)
  for loss in steps.LOSSES:
    loss_fn = functools.partial(steps.per_example_loss, loss=loss)
    mixed_B = loss_fn(logits_BC, 0.5 * eye[labels_B] + 0.5 * eye[other_B])
    np.testing.assert_allclose(
        mixed_B, 0.5 * loss_fn(logits_BC, labels_B) +
        0.5 * loss_fn(logits_BC, other_B), rtol=1e-6)


@functools.cache
def _state_and_step(grad_accum_steps=1, mix_batch=None):
  """(initial state, jitted step), built and compiled once per arguments:
  the tests share their plain steps. One block keeps compiling cheap."""
  model = helpers.tiny_model(num_classes=NUM_CLASSES, dropout_rate=0.1,
                             num_layers=1)
  optimizer = optax.adam(1e-2)
  params = helpers.random_params(model, helpers.TINY_IMAGE_SIZE)
  state = steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=optimizer.init(params), ema_params={},
      rng=jax.random.PRNGKey(3))
  step = jax.jit(functools.partial(
      steps.train_step, model=model, optimizer=optimizer,
      learning_rate=lambda step: 1e-2, loss='softmax_xent',
      label_smoothing=0.0, grad_accum_steps=grad_accum_steps, ema_decay=0.0,
      mix_batch=mix_batch))
  return state, step


def _batch():
  rng = np.random.default_rng(1)
  size = helpers.TINY_IMAGE_SIZE
  return {'image': helpers.random_images(BATCH, size),
          'label': rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
          'mask': np.ones(BATCH, np.float32)}


def _reverse_labels(batch, rng):
  del rng
  return {**batch, 'label': batch['label'][::-1]}


@pytest.mark.slow
@pytest.mark.parametrize('accum_steps', [1, 2])
def test_mix_batch_updates_as_the_step_on_the_transformed_batch(accum_steps):
  batch = _batch()
  state, plain_step = _state_and_step(accum_steps)
  _, mixing_step = _state_and_step(accum_steps, mix_batch=_reverse_labels)
  mixed, mixed_metrics = mixing_step(state, batch)
  transformed, transformed_metrics = plain_step(
      state, _reverse_labels(batch, None))
  plain, _ = plain_step(state, batch)
  # Same data, same dropout: the hook only changes the batch.
  np.testing.assert_allclose(mixed_metrics['loss'],
                             transformed_metrics['loss'], rtol=1e-6)
  helpers.assert_trees_close(mixed.params, transformed.params, rtol=1e-5,
                             atol=1e-7)
  assert not np.allclose(mixed.params['head']['kernel'],
                         plain.params['head']['kernel'])


def _one_hot_labels(batch, rng):
  del rng
  return {**batch, 'label': jax.nn.one_hot(batch['label'], NUM_CLASSES)}


@pytest.mark.slow
def test_a_hook_giving_one_hot_labels_gives_the_integer_label_update():
  batch = _batch()
  state, plain_step = _state_and_step(2)
  _, soft_step = _state_and_step(2, mix_batch=_one_hot_labels)
  soft, soft_metrics = soft_step(state, batch)
  plain, plain_metrics = plain_step(state, batch)
  np.testing.assert_allclose(soft_metrics['loss'], plain_metrics['loss'],
                             rtol=1e-6)
  helpers.assert_trees_close(soft.params, plain.params, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('overrides, message', [
    (dict(loss='hinge'), "config.loss='hinge' is unknown; expected one of "
     'softmax_xent, sigmoid_xent'),
    (dict(label_smoothing=1.0), 'config.label_smoothing must be in [0, 1), '
     'got 1.0'),
    (dict(ema_decay=-0.5), 'config.ema_decay must be in [0, 1), got -0.5'),
    (dict(grad_accum_steps=0), 'config.grad_accum_steps must be >= 1, got 0'),
])
def test_step_spec_rejects_a_bad_value_in_one_line(overrides, message):
  with pytest.raises(ValueError) as error:
    steps.StepSpec(**overrides)
  assert str(error.value) == message
