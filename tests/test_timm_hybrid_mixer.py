"""timm's layouts of our own families: the R+ViT hybrids (ResNetV2 backbone
keys, `vit_jax.models.vit_hybrid_timm`) and MLP-Mixer
(`vit_jax.models.mixer_timm`), loaded through `weights.load` from hub
directories, against the independent NumPy references on timm's keys
(tests/numpy_timm_hybrid.py, tests/numpy_timm_mixer.py); the timm models of
the same modules our models lack, refused by name; and `TestAgainstTimm`,
every architecture with a pretrained tag in timm's vision_transformer_hybrid
and mlp_mixer modules, made and saved by timm itself (skipped without
timm)."""

import dataclasses
import json

import numpy as np
import pytest

from tests import numpy_timm_hybrid
from tests import numpy_timm_mixer
from tests import timm_fixtures
from tests import timm_layout_fixtures as fixtures
from vit_jax import weights
from vit_jax.models import mixer
from vit_jax.models import vit


def relative_error(actual, expected) -> float:
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _timm_inputs(mean, std, pixels_BHWC):
  """timm's input: [0, 1] pixels normalised by pretrained_cfg, NCHW."""
  images = (pixels_BHWC / 255. - np.asarray(mean)) / np.asarray(std)
  return images.transpose(0, 3, 1, 2)


def _our_outputs(loaded, pixels_BHWC, model=None):
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)
  return (model or loaded.model).apply(
      {'params': loaded.params}, (pixels_BHWC - mean) / std, train=False)


# ------------------------------------------------------------- hybrids --

@pytest.mark.parametrize('name', sorted(fixtures.HYBRIDS))
def test_hybrid_matches_numpy_timm(tmp_path, name):
  spec = fixtures.HYBRIDS[name]
  arrays = fixtures.hybrid_state_dict(spec)
  loaded = weights.load(fixtures.write_hybrid(tmp_path, name))
  pixels = fixtures.random_pixels(spec.image_size)
  expected = numpy_timm_hybrid.forward(
      arrays, _timm_inputs(spec.vit.mean, spec.vit.std, pixels),
      **spec.vit.reference_options())
  assert relative_error(_our_outputs(loaded, pixels), expected) <= 1e-5
  model = loaded.model
  assert isinstance(model, vit.VisionTransformer)
  assert model.resnet_units == spec.units
  assert model.patch_size == (spec.vit.patch, spec.vit.patch)
  assert (model.num_heads, model.activation) == (spec.vit.num_heads,
                                                 'gelu_erf')
  assert (model.resnet_norm_epsilon, model.resnet_variance_epsilon) == (
      1e-5, 1e-8)
  assert loaded.image_size == spec.image_size


def test_timm_numerics_are_what_tells_the_hybrids_apart(tmp_path):
  """The released ResNet numerics (the options' defaults) miss timm's
  output; each option alone moves it by more than the tolerance. The
  GroupNorm epsilon shows only on features of small variance: low-contrast
  pixels, at the root's norm."""
  spec = fixtures.HYBRIDS['r26_s']
  arrays = fixtures.hybrid_state_dict(spec)
  loaded = weights.load(fixtures.write_hybrid(tmp_path, 'r26_s'))
  pixels = 127.5 + fixtures.random_pixels(spec.image_size) / 255.
  expected = numpy_timm_hybrid.forward(
      arrays, _timm_inputs(spec.vit.mean, spec.vit.std, pixels),
      **spec.vit.reference_options())
  for change in (dict(resnet_variance_epsilon=None),
                 dict(resnet_norm_epsilon=1e-6)):
    released = loaded.model.clone(**change)
    assert relative_error(_our_outputs(loaded, pixels, released),
                          expected) > 1e-5, change


