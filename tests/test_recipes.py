"""The from-scratch recipe configs: the papers' values, and one real step each.

Each recipe is shrunk (a tiny model, 16 px generated images, one step) only
in size: its augmentation, mixing, regularisation, loss and optimiser run as
configured.
"""

import math

import pytest

from configs import augreg
from configs import deit
from configs import vit_i1k_plain
from tests import data_helpers
from tests import helpers
from vit_jax.training import loop

NUM_CLASSES = 3
IMAGE_SIZE = helpers.TINY_IMAGE_SIZE


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('recipe_data')
  data_helpers.write_image_folder(root, {'train': 4, 'test': 2}, NUM_CLASSES,
                                  IMAGE_SIZE)
  return str(root)


def _one_tiny_step(config, data_dir, workdir):
  """Trains the recipe `config` for one step of a one-block tiny ViT on the
  folder."""
  # One block: the recipe's settings, not the depth, are under test.
  helpers.shrink(config, data_dir, **helpers.ONE_STEP, eval_split='test',
                 shuffle_buffer=16, **{'model.dtype': 'float32',
                                       'model.num_layers': 1})
  return loop.train_and_evaluate(config, workdir)


def test_plain_vit_follows_beyer_et_al():
  for length, epochs in (('90ep', 90), ('150ep', 150), ('300ep', 300)):
    config = vit_i1k_plain.get_config(length)
    assert config.total_steps == epochs * 1_281_167 // 1024
  assert (config.model_name, config.model.classifier,
          config.model.posemb) == ('ViT-S_16', 'gap', 'sincos2d')
  assert (config.batch_size, config.lr, config.warmup_steps) == (1024, 1e-3,
                                                                  10_000)
  assert (config.randaug_layers, config.randaug_magnitude,
          config.mixup_alpha) == (2, 10, 0.2)
  # big_vision's wd 1e-4 (not scaled by lr) in our lr-scaled convention.
  assert math.isclose(config.weight_decay * config.lr, 1e-4)
  assert (config.grad_clip_norm, config.adam_b2) == (1.0, 0.999)
  with pytest.raises(ValueError, match='unknown length'):
    vit_i1k_plain.get_config('45ep')


@pytest.mark.parametrize('level, layers, magnitude, mixup', [
    ('none', 0, 0, 0.0), ('light1', 2, 0, 0.0), ('light2', 2, 10, 0.2),
    ('medium1', 2, 15, 0.2), ('medium2', 2, 15, 0.5),
    ('strong1', 2, 20, 0.5), ('strong2', 2, 20, 0.8)])
def test_augreg_levels(level, layers, magnitude, mixup):
  config = augreg.get_config(f'ViT-B_16,{level}')
  assert (config.randaug_layers, config.randaug_magnitude,
          config.mixup_alpha) == (layers, magnitude, mixup)
  assert (config.loss, config.model.head_bias_init) == ('sigmoid_xent', -6.9)
  assert (config.batch_size, config.lr) == (4096, 1e-3)
  assert config.total_steps == 300 * 1_281_167 // 4096
  assert (config.weight_decay, config.model.dropout_rate,
          config.model.drop_path_rate) == (0.1, 0.0, 0.0)


def test_augreg_regularisation_settings_and_errors():
  config = augreg.get_config('ViT-S_16,light1,wd=0.03,do=0.1,sd=0.1')
  assert config.model_name == 'ViT-S_16'
  assert (config.weight_decay, config.model.dropout_rate,
          config.model.drop_path_rate) == (0.03, 0.1, 0.1)
  with pytest.raises(ValueError, match='unknown AugReg level'):
    augreg.get_config('ViT-B_16,medium3')
  with pytest.raises(ValueError, match='bad setting'):
    augreg.get_config('ViT-B_16,medium2,lr=0.1')


@pytest.mark.parametrize('size, model', [('Ti', 'ViT-Ti_16'),
                                         ('S', 'ViT-S_16'),
                                         ('B', 'ViT-B_16')])
def test_deit_follows_touvron_et_al(size, model):
  config = deit.get_config(size)
  assert config.model_name == model
  assert (config.lr, config.weight_decay) == (1e-3, 0.05)
  assert (config.mixup_alpha, config.cutmix_alpha,
          config.mix_switch_prob) == (0.8, 1.0, 0.5)
  assert (config.random_erasing, config.label_smoothing,
          config.model.drop_path_rate) == (0.25, 0.1, 0.1)
  assert config.randaug_magnitude == 9
  assert config.warmup_steps == 5 * (1_281_167 // 1024)


@pytest.mark.slow
@pytest.mark.parametrize('get_config, arg', [
    (vit_i1k_plain.get_config, '90ep'),
    (augreg.get_config, 'ViT-B_16,strong2,do=0.1,sd=0.1'),
    (deit.get_config, 'Ti')], ids=['plain', 'augreg', 'deit'])
def test_each_recipe_trains_a_step(get_config, arg, image_folder, tmp_path):
  record = _one_tiny_step(get_config(arg), image_folder, str(tmp_path))
  assert record['num_examples'] == NUM_CLASSES * 2
  assert math.isfinite(record['loss'])
