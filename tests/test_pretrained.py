"""Checkpoint files (npz, pretrained, the ViT family's layout): every released
layout, round trips, strict merging and
position-embedding resizing. Checkpoints are generated here, never stored."""

import io

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tests import helpers
from tests import numpy_vit
from vit_jax import models
from vit_jax.models import posemb
from vit_jax.models import vit_family
from vit_jax.models import vit_layout
from vit_jax.weights import npz
from vit_jax.weights import pretrained


def _flat(params):
  return flax.traverse_util.flatten_dict(params, sep='/')


def _assert_trees_equal(a, b, **tolerance):
  flat_a, flat_b = _flat(a), _flat(b)
  assert sorted(flat_a) == sorted(flat_b)
  for key in flat_a:
    np.testing.assert_allclose(flat_a[key], flat_b[key], err_msg=key,
                               **tolerance)


def _save_flat(path, flat):
  np.savez(path, **flat)
  return path


def _to_new_numbering(flat):
  rename = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
            'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0'}
  return {'/'.join(rename.get(p, p) for p in k.split('/')): v
          for k, v in flat.items()}


@pytest.fixture(scope='module')
def hybrid_params():
  model = helpers.tiny_hybrid()
  return helpers.quick_random_params(model, 32)


@pytest.fixture(scope='module')
def vit_params():
  return helpers.quick_random_params(helpers.tiny_model(), helpers.TINY_IMAGE_SIZE)


def test_round_trip_write_read(tmp_path, vit_params):
  path = tmp_path / 'model.npz'
  pretrained.save_npz(vit_params, path)
  _assert_trees_equal(pretrained.load_params(path), vit_params, rtol=0)
  assert not list(tmp_path.glob('.*tmp'))  # The temp file was renamed.


def test_written_file_uses_the_old_numbering_in_float32(tmp_path, vit_params):
  path = pretrained.save_npz(vit_params, tmp_path / 'm.npz') or (
      tmp_path / 'm.npz')
  with np.load(path, allow_pickle=False) as archive:
    keys = set(archive.files)
    dtypes = {archive[k].dtype for k in archive.files}
  assert 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' in keys
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias' in keys
  assert not any('MlpBlock_0' in k for k in keys)
  assert dtypes == {np.dtype('float32')}


LAYOUTS = {
    'old numbering': lambda flat: flat,
    'new numbering': _to_new_numbering,
    'params/ prefix': lambda flat: {
        f'params/{k}': v for k, v in _to_new_numbering(flat).items()},
    'opt/target/ prefix': lambda flat: {f'opt/target/{k}': v
                                        for k, v in flat.items()},
    '4-D GroupNorm': lambda flat: {
        k: (v.reshape(1, 1, 1, -1) if '/gn' in k or k.startswith('gn') else v)
        for k, v in flat.items()},
}


@pytest.mark.slow
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_every_layout_loads_to_the_same_params(tmp_path, hybrid_params,
                                               layout):
  flat = LAYOUTS[layout](vit_family.FAMILY.to_released(hybrid_params))
  path = _save_flat(tmp_path / 'm.npz', flat)
  _assert_trees_equal(pretrained.load_params(path), hybrid_params, rtol=0)


def test_bfloat16_stored_as_void_loads(tmp_path, vit_params):
  flat = vit_family.FAMILY.to_released(vit_params)
  as_void = {k: v.astype(ml_dtypes.bfloat16).view('V2')
             for k, v in flat.items()}
  path = _save_flat(tmp_path / 'bf16.npz', as_void)
  expected = jax.tree_util.tree_map(
      lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), vit_params)
  loaded = pretrained.load_params(path)
  _assert_trees_equal(loaded, expected, rtol=0)
  assert {x.dtype for x in jax.tree_util.tree_leaves(loaded)} == {
      np.dtype('float32')}


def test_mixed_numbering_is_refused(tmp_path, vit_params):
  flat = vit_family.FAMILY.to_released(vit_params)
  flat.update({k.replace('encoderblock_0', 'encoderblock_5'): v
               for k, v in _to_new_numbering(flat).items()
               if 'encoderblock_0/MlpBlock_0' in k})
  with pytest.raises(ValueError, match='mixes old .* and new'):
    pretrained.load_params(_save_flat(tmp_path / 'm.npz', flat))


def test_missing_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    pretrained.load_params(tmp_path / 'nope.npz')


def test_truncated_file_is_a_clear_error(tmp_path, vit_params):
  path = tmp_path / 'm.npz'
  pretrained.save_npz(vit_params, path)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='not a readable .npz'):
    pretrained.load_params(path)