def test_the_released_resnet_numerics_are_the_default():
  model = vit.VisionTransformer(num_classes=2, patch_size=(1, 1),
                                hidden_size=8, num_layers=1, num_heads=1,
                                mlp_dim=8, resnet_units=())
  assert (model.resnet_norm_epsilon, model.resnet_variance_epsilon) == (
      1e-6, None)
  assert mixer.MlpMixer(2, (4, 4), 8, 1, 4, 8).activation == 'gelu_tanh'


def _write_hybrid_modified(tmp_path, name='r_ti', *, add=None, remove=(),
                           model_args=None, architecture=None):
  spec = fixtures.HYBRIDS[name]
  arrays = fixtures.hybrid_state_dict(spec)
  arrays.update(add or {})
  for key in remove:
    del arrays[key]
  config = fixtures.hybrid_config(spec)
  config['model_args'].update(model_args or {})
  if architecture:
    config['architecture'] = architecture
  return timm_fixtures.write_hub_dir(tmp_path, config, arrays)


def _mci_convstem():
  """MobileCLIP's ConvStem keys (vit_base_mci_224), its BatchNorm buffers
  as float."""
  out = {}
  for index, (outputs, inputs) in enumerate(((16, 3), (16, 16))):
    out[f'patch_embed.backbone.{index}.conv.weight'] = np.ones(
        (outputs, inputs, 2, 2), np.float32)
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      out[f'patch_embed.backbone.{index}.bn.{name}'] = np.ones(outputs,
                                                               np.float32)
  return out


_C = np.ones(64, np.float32)
HYBRID_REFUSALS = {
    'MobileCLIP ConvStem': (dict(add=_mci_convstem()),
                            "MobileCLIP's convolutional stem"),
    'timm ResNet-D': (dict(add={'patch_embed.backbone.conv1.0.weight': _C}),
                      "timm's ResNet-D"),
    'padding_same=False': (dict(model_args={'padding_same': False}),
                           'padding_same=False'),
    'missing backbone norm': (
        dict(remove=('patch_embed.backbone.norm.bias',)),
        "'patch_embed.backbone.norm.bias'"),
    'a ViT feature beside the backbone': (
        dict(add={'blocks.0.attn.q_norm.weight': np.ones(16, np.float32)}),
        'qk-norm'),
}


@pytest.mark.parametrize('case', sorted(HYBRID_REFUSALS))
def test_hybrid_refusal_names_the_feature(tmp_path, case):
  changes, message = HYBRID_REFUSALS[case]
  with pytest.raises(weights.CheckpointMismatchError) as error:
    weights.load(_write_hybrid_modified(tmp_path, **changes))
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_padding_same_true_is_the_default(tmp_path):
  loaded = weights.load(_write_hybrid_modified(
      tmp_path, model_args={'padding_same': True}))
  assert loaded.model.resnet_units == ()


# --------------------------------------------------------------- Mixer --

@pytest.mark.parametrize('name', sorted(fixtures.MIXERS))
def test_mixer_matches_numpy_timm(tmp_path, name):
  spec = fixtures.MIXERS[name]
  arrays = fixtures.mixer_state_dict(spec)
  loaded = weights.load(fixtures.write_mixer(tmp_path, name))
  pixels = fixtures.random_pixels(spec.image_size)
  expected = numpy_timm_mixer.forward(
      arrays, _timm_inputs(spec.mean, spec.std, pixels),
      global_pool=spec.global_pool)
  assert relative_error(_our_outputs(loaded, pixels), expected) <= 1e-5
  model = loaded.model
  assert isinstance(model, mixer.MlpMixer)
  assert (model.patch_size, model.hidden_size, model.num_layers,
          model.tokens_mlp_dim, model.channels_mlp_dim) == (
              (spec.patch, spec.patch), spec.embed_dim, spec.depth,
              spec.tokens_mlp_dim, spec.channels_mlp_dim)
  assert model.classifier == ('gap' if spec.global_pool else 'unpooled')
  assert model.num_classes == (spec.num_classes or None)
  # The released Mixer's tanh-GELU misses timm's output.
  released = model.clone(activation='gelu_tanh')
  assert relative_error(_our_outputs(loaded, pixels, released),
                        expected) > 1e-5


