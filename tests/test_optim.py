"""Tests of vit_jax.training.optim: the learning-rate schedule and weight decay."""

import math

import flax
import jax
import numpy as np
import pytest

from configs import common
from tests import helpers
from vit_jax import models
from vit_jax.training import optim
from vit_jax.training import run_spec


def _spec(**overrides):
  """The OptimSpec of the common config with `overrides`."""
  config = common.get_config()
  config.update({**dict(lr=0.1, warmup_steps=10, total_steps=110), **overrides})
  return run_spec.optim_spec(common.lock(config))


def _rates(spec, steps):
  schedule = optim.learning_rate_schedule(spec)
  return [float(schedule(step)) for step in steps]


# --- Learning-rate schedule ---------------------------------------------------
# Peak 0.1, 10 warm-up steps, 100 decay steps: progress = (step - 10) / 100.


def test_warm_up_is_linear_and_its_first_step_already_learns():
  for decay_type in ('cosine', 'linear', 'constant'):
    np.testing.assert_allclose(
        _rates(_spec(decay_type=decay_type), [0, 4, 9]),
        [0.01, 0.05, 0.1], rtol=1e-6)


def test_cosine_decay():
  np.testing.assert_allclose(
      _rates(_spec(decay_type='cosine'), [10, 35, 60, 85, 110, 200]),
      [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05,
       0.05 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0], rtol=1e-6,
      atol=1e-9)


def test_linear_decay_ends_at_end_lr():
  np.testing.assert_allclose(
      _rates(_spec(decay_type='linear', end_lr=0.01), [10, 35, 60, 110,
                                                         200]),
      [0.1, 0.0775, 0.055, 0.01, 0.01], rtol=1e-6)


def test_constant_after_warm_up():
  np.testing.assert_allclose(
      _rates(_spec(decay_type='constant'), [10, 50, 109]), [0.1] * 3,
      rtol=1e-6)


def test_no_warm_up_starts_at_the_peak():
  np.testing.assert_allclose(
      _rates(_spec(decay_type='cosine', warmup_steps=0), [0, 55, 110]),
      [0.1, 0.05 * (1 + math.cos(math.pi / 2)), 0.0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('overrides, message', [
    (dict(decay_type='step'), "config.decay_type='step' is unknown; expected "
     'one of cosine, linear, constant'),
    (dict(optimizer='lamb'), "config.optimizer='lamb' is unknown; expected "
     'one of adam, sgd'),
    (dict(weight_decay_mask='biases'), "config.weight_decay_mask='biases' is "
     'unknown; expected one of kernels, all'),
    (dict(warmup_steps=110), 'config.warmup_steps (110) must be in [0, '
     'total_steps=110)'),
    (dict(total_steps=0, warmup_steps=0),
     'config.total_steps must be >= 1, got 0'),
    (dict(weight_decay=-0.1),
     'config.weight_decay must be >= 0 (0 turns it off), got -0.1'),
])
def test_optim_spec_rejects_a_bad_value_in_one_line(overrides, message):
  with pytest.raises(ValueError) as error:
    _spec(**overrides)
  assert str(error.value) == message


# --- Weight-decay mask --------------------------------------------------------


def _mask(model, image_size, **overrides):
  params = models.param_shapes(model, (image_size, image_size))
  mask = optim.weight_decay_mask(
      _spec(**overrides).weight_decay_mask,
      no_weight_decay=models.family_of(model).no_weight_decay)
  return params, mask


def _flat(tree):
  return {'/'.join(path): value for path, value in
          flax.traverse_util.flatten_dict(tree).items()}


TINY_MODELS = pytest.mark.parametrize('model, image_size', [
    (helpers.tiny_model(), helpers.TINY_IMAGE_SIZE),
    (helpers.tiny_hybrid(), 32)])


def _decays(model, image_size):
  """{path: decays} and {path: shape} of the model's parameters."""
  params, mask = _mask(model, image_size)
  return _flat(mask(params)), _flat(params)


def _is_attention_bias(path):
  """The (heads, head_dim) biases of the query, key and value projections."""
  return path.endswith(('query/bias', 'key/bias', 'value/bias'))


@TINY_MODELS
def test_kernels_decay_and_norms_biases_cls_and_posemb_do_not(model,
                                                              image_size):
  decays, shapes = _decays(model, image_size)
  assert decays.keys() == shapes.keys()
  kept = {path for path, decay in decays.items() if not decay}
  assert {'cls', 'Transformer/posembed_input/pos_embedding'} <= kept
  for path, decay in decays.items():
    name = path.split('/')[-1]
    if name == 'kernel':  # Dense, attention (3-d) and conv kernels.
      assert decay, path
    elif name in ('bias', 'scale', 'cls', 'pos_embedding'):
      assert not decay, path
    else:
      pytest.fail(f'unexpected parameter {path} {shapes[path].shape}')
  scales = [path for path in decays if path.endswith('/scale')]
  assert any('LayerNorm' in path for path in scales), scales
  if any(path.startswith('ResNet/') for path in decays):
    assert any('gn' in path for path in scales), scales  # GroupNorm.


@TINY_MODELS
def test_attention_biases_do_not_decay(model, image_size):
  decays, _ = _decays(model, image_size)
  attention_biases = [path for path in decays if _is_attention_bias(path)]
  assert attention_biases
  assert not any(decays[path] for path in attention_biases)


def test_all_mask_decays_everything():
  _, mask = _mask(helpers.tiny_model(), helpers.TINY_IMAGE_SIZE,
                  weight_decay_mask='all')
  assert mask is None


def test_the_optimizer_decays_only_masked_parameters():
  model = helpers.tiny_model()
  params = helpers.random_params(model, helpers.TINY_IMAGE_SIZE)
  spec = _spec(optimizer='sgd', decay_type='constant', warmup_steps=0,
               weight_decay=0.5, grad_clip_norm=0.0)
  optimizer = optim.make_optimizer(
      spec, no_weight_decay=models.family_of(model).no_weight_decay)
  zeros = jax.tree_util.tree_map(np.zeros_like, params)
  updates, _ = optimizer.update(zeros, optimizer.init(params), params)
  decays, _ = _decays(model, helpers.TINY_IMAGE_SIZE)
  assert sum(decays.values()) > 0 and not all(decays.values())
  for path, update in _flat(updates).items():
    param = _flat(params)[path]
    # Zero gradients: the update is the decay alone, -lr * wd * param.
    expected = -0.1 * 0.5 * param if decays[path] else 0 * param
    np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=path)
