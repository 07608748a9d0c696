"""timm's NaFlexVit hub checkpoints (`vit_jax.models.naflex_timm`, read by
`timm_hub.read` through the ViT family's timm layouts): each tiny model
against the independent NumPy NaFlexVit (tests/numpy_naflex.py), the
position-embedding resize methods against a NumPy PyTorch `F.interpolate`,
the refusals, and `TestAgainstTimm` with timm itself where it is installed.
"""

import numpy as np
import pytest

from tests import naflex_fixtures
from tests import numpy_naflex
from tests import timm_fixtures
from vit_jax.models import naflex_timm
from vit_jax.models import posemb
from vit_jax.models import vit_family
from vit_jax.models import vit_timm
from vit_jax.weights import pretrained
from vit_jax.weights import timm_hub

FAMILIES = naflex_fixtures.FAMILIES


assert_relatively_close = timm_fixtures.assert_relatively_close
_our_outputs = timm_fixtures.our_outputs
_timm_inputs = timm_fixtures.timm_inputs


# --------------------------------------------- the resize, against NumPy --

# (method, F.interpolate's mode, align_corners, antialias).
_TORCH_EQUIVALENTS = (
    ('bilinear_aligned', 'bilinear', True, False),
    ('bilinear', 'bilinear', False, False),
    ('bilinear_antialias', 'bilinear', False, True),
    ('bicubic_antialias', 'bicubic', False, True),
)
_GRIDS = (((4, 4), (3, 6)), ((16, 16), (24, 24)), ((12, 12), (3, 3)),
          ((5, 7), (9, 2)))


@pytest.mark.parametrize('method, mode, align_corners, antialias',
                         _TORCH_EQUIVALENTS)
@pytest.mark.parametrize('old_grid, new_grid', _GRIDS)
def test_resize_methods_compute_torch_interpolate(
    method, mode, align_corners, antialias, old_grid, new_grid):
  grid_HWD = np.random.default_rng(0).normal(size=(*old_grid, 3))
  expected = numpy_naflex.interpolate(
      grid_HWD, new_grid, mode=mode, align_corners=align_corners,
      antialias=antialias)
  resized = posemb.resize(grid_HWD.reshape(1, -1, 3), new_grid,
                          num_prefix_tokens=0, old_grid=old_grid,
                          method=method)
  # jax.image.resize computes in float32 (off by up to ~4e-6 here); a
  # method that is not torch's is off by ~1e-2.
  np.testing.assert_allclose(resized[0], expected.reshape(-1, 3), atol=1e-5)


def test_antialias_changes_shrinking_only():
  grid = np.random.default_rng(0).normal(size=(1, 36, 2))
  for plain, smooth in (('bilinear', 'bilinear_antialias'),
                        ('bicubic', 'bicubic_antialias')):
    resize = lambda method, size: posemb.resize(
        grid, size, num_prefix_tokens=0, method=method)
    np.testing.assert_allclose(resize(plain, (9, 9)), resize(smooth, (9, 9)),
                               atol=1e-6)
    assert np.abs(resize(plain, (3, 3)) - resize(smooth, (3, 3))).max() > .05


def test_timm_position_embedding_aspect_preserving_and_factorized():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
  cfg = dict(pos_embed_interp_mode='bicubic', pos_embed_align_corners=False,
             pos_embed_antialias=True, pos_embed_ar_preserving=True)
  options = dict(interp_mode='bicubic', align_corners=False, antialias=True,
                 ar_preserving=True)
  ours = naflex_timm.position_embedding({'embeds.pos_embed': table}, cfg,
                                        (2, 6))
  expected = numpy_naflex.position_embedding(
      {'embeds.pos_embed': table.astype(np.float64)}, (2, 6), **options)
  np.testing.assert_allclose(ours[0], expected, atol=2e-6)
  factorized = {'embeds.pos_embed_y': rng.normal(size=(1, 4, 3)),
                'embeds.pos_embed_x': rng.normal(size=(1, 5, 3))}
  ours = naflex_timm.position_embedding(factorized, cfg, (2, 6))
  expected = numpy_naflex.position_embedding(factorized, (2, 6), **options)
  np.testing.assert_allclose(ours[0], expected, atol=2e-6)