def _write_mixer_modified(tmp_path, *, add=None, remove=(), model_args=None,
                          architecture=None, changes=None):
  spec = dataclasses.replace(fixtures.MIXERS['mixer'], **(changes or {}))
  arrays = fixtures.mixer_state_dict(spec)
  arrays.update(add or {})
  for key in remove:
    del arrays[key]
  config = fixtures.mixer_config(spec)
  config['model_args'].update(model_args or {})
  if architecture:
    config['architecture'] = architecture
  return timm_fixtures.write_hub_dir(tmp_path, config, arrays)


_D = np.ones(48, np.float32)
MIXER_REFUSALS = {
    'ResMLP': (dict(add={'blocks.0.ls1': _D,
                         'blocks.0.linear_tokens.weight': np.ones(
                             (16, 16), np.float32)},
                    architecture='resmlp_12_224'), 'ResMLP blocks'),
    'gMLP': (dict(add={'blocks.0.mlp_channels.gate.proj.weight': np.ones(
        (16, 16), np.float32)}, architecture='gmlp_s16_224'),
             "gMLP's spatial gating unit"),
    'gMixer by name': (dict(architecture='gmixer_24_224'), 'gated MLPs'),
    'gated MLP by shape': (dict(add={'blocks.1.mlp_channels.fc2.weight':
                                     np.ones((48, 96), np.float32)}),
                           'gated MLP (GluMlp)'),
    'stem_norm': (dict(add={'stem.norm.weight': _D, 'stem.norm.bias': _D}),
                  'stem_norm=True'),
    'mlp_layer': (dict(model_args={'mlp_layer': 'GluMlp'}),
                  "model_args mlp_layer='GluMlp'"),
    'silu': (dict(model_args={'act_layer': 'silu'}), "act_layer='silu'"),
    'unknown key': (dict(add={'blocks.0.extra.weight': _D}),
                    'blocks.0.extra.weight'),
    'missing key': (dict(remove=('blocks.1.norm2.bias',)),
                    "'blocks.1.norm2.bias'"),
    'wrong token count': (dict(changes={'image_size': 48}),
                          'arrays are for 36 tokens'),
}


@pytest.mark.parametrize('case', sorted(MIXER_REFUSALS))
def test_mixer_refusal_names_the_feature(tmp_path, case):
  changes, message = MIXER_REFUSALS[case]
  directory = _write_mixer_modified(tmp_path, **changes)
  if case == 'wrong token count':  # 36 tokens' arrays, a 16-token config.
    config = json.loads((directory / 'config.json').read_text())
    config['pretrained_cfg']['input_size'] = [3, 32, 32]
    (directory / 'config.json').write_text(json.dumps(config))
  with pytest.raises(weights.CheckpointMismatchError) as error:
    weights.load(directory)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


# ---------------------------------------------------- the way onwards --

@pytest.mark.parametrize('write', [
    lambda directory: fixtures.write_hybrid(directory, 'r_ti'),
    lambda directory: fixtures.write_mixer(directory, 'mixer')],
                         ids=['hybrid', 'mixer'])
def test_saved_as_npz_it_computes_the_same(tmp_path, write):
  """Our `.npz` and its sidecar keep timm's numerics (the options)."""
  loaded = weights.load(write(tmp_path / 'hub'))
  path = tmp_path / 'model.npz'
  weights.save_npz(loaded.params, path, model=loaded.model,
                   image_size=loaded.image_size,
                   preprocessing=loaded.preprocessing)
  again = weights.load(path)
  assert again.model == loaded.model
  pixels = fixtures.random_pixels(loaded.image_size)
  np.testing.assert_array_equal(_our_outputs(again, pixels),
                                _our_outputs(loaded, pixels))


# -------------------------------------------------------- against timm --