def test_pickled_arrays_are_never_loaded(tmp_path):
  path = tmp_path / 'evil.npz'
  np.savez(path, payload=np.array([{'a': 1}], dtype=object))
  with pytest.raises(ValueError, match='not a readable .npz'):
    pretrained.load_params(path)


def test_strict_merge_names_every_offending_key(vit_params):
  loaded = jax.tree_util.tree_map(np.copy, vit_params)
  del loaded['head']
  loaded['extra_thing'] = {'kernel': np.zeros(3)}
  loaded['embedding'] = dict(loaded['embedding'])
  loaded['embedding']['bias'] = np.zeros(7)
  with pytest.raises(npz.CheckpointMismatchError) as error:
    npz.merge_strict(vit_params, loaded)
  message = str(error.value)
  assert '2 missing from the checkpoint' in message
  assert 'head/kernel' in message and 'head/bias' in message
  assert '1 not in the model' in message and 'extra_thing/kernel' in message
  assert 'embedding/bias: checkpoint (7,) vs model (32,)' in message


def test_dont_load_keeps_chosen_init_values(vit_params):
  loaded = jax.tree_util.tree_map(lambda x: x + 1, vit_params)
  loaded['head'] = {'kernel': np.zeros((32, 3)), 'bias': np.zeros(3)}
  merged = npz.merge_strict(vit_params, loaded, dont_load=['head/.*'])
  np.testing.assert_array_equal(merged['head']['kernel'],
                                vit_params['head']['kernel'])
  np.testing.assert_array_equal(merged['cls'], vit_params['cls'] + 1)


def test_resize_to_the_same_grid_is_the_identity():
  embedding = np.random.default_rng(0).normal(size=(1, 1 + 49, 8))
  for method in posemb.METHODS:
    np.testing.assert_array_equal(
        posemb.resize(embedding, (7, 7), num_prefix_tokens=1, method=method),
        embedding.astype(np.float32))


def test_aligned_bilinear_matches_a_hand_computed_example():
  # A 2x2 grid of scalars [[0, 1], [2, 3]] zoomed to 3x3 with aligned corners:
  # the corners stay, the edges are midpoints and the centre is the mean.
  grid = np.array([0., 1., 2., 3.]).reshape(1, 4, 1)
  cls = np.array([[[42.]]])
  resized = posemb.resize(np.concatenate([cls, grid], 1), (3, 3),
                          num_prefix_tokens=1)
  assert resized[0, 0, 0] == 42
  np.testing.assert_allclose(resized[0, 1:, 0],
                             [0, .5, 1, 1, 1.5, 2, 2, 2.5, 3])


def test_half_pixel_bilinear_differs_from_aligned_as_documented():
  grid = np.array([0., 1., 2., 3.]).reshape(1, 4, 1)
  resized = posemb.resize(grid, (4, 4), num_prefix_tokens=0, method='bilinear')
  # Half-pixel centres: output column 0 samples input x=-0.25, clamped to 0.
  np.testing.assert_allclose(resized[0, :4, 0], [0, .25, .75, 1])


def test_resize_to_a_non_square_grid_and_back_from_one():
  embedding = np.random.default_rng(0).normal(size=(1, 16, 4))
  wide = posemb.resize(embedding, (2, 6), num_prefix_tokens=0)
  assert wide.shape == (1, 12, 4)
  back = posemb.resize(wide, (4, 4), num_prefix_tokens=0, old_grid=(2, 6))
  assert back.shape == (1, 16, 4)
  with pytest.raises(ValueError, match='square grid'):
    posemb.resize(wide, (4, 4), num_prefix_tokens=0)


@pytest.mark.slow
def test_fine_tuning_load_replaces_the_head_and_resizes(tmp_path):
  source = helpers.tiny_model(num_classes=7, representation_size=16)
  source_params = helpers.quick_random_params(source, 16)
  path = tmp_path / 'pre.npz'
  pretrained.save_npz(source_params, path)

  target = helpers.tiny_model(num_classes=3)  # No pre_logits, 24 px.
  init = helpers.quick_random_params(target, 24, seed=1)
  params = pretrained.load_for_fine_tuning(path, target, init,
                                          image_size=(24, 24))
  assert 'pre_logits' not in params
  assert params['head']['kernel'].shape == (32, 3)
  np.testing.assert_array_equal(params['head']['kernel'],
                                init['head']['kernel'])
  np.testing.assert_array_equal(params['cls'], source_params['cls'])
  expected = posemb.resize(
      source_params['Transformer']['posembed_input']['pos_embedding'], (6, 6),
      num_prefix_tokens=1)
  np.testing.assert_array_equal(
      params['Transformer']['posembed_input']['pos_embedding'], expected)


