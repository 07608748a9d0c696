"""The way back to timm (`vit_jax.weights.save_timm`): our ViTs of every
option timm expresses, written as hub directories, read back by our own
loader to the same parameters, computed by the independent NumPy forward
pass on timm's keys (tests/numpy_timm.py) to our outputs, and, where timm is
installed, loaded by `timm.create_model('local-dir:...')` to our outputs;
the architecture each gets; the refusals; a timm checkpoint fine-tuned with
a new head and written back."""

import dataclasses
import json

import flax
import jax
import numpy as np
import pytest

from tests import numpy_timm
from tests import timm_fixtures
from vit_jax import models
from vit_jax import weights
from vit_jax.models import family
from vit_jax.models import vit
from vit_jax.weights import safetensors_file
from vit_jax.weights import timm_hub
from vit_jax.weights import to_timm

SIZE = 32
# Tiny ViTs, one per option of the forward mapping (vit_timm).
BASE = dict(num_classes=5, patch_size=(16, 16), hidden_size=48, num_layers=2,
            num_heads=3, mlp_dim=96)
MODELS = {
    'token': {},  # The released models' tanh GELU.
    'gap_fc_norm_registers': dict(
        classifier='gap', fc_norm=True, qkv_bias=False, num_heads=4,
        num_register_tokens=2, posemb_covers_prefix=False,
        layer_scale_init=0.1, activation='gelu_erf'),
    'map_registers': dict(classifier='map', num_register_tokens=2),
    'distilled': dict(distillation=True, layer_scale_init=1.0),
    'clip_rectangular_patch': dict(pre_norm=True, layer_norm_epsilon=1e-5,
                                   activation='quick_gelu',
                                   patch_size=(16, 8)),
    'unpooled_without_posemb': dict(classifier='unpooled', num_classes=0,
                                    posemb='none'),
    # A class token no head reads: timm's class_token beside 'avg' (BEiT-3).
    'gap_extra_class_token': dict(classifier='gap', extra_class_token=True),
    'token_unpooled': dict(classifier='token_unpooled', num_classes=3),
}
# config.json's act_layer -> tests.numpy_timm's activation.
_REFERENCE_ACTIVATION = {'gelu_tanh': 'gelu_tanh', 'gelu': 'gelu_erf',
                         'quick_gelu': 'quick_gelu'}


def _model(name: str) -> vit.VisionTransformer:
  return vit.VisionTransformer(**{**BASE, **MODELS[name]})


def _random_params(model, seed: int = 0):
  """Initialised, then moved by ~0.2 everywhere (the zero head too)."""
  params = models.init_params(model, jax.random.PRNGKey(seed), (SIZE, SIZE))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  rng = np.random.default_rng(seed)
  moved = {key: (np.asarray(value) + 0.2 * rng.standard_normal(value.shape)
                 ).astype(np.float32) for key, value in flat.items()}
  if model.pre_norm:  # timm's pre_norm ViTs have no patch-embedding bias.
    moved['embedding/bias'] = np.zeros_like(moved['embedding/bias'])
  return flax.traverse_util.unflatten_dict(moved, sep='/')


def _pixels(seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      -1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def _relative_error(actual, expected) -> float:
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _same_function(rebuilt, model) -> bool:
  """Equal fields, up to what computes the same: no head as None or 0,
  the LayerScale init (its loaded scales replace it)."""
  def fields(module):
    return dict(
        {field.name: getattr(module, field.name)
         for field in dataclasses.fields(module)
         if field.name not in ('parent', 'name')},
        num_classes=module.num_classes or 0,
        layer_scale_init=module.layer_scale_init is not None)
  return fields(rebuilt) == fields(model)


def _written(tmp_path, name):
  model = _model(name)
  params = _random_params(model)
  # Neither a missing position embedding nor one of rectangular patches
  # says its grid.
  square = model.patch_size[0] == model.patch_size[1]
  image_size = SIZE if model.posemb == 'none' or not square else None
  config = weights.save_timm(params, model, tmp_path, image_size=image_size)
  return model, params, config


# ----------------------------------------------- round trip, no timm needed --

@pytest.mark.parametrize('name', sorted(MODELS))
def test_round_trip_and_the_numpy_reference(tmp_path, name):
  """Our loader gives back the same tree and model; the NumPy forward pass
  on the written timm keys, with what config.json says, our outputs."""
  model, params, config = _written(tmp_path, name)
  checkpoint = timm_hub.read(tmp_path)
  ours = jax.tree_util.tree_map(np.asarray, params)
  back = jax.tree_util.tree_map(np.asarray, checkpoint.params)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(
      ours)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, ours)
  assert _same_function(vit.VisionTransformer(**checkpoint.model_kwargs),
                        model)

  state_dict = {key: np.asarray(value) for key, value in
                safetensors_file.open_safetensors(
                    tmp_path / 'model.safetensors').items()}
  pixels = _pixels()
  args = config['model_args']
  reference = numpy_timm.forward(
      state_dict, pixels.transpose(0, 3, 1, 2), num_heads=args['num_heads'],
      global_pool=args['global_pool'],
      no_embed_class=not model.posemb_covers_prefix,
      eps=model.layer_norm_epsilon,
      activation=_REFERENCE_ACTIVATION[args['act_layer']],
      pool_include_prefix=args.get('pool_include_prefix', False))
  expected = model.apply({'params': params}, pixels)
  assert _relative_error(reference, expected) < 1e-5


