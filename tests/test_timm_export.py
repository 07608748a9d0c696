"""timm / hub checkpoints through `pretrained`: export back to `.npz` (with
its sidecar), load at another resolution, and fine-tune from them."""

import jax
import numpy as np
import pytest

from tests import timm_fixtures
from vit_jax import models
from vit_jax.weights import pretrained
from vit_jax.weights import timm_hub

# The families whose options the released .npz layout cannot show by itself
# (activation, LayerNorm epsilon, a position embedding over the patches only)
# or that add parameters (distillation token, registers, MAP head, fc_norm).
EXPORTED = ('deit_distilled', 'dinov2_reg', 'clip_quickgelu', 'siglip',
            'gap_fc_norm_registers')


def _normalised(loaded, pixels):
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)
  return (pixels - mean) / std


def _outputs(loaded, pixels):
  return np.asarray(loaded.model.apply({'params': loaded.params},
                                       _normalised(loaded, pixels)))


@pytest.mark.slow
@pytest.mark.parametrize('name', EXPORTED)
def test_export_to_npz_and_back_computes_the_same(name, tmp_path):
  spec = timm_fixtures.FAMILIES[name]
  hub = pretrained.load(str(timm_fixtures.write_family(tmp_path / 'hub',
                                                        name)))
  path = str(tmp_path / 'model.npz')
  pretrained.save_npz(hub.params, path, model=hub.model,
                      preprocessing=hub.preprocessing,
                      class_names=hub.class_names, image_size=hub.image_size)
  exported = pretrained.load(path)  # No model name, no flags.
  assert exported.preprocessing == hub.preprocessing
  assert exported.class_names == hub.class_names
  assert exported.image_size == hub.image_size
  for field in ('activation', 'layer_norm_epsilon', 'posemb_covers_prefix',
                'num_register_tokens', 'distillation', 'classifier',
                'fc_norm', 'pre_norm', 'qkv_bias'):
    assert getattr(exported.model, field) == getattr(hub.model, field), field
  pixels = timm_fixtures.random_pixels(spec)
  np.testing.assert_array_equal(_outputs(exported, pixels),
                                _outputs(hub, pixels))


def test_a_hub_checkpoint_runs_at_another_resolution(tmp_path):
  spec = timm_fixtures.FAMILIES['deit3']
  directory = str(timm_fixtures.write_family(tmp_path, 'deit3'))
  native = pretrained.load(directory)
  larger = pretrained.load(directory, image_size=2 * native.image_size)
  grid = (2 * native.image_size) // spec.patch
  embedding = larger.params['Transformer']['posembed_input']['pos_embedding']
  # DeiT-III's embedding covers the patches only: no prefix entry to keep.
  assert embedding.shape == (1, grid * grid, spec.embed_dim)
  pixels = timm_fixtures.random_pixels(spec)
  pixels = np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2)
  assert _outputs(larger, pixels).shape == (2, spec.num_classes)


def test_fine_tuning_from_a_hub_directory_keeps_all_but_the_head(tmp_path):
  directory = str(timm_fixtures.write_family(tmp_path, 'deit_distilled'))
  hub = pretrained.load(directory)
  model = hub.model.clone(num_classes=3)
  image_size = (hub.image_size, hub.image_size)
  init_params = models.init_params(model, jax.random.PRNGKey(0), image_size)
  params = pretrained.load_for_fine_tuning(directory, model, init_params,
                                           image_size=image_size)
  for head in ('head', 'head_dist'):
    np.testing.assert_array_equal(params[head]['kernel'],
                                  init_params[head]['kernel'])
    assert params[head]['kernel'].shape[-1] == 3
  np.testing.assert_array_equal(params['dist_token'],
                                hub.params['dist_token'])
  np.testing.assert_array_equal(
      params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0'][
          'kernel'],
      hub.params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0'][
          'kernel'])


def test_preprocessing_comes_from_the_config_alone(tmp_path, monkeypatch):
  directory = str(timm_fixtures.write_family(tmp_path, 'clip'))
  expected = timm_hub.read(directory).preprocessing

  def no_weights(path):
    raise AssertionError(f'read the weights {path}')

  monkeypatch.setattr(timm_hub, '_read_safetensors', no_weights)
  assert timm_hub.read_preprocessing(directory) == expected
  model = models.create_model('ViT-Ti_16', 3)
  assert pretrained.load_preprocessing(directory, model) == expected
  assert expected != models.family_of(model).preprocessing  # CLIP's own.