@pytest.mark.slow
def test_fine_tuning_keeps_pre_logits_when_the_model_has_them(tmp_path):
  source = helpers.tiny_model(num_classes=7, representation_size=16)
  source_params = helpers.quick_random_params(source, 16)
  path = tmp_path / 'pre.npz'
  pretrained.save_npz(source_params, path)
  target = helpers.tiny_model(representation_size=16)
  init = helpers.quick_random_params(target, 16, seed=1)
  params = pretrained.load_for_fine_tuning(path, target, init,
                                          image_size=(16, 16))
  np.testing.assert_array_equal(params['pre_logits']['kernel'],
                                source_params['pre_logits']['kernel'])


@pytest.mark.slow
def test_fine_tuning_from_another_model_names_the_mismatch(tmp_path):
  path = tmp_path / 'other.npz'
  pretrained.save_npz(
      helpers.quick_random_params(helpers.tiny_model(hidden_size=16), 16), path)
  target = helpers.tiny_model()
  init = helpers.quick_random_params(target, 16)
  with pytest.raises(npz.CheckpointMismatchError,
                     match='shape mismatch'):
    pretrained.load_for_fine_tuning(path, target, init, image_size=(16, 16))


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_pretrained_load_infers_the_model_and_matches_numpy(tmp_path,
                                                            classifier):
  source = models.create_model('ViT-S_16', num_classes=5, num_layers=1,
                               classifier=classifier, representation_size=8)
  params = helpers.quick_random_params(source, 32)
  path = tmp_path / 'm.npz'
  pretrained.save_npz(params, path)

  result = pretrained.load(path, 'S/16', num_layers=1)
  assert (result.model.num_classes, result.model.representation_size,
          result.model.classifier, result.image_size) == (5, 8, classifier, 32)

  images = helpers.random_images(2, 48)  # A 48 px run of a 32 px file.
  result = pretrained.load(path, 'S/16', image_size=48, num_layers=1)
  model, loaded = result.model, result.params
  assert result.image_size == 48
  resized = vit_family.FAMILY.to_released(loaded)
  reference = numpy_vit.forward(resized, images, num_layers=1, patch=16,
                                classifier=classifier)
  np.testing.assert_allclose(model.apply({'params': loaded}, images),
                             reference, rtol=1e-4, atol=1e-5)


def test_pretrained_load_with_the_wrong_model_is_explained(tmp_path):
  path = tmp_path / 'm.npz'
  pretrained.save_npz(helpers.quick_random_params(helpers.tiny_model(), 16), path)
  with pytest.raises(npz.CheckpointMismatchError,
                     match='hidden size 32 but ViT-B_16 has 768'):
    pretrained.load(path, 'ViT-B_16')
  # Every differing field is named, in one line.
  with pytest.raises(npz.CheckpointMismatchError) as error:
    pretrained.load(path, 'ViT-Ti_16', hidden_size=32)
  assert str(error.value) == (
      f'{path} has patch size (4, 4) but ViT-Ti_16 has (16, 16); num heads 2 '
      'but ViT-Ti_16 has 3; mlp dim 64 but ViT-Ti_16 has 768; num layers 2 '
      'but ViT-Ti_16 has 12: is model_name=\'ViT-Ti_16\' right for this '
      'file?')


# --- The architecture from the file ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['token', 'gap', 'hybrid', 'scanned'])
def test_load_reads_the_whole_architecture_off_the_arrays(tmp_path, kind):
  if kind == 'hybrid':
    source, size, name = helpers.tiny_hybrid(num_classes=5), 32, 'R50+B/16'
    architecture = dict(hidden_size=32, mlp_dim=64, num_heads=2,
                        num_layers=2, patch_size=1, resnet_units=(1, 1))
  else:
    options = {'token': dict(representation_size=8),
               'gap': dict(classifier='gap'),
               'scanned': dict(scan_layers=True)}[kind]
    source, size, name = helpers.tiny_model(num_classes=5, **options), 16, (
        'Ti/16')
    architecture = helpers.TINY_VIT
  params = helpers.quick_random_params(source, size)
  path = tmp_path / 'm.npz'
  pretrained.save_npz(params, path)  # No sidecar: the arrays alone.

  loaded = pretrained.load(path)
  named = pretrained.load(path, name, **architecture)
  model = loaded.model
  assert model == named.model.clone(scan_layers=False)
  assert (model.patch_size, model.hidden_size, model.num_heads, model.mlp_dim,
          model.num_layers, model.resnet_units, model.num_classes,
          model.classifier, model.representation_size, model.scan_layers) == (
              source.patch_size, source.hidden_size, source.num_heads,
              source.mlp_dim, source.num_layers, source.resnet_units, 5,
              source.classifier, source.representation_size, False)
  assert (loaded.image_size, loaded.preprocessing, loaded.class_names) == (
      size, vit_family.FAMILY.preprocessing, None)
  images = helpers.random_images(2, size)
  np.testing.assert_allclose(
      model.apply({'params': loaded.params}, images),
      source.apply({'params': params}, images), rtol=1e-5, atol=1e-6)