# ------------------------------------------------- families vs reference --

@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_family_matches_numpy_naflex(tmp_path, name):
  spec = FAMILIES[name]
  arrays = naflex_fixtures.state_dict(spec)
  ckpt = timm_hub.read(naflex_fixtures.write(tmp_path, spec))
  pixels = naflex_fixtures.random_pixels(spec)
  expected = numpy_naflex.forward(arrays, _timm_inputs(spec, pixels),
                                  **spec.reference_options())
  assert_relatively_close(_our_outputs(ckpt, pixels), expected)
  assert ckpt.model_kwargs['num_heads'] == spec.num_heads
  assert ckpt.image_size == spec.image_size


def test_model_kwargs_of_the_gap_model(tmp_path):
  ckpt = timm_hub.read(naflex_fixtures.write(tmp_path, FAMILIES['gap']))
  assert ckpt.model_kwargs == dict(
      num_classes=5, patch_size=(8, 8), hidden_size=48, num_layers=2,
      num_heads=4, mlp_dim=96, classifier='gap', activation='gelu_erf',
      num_register_tokens=4, fc_norm=True, layer_scale_init=1.0,
      posemb_covers_prefix=False)
  # The embedding at the native 3x6 grid, the patches only.
  embedding = ckpt.params['Transformer']['posembed_input']['pos_embedding']
  assert embedding.shape == (1, 18, 48)


def test_the_library_load_call_reads_a_square_checkpoint(tmp_path):
  spec = naflex_fixtures.NaFlex('naflexvit_base_patch16_siglip',
                                image_size=(32, 32), pos_grid=(6, 6),
                                num_classes=0, global_pool='map',
                                activation='gelu_tanh',
                                interp_mode='bilinear')
  arrays = naflex_fixtures.state_dict(spec)
  loaded = pretrained.load(str(naflex_fixtures.write(tmp_path, spec)))
  assert loaded.image_size == 32
  pixels = naflex_fixtures.random_pixels(spec)
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)
  ours = loaded.model.apply({'params': loaded.params}, (pixels - mean) / std)
  expected = numpy_naflex.forward(arrays, _timm_inputs(spec, pixels),
                                  **spec.reference_options())
  assert_relatively_close(ours, expected)


# ----------------------------------------------------- layouts and errors --

def test_each_timm_layout_recognises_only_its_own(tmp_path):
  naflex = naflex_fixtures.state_dict(FAMILIES['gap'])
  plain = timm_fixtures.state_dict(timm_fixtures.FAMILIES['deit3'])
  config = naflex_fixtures.config(FAMILIES['gap'])
  assert naflex_timm.LAYOUT.recognises(config, naflex)
  assert not naflex_timm.LAYOUT.recognises(config, plain)
  assert not vit_timm.LAYOUT.recognises(config, naflex)
  both = vit_family.VitFamily.foreign_layouts['timm']
  assert both.recognises(config, naflex) and both.recognises(config, plain)
  assert not both.recognises(config, {'stem.conv.weight': np.zeros(1)})


def test_radio_without_a_final_norm_matches_numpy_naflex(tmp_path):
  spec = naflex_fixtures.RADIO
  arrays = naflex_fixtures.state_dict(spec)
  ckpt = timm_hub.read(naflex_fixtures.write(tmp_path, spec))
  pixels = naflex_fixtures.random_pixels(spec)
  expected = numpy_naflex.forward(arrays, _timm_inputs(spec, pixels),
                                  **spec.reference_options())
  assert_relatively_close(_our_outputs(ckpt, pixels), expected)
  assert ckpt.model_kwargs['final_norm'] is False


