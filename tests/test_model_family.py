"""A second, toy model family registered here goes through the code paths
every family shares: training, export, strict loading, fine-tuning,
prediction, features and the weight-decay mask."""

from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import common
from tests import data_helpers
from tests import helpers
from vit_jax.cli import predict
from vit_jax import models
from vit_jax.models import family
from vit_jax.training import loop
from vit_jax.training import optim
from vit_jax.weights import npz
from vit_jax.weights import pretrained

IMAGE_SIZE = 16
NUM_CLASSES = 3


class PatchMeanNet(nn.Module):
  """Patch embedding, mean over patches, an offset the decay mask skips."""
  num_classes: Optional[int]
  patch_size: int = 4
  hidden_size: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, *, train: bool = False):
    del train
    x = nn.Conv(self.hidden_size, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), dtype=self.dtype,
                name='toy_embed')(images_BHWC)
    offset_1D = self.param('offset', nn.initializers.zeros,
                           (1, self.hidden_size))
    features_BD = jnp.mean(x, axis=(1, 2)) + offset_1D
    self.sow('intermediates', 'features', features_BD)
    if not self.num_classes:
      return features_BD
    return nn.Dense(self.num_classes, name='head')(features_BD)


class ToyFamily(family.ModelFamily):
  """Two named variants; checkpoints hold `toy_embed`, `offset`, `head`."""
  name = 'toy'
  module_type = PatchMeanNet
  no_weight_decay = ('offset',)
  architecture_keys = ('patch_size', 'hidden_size')
  # ImageNet mean/std (in uint8 units), unlike ViT's [-1, 1]: predict and
  # the pipeline must apply the family's.
  preprocessing = family.Preprocessing(mean=(123.675, 116.28, 103.53),
                                       std=(58.395, 57.12, 57.375))

  @property
  def variants(self) -> Mapping[str, Tuple[int, int]]:
    return {'Toy-S_4': (4, 8), 'Toy-M_4': (4, 16)}

  def default_config(self):
    model = ml_collections.ConfigDict()
    model.dtype = 'float32'  # Matmul operand dtype.
    model.patch_size = ml_collections.FieldReference(None, int)  # Patch side.
    model.hidden_size = ml_collections.FieldReference(None, int)  # Width.
    return model

  def create(self, name, num_classes, **overrides):
    patch_size, hidden_size = self.variants[name]
    fields = dict(patch_size=patch_size, hidden_size=hidden_size)
    fields.update(overrides)
    fields['dtype'] = jnp.dtype(fields.get('dtype', jnp.float32))
    return PatchMeanNet(num_classes=num_classes, **fields)

  def patch_pixels(self, model):
    return model.patch_size, model.patch_size

  def recognises(self, flat):
    return any(key.startswith('toy_embed/') for key in flat)

  def describe(self, params):
    head = params.get('head')
    return family.CheckpointFacts(
        model_kwargs={'num_classes': (None if head is None else
                                      int(head['kernel'].shape[-1]))},
        expected={'hidden_size': int(params['offset'].shape[-1])})


@pytest.fixture
def toy_family():
  registered = ToyFamily()
  models.register(registered)
  yield registered
  models.unregister(registered.name)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('toy_data')
  written = data_helpers.write_image_folder(
      root, {'train': 4, 'test': 3}, NUM_CLASSES, IMAGE_SIZE)
  return str(root), written


def _config(data_dir):
  return helpers.tiny_config(
      data_dir, model_name='Toy-S_4', **helpers.ONE_STEP, shuffle_buffer=16,
      lr=1e-2, weight_decay=0.1)


def test_names_resolve_to_their_family_and_clashes_are_refused(toy_family):
  model = models.create_model('Toy-M_4', num_classes=2)
  assert isinstance(model, PatchMeanNet) and model.hidden_size == 16
  assert models.family_of(model) is toy_family
  assert models.resolve('ViT-B/16')[0].name == 'vit'
  with pytest.raises(ValueError, match='already registered'):
    models.register(ToyFamily())
  with pytest.raises(ValueError, match='unknown model'):
    models.create_model('Toy-XL_4')


def test_weight_decay_mask_follows_the_family(toy_family):
  model = models.create_model('Toy-S_4', num_classes=2)
  params = models.param_shapes(model, (8, 8))
  mask = optim.weight_decay_mask('kernels', toy_family.no_weight_decay)(params)
  assert mask == {'toy_embed': {'kernel': True, 'bias': False},
                  'offset': False, 'head': {'kernel': True, 'bias': False}}


