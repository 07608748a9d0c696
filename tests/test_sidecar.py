"""The sidecar (vit_jax/weights/sidecar.py) and what `pretrained` does with it: what
an exported .npz cannot say is written beside it, read back, and checked
against the arrays. Checkpoints are generated here, never stored."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vit_jax import models
from vit_jax.weights import npz
from vit_jax.weights import pretrained
from vit_jax.weights import sidecar

SIZE = 16
NAMES = ('cat', 'dog', 'fox')
IMAGENET = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                std=(58.395, 57.12, 57.375))
# Options no array shows (LayerScale's init value included): without the
# sidecar they are lost.
UNSEEN = dict(activation='gelu_erf', layer_norm_epsilon=1e-5,
              layer_scale_init=0.1)


@pytest.fixture
def exported(tmp_path):
  """(model, params, path) of a tiny ViT exported with a full sidecar; the
  model trains with dropout, which the sidecar leaves out."""
  model = helpers.tiny_model(num_classes=3, dropout_rate=0.1, **UNSEEN)
  params = helpers.random_params(model, SIZE)
  path = tmp_path / 'model.npz'
  pretrained.save_npz(params, path, model=model, class_names=NAMES,
                      preprocessing=IMAGENET, image_size=SIZE)
  return model, params, path


def _edit_sidecar(path, edit):
  json_path = sidecar.path_for(path)
  record = json.loads(json_path.read_text())
  edit(record)
  json_path.write_text(json.dumps(record))


def test_the_file_holds_what_the_arrays_cannot_say(exported):
  _, _, path = exported
  assert str(sidecar.path_for(path)) == str(path.parent / 'model.json')
  assert str(sidecar.path_for(path.parent / 'model_ema.npz')) == str(
      path.parent / 'model_ema.json')
  assert json.loads((path.parent / 'model.json').read_text()) == {
      'format': 'vit_jax.sidecar', 'version': 1, 'family': 'vit',
      'model': {
          'num_classes': 3, 'patch_size': [4, 4], 'hidden_size': 32,
          'num_layers': 2, 'num_heads': 2, 'mlp_dim': 64,
          'classifier': 'token', 'representation_size': None,
          'resnet_units': None, 'posemb': 'learned',
          'posemb_covers_prefix': True, 'num_register_tokens': 0,
          'distillation': False, 'layer_scale_init': 0.1, 'pre_norm': False,
          'fc_norm': False, 'qkv_bias': True, 'layer_norm_epsilon': 1e-5,
          'activation': 'gelu_erf', 'resnet_norm_epsilon': 1e-6,
          'resnet_variance_epsilon': None, 'rope': None,
          'rope_temperature': 10000.0, 'rope_grid_indexing': 'ij',
          'rope_grid_offset': 0.0, 'rope_ref_grid': None,
          'rope_rotate_half': False, 'attention_norm': False,
          'mlp_gated': False, 'mlp_norm': False, 'map_num_heads': None,
          'map_mlp_dim': None, 'extra_class_token': False,
          'pool_include_prefix': None, 'final_norm': True,
          'norm_layer': 'layer_norm', 'embed_norm': False,
          'block': 'pre_norm', 'differential_attention': False},
      'image_size': [16, 16],
      'preprocessing': {'mean': [123.675, 116.28, 103.53],
                        'std': [58.395, 57.12, 57.375]},
      'class_names': ['cat', 'dog', 'fox']}
  assert not list(path.parent.glob('.*tmp'))  # Temp files were renamed.


def test_load_needs_nothing_but_the_file(exported):
  model, params, path = exported
  loaded = pretrained.load(path)
  assert loaded.model == model.clone(dropout_rate=0.0)
  assert (loaded.image_size, loaded.preprocessing, loaded.class_names) == (
      SIZE, IMAGENET, NAMES)
  images = helpers.random_images(2, SIZE)
  np.testing.assert_array_equal(
      pretrained.predict_logits(loaded.model, loaded.params, images),
      pretrained.predict_logits(model, params, images))
  assert pretrained.load_preprocessing(path, model) == IMAGENET

  # Without it, the arrays alone: the released defaults.
  sidecar.remove(path)
  bare = pretrained.load(path)
  assert (bare.model.activation, bare.model.layer_norm_epsilon,
          bare.preprocessing, bare.class_names) == (
              'gelu_tanh', 1e-6, models.Preprocessing(), None)
  assert pretrained.load_preprocessing(path, model) == models.Preprocessing()


def test_a_model_name_is_checked_and_overrides_still_apply(exported):
  _, _, path = exported
  assert pretrained.load(path, 'Ti/16', **helpers.TINY_VIT).model == (
      pretrained.load(path).model)
  with pytest.raises(npz.CheckpointMismatchError,
                     match='hidden size 32 but Ti/16 has 192'):
    pretrained.load(path, 'Ti/16')
  changed = pretrained.load(path, activation='gelu_tanh', dtype='bfloat16')
  assert (changed.model.activation, changed.model.dtype,
          changed.model.layer_norm_epsilon) == (
              'gelu_tanh', jnp.dtype('bfloat16'), 1e-5)


@pytest.mark.slow
def test_a_fixed_position_embedding_and_its_resolution_come_from_it(
    tmp_path):
  model = helpers.tiny_model(posemb='sincos2d', classifier='gap')
  params = helpers.random_params(model, 24)
  path = tmp_path / 'model.npz'
  pretrained.save_npz(params, path, model=model, image_size=24)
  loaded = pretrained.load(path)
  assert (loaded.model.posemb, loaded.image_size) == ('sincos2d', 24)
  images = helpers.random_images(2, 24)
  np.testing.assert_array_equal(
      pretrained.predict_logits(loaded.model, loaded.params, images),
      pretrained.predict_logits(model, params, images))
  assert pretrained.load(path, image_size=32).image_size == 32


@pytest.mark.parametrize('edit, message', [
    (lambda r: r['model'].update(num_classes=5),
     'they have num_classes 3 where it says 5'),
    (lambda r: r['model'].update(num_layers=3),
     'they have num_layers 2 where it says 3'),
    (lambda r: r['model'].update(layer_scale_init=None),
     'they have layer_scale_init 1.0 where it says None'),
    (lambda r: r.update(image_size=[32, 32]),
     'is for 16x16-pixel images but'),
    (lambda r: r.update(class_names=['cat']), 'names 1 classes but'),
    (lambda r: r.update(family='mixer'), 'describes a mixer model but'),
])
def test_a_sidecar_contradicting_the_arrays_is_refused(exported, edit,
                                                       message):
  _, _, path = exported
  _edit_sidecar(path, edit)
  with pytest.raises(npz.CheckpointMismatchError, match=re.escape(message)):
    pretrained.load(path)


@pytest.mark.parametrize('text, message', [
    ('{not json', 'is not valid JSON'),
    ('[]', 'is not a vit_jax.sidecar file'),
    (json.dumps({'format': 'vit_jax.sidecar', 'version': 2}),
     'is vit_jax.sidecar version 2; this code reads version 1'),
    (json.dumps({'format': 'vit_jax.sidecar', 'version': 1, 'family': 'vit'}),
     'lacks model, image_size, preprocessing, class_names'),
])
def test_an_unreadable_sidecar_is_named(exported, text, message):
  _, _, path = exported
  sidecar.path_for(path).write_text(text)
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    pretrained.load(path)
  assert str(sidecar.path_for(path)) in str(error.value)


@pytest.mark.parametrize('edit, message', [
    (lambda r: r['preprocessing'].update(mean=[1, 2]),
     '"preprocessing.mean" must be 3 numbers'),
    (lambda r: r.update(class_names='cat'),
     '"class_names" must be a list of strings'),
    (lambda r: r['model'].update(flash=True), 'the ViT has no flash'),
])
def test_a_malformed_entry_is_named(exported, edit, message):
  _, _, path = exported
  _edit_sidecar(path, edit)
  with pytest.raises(ValueError, match=re.escape(message)):
    pretrained.load(path)


def test_save_refuses_a_description_that_does_not_fit(exported, tmp_path):
  model, params, path = exported
  other = tmp_path / 'other.npz'
  with pytest.raises(npz.CheckpointMismatchError,
                     match='names 2 classes but'):
    pretrained.save_npz(params, other, model=model, class_names=('a', 'b'))
  with pytest.raises(npz.CheckpointMismatchError,
                     match='they have num_classes 3 where it says 4'):
    pretrained.save_npz(params, other, model=model.clone(num_classes=4))
  assert not other.exists() and not sidecar.path_for(other).exists()
  with pytest.raises(ValueError, match='needs model= too'):
    pretrained.save_npz(params, other, class_names=NAMES)

  # Arrays written without a model lose the older description.
  pretrained.save_npz(params, path)
  assert not sidecar.path_for(path).exists()


@pytest.mark.slow
@pytest.mark.parametrize('classifier', ['token_unpooled', 'unpooled'])
def test_an_unpooled_classifier_comes_from_it(tmp_path, classifier):
  # The arrays of 'token_unpooled' are those of 'token' ('unpooled': 'gap').
  model = helpers.tiny_model(num_classes=3, classifier=classifier)
  params = helpers.random_params(model, SIZE)
  path = tmp_path / 'model.npz'
  pretrained.save_npz(params, path, model=model)
  loaded = pretrained.load(path)
  assert loaded.model.classifier == classifier
  images = helpers.random_images(2, SIZE)
  np.testing.assert_array_equal(
      pretrained.predict_logits(loaded.model, loaded.params, images),
      pretrained.predict_logits(model, params, images))
