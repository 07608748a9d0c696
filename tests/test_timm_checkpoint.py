"""timm hub checkpoints (`timm_hub.read`, which maps the arrays through the
ViT family's timm layout, `vit_jax.models.vit_timm`): every family against
the independent NumPy timm forward pass (tests/numpy_timm.py), what
config.json says, the errors for the timm features we lack, and hf-hub: ids
through a local hub cache.
`TestAgainstTimm` repeats the families with timm itself (skipped where torch
or timm is not installed)."""

import dataclasses
import json
import time

import huggingface_hub
from huggingface_hub import constants as hub_constants

import numpy as np
import pytest

from tests import numpy_timm
from tests import timm_fixtures
from vit_jax.models import vit
from vit_jax.weights import npz
from vit_jax.weights import timm_hub

FAMILIES = timm_fixtures.FAMILIES


assert_relatively_close = timm_fixtures.assert_relatively_close
_our_outputs = timm_fixtures.our_outputs
_timm_inputs = timm_fixtures.timm_inputs


# ------------------------------------------------- families vs reference --

@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_family_matches_numpy_timm(tmp_path, name):
  spec = FAMILIES[name]
  arrays = timm_fixtures.state_dict(spec)
  directory = timm_fixtures.write_hub_dir(tmp_path, timm_fixtures.config(spec),
                                          arrays)
  ckpt = timm_hub.read(directory)
  pixels = timm_fixtures.random_pixels(spec)
  expected = numpy_timm.forward(arrays, _timm_inputs(spec, pixels),
                                **spec.reference_options())
  assert_relatively_close(_our_outputs(ckpt, pixels), expected)

  kwargs = ckpt.model_kwargs
  assert kwargs['num_heads'] == spec.num_heads
  assert kwargs.get('activation', 'gelu_tanh') == spec.activation
  assert kwargs.get('layer_norm_epsilon', 1e-6) == spec.eps
  assert kwargs['num_classes'] == (spec.num_classes or None)
  assert ckpt.architecture == spec.architecture
  assert ckpt.image_size == (spec.image_size, spec.image_size)


def test_model_kwargs_of_dinov2_with_registers(tmp_path):
  ckpt = timm_hub.read(
      timm_fixtures.write_family(tmp_path, 'dinov2_reg'))
  assert ckpt.model_kwargs == dict(
      num_classes=None, patch_size=(14, 14), hidden_size=48, num_layers=2,
      num_heads=6, mlp_dim=96, classifier='token', activation='gelu_erf',
      num_register_tokens=4, layer_scale_init=1.0,
      posemb_covers_prefix=False)


def test_model_kwargs_of_clip_and_gap(tmp_path):
  clip = timm_hub.read(timm_fixtures.write_family(tmp_path / 'c',
                                                  'clip'))
  assert clip.model_kwargs == dict(
      num_classes=12, patch_size=(16, 16), hidden_size=48, num_layers=2,
      num_heads=4, mlp_dim=96, classifier='token', activation='gelu_erf',
      layer_norm_epsilon=1e-5, pre_norm=True)
  gap = timm_hub.read(timm_fixtures.write_family(tmp_path / 'g',
                                                 'gap_medium'))
  assert gap.model_kwargs == dict(
      num_classes=5, patch_size=(16, 16), hidden_size=48, num_layers=2,
      num_heads=8, mlp_dim=96, classifier='gap', activation='gelu_erf',
      layer_scale_init=1.0, qkv_bias=False)


def test_preprocessing_image_size_and_class_names(tmp_path):
  ckpt = timm_hub.read(timm_fixtures.write_family(tmp_path, 'augreg'))
  assert ckpt.preprocessing.mean == (127.5, 127.5, 127.5)
  assert ckpt.preprocessing.std == (127.5, 127.5, 127.5)
  assert ckpt.image_size == (32, 32)
  assert ckpt.class_names == ('cat', 'dog', 'eel', 'fox', 'gnu')
  deit = timm_hub.read(timm_fixtures.write_family(tmp_path / 'd',
                                                  'deit'))
  np.testing.assert_allclose(deit.preprocessing.mean,
                             (123.675, 116.28, 103.53), rtol=1e-12)
  np.testing.assert_allclose(deit.preprocessing.std,
                             (58.395, 57.12, 57.375), rtol=1e-12)
  assert deit.class_names is None


