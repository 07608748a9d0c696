"""The config files: locked, complete, and faithful to the paper's tables."""

import inspect

import pytest

from configs import common
from configs import default
from configs import fashion_mnist_mixer
from configs import vit
from configs import vit_l16_jft
from configs import vit_pretrain
from vit_jax import models
from vit_jax.training import loop


def test_configs_are_locked_against_typos():
  config = default.get_config()
  with pytest.raises(AttributeError):
    config.lerning_rate = 0.1  # pylint: disable=attribute-defined-outside-init


def _assignments(source, prefix):
  return [line.strip() for line in source.splitlines()
          if line.strip().startswith(prefix) and ' = ' in line]


def test_every_common_key_has_a_comment():
  lines = _assignments(inspect.getsource(common.get_config), 'config.')
  assert len(lines) > 50
  for line in lines:
    assert '#' in line, f'undocumented key: {line}'


@pytest.mark.parametrize('family', models.families(), ids=lambda f: f.name)
def test_every_family_key_has_a_default_and_a_comment(family):
  lines = _assignments(inspect.getsource(type(family).default_config),
                       'model.')
  assert sorted(line.split(' = ')[0][len('model.'):] for line in lines) == (
      sorted(family.default_config().keys()))
  for line in lines:
    assert '#' in line, f'undocumented {family.name} key: {line}'


def test_the_default_model_section_is_the_vit_familys():
  config = common.get_config()
  assert config.model.to_dict() == models.model_config('ViT-Ti_16').to_dict()
  assert config.model.classifier == 'token'
  assert config.model.num_layers is None


def test_the_mixer_config_holds_mixer_keys_only():
  config = fashion_mnist_mixer.get_config()
  models.check_model_config(config)
  model = models.create_model_from_config(config, num_classes=10)
  assert (model.patch_size, model.hidden_size, model.num_layers,
          model.tokens_mlp_dim, model.channels_mlp_dim,
          model.drop_path_rate) == ((4, 4), 64, 6, 32, 256, 0.1)
  with pytest.raises(AttributeError):
    config.model.mlp_dim = 3


@pytest.mark.parametrize('dataset,steps,lr', [
    ('cifar10', 10_000, 0.03), ('cifar100', 10_000, 0.03),
    ('imagenet2012', 20_000, 0.03), ('oxford_iiit_pet', 500, 0.003),
    ('oxford_flowers102', 500, 0.003)])
def test_fine_tuning_follows_table_4(dataset, steps, lr):
  config = vit.get_config(f'ViT-B_16,{dataset}')
  assert (config.optimizer, config.momentum, config.batch_size) == (
      'sgd', 0.9, 512)
  assert (config.decay_type, config.weight_decay, config.grad_clip_norm) == (
      'cosine', 0.0, 1.0)
  assert config.image_size == 384
  assert (config.total_steps, config.lr) == (steps, lr)
  assert config.model.representation_size is None
  assert config.ema_decay == (0.9999 if dataset == 'imagenet2012' else 0.0)


def test_l16_jft_follows_table_3():
  config = vit_l16_jft.get_config()
  assert (config.model_name, config.dataset) == ('ViT-L_16', 'jft300m')
  assert (config.optimizer, config.adam_b1, config.adam_b2) == ('adam', 0.9,
                                                                0.999)
  assert (config.batch_size, config.lr, config.weight_decay) == (4096, 4e-4,
                                                                 0.1)
  assert (config.warmup_steps, config.decay_type) == (10_000, 'linear')
  assert config.total_steps == 7 * 303_000_000 // 4096
  assert (config.image_size, config.model.representation_size) == (224, 1024)
  assert config.model.head_bias_init == -10.0


@pytest.mark.parametrize('dataset,lr,wd,decay,dropout', [
    ('imagenet21k', 1e-3, 0.03, 'linear', 0.1),
    ('imagenet2012', 3e-3, 0.3, 'cosine', 0.1)])
def test_public_pre_training_follows_table_3(dataset, lr, wd, decay, dropout):
  config = vit_pretrain.get_config(f'ViT-B_16,{dataset}')
  assert (config.lr, config.weight_decay, config.decay_type) == (lr, wd, decay)
  assert config.model.dropout_rate == dropout
  assert config.model.representation_size == 768


def test_jft_without_data_fails_fast_saying_what_to_do(tmp_path):
  with pytest.raises(ValueError, match=r"jft300m.*config\.dataset"):
    loop.train_and_evaluate(vit_l16_jft.get_config(), str(tmp_path))


def test_unknown_recipe_is_named():
  with pytest.raises(ValueError, match='no Table 4 recipe'):
    vit.get_config('ViT-B_16,mnist')