def test_a_sincos_embedding_goes_as_its_table(tmp_path):
  """'Better plain ViT baselines' models (sin-cos, 'gap'): timm's learned
  pos_embed over the patches holds the table at the written size; the NumPy
  forward pass on the written keys, and our loader, compute our outputs."""
  model = vit.VisionTransformer(**{**BASE, 'posemb': 'sincos2d',
                                   'classifier': 'gap', 'num_classes': 3})
  params = _random_params(model)
  config = weights.save_timm(params, model, tmp_path, image_size=SIZE)
  assert config['model_args']['no_embed_class'] is True
  state_dict = {key: np.asarray(value) for key, value in
                safetensors_file.open_safetensors(
                    tmp_path / 'model.safetensors').items()}
  pixels = _pixels()
  expected = model.apply({'params': params}, pixels)
  reference = numpy_timm.forward(
      state_dict, pixels.transpose(0, 3, 1, 2),
      num_heads=config['model_args']['num_heads'], global_pool='avg',
      no_embed_class=True, eps=model.layer_norm_epsilon,
      activation=_REFERENCE_ACTIVATION[config['model_args']['act_layer']])
  assert _relative_error(reference, expected) < 1e-5
  loaded = timm_hub.read(tmp_path)
  back = vit.VisionTransformer(**loaded.model_kwargs)
  assert _relative_error(back.apply({'params': loaded.params}, pixels),
                         expected) < 1e-5


def test_config_json_says_what_timm_needs(tmp_path):
  model = _model('token')
  weights.save_timm(
      _random_params(model), model, tmp_path,
      preprocessing=family.Preprocessing(mean=(0., 127.5, 255.),
                                         std=(255., 127.5, 51.)),
      class_names=('a', 'b', 'c', 'd', 'e'))
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['architecture'] == 'vit_tiny_patch16_224'
  assert config['label_names'] == ['a', 'b', 'c', 'd', 'e']
  assert config['num_classes'] == 5 and config['global_pool'] == 'token'
  assert config['model_args'] == {
      'embed_dim': 48, 'depth': 2, 'mlp_ratio': 2.0, 'num_heads': 3,
      'act_layer': 'gelu_tanh', 'img_size': [32, 32], 'num_classes': 5,
      'global_pool': 'token', 'in_chans': 3}
  cfg = config['pretrained_cfg']
  assert cfg['input_size'] == [3, 32, 32]
  assert cfg['mean'] == [0.0, 0.5, 1.0] and cfg['std'] == [1.0, 0.5, 0.2]
  checkpoint = timm_hub.read(tmp_path)
  assert checkpoint.class_names == ('a', 'b', 'c', 'd', 'e')
  assert checkpoint.preprocessing.mean == (0.0, 127.5, 255.0)


TANH = {'act_layer': 'gelu_tanh'}