# Every architecture with a pretrained tag in timm 1.0.31's
# vision_transformer_hybrid and mlp_mixer modules: None loads, a string is
# in the one-line refusal.
TIMM_ARCHITECTURES = {
    'vit_base_r50_s16_224': None, 'vit_base_r50_s16_384': None,
    'vit_large_r50_s32_224': None, 'vit_large_r50_s32_384': None,
    'vit_small_r26_s32_224': None, 'vit_small_r26_s32_384': None,
    'vit_tiny_r_s16_p8_224': None, 'vit_tiny_r_s16_p8_384': None,
    'mixer_b16_224': None, 'mixer_l16_224': None,
    # Its BatchNorms' int64 counters are skipped, as timm skips them.
    'vit_base_mci_224': "MobileCLIP's convolutional stem",
    'gmixer_24_224': 'gated MLPs',
    'gmlp_s16_224': "gMLP's spatial gating unit",
    'resmlp_12_224': 'ResMLP blocks', 'resmlp_24_224': 'ResMLP blocks',
    'resmlp_36_224': 'ResMLP blocks', 'resmlp_big_24_224': 'ResMLP blocks',
}


class TestAgainstTimm:
  """Models made by timm with one block and random weights, saved by
  save_for_hf, loaded by `weights.load`; and the NumPy references on timm's
  own arrays."""

  @pytest.fixture(autouse=True)
  def _needs_timm(self):
    self.torch = pytest.importorskip('torch')
    self.timm = pytest.importorskip('timm')

  def test_the_table_is_every_architecture(self):
    listed = {name.split('.')[0] for module in (
        'vision_transformer_hybrid', 'mlp_mixer')
              for name in self.timm.list_models(module=module,
                                                pretrained=True)}
    assert listed == set(TIMM_ARCHITECTURES)

  def _saved(self, tmp_path, name):
    """`name` with one block, 64-pixel images (a Mixer's blocks are cut:
    its constructors fix num_blocks) and random weights, saved."""
    self.torch.manual_seed(0)
    if name.startswith('vit_'):
      model = self.timm.create_model(name, depth=1, img_size=64)
    else:
      model = self.timm.create_model(name, img_size=64)
      model.blocks = model.blocks[:1]
    model.eval()
    with self.torch.no_grad():
      for param in model.parameters():
        param.add_(0.1 * self.torch.randn(param.shape))
    self.timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    return model

  def _timm_outputs(self, model, pixels):
    cfg = model.pretrained_cfg
    images = _timm_inputs(cfg['mean'], cfg['std'], pixels)
    with self.torch.no_grad():
      return model(self.torch.from_numpy(images.astype(np.float32))).numpy()

  @pytest.mark.slow
  @pytest.mark.parametrize('name', sorted(TIMM_ARCHITECTURES))
  def test_architecture_loads_or_is_refused(self, tmp_path, name):
    model = self._saved(tmp_path, name)
    refusal = TIMM_ARCHITECTURES[name]
    if refusal is not None:
      with pytest.raises(ValueError) as error:
        weights.load(tmp_path)
      assert refusal in str(error.value)
      assert '\n' not in str(error.value)
      return
    loaded = weights.load(tmp_path)
    pixels = fixtures.random_pixels(64)
    expected = self._timm_outputs(model, pixels)
    assert relative_error(_our_outputs(loaded, pixels), expected) <= 1e-4
    arrays = {key: value.numpy() for key, value in model.state_dict().items()}
    cfg = model.pretrained_cfg
    images = _timm_inputs(cfg['mean'], cfg['std'], pixels)
    if name.startswith('vit_'):
      reference = numpy_timm_hybrid.forward(
          arrays, images, num_heads=model.blocks[0].attn.num_heads,
          global_pool=model.global_pool)
    else:
      reference = numpy_timm_mixer.forward(arrays, images,
                                           global_pool=model.global_pool)
    assert relative_error(reference, expected) <= 1e-5