def test_class_names_as_an_index_dict(tmp_path):
  spec = FAMILIES['deit']
  config = timm_fixtures.config(spec)
  config['label_names'] = {'0': 'a', '1': 'b', '3': 'd', '4': 'e'}
  directory = timm_fixtures.write_hub_dir(tmp_path, config,
                                          timm_fixtures.state_dict(spec))
  assert timm_hub.read(directory).class_names == ('a', 'b', '2', 'd',
                                                  'e')


def test_params_are_float32_numpy(tmp_path):
  ckpt = timm_hub.read(timm_fixtures.write_family(tmp_path, 'deit3'))
  leaves = [ckpt.params['embedding']['kernel'],
            ckpt.params['Transformer']['encoderblock_1']['LayerScale_1']
            ['scale']]
  assert all(isinstance(x, np.ndarray) and x.dtype == np.float32
             for x in leaves)
  assert ckpt.params['embedding']['kernel'].shape == (16, 16, 3, 48)


def test_half_precision_files_read_as_float32(tmp_path):
  spec = FAMILIES['deit']
  arrays = timm_fixtures.state_dict(spec)
  half = {key: value.astype(np.float16) for key, value in arrays.items()}
  ckpt = timm_hub.read(timm_fixtures.write_hub_dir(
      tmp_path, timm_fixtures.config(spec), half))
  kernel = ckpt.params['head']['kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, half['head.weight'].T)


# ----------------------------------------------------------------- errors --

def _write_modified(tmp_path, name, *, spec_changes=None, add=None,
                    remove=(), config_changes=None, model_args=None):
  spec = dataclasses.replace(FAMILIES[name], **(spec_changes or {}))
  arrays = timm_fixtures.state_dict(spec)
  arrays.update(add or {})
  for key in remove:
    del arrays[key]
  config = timm_fixtures.config(spec)
  config.update(config_changes or {})
  config['model_args'].update(model_args or {})
  return timm_fixtures.write_hub_dir(tmp_path, config, arrays)


_D = np.zeros((48,), np.float32)
UNSUPPORTED = {
    'qk-norm': (dict(add={'blocks.0.attn.q_norm.weight': np.ones(8)}),
                'qk-norm'),
    'SwiGLU without fc1_x': (dict(add={
        'blocks.0.mlp.fc1_g.weight': np.ones((96, 48))}),
                             "'blocks.0.mlp.fc1_x.weight'"),
    'SwiGLU packed in one block only': (dict(add={
        'blocks.1.mlp.fc1.weight': np.ones((192, 48)),
        'blocks.1.mlp.fc1.bias': np.ones(192)}), 'Dense_value'),
    'scale_attn_norm without bias': (dict(add={
        'blocks.0.attn.norm.weight': _D}), "'blocks.0.attn.norm.bias'"),
    'rotary keys': (dict(add={'rope.freqs': np.ones(4)}), 'rotary'),
    'differential attention': (dict(add={'blocks.0.attn.lambda_q1': _D}),
                               'differential attention'),
    'hybrid backbone': (dict(add={'patch_embed.backbone.0.conv.weight': _D}),
                        'CNN backbone'),
    'parallel keys the definition does not name': (dict(add={
        'blocks.0.in_proj.weight': np.ones((240, 48))}), 'block_fn'),
    'dual lambda': (dict(add={'blocks.0.attn.lambda_a': np.ones(())}),
                    'dual_lambda'),
    'qk_norm in model_args': (dict(model_args={'qk_norm': True}),
                              'qk_norm=True'),
    'avgmax': (dict(model_args={'global_pool': 'avgmax'}), "'avgmax'"),
    'max': (dict(model_args={'global_pool': 'max'}), "'max'"),
    'no final norm': (dict(remove=('norm.weight', 'norm.bias')),
                      'final_norm=False'),
    'block_fn': (dict(model_args={'block_fn': 'ParallelThingsBlock'}),
                 'block_fn'),
    'hardswish': (dict(model_args={'act_layer': 'hard_swish'}),
                  "act_layer='hard_swish'"),
    'batchnorm': (dict(model_args={'norm_layer': 'batchnorm'}),
                  "norm_layer='batchnorm'"),
    'unknown key': (dict(add={'blocks.0.attn.extra.weight': _D}),
                    'blocks.0.attn.extra.weight'),
    'head_dist without dist_token': (dict(add={
        'head_dist.weight': np.ones((5, 48)), 'head_dist.bias': np.ones(5)}),
                                     'head_dist.bias, head_dist.weight'),
    'missing key': (dict(remove=('blocks.1.norm2.bias',)),
                    "'blocks.1.norm2.bias'"),
    'one block without qkv bias': (dict(remove=('blocks.1.attn.qkv.bias',)),
                                   'encoderblock_1'),
}


@pytest.mark.parametrize('case', sorted(UNSUPPORTED))
def test_unsupported_feature_is_a_clear_error(tmp_path, case):
  changes, message = UNSUPPORTED[case]
  directory = _write_modified(tmp_path, 'deit', **changes)
  with pytest.raises(npz.CheckpointMismatchError) as error:
    timm_hub.read(directory)
  assert message in str(error.value)


def test_options_of_timms_vit_variants(tmp_path):
  """What the definitions and arrays turn into (the numerics are checked
  against the reference above)."""
  expected = {
      'post_norm': dict(block='post_norm', classifier='gap'),
      'parallel': dict(block='parallel', fc_norm=True),
      'differential': dict(differential_attention=True, num_heads=4),
      'differential_parallel': dict(block='parallel',
                                    differential_attention=True),
      'rms_norm_embed_norm': dict(norm_layer='rms_norm', embed_norm=True),
      'no_final_norm': dict(final_norm=False, classifier='token'),
      'class_token_avg': dict(classifier='gap', extra_class_token=True,
                              fc_norm=True),
      'avg_over_prefix': dict(classifier='gap', pool_include_prefix=True),
      'map_patches_only': dict(classifier='map', pool_include_prefix=False),
  }
  for name, options in expected.items():
    kwargs = timm_hub.read(timm_fixtures.write_family(tmp_path / name, name)
                           ).model_kwargs
    assert {key: kwargs.get(key) for key in options} == options, name
  kwargs = timm_hub.read(timm_fixtures.write_family(
      tmp_path / 'deit', 'deit')).model_kwargs
  for key in ('block', 'norm_layer', 'final_norm', 'extra_class_token',
              'pool_include_prefix', 'embed_norm', 'differential_attention'):
    assert key not in kwargs  # Defaults are left out.


def test_floor_grid_loads_at_the_stored_size(tmp_path):
  """40 px of 16-px patches: a 2x2 grid at the 40 px config.json says."""
  from vit_jax.weights import pretrained  # pylint: disable=g-import-not-at-top
  loaded = pretrained.load(str(timm_fixtures.write_family(tmp_path,
                                                           'floor_grid')))
  assert loaded.image_size == 40
  with pytest.raises(ValueError, match='not a multiple'):
    pretrained.load(str(tmp_path), image_size=36)


def test_differential_attention_needs_the_unrolled_encoder(tmp_path):
  kwargs = timm_hub.read(timm_fixtures.write_family(
      tmp_path, 'differential')).model_kwargs
  model = vit.VisionTransformer(**kwargs, scan_layers=True)
  with pytest.raises(ValueError, match='needs scan_layers=False'):
    model.init(__import__('jax').random.PRNGKey(0),
               np.zeros((1, 32, 32, 3), np.float32))


def test_several_latent_queries_are_an_error(tmp_path):
  directory = _write_modified(
      tmp_path, 'siglip', add={'attn_pool.latent': np.ones((1, 2, 48))})
  with pytest.raises(npz.CheckpointMismatchError, match='2 latent queries'):
    timm_hub.read(directory)


def test_heads_come_from_the_definition(tmp_path):
  # flexivit_small: 6 heads in timm's definition, no name rule.
  directory = _write_modified(
      tmp_path, 'deit', config_changes={'architecture': 'flexivit_small'})
  assert timm_hub.read(directory).model_kwargs['num_heads'] == 6


def test_unknown_heads_ask_for_model_args(tmp_path):
  directory = _write_modified(
      tmp_path, 'deit', config_changes={'architecture': 'vit_mystery_224'})
  with pytest.raises(ValueError, match='"model_args": {"num_heads": ...}'):
    timm_hub.read(directory)


def test_model_args_override_the_definition(tmp_path):
  # deit_small's definition says 6 heads; the file's model_args say 4 (48 / 4 = 12).
  directory = _write_modified(tmp_path, 'deit', model_args={'num_heads': 4})
  assert timm_hub.read(directory).model_kwargs['num_heads'] == 4


def test_pickle_only_directory_is_refused(tmp_path):
  (tmp_path / 'config.json').write_text(
      json.dumps(timm_fixtures.config(FAMILIES['deit'])))
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not unpickled')
  with pytest.raises(FileNotFoundError,
                     match='has only pytorch_model.bin: vit_jax never'):
    timm_hub.read(tmp_path)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a directory'):
    timm_hub.read(tmp_path / 'absent')
  with pytest.raises(FileNotFoundError, match='no config.json'):
    timm_hub.read(tmp_path)
  (tmp_path / 'config.json').write_text('{"architecture": "x"}')
  with pytest.raises(FileNotFoundError, match='no model.safetensors'):
    timm_hub.read(tmp_path)


def test_corrupt_weights(tmp_path):
  directory = _write_modified(tmp_path, 'deit')
  (directory / 'model.safetensors').write_bytes(b'\x08\x00\x00\x00')
  with pytest.raises(ValueError, match='not a readable safetensors file'):
    timm_hub.read(directory)


def test_malformed_config(tmp_path):
  directory = _write_modified(tmp_path, 'deit')
  (directory / 'config.json').write_text('{"architecture": "deit_x"}')
  with pytest.raises(ValueError, match='not a timm config.json'):
    timm_hub.read(directory)


def test_is_timm_source(tmp_path):
  assert timm_hub.is_timm_source('hf-hub:timm/vit_base_patch16_224')
  assert not timm_hub.is_timm_source(tmp_path)
  assert not timm_hub.is_timm_source(tmp_path / 'ViT-B_16.npz')
  assert not timm_hub.is_timm_source(None)
  (tmp_path / 'config.json').write_text('{}')
  assert timm_hub.is_timm_source(tmp_path)
  assert timm_hub.is_timm_source(str(tmp_path))


# ----------------------------------------------------------------- hf-hub --

@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  """An empty hub cache, offline. huggingface_hub reads the environment at
  import, so its constants are set too."""
  cache = tmp_path / 'hub-cache'
  cache.mkdir()
  monkeypatch.setenv('HF_HUB_CACHE', str(cache))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', True)
  return cache


def test_hf_hub_id_reads_the_local_cache(tmp_path, offline_cache):
  directory = timm_fixtures.write_family(tmp_path / 'files', 'siglip')
  commit = timm_fixtures.write_hub_cache(offline_cache, 'org/tiny-siglip',
                                         directory)
  # huggingface_hub itself recognises the layout.
  repos = huggingface_hub.scan_cache_dir(offline_cache).repos
  assert [repo.repo_id for repo in repos] == ['org/tiny-siglip']
  expected = timm_hub.read(directory)
  for source in ('hf-hub:org/tiny-siglip', f'hf-hub:org/tiny-siglip@{commit}'):
    ckpt = timm_hub.read(source)
    assert ckpt.model_kwargs == expected.model_kwargs
    pixels = timm_fixtures.random_pixels(FAMILIES['siglip'])
    np.testing.assert_array_equal(_our_outputs(ckpt, pixels),
                                  _our_outputs(expected, pixels))


def test_hf_hub_offline_miss_says_what_to_do(offline_cache):
  with pytest.raises(FileNotFoundError) as error:
    timm_hub.read('hf-hub:org/not-cached')
  message = str(error.value)
  for part in ('config.json is not in the Hugging Face cache',
               str(offline_cache), 'hf download org/not-cached',
               'pass that directory instead of the id'):
    assert part in message


def test_hf_hub_unreachable_fails_at_once(tmp_path, monkeypatch):
  # Online mode, an empty cache and a hub that refuses connections: without
  # the connection check, huggingface_hub retries for about 25 s.
  cache = tmp_path / 'hub-cache'
  cache.mkdir()
  for proxy in ('HTTPS_PROXY', 'HTTP_PROXY', 'ALL_PROXY'):
    monkeypatch.delenv(proxy, raising=False)
    monkeypatch.delenv(proxy.lower(), raising=False)
  monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', False)
  monkeypatch.setattr(hub_constants, 'ENDPOINT', 'http://127.0.0.1:9')
  monkeypatch.setattr(hub_constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                      'http://127.0.0.1:9/{repo_id}/resolve/{revision}/'
                      '{filename}')
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as error:
    timm_hub.read('hf-hub:org/not-cached')
  assert time.monotonic() - start < 3
  for part in ('config.json is not in the Hugging Face cache',
               'no network to http://127.0.0.1:9', 'hf download org/not-cached'):
    assert part in str(error.value)


def test_behind_a_proxy_the_hub_is_left_to_huggingface_hub(monkeypatch):
  monkeypatch.setenv('HTTPS_PROXY', 'http://127.0.0.1:9')
  monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', False)
  # A direct connection would be refused: the proxy is what must be used.
  monkeypatch.setattr(hub_constants, 'ENDPOINT', 'http://127.0.0.1:9')
  assert timm_hub._hub_reachable()  # pylint: disable=protected-access


def test_hf_hub_cache_without_weights(tmp_path, offline_cache):
  directory = timm_fixtures.write_family(tmp_path / 'files', 'deit')
  (directory / 'model.safetensors').unlink()
  timm_fixtures.write_hub_cache(offline_cache, 'org/partial', directory)
  with pytest.raises(FileNotFoundError,
                     match='model.safetensors is not in the Hugging Face'):
    timm_hub.read('hf-hub:org/partial')


def test_bad_hub_id():
  with pytest.raises(ValueError, match='is not an "hf-hub:ORG/NAME" id'):
    timm_hub.read('hf-hub:no-org')


# ------------------------------------------------------------ timm itself --

# create_model overrides of the tiny timm model of each family.
TIMM_OVERRIDES = {
    'augreg': {}, 'deit': {}, 'deit_distilled': {}, 'dino': {},
    'dinov2_reg': {}, 'siglip_gelu_tanh': {}, 'gap_medium': {},
    'gap_fc_norm_registers': {}, 'unpooled': {},
    'deit3': dict(num_heads=4), 'mae': dict(num_heads=2),
    'clip': dict(num_heads=4), 'clip_quickgelu': dict(num_heads=4),
    'siglip': dict(num_heads=4),
    'map_registers': dict(num_heads=4, pool_include_prefix=True),
    'post_norm': dict(num_heads=4), 'parallel': {}, 'differential': {},
    'differential_parallel': {}, 'no_final_norm': {},
    'rms_norm_embed_norm': dict(num_heads=4, norm_layer='rmsnorm',
                                embed_norm_layer='rmsnorm'),
    'class_token_avg': dict(num_heads=4),
    'avg_over_prefix': dict(pool_include_prefix=True),
    'map_patches_only': dict(num_heads=4, reg_tokens=2),
    'floor_grid': dict(num_heads=4),
}


class TestAgainstTimm:
  """Tiny models made and saved by timm itself (save_for_hf), loaded by us,
  on the same pixels; and the NumPy reference on timm's arrays."""

  @pytest.fixture(autouse=True)
  def _needs_timm(self):
    self.torch = pytest.importorskip('torch')
    self.timm = pytest.importorskip('timm')

  def _saved(self, tmp_path, name):
    spec = FAMILIES[name]
    model = self.timm.create_model(
        spec.architecture, pretrained=False, depth=2,
        embed_dim=spec.embed_dim, img_size=spec.image_size,
        num_classes=spec.num_classes, global_pool=spec.global_pool,
        **TIMM_OVERRIDES[name]).eval()
    generator = self.torch.Generator().manual_seed(0)
    with self.torch.no_grad():
      for param in model.parameters():  # Moves small inits (LayerScale).
        param.add_(0.2 * self.torch.randn(param.shape, generator=generator))
    self.timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    return model, timm_hub.read(tmp_path)

  @pytest.mark.parametrize('name', sorted(TIMM_OVERRIDES))
  def test_family_matches_timm(self, tmp_path, name):
    model, ckpt = self._saved(tmp_path, name)
    cfg = model.pretrained_cfg
    spec = dataclasses.replace(FAMILIES[name], mean=cfg['mean'],
                               std=cfg['std'])
    pixels = timm_fixtures.random_pixels(spec)
    with self.torch.no_grad():
      expected = model(self.torch.from_numpy(
          _timm_inputs(spec, pixels).astype(np.float32))).numpy()
    assert_relatively_close(_our_outputs(ckpt, pixels), expected)
    arrays = {key: value.numpy() for key, value in model.state_dict().items()}
    assert_relatively_close(
        numpy_timm.forward(arrays, _timm_inputs(spec, pixels),
                           **spec.reference_options()), expected)