@pytest.mark.parametrize('variant, image_size, architecture, overrides', [
    ('ViT-B_16', 384, 'vit_base_patch16_384', TANH),
    ('ViT-B_16', 224, 'vit_base_patch16_224', TANH),
    ('ViT-L_32', 224, 'vit_large_patch32_224', TANH),
    ('ViT-S_16', 224, 'vit_small_patch16_224', TANH),
])
def test_released_variants_get_their_timm_name(variant, image_size,
                                               architecture, overrides):
  # The released models use the tanh GELU, timm's definitions the exact one:
  # the one override.
  model = models.create_model(variant, num_classes=1000)
  shapes = models.param_shapes(model, (image_size, image_size))
  params = jax.tree_util.tree_map(
      lambda s: np.zeros(s.shape, np.float32), shapes)
  conversion = to_timm.convert(params, model, (image_size, image_size))
  assert to_timm.choose_architecture(
      conversion, (image_size, image_size)) == (architecture, overrides)
  assert conversion.args['act_layer'] == 'gelu_tanh'


@pytest.mark.parametrize('name, architecture', [
    # The 1e-5 LayerNorm's, and of those the quick GELU's.
    ('clip_rectangular_patch', 'vit_base_patch16_clip_quickgelu_224'),
    ('distilled', 'deit_tiny_distilled_patch16_224'),  # Three heads.
    # A MAP head and the tanh GELU: SigLIP's (registers are an override).
    ('map_registers', 'vit_giantopt_patch16_siglip_256'),
])
def test_fixed_arguments_choose_the_definition(name, architecture):
  model = _model(name)
  conversion = to_timm.convert(_random_params(model), model, (SIZE, SIZE))
  chosen, _ = to_timm.choose_architecture(conversion, (SIZE, SIZE))
  assert chosen == architecture


@pytest.mark.parametrize('changes, message', [
    (dict(representation_size=8), 'timm cannot express a tanh pre_logits'),
    (dict(layer_norm_epsilon=1e-3),
     "timm cannot express layer_norm_epsilon=0.001: timm's ViT definitions"),
    (dict(distillation=True, num_register_tokens=1),
     'timm cannot express register tokens beside a distillation token'),
])
def test_what_timm_cannot_express_is_refused_by_name(tmp_path, changes,
                                                     message):
  model = vit.VisionTransformer(**{**BASE, **changes})
  params = models.init_params(model, jax.random.PRNGKey(0), (SIZE, SIZE))
  with pytest.raises(to_timm.Untranslatable, match=message):
    weights.save_timm(params, model, tmp_path, image_size=SIZE)
  assert not list(tmp_path.iterdir())  # Refused before anything is written.


def test_patch_embedding_bias_beside_pre_norm_is_refused(tmp_path):
  model = _model('clip_rectangular_patch')
  params = _random_params(model)
  params['embedding']['bias'] = np.ones_like(params['embedding']['bias'])
  with pytest.raises(to_timm.Untranslatable,
                     match='a patch-embedding bias beside pre_norm'):
    weights.save_timm(params, model, tmp_path, image_size=SIZE)


def test_class_names_must_fit_the_head(tmp_path):
  model = _model('token')
  with pytest.raises(ValueError, match='2 class names for a head of 5'):
    weights.save_timm(_random_params(model), model, tmp_path,
                      class_names=('a', 'b'))


def test_scanned_params_are_written_per_block(tmp_path):
  model = vit.VisionTransformer(**BASE, scan_layers=True)
  unrolled = _model('token')
  params = _random_params(unrolled)
  scanned = models.vit_layout.stack_blocks(params)
  weights.save_timm(scanned, model, tmp_path)
  back = timm_hub.read(tmp_path).params
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_fine_tuned_timm_checkpoint_goes_back_with_its_new_head(tmp_path):
  source = timm_fixtures.write_family(tmp_path / 'source', 'augreg')
  loaded = weights.load(source)
  model = loaded.model.clone(num_classes=3)
  init = models.init_params(model, jax.random.PRNGKey(0), (SIZE, SIZE))
  params = weights.load_for_fine_tuning(source, model, init,
                                        image_size=(SIZE, SIZE))
  params['head']['kernel'] = np.random.default_rng(0).standard_normal(
      params['head']['kernel'].shape).astype(np.float32)
  weights.save_timm(params, model, tmp_path / 'back',
                    preprocessing=loaded.preprocessing,
                    class_names=('x', 'y', 'z'))
  back = weights.load(tmp_path / 'back')
  assert back.model.num_classes == 3 and back.class_names == ('x', 'y', 'z')
  pixels = _pixels()
  np.testing.assert_array_equal(
      back.model.apply({'params': back.params}, pixels),
      model.apply({'params': params}, pixels))
  # The backbone is the source's, unchanged.
  np.testing.assert_array_equal(back.params['cls'], loaded.params['cls'])


