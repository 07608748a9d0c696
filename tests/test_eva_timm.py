"""timm's Eva models (`vit_jax.models.eva_timm`), RoPE (`vit_jax.models.rope`),
gated MLPs and inner norms: tiny hub directories in timm's format
(tests/eva_fixtures.py) against the independent NumPy reference
(tests/numpy_eva.py), at the native and at another resolution; the options
off by default; refusals in one line. `TestAgainstTimm` repeats a few
architectures with timm itself where it is installed."""

import numpy as np
import pytest

from tests import eva_fixtures
from tests import numpy_eva
from tests import timm_fixtures
from vit_jax.models import rope
from vit_jax.models import vit
from vit_jax.weights import npz
from vit_jax.weights import pretrained
from vit_jax.weights import timm_hub

FAMILIES = eva_fixtures.FAMILIES


def _relative_error(actual, expected):
  actual = np.asarray(actual, np.float64)
  assert actual.shape == expected.shape
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def _pixels(size, seed=1):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (2, size, size, 3)).astype(np.float32)


def _outputs(ckpt, pixels_BHWC):
  mean = np.asarray(ckpt.preprocessing.mean, np.float32)
  std = np.asarray(ckpt.preprocessing.std, np.float32)
  model = vit.VisionTransformer(**ckpt.model_kwargs)
  return model.apply({'params': ckpt.params}, (pixels_BHWC - mean) / std)


def _timm_inputs(pixels_BHWC):
  images = (pixels_BHWC / 255. - np.asarray(timm_fixtures.IMAGENET_MEAN)
            ) / np.asarray(timm_fixtures.IMAGENET_STD)
  return images.transpose(0, 3, 1, 2)


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_family_matches_numpy_reference(tmp_path, name):
  spec = FAMILIES[name]
  arrays = eva_fixtures.state_dict(spec)
  ckpt = timm_hub.read(timm_fixtures.write_hub_dir(
      tmp_path, eva_fixtures.config(spec), arrays))
  pixels = _pixels(spec.image_size)
  expected = numpy_eva.forward(arrays, _timm_inputs(pixels),
                               **spec.reference_options())
  assert _relative_error(_outputs(ckpt, pixels), expected) < 1e-5


@pytest.mark.parametrize('name', ['dinov3', 'rope_reg_gap', 'rope_mixed'])
def test_rope_follows_the_grid_at_another_resolution(tmp_path, name):
  """48 px is a 6x6 grid for 4x4 weights: the tables follow the grid (and
  the reference grid rescaling), as timm's dynamic_img_size does."""
  spec = FAMILIES[name]
  arrays = eva_fixtures.state_dict(spec)
  ckpt = timm_hub.read(timm_fixtures.write_hub_dir(
      tmp_path, eva_fixtures.config(spec), arrays))
  pixels = _pixels(48)
  expected = numpy_eva.forward(arrays, _timm_inputs(pixels),
                               **spec.reference_options())
  assert _relative_error(_outputs(ckpt, pixels), expected) < 1e-5


def test_eva02_model_kwargs(tmp_path):
  """The class token, read by no head under average pooling, is our
  register."""
  ckpt = timm_hub.read(eva_fixtures.write_family(tmp_path, 'eva02'))
  assert ckpt.model_kwargs == dict(
      num_classes=5, patch_size=(8, 8), hidden_size=48, num_layers=2,
      num_heads=2, mlp_dim=64, classifier='gap', activation='silu',
      num_register_tokens=1, fc_norm=True, mlp_gated=True, mlp_norm=True, rope='axial',
      rope_ref_grid=(16, 16))
  attention = ckpt.params['Transformer']['encoderblock_0'][
      'MultiHeadDotProductAttention_0']
  np.testing.assert_array_equal(attention['key']['bias'], 0)  # No k bias.


def test_dinov3_class_token_is_a_register_for_average_pooling(tmp_path):
  ckpt = timm_hub.read(eva_fixtures.write_family(tmp_path, 'dinov3'))
  kwargs = ckpt.model_kwargs
  assert (kwargs['classifier'], kwargs['num_register_tokens']) == ('gap', 5)
  assert (kwargs['rope'], kwargs['rope_temperature'],
          kwargs['rope_rotate_half']) == ('dinov3', 100.0, True)
  assert 'cls' not in ckpt.params


def test_mixed_rope_frequencies_are_per_layer_parameters(tmp_path):
  arrays = eva_fixtures.state_dict(FAMILIES['rope_mixed'])
  ckpt = timm_hub.read(timm_fixtures.write_hub_dir(
      tmp_path, eva_fixtures.config(FAMILIES['rope_mixed']), arrays))
  for layer in (0, 1):
    np.testing.assert_array_equal(
        ckpt.params['Transformer'][f'encoderblock_{layer}'][
            'MultiHeadDotProductAttention_0']['rope_freqs'],
        arrays['rope.freqs'][:, layer])


