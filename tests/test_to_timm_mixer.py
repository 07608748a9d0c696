"""The way back to timm for MLP-Mixer (`vit_jax.weights.save_timm`,
`vit_jax.weights.to_timm_mixer`): our Mixers written as hub directories,
read back by our own loader to the same parameters and outputs, computed by
the independent NumPy forward pass on timm's keys
(tests/numpy_timm_mixer.py) to our outputs, and, where timm is installed,
loaded by `timm.create_model('local-dir:...')` to our outputs; the
architecture each gets; the refusals; the export program.

timm's Mixer entrypoints fix patch size, blocks and width (config.json
cannot override them), so the tiny models here are Mixer-B/16 shaped (768
wide, 12 blocks, 16-pixel patches) with narrow MLPs, on 32-pixel images."""

import dataclasses
import functools
import json

import flax
import jax
import numpy as np
import pytest

from tests import numpy_timm_mixer
from vit_jax import models
from vit_jax import weights
from vit_jax.models import mixer
from vit_jax.weights import safetensors_file
from vit_jax.weights import to_timm

SIZE = 32
BASE = dict(num_classes=5, patch_size=(16, 16), hidden_size=768,
            num_layers=12, tokens_mlp_dim=3, channels_mlp_dim=8,
            activation='gelu_erf')
# (model changes, image size (H, W)).
MODELS = {
    'gap': ({}, (SIZE, SIZE)),
    'unpooled_features': (dict(classifier='unpooled', num_classes=0),
                          (SIZE, SIZE)),
    'unpooled_head': (dict(classifier='unpooled', num_classes=3),
                      (SIZE, SIZE)),
}


def _model(name: str) -> mixer.MlpMixer:
  return mixer.MlpMixer(**{**BASE, **MODELS[name][0]})


@functools.lru_cache(maxsize=None)
def _random_params_of(name: str):
  """Random parameters of MODELS[name], made from the shapes (an init
  would compile 12 blocks): kernels scaled by their fan-in, norm scales near
  1, biases near 0. Cached: tests must not change them."""
  model, image_size = _model(name), MODELS[name][1]
  return _random_params(model, image_size)


def _random_params(model, image_size, seed: int = 0):
  shapes = models.param_shapes(model, image_size)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep='/')
  rng = np.random.default_rng(seed)

  def value(key, shape):
    noise = rng.standard_normal(shape.shape).astype(np.float32)
    if key.endswith('kernel'):
      value = noise / np.sqrt(np.prod(shape.shape[:-1]))
    else:
      value = (1. if key.endswith('scale') else 0.) + 0.2 * noise
    return value.astype(np.float32)

  return flax.traverse_util.unflatten_dict(
      {key: value(key, shape) for key, shape in flat.items()}, sep='/')


def _pixels(image_size, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      -1, 1, (2, *image_size, 3)).astype(np.float32)


def _relative_error(actual, expected) -> float:
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _fields(module) -> dict:
  """The fields that decide what a Mixer computes (no head: None or 0)."""
  return dict({field.name: getattr(module, field.name)
               for field in dataclasses.fields(module)
               if field.name not in ('parent', 'name')},
              num_classes=module.num_classes or 0)


def _written(tmp_path, name):
  model, image_size = _model(name), MODELS[name][1]
  params = _random_params_of(name)
  square = image_size[0] == image_size[1]  # Else the tokens do not say it.
  config = weights.save_timm(params, model, tmp_path,
                             image_size=None if square else image_size)
  return model, params, config


# ----------------------------------------------- round trip, no timm needed --