@pytest.mark.parametrize('model_args, message', [
    ({'rope_type': 'axial'}, r"rotary position embeddings \(rope_type="
                             r"'axial'\)"),
    ({'swiglu_mlp': True}, r'a gated MLP \(swiglu_mlp=True\)'),
    ({'attn_type': 'eva'}, r"EVA attention blocks \(attn_type='eva'\)"),
    ({'qk_norm': True}, r'qk-norm \(qk_norm=True\)'),
    ({'scale_mlp_norm': True}, r'MLP hidden norm'),
    ({'embed_norm_layer': 'layernorm'}, r'a norm in the patch embedding'),
    ({'act_layer': 'silu'}, r"act_layer='silu'"),
    ({'attn_pool_num_heads': 2},
     r'pools with attn_pool_num_heads=2 beside num_heads=4'),
    ({'attn_pool_mlp_ratio': 3.0},
     r'pools with attn_pool_mlp_ratio=3.0 beside mlp_ratio=2.0'),
    ({'pos_embed_antialias': False},
     r"resized with interp_mode, align_corners, antialias = \('bicubic', "
     r'False, False\)'),
    ({'no_such_field': 1}, r'model_args no_such_field=1: no NaFlexVitCfg'),
])
def test_unsupported_settings_are_refused_by_name(tmp_path, model_args,
                                                  message):
  directory = naflex_fixtures.write(tmp_path, FAMILIES['gap'],
                                    model_args=model_args)
  with pytest.raises(ValueError, match=message) as error:
    timm_hub.read(directory)
  assert 'does not implement' in str(error.value) or (
      'no NaFlexVitCfg field' in str(error.value))


def test_an_image_that_is_no_whole_number_of_patches_is_refused(tmp_path):
  config = naflex_fixtures.config(FAMILIES['gap'])
  config['pretrained_cfg']['input_size'] = [3, 28, 48]
  directory = timm_fixtures.write_hub_dir(
      tmp_path, config, naflex_fixtures.state_dict(FAMILIES['gap']))
  with pytest.raises(ValueError, match=r'input_size \(28, 48\) is not a '
                     r'multiple of the patch size \(8, 8\)'):
    timm_hub.read(directory)


# ----------------------------------------------------------- timm itself --

class TestAgainstTimm:
  """The fixtures in timm's own NaFlexVit, and its F.interpolate."""

  @pytest.fixture(autouse=True)
  def _timm(self):
    self.torch = pytest.importorskip('torch')
    self.timm = pytest.importorskip('timm')

  @pytest.mark.parametrize('name', sorted(FAMILIES))
  def test_family_matches_timm(self, tmp_path, name):
    spec = FAMILIES[name]
    config = naflex_fixtures.config(spec)
    args = {key: value for key, value in config['model_args'].items()
            if key != 'in_chans'}
    model = self.timm.create_model(spec.architecture, **args).eval()
    arrays = naflex_fixtures.state_dict(spec)
    model.load_state_dict({key: self.torch.from_numpy(value)
                           for key, value in arrays.items()})
    pixels = naflex_fixtures.random_pixels(spec)
    with self.torch.no_grad():
      expected = model(self.torch.from_numpy(
          _timm_inputs(spec, pixels).astype(np.float32))).numpy()
    ckpt = timm_hub.read(timm_fixtures.write_hub_dir(tmp_path, config,
                                                     arrays))
    assert_relatively_close(_our_outputs(ckpt, pixels), expected)

  @pytest.mark.parametrize('method, mode, align_corners, antialias',
                           _TORCH_EQUIVALENTS)
  @pytest.mark.parametrize('old_grid, new_grid', _GRIDS)
  def test_numpy_interpolate_is_torchs(self, method, mode, align_corners,
                                       antialias, old_grid, new_grid):
    del method
    grid_HWD = np.random.default_rng(0).normal(size=(*old_grid, 3))
    expected = self.torch.nn.functional.interpolate(
        self.torch.from_numpy(grid_HWD.transpose(2, 0, 1)[None]),
        size=new_grid, mode=mode, align_corners=align_corners,
        antialias=antialias)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(
        numpy_naflex.interpolate(grid_HWD, new_grid, mode=mode,
                                 align_corners=align_corners,
                                 antialias=antialias),
        expected, atol=1e-12)