def test_describe_reads_the_variants_architecture():
  expected = {
      'ViT-B_16': {'hidden_size': 768, 'patch_size': (16, 16),
                   'num_heads': 12, 'mlp_dim': 3072, 'num_layers': 12,
                   'resnet_units': None},
      'R50+ViT-B_16': {'hidden_size': 768, 'patch_size': (1, 1),
                       'num_heads': 12, 'mlp_dim': 3072, 'num_layers': 12,
                       'resnet_units': (3, 4, 9)},
      'R+ViT-Ti_16': {'hidden_size': 192, 'patch_size': (8, 8),
                      'num_heads': 3, 'mlp_dim': 768, 'num_layers': 12,
                      'resnet_units': ()},
  }
  for name, architecture in expected.items():
    shapes = models.param_shapes(models.create_model(name, 1000), (224, 224))
    assert vit_family.FAMILY.describe(shapes).expected == architecture, name
  scanned = models.param_shapes(helpers.tiny_model(scan_layers=True),
                                (16, 16))
  assert vit_family.FAMILY.describe(scanned).expected == {
      'hidden_size': 32, 'patch_size': (4, 4), 'num_heads': 2, 'mlp_dim': 64,
      'num_layers': 2, 'resnet_units': None}


def test_an_override_that_contradicts_the_file_is_named(tmp_path,
                                                        vit_params):
  path = tmp_path / 'm.npz'
  pretrained.save_npz(vit_params, path)
  with pytest.raises(npz.CheckpointMismatchError) as error:
    pretrained.load(path, num_layers=3)
  assert str(error.value) == (
      f'{path} has num layers 2 but num_layers=3 was asked for: its '
      'architecture is read off its arrays; drop the override')
  # Overrides that are no architecture still apply.
  loaded = pretrained.load(path, dtype='bfloat16', activation='gelu_erf')
  assert (loaded.model.dtype, loaded.model.activation) == (
      jnp.dtype('bfloat16'), 'gelu_erf')


def test_a_name_of_another_family_is_refused(tmp_path, vit_params):
  path = tmp_path / 'm.npz'
  pretrained.save_npz(vit_params, path)
  with pytest.raises(npz.CheckpointMismatchError,
                     match='holds vit arrays but Mixer-S_16 is a mixer '
                     'model'):
    pretrained.load(path, 'Mixer-S_16')


def test_a_missing_source_names_what_sources_are(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    pretrained.load(tmp_path / 'nope.npz')
  assert str(error.value) == (
      f'checkpoint {tmp_path / "nope.npz"} does not exist: give an .npz '
      'file, a timm checkpoint (hf-hub:ORG/NAME or a directory with '
      'config.json), a timm name (e.g. vit_base_patch16_224.augreg_in1k) '
      'or the name of a released file')


def test_read_npz_accepts_file_like_remote_paths(tmp_path, vit_params):
  # epath handles local paths; remote schemes go through the same call.
  path = tmp_path / 'm.npz'
  pretrained.save_npz(vit_params, path)
  flat = npz.read_npz(str(path))
  buffer = io.BytesIO(path.read_bytes())
  with np.load(buffer) as archive:
    assert sorted(archive.files) == sorted(flat)


def test_a_scanned_model_loads_per_block_files(tmp_path, vit_params):
  path = tmp_path / 'm.npz'
  pretrained.save_npz(vit_params, path)
  scanned = helpers.tiny_model(scan_layers=True)
  shapes = models.param_shapes(scanned, (16, 16))
  merged = npz.merge_strict(shapes, vit_family.FAMILY.match_layout(
      pretrained.load_params(path), like=shapes))
  _assert_trees_equal(vit_layout.unstack_blocks(merged), vit_params, rtol=0)