@pytest.mark.parametrize('name', sorted(MODELS))
def test_round_trip_and_the_numpy_reference(tmp_path, name):
  """Our loader gives back the same tree, model and outputs; the NumPy
  forward pass on the written timm keys, with config.json's pooling, our
  outputs."""
  model, params, config = _written(tmp_path, name)
  pixels = _pixels(MODELS[name][1])
  expected = model.apply({'params': params}, pixels)
  loaded = weights.load(tmp_path)
  assert _fields(loaded.model) == _fields(model)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         jax.tree_util.tree_map(np.asarray, loaded.params),
                         params)
  np.testing.assert_array_equal(
      loaded.model.apply({'params': loaded.params}, pixels), expected)

  state_dict = {key: np.asarray(value) for key, value in
                safetensors_file.open_safetensors(
                    tmp_path / 'model.safetensors').items()}
  reference = numpy_timm_mixer.forward(
      state_dict, pixels.transpose(0, 3, 1, 2),
      global_pool=config['model_args']['global_pool'])
  assert _relative_error(reference, expected) < 1e-5


def test_config_json_says_what_timm_needs(tmp_path):
  model = _model('gap')
  weights.save_timm(_random_params_of('gap'), model, tmp_path,
                    class_names=('a', 'b', 'c', 'd', 'e'))
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['architecture'] == 'mixer_b16_224'
  assert config['num_features'] == 768 and config['global_pool'] == 'avg'
  # Only what the definition does not say; never the entrypoint's own
  # patch_size / num_blocks / embed_dim (timm would get them twice).
  assert config['model_args'] == {
      'mlp_ratio': [3 / 768, 8 / 768], 'img_size': [32, 32],
      'num_classes': 5, 'global_pool': 'avg', 'in_chans': 3}
  cfg = config['pretrained_cfg']
  assert cfg['first_conv'] == 'stem.proj' and cfg['classifier'] == 'head'
  assert cfg['mean'] == [0.5] * 3 and cfg['std'] == [0.5] * 3
  assert weights.load(tmp_path).class_names == ('a', 'b', 'c', 'd', 'e')


NARROW = dict(tokens_mlp_dim=3, channels_mlp_dim=8)


@pytest.mark.parametrize('variant, changes, architecture, overrides', [
    ('Mixer-B_16', {}, 'mixer_b16_224', {}),
    # Narrow MLPs keep the test small: the ratios are the one override.
    ('Mixer-L_16', NARROW, 'mixer_l16_224',
     {'mlp_ratio': [3 / 1024, 8 / 1024]}),
])
def test_released_shapes_get_their_timm_name(variant, changes, architecture,
                                             overrides):
  model = models.create_model(variant, num_classes=1000,
                              activation='gelu_erf', **changes)
  shapes = models.param_shapes(model, (224, 224))
  params = jax.tree_util.tree_map(
      lambda s: np.zeros(s.shape, np.float32), shapes)
  conversion = to_timm.convert(params, model, (224, 224))
  assert to_timm.choose_architecture(conversion, (224, 224)) == (
      architecture, overrides)


@pytest.mark.parametrize('changes, message', [
    # Our default, the released models' GELU.
    (dict(activation='gelu_tanh'),
     "timm cannot express the MLP activation 'gelu_tanh' in its MlpMixer "
     r"\(its act_layer is a class config.json cannot name; it computes "
     r"torch's erf GELU\): build the Mixer with activation='gelu_erf'"),
    (dict(activation='quick_gelu'),
     "timm cannot express the MLP activation 'quick_gelu'"),
    (dict(hidden_size=32, num_layers=2),
     'timm cannot express an MLP-Mixer of patch_size=16, num_blocks=2, '
     "embed_dim=32: its Mixer entrypoints fix these and config.json's "
     'model_args cannot override them; timm 1.0.31 defines mixer_b16_224 '
     r'\(patch_size=16, num_blocks=12, embed_dim=768\); mixer_l16_224 '
     r'\(patch_size=16, num_blocks=24, embed_dim=1024\)$'),
    (dict(patch_size=(16, 8)),
     r'of patch_size=\[16, 8\], num_blocks=12, embed_dim=768:'),
])
def test_what_timm_cannot_express_is_refused_by_name(tmp_path, changes,
                                                     message):
  model = mixer.MlpMixer(**{**BASE, **changes})
  params = _random_params(model, (SIZE, SIZE))
  with pytest.raises(to_timm.Untranslatable, match=message) as error:
    weights.save_timm(params, model, tmp_path, image_size=SIZE)
  assert '\n' not in str(error.value)
  assert not list(tmp_path.iterdir())  # Refused before anything is written.