def test_options_off_by_default_add_no_parameters():
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = dict(num_classes=3, patch_size=(8, 8), hidden_size=16,
                num_layers=1, num_heads=2, mlp_dim=32)
  images = np.zeros((1, 16, 16, 3), np.float32)
  shapes = lambda **extra: jax.tree_util.tree_map(
      np.shape, jax.eval_shape(vit.VisionTransformer(**kwargs, **extra).init,
                               jax.random.PRNGKey(0), images)['params'])
  plain = shapes()
  block = lambda tree: tree['Transformer']['encoderblock_0']
  assert 'Dense_value' not in block(plain)['MlpBlock_0']
  gated = shapes(mlp_gated=True, mlp_norm=True, attention_norm=True,
                 rope='mixed', rope_grid_indexing='xy')
  assert block(gated)['MlpBlock_0']['Dense_value']['kernel'] == (16, 32)
  assert block(gated)['MlpBlock_0']['LayerNorm_0']['scale'] == (32,)
  attention = block(gated)['MultiHeadDotProductAttention_0']
  assert attention['LayerNorm_0']['scale'] == (2, 8)
  assert attention['rope_freqs'] == (2, 2, 4)


def test_rope_tables_match_the_reference():
  """Each kind's angles against numpy_eva's token-by-token formulas."""
  cases = [
      (rope.Rope('axial', 100., 'xy'), dict(kind='axial', temperature=100.,
                                            indexing='xy')),
      (rope.Rope('axial', 10000., 'ij', 1.0, (16, 16)),
       dict(kind='axial', temperature=10000., offset=1.0, ref=(16, 16))),
      (rope.Rope('dinov3', 100., rotate_half=True),
       dict(kind='dinov3', temperature=100.)),
  ]
  for ours, reference in cases:
    sin_N1E, _ = rope.sin_cos(ours, (3, 5), 16)
    angles = numpy_eva.rope_angles(reference, 3, 5, 16)[0]  # (N, E/2)
    expected = (np.concatenate([angles, angles], -1) if ours.rotate_half
                else np.repeat(angles, 2, -1))
    np.testing.assert_allclose(sin_N1E[:, 0], np.sin(expected), atol=1e-5)


@pytest.mark.parametrize('model_args,message', [
    ({'qk_norm': True}, 'qk-norm'),
    ({'num_kv_heads': 1}, 'grouped-query attention'),
    ({'norm_layer': {'partial': 'RmsNorm', 'args': [], 'kwargs': {}}},
     'LayerNorm only'),
    ({'global_pool': 'avgmax'}, "'avgmax'"),
])
def test_unsupported_eva_features_are_refused(tmp_path, model_args, message):
  spec = FAMILIES['eva02']
  config = eva_fixtures.config(spec)
  config['model_args'].update(model_args)
  directory = timm_fixtures.write_hub_dir(tmp_path, config,
                                          eva_fixtures.state_dict(spec))
  with pytest.raises(npz.CheckpointMismatchError, match=message):
    timm_hub.read(directory)


# ------------------------------------------------------------ with timm --

class TestAgainstTimm:
  """A few architectures built by timm itself (one block, random weights,
  written by save_for_hf), at the native size and at another."""

  @pytest.mark.slow
  @pytest.mark.parametrize('architecture,size', [
      ('eva02_tiny_patch14_224', 224),
      ('vit_small_patch16_dinov3', 224),
      ('vit_small_patch16_dinov3', 160),
      ('vit_small_patch16_rope_mixed_224', 224),
      ('vit_medium_patch16_rope_reg1_gap_256', 192),
      ('vit_pe_spatial_tiny_patch16_512', 256),  # No final norm.
      ('eva02_enormous_patch14_clip_224', 112),  # Post-norm blocks.
  ])
  def test_matches_timm(self, tmp_path, architecture, size):
    timm = pytest.importorskip('timm')
    torch = pytest.importorskip('torch')
    model = timm.create_model(architecture, pretrained=False, depth=1,
                              dynamic_img_size=True)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
      for parameter in model.parameters():
        parameter.copy_(0.1 * torch.randn(parameter.shape,
                                          generator=generator)
                        + (1. if parameter.ndim == 1 else 0.))
    timm.models.save_for_hf(model, str(tmp_path), model_args={'depth': 1},
                            safe_serialization=True)
    pixels = _pixels(size)
    mean, std = model.pretrained_cfg['mean'], model.pretrained_cfg['std']
    images = ((pixels / 255. - np.asarray(mean)) / np.asarray(std)).astype(
        np.float32)
    with torch.no_grad():
      expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    # The library's load call, resizing a learned table as timm's
    # dynamic_img_size does (resample_abs_pos_embed: antialiased bicubic).
    loaded = pretrained.load(tmp_path, image_size=size,
                             posemb_method='bicubic_antialias')
    ours = loaded.model.apply({'params': loaded.params}, images)
    assert _relative_error(ours, expected.astype(np.float64)) < 1e-4