@pytest.mark.slow
def test_trains_exports_loads_and_predicts_like_a_vit(toy_family,
                                                      image_folder, tmp_path):
  data_dir, written = image_folder
  workdir = tmp_path / 'run'
  record = loop.train_and_evaluate(_config(data_dir), str(workdir))
  assert record['num_examples'] == NUM_CLASSES * 3

  # The export is in the family's released layout, detected from its keys.
  flat = npz.read_npz(workdir / 'model.npz')
  assert sorted(flat) == ['head/bias', 'head/kernel', 'offset',
                          'toy_embed/bias', 'toy_embed/kernel']
  # Adam moved every parameter in one step, the zero offset included.
  assert np.any(flat['offset'] != 0)

  loaded = pretrained.load(workdir / 'model.npz', 'Toy-S_4',
                           image_size=IMAGE_SIZE)
  model, params = loaded.model, loaded.params
  assert (model.num_classes, loaded.image_size) == (NUM_CLASSES, IMAGE_SIZE)
  # The sidecar carries the family's normalisation and the class names ...
  assert (loaded.preprocessing, loaded.class_names) == (
      toy_family.preprocessing, ('class_0', 'class_1', 'class_2'))
  # ... but a family that cannot read its architecture off the arrays needs
  # the name.
  with pytest.raises(ValueError, match='the toy family cannot build a model '
                     'from a checkpoint alone; pass a model name'):
    pretrained.load(workdir / 'model.npz')
  images = [path for path, _ in written['test'][:2]]
  logits = predict.run(str(workdir / 'model.npz'), 'Toy-S_4', images,
                       image_size=IMAGE_SIZE, top_k=2)
  mean, std = (np.array(v, np.float32) for v in (
      toy_family.preprocessing.mean, toy_family.preprocessing.std))
  pixels = np.stack([(np.asarray(Image.open(path), np.float32) - mean) / std
                     for path in images])
  np.testing.assert_allclose(
      logits, model.apply({'params': params}, pixels), rtol=1e-5, atol=1e-5)

  # The wrong variant of the right family is named.
  with pytest.raises(npz.CheckpointMismatchError, match='hidden size 8'):
    pretrained.load(workdir / 'model.npz', 'Toy-M_4', image_size=IMAGE_SIZE)


@pytest.mark.slow
def test_features_and_fine_tuning_go_through_the_family(toy_family,
                                                        tmp_path):
  source = models.create_model('Toy-S_4', num_classes=5)
  params = helpers.quick_random_params(source, 8)
  path = tmp_path / 'toy.npz'
  pretrained.save_npz(params, path)

  images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3))
  features_model, features_params = models.without_head(source, params)
  assert 'head' not in features_params
  features = features_model.apply({'params': features_params}, images)
  _, inside = models.apply_with_intermediates(source, params, images)
  np.testing.assert_allclose(features, inside['pre_logits'], rtol=1e-6)
  with pytest.raises(ValueError, match='no attention weights'):
    models.apply_with_intermediates(source, params, images,
                                    attention_layers=(0,))

  target = models.create_model('Toy-S_4', num_classes=2)
  init = helpers.quick_random_params(target, 8, seed=1)
  tuned = pretrained.load_for_fine_tuning(path, target, init,
                                          image_size=(8, 8))
  np.testing.assert_array_equal(tuned['toy_embed']['kernel'],
                                params['toy_embed']['kernel'])
  np.testing.assert_array_equal(tuned['head']['kernel'],
                                init['head']['kernel'])


def test_a_config_builds_the_family_model_with_its_settings(toy_family):
  config = common.set_model(common.get_config(), 'Toy-M_4')
  assert sorted(config.model.keys()) == ['dtype', 'hidden_size', 'patch_size']
  config.model.dtype = 'bfloat16'
  config.model.hidden_size = 12  # An architecture override.
  model = models.create_model_from_config(config, num_classes=4)
  assert (model.num_classes, model.patch_size, model.hidden_size,
          model.dtype) == (4, 4, 12, jnp.bfloat16)


def test_another_familys_keys_are_refused_in_one_line(toy_family):
  config = common.get_config()  # ViT's section.
  config.model_name = 'Toy-M_4'
  with pytest.raises(ValueError) as error:
    models.check_model_config(config)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(
      'config.model has keys the toy family does not have: activation, '
      'attention, attention_dropout_rate, attention_norm, classifier, ')
  assert '; its keys are: dtype, hidden_size, patch_size (' in message
  with pytest.raises(ValueError, match='the toy family does not have'):
    models.create_model_from_config(config, num_classes=2)


def test_a_declared_key_the_module_lacks_is_refused(toy_family, monkeypatch):
  """Every key is a module attribute or handled: none is dropped."""
  section = toy_family.default_config()
  section.num_heads = 2
  monkeypatch.setattr(ToyFamily, 'default_config', lambda self: section)
  with pytest.raises(ValueError, match="the toy family's config key "
                     "'num_heads' is no PatchMeanNet attribute"):
    toy_family.create_from_config('Toy-S_4', section, num_classes=2)


def test_program_flags_cover_a_registered_familys_variant_keys(toy_family):
  keys = models.variant_keys()
  assert keys['hidden_size'].families == ('vit', 'mixer', 'toy')
  assert keys['tokens_mlp_dim'] == models.VariantKey(int, ('mixer',))
  assert keys['resnet_units'] == models.VariantKey(tuple, ('vit',))