def test_an_image_size_of_other_tokens_is_refused(tmp_path):
  model = _model('gap')
  with pytest.raises(ValueError, match=(
      'image_size 64x64 in 16x16 patches does not give the 4 tokens the '
      'token-mixing weights are for')):
    weights.save_timm(_random_params_of('gap'), model, tmp_path,
                      image_size=64)


def test_fine_tuned_mixer_goes_back_with_its_new_head(tmp_path):
  """A timm Mixer directory, fine-tuned here with a 3-class head, written
  back: the new head, the source's backbone."""
  source_model, _, _ = _written(tmp_path / 'source', 'gap')
  model = source_model.clone(num_classes=3)
  init = _random_params(model, (SIZE, SIZE), seed=1)
  params = weights.load_for_fine_tuning(tmp_path / 'source', model, init,
                                        image_size=(SIZE, SIZE))
  params['head']['kernel'] = np.random.default_rng(0).standard_normal(
      params['head']['kernel'].shape).astype(np.float32)
  config = weights.save_timm(params, model, tmp_path / 'back',
                             class_names=('x', 'y', 'z'))
  assert config['architecture'] == 'mixer_b16_224'
  back = weights.load(tmp_path / 'back')
  assert back.model.num_classes == 3 and back.class_names == ('x', 'y', 'z')
  pixels = _pixels((SIZE, SIZE))
  np.testing.assert_array_equal(
      back.model.apply({'params': back.params}, pixels),
      model.apply({'params': params}, pixels))
  np.testing.assert_array_equal(
      back.params['stem']['kernel'],
      weights.load(tmp_path / 'source').params['stem']['kernel'])


# ------------------------------------------------------------ timm itself --

@pytest.mark.parametrize('name', sorted(MODELS))
def test_timm_gives_our_outputs(tmp_path, name):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  model, params, _ = _written(tmp_path, name)
  pixels = _pixels(MODELS[name][1])
  timm_model = timm.create_model(f'local-dir:{tmp_path}',
                                 pretrained=True).eval()
  with torch.no_grad():
    actual = timm_model(torch.from_numpy(
        pixels.transpose(0, 3, 1, 2).copy())).numpy()
  assert _relative_error(actual, model.apply({'params': params}, pixels)
                         ) < 1e-4


# --------------------------------------------------- the export program --

def test_export_program_writes_a_mixer_timm_directory(tmp_path, capsys):
  from vit_jax.cli import export as export_cli  # pylint: disable=g-import-not-at-top
  model, params = _model('gap'), _random_params_of('gap')
  source = tmp_path / 'model.npz'
  weights.save_npz(params, source, model=model)
  out = tmp_path / 'out'
  assert export_cli.run(str(source), str(out), output_format='timm') == {}
  assert sorted(path.name for path in out.iterdir()) == [
      'config.json', 'model.safetensors']
  assert 'timm architecture mixer_b16_224' in capsys.readouterr().out
  back = weights.load(out)
  assert _fields(back.model) == _fields(model)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         jax.tree_util.tree_map(np.asarray, back.params),
                         params)


def test_export_program_refuses_the_tanh_gelu(tmp_path):
  from vit_jax.cli import export as export_cli  # pylint: disable=g-import-not-at-top
  model = mixer.MlpMixer(**{**BASE, 'activation': 'gelu_tanh'})
  source = tmp_path / 'model.npz'
  weights.save_npz(_random_params(model, (SIZE, SIZE)), source, model=model)
  with pytest.raises(to_timm.Untranslatable, match="'gelu_tanh'"):
    export_cli.run(str(source), str(tmp_path / 'out'), output_format='timm')
  assert not (tmp_path / 'out').exists()