# ------------------------------------------------------------ timm itself --

class TestTimmLoadsIt:
  """timm.create_model('local-dir:...') on what save_timm wrote gives our
  outputs (skipped where torch or timm is not installed)."""

  @pytest.fixture(autouse=True)
  def _needs_timm(self):
    self.torch = pytest.importorskip('torch')
    self.timm = pytest.importorskip('timm')

  def _timm_outputs(self, directory, pixels_BHWC):
    model = self.timm.create_model(f'local-dir:{directory}',
                                   pretrained=True).eval()
    with self.torch.no_grad():
      return model(self.torch.from_numpy(
          pixels_BHWC.transpose(0, 3, 1, 2).copy())).numpy()

  @pytest.mark.parametrize('name', sorted(MODELS))
  def test_timm_gives_our_outputs(self, tmp_path, name):
    model, params, _ = _written(tmp_path, name)
    pixels = _pixels()
    expected = model.apply({'params': params}, pixels)
    assert _relative_error(self._timm_outputs(tmp_path, pixels),
                           expected) < 1e-4

  def test_fine_tuned_timm_checkpoint_in_timm(self, tmp_path):
    spec = timm_fixtures.FAMILIES['clip']
    source = timm_fixtures.write_family(tmp_path / 'source', 'clip')
    loaded = weights.load(source)
    model = loaded.model.clone(num_classes=3)
    init = models.init_params(model, jax.random.PRNGKey(0), (SIZE, SIZE))
    params = weights.load_for_fine_tuning(source, model, init,
                                          image_size=(SIZE, SIZE))
    params['head']['kernel'] = np.random.default_rng(0).standard_normal(
        params['head']['kernel'].shape).astype(np.float32)
    weights.save_timm(params, model, tmp_path / 'back',
                      preprocessing=loaded.preprocessing)
    pixels = timm_fixtures.random_pixels(spec)  # [0, 255]
    mean = np.asarray(loaded.preprocessing.mean, np.float32)
    std = np.asarray(loaded.preprocessing.std, np.float32)
    expected = model.apply({'params': params}, (pixels - mean) / std)
    timm_model = self.timm.create_model(f'local-dir:{tmp_path / "back"}',
                                        pretrained=True).eval()
    cfg = timm_model.pretrained_cfg
    timm_pixels = ((pixels / 255. - np.asarray(cfg['mean'])) /
                   np.asarray(cfg['std'])).astype(np.float32)
    with self.torch.no_grad():
      actual = timm_model(self.torch.from_numpy(
          timm_pixels.transpose(0, 3, 1, 2).copy())).numpy()
    assert actual.shape == (2, 3)
    assert _relative_error(actual, expected) < 1e-4


# --------------------------------------------------- the export program --

def test_export_program_writes_a_timm_directory(tmp_path, capsys):
  from vit_jax.cli import export as export_cli  # pylint: disable=g-import-not-at-top
  source = timm_fixtures.write_family(tmp_path / 'source', 'augreg')
  out = tmp_path / 'out'
  assert export_cli.run(str(source), str(out), output_format='timm') == {}
  assert sorted(path.name for path in out.iterdir()) == [
      'config.json', 'model.safetensors']
  assert f"timm.create_model('local-dir:{out}'" in capsys.readouterr().out
  before, after = timm_hub.read(source), timm_hub.read(out)
  assert after.architecture == 'vit_tiny_patch16_224'
  assert after.class_names == before.class_names
  assert after.preprocessing == before.preprocessing
  jax.tree_util.tree_map(np.testing.assert_array_equal, after.params,
                         before.params)


def test_export_program_refuses_what_timm_cannot_express(tmp_path):
  from vit_jax.cli import export as export_cli  # pylint: disable=g-import-not-at-top
  model = vit.VisionTransformer(**BASE, representation_size=8)
  path = tmp_path / 'model.npz'
  weights.save_npz(models.init_params(model, jax.random.PRNGKey(0),
                                      (SIZE, SIZE)), path, model=model)
  with pytest.raises(to_timm.Untranslatable, match='pre_logits'):
    export_cli.run(str(path), str(tmp_path / 'out'), output_format='timm')
  assert not (tmp_path / 'out').exists()
