"""Model tests: the variant table, the parameter tree, and numerics against an
independent NumPy implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tests import numpy_vit
from vit_jax import models
from vit_jax.models import vit_family
from vit_jax.models import vit_layout

# Exact counts at 224 px, 1000 classes, token head, no pre_logits
# (the paper's Table 1 architectures). g/14 and G/14 are not in that table; their
# counts are ours and agree with the Scaling-ViT paper's 1011M / 1843M to the
# head and class-token size.
EXPECTED_PARAMS = {
    'ViT-Ti_16': 5_717_416,
    'ViT-S_16': 22_050_664,
    'ViT-S_32': 22_878_952,
    'ViT-B_8': 86_576_872,
    'ViT-B_16': 86_567_656,
    'ViT-B_32': 88_224_232,
    'ViT-L_16': 304_326_632,
    'ViT-L_32': 306_535_400,
    'ViT-H_14': 632_045_800,
    'ViT-g_14': 1_012_611_432,
    'ViT-G_14': 1_844_440_680,
    'R+ViT-Ti_16': 6_337_704,
    'R26+ViT-S_32': 36_431_912,
    'R26+ViT-B_32': 101_383_976,
    'R50+ViT-B_16': 98_659_112,
    'R50+ViT-L_32': 328_994_856,
}


def test_every_variant_has_a_pinned_parameter_count():
  assert sorted(models.VARIANTS) == sorted(EXPECTED_PARAMS)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(EXPECTED_PARAMS))
def test_parameter_count(name):
  shapes = models.param_shapes(models.create_model(name), (224, 224))
  assert models.count_params(shapes) == EXPECTED_PARAMS[name]


def test_gap_model_has_hidden_size_fewer_parameters():
  shapes = models.param_shapes(
      models.create_model('ViT-B_16', classifier='gap'), (224, 224))
  assert models.count_params(shapes) == 86_566_120


@pytest.mark.parametrize('alias', ['ViT-B_16', 'B/16', 'ViT-B/16', ' B/16 '])
def test_short_names_select_the_same_variant(alias):
  assert models.canonical_name(alias) == 'ViT-B_16'


@pytest.mark.parametrize('alias,name', [('R50+B/16', 'R50+ViT-B_16'),
                                        ('R+Ti/16', 'R+ViT-Ti_16'),
                                        ('g/14', 'ViT-g_14'),
                                        ('G/14', 'ViT-G_14')])
def test_hybrid_and_giant_short_names(alias, name):
  assert models.canonical_name(alias) == name


def test_unknown_model_name_lists_the_known_ones():
  with pytest.raises(ValueError, match='unknown model .*ViT-B_16'):
    models.canonical_name('ViT-Q_16')


def _block_keys(index, numbering):
  attention, ln1, mlp = numbering
  block = f'Transformer/encoderblock_{index}'
  keys = [f'{block}/LayerNorm_0/{p}' for p in ('bias', 'scale')]
  keys += [f'{block}/{attention}/{proj}/{p}'
           for proj in ('key', 'out', 'query', 'value')
           for p in ('bias', 'kernel')]
  keys += [f'{block}/{ln1}/{p}' for p in ('bias', 'scale')]
  keys += [f'{block}/{mlp}/Dense_{i}/{p}' for i in (0, 1)
           for p in ('bias', 'kernel')]
  return keys


OLD_NUMBERING = ('MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3')

VIT_B16_RELEASED_KEYS = sorted(
    ['cls', 'embedding/bias', 'embedding/kernel', 'head/bias', 'head/kernel',
     'Transformer/encoder_norm/bias', 'Transformer/encoder_norm/scale',
     'Transformer/posembed_input/pos_embedding'] +
    [k for i in range(12) for k in _block_keys(i, OLD_NUMBERING)])


def _r50_stem_keys():
  keys = ['conv_root/kernel', 'gn_root/bias', 'gn_root/scale']
  for stage, units in enumerate((3, 4, 9)):
    for unit in range(units):
      pre = f'block{stage + 1}/unit{unit + 1}'
      convs = ['conv1', 'conv2', 'conv3'] + (['conv_proj'] if unit == 0 else [])
      keys += [f'{pre}/{c}/kernel' for c in convs]
      keys += [f'{pre}/{c.replace("conv", "gn")}/{p}' for c in convs
               for p in ('bias', 'scale')]
  return keys


R50_B16_RELEASED_KEYS = sorted(VIT_B16_RELEASED_KEYS + _r50_stem_keys())


@pytest.mark.parametrize('name,expected', [
    ('ViT-B_16', VIT_B16_RELEASED_KEYS),
    ('R50+ViT-B_16', R50_B16_RELEASED_KEYS),
])
def test_released_key_list(name, expected):
  shapes = models.param_shapes(models.create_model(name), (224, 224))
  assert sorted(vit_family.FAMILY.to_released(
      jax.tree_util.tree_map(lambda s: np.zeros(()), shapes))) == expected


def test_vit_b16_shapes_match_the_released_files():
  shapes = models.param_shapes(models.create_model('ViT-B_16'), (384, 384))
  block = shapes['Transformer']['encoderblock_0']
  attention = block['MultiHeadDotProductAttention_0']
  assert shapes['embedding']['kernel'].shape == (16, 16, 3, 768)
  assert shapes['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 577, 768)
  assert attention['query']['kernel'].shape == (768, 12, 64)
  assert attention['query']['bias'].shape == (12, 64)
  assert attention['out']['kernel'].shape == (12, 64, 768)
  assert block['MlpBlock_0']['Dense_0']['kernel'].shape == (768, 3072)


@pytest.mark.parametrize('overrides', [
    dict(classifier='token'),
    dict(classifier='gap'),
    dict(classifier='token', representation_size=24),
    dict(classifier='gap', num_classes=0),
])
def test_vit_matches_numpy_reference(overrides):
  model = helpers.tiny_model(**overrides)
  params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(3, helpers.TINY_IMAGE_SIZE)
  ours = model.apply({'params': params}, images)
  reference = numpy_vit.forward(
      vit_family.FAMILY.to_released(params), images, num_layers=2, patch=4,
      classifier=model.classifier)
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_hybrid_matches_numpy_reference():
  model = helpers.tiny_hybrid()
  params = helpers.quick_random_params(model, 32)
  images = helpers.random_images(2, 32)
  ours = model.apply({'params': params}, images)
  reference = numpy_vit.forward(
      vit_family.FAMILY.to_released(params), images, num_layers=2, patch=1,
      resnet_units=(1, 1))
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_unpooled_classifiers_give_per_token_outputs():
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  for classifier, tokens in (('unpooled', 16), ('token_unpooled', 17)):
    model = helpers.tiny_model(classifier=classifier)
    params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
    assert model.apply({'params': params}, images).shape == (2, tokens, 10)


@pytest.mark.slow
def test_non_square_images_give_a_non_square_grid():
  model = helpers.tiny_model()
  params = models.param_shapes(model, (16, 24))
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (
      1, 1 + 4 * 6, 32)


@pytest.mark.slow
def test_captured_attention_rows_sum_to_one_and_outputs_agree():
  model = helpers.tiny_model()
  params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  plain = model.apply({'params': params}, images)
  out, inter = models.apply_with_intermediates(
      model, params, images, attention_layers=[0, -1], block_outputs=True)
  np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)
  assert sorted(inter['attention_weights']) == [0, 1]
  weights = inter['attention_weights'][1]
  assert weights.shape == (2, 2, 17, 17)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert len(inter['block_outputs']) == 2
  assert inter['block_outputs'][0].shape == (2, 17, 32)
  assert inter['pre_logits'].shape == (2, 32)


@pytest.mark.slow
def test_intermediates_of_a_model_with_pre_logits():
  model = helpers.tiny_model(representation_size=24)
  params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  logits, inter = models.apply_with_intermediates(model, params, images,
                                                  attention_layers=[0])
  features = inter['pre_logits']
  assert features.shape == (2, 24) and np.abs(features).max() <= 1  # tanh
  np.testing.assert_allclose(
      logits, features @ params['head']['kernel'] + params['head']['bias'],
      rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_default_forward_stores_nothing():
  model = helpers.tiny_model()
  params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(1, helpers.TINY_IMAGE_SIZE)
  _, state = model.apply({'params': params}, images, mutable=['intermediates'])
  assert set(state['intermediates']) == {'features'}


@pytest.mark.slow
def test_dropout_only_in_training():
  model = helpers.tiny_model(dropout_rate=0.5, attention_dropout_rate=0.5)
  params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  apply = lambda seed, train: model.apply(
      {'params': params}, images, train=train,
      rngs={'dropout': jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(apply(0, False), apply(1, False))
  assert not np.allclose(apply(0, True), apply(1, True))


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32_and_keeps_float32_params():
  model32 = helpers.tiny_model()
  model16 = helpers.tiny_model(dtype=jnp.bfloat16)
  params = helpers.quick_random_params(model32, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(4, helpers.TINY_IMAGE_SIZE)
  out32 = model32.apply({'params': params}, images)
  out16 = model16.apply({'params': params}, images)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, rtol=0.1, atol=0.1)
  init16 = models.init_params(model16, jax.random.PRNGKey(0), (16, 16))
  assert {x.dtype for x in jax.tree_util.tree_leaves(init16)} == {
      np.dtype('float32')}


def test_param_dtype_is_plumbed_to_every_layer():
  model = helpers.tiny_hybrid(param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
  shapes = models.param_shapes(model, (32, 32))
  assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {
      jnp.dtype(jnp.bfloat16)}


@pytest.mark.slow
def test_initialisation_follows_the_reference():
  # One block: the initialisers are the same in every block.
  model = models.create_model('ViT-S_16', num_classes=5, head_bias_init=-10.0,
                              num_layers=1)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32))
  np.testing.assert_array_equal(params['head']['kernel'], 0)
  np.testing.assert_array_equal(params['head']['bias'], -10)
  np.testing.assert_array_equal(params['cls'], 0)
  pos = params['Transformer']['posembed_input']['pos_embedding']
  assert abs(float(np.std(pos)) - 0.02) < 0.003
  mlp_bias = params['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0'][
      'bias']
  assert 0 < float(np.std(mlp_bias)) < 1e-5
  query = params['Transformer']['encoderblock_0'][
      'MultiHeadDotProductAttention_0']['query']['kernel']
  # xavier_uniform over the flattened (384, 384) kernel: limit sqrt(6/768).
  limit = np.sqrt(6 / (384 + 384))
  assert float(np.abs(query).max()) <= limit
  assert float(np.abs(query).max()) > 0.95 * limit


@pytest.mark.slow
@pytest.mark.parametrize('remat_policy', ['none', 'full', 'dots'])
def test_scanned_and_rematerialised_encoders_equal_the_loop(remat_policy):
  loop = helpers.tiny_model()
  scanned = helpers.tiny_model(scan_layers=True, remat_policy=remat_policy)
  params = helpers.quick_random_params(loop, helpers.TINY_IMAGE_SIZE)
  stacked = vit_layout.stack_blocks(params)
  assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(
      models.param_shapes(scanned, (16, 16)))
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  np.testing.assert_allclose(scanned.apply({'params': stacked}, images),
                             loop.apply({'params': params}, images),
                             rtol=1e-5, atol=1e-5)

  def loss(model, p):
    return jnp.sum(model.apply({'params': p}, images, train=True) ** 2)

  grads_loop = vit_layout.stack_blocks(jax.grad(lambda p: loss(loop, p))(params))
  grads_scan = jax.grad(lambda p: loss(scanned, p))(stacked)
  # float32 sums in another order: compare on the gradients' overall scale
  # (the key bias gradient, for one, is zero up to rounding).
  scale = max(float(np.abs(g).max())
              for g in jax.tree_util.tree_leaves(grads_loop))
  helpers.assert_trees_close(grads_scan, grads_loop, rtol=1e-4,
                             atol=1e-6 * scale)


def _mlp_input_shapes(model, params, images, **kwargs):
  """Shapes that each block's MLP is called on, in call order."""
  shapes = []

  def record(next_fun, args, call_kwargs, context):
    if type(context.module).__name__ == 'MlpBlock':
      shapes.append(args[0].shape)
    return next_fun(*args, **call_kwargs)

  with nn.intercept_methods(record):
    model.apply({'params': params}, images, mutable=['intermediates'],
                **kwargs)
  return shapes


@pytest.mark.slow
def test_token_head_computes_the_last_block_for_the_class_token_only():
  # Its value equals the full computation: the NumPy reference and the
  # scanned encoder (which computes every token) tests above check that.
  model = helpers.tiny_model()
  params = helpers.quick_random_params(model, helpers.TINY_IMAGE_SIZE)
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  assert _mlp_input_shapes(model, params, images) == [(2, 17, 32), (2, 1, 32)]
  # Every token is computed where the last block is looked at, or read.
  for kwargs in (dict(capture_block_outputs=True),
                 dict(capture_attention=(1,))):
    assert _mlp_input_shapes(model, params, images, **kwargs) == [
        (2, 17, 32)] * 2
  gap = helpers.tiny_model(classifier='gap')
  gap_params = helpers.quick_random_params(gap, 16)
  assert _mlp_input_shapes(gap, gap_params, images) == [(2, 16, 32)] * 2


@pytest.mark.slow
def test_scanned_model_keeps_the_released_layout_and_intermediates():
  scanned = helpers.tiny_model(scan_layers=True)
  params = helpers.quick_random_params(scanned, helpers.TINY_IMAGE_SIZE)
  assert params['Transformer']['encoderblock']['LayerNorm_0']['scale'].shape == (
      2, 32)
  released = vit_family.FAMILY.to_released(params)
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in released
  assert not any(k.startswith('Transformer/encoderblock/') for k in released)
  images = helpers.random_images(1, helpers.TINY_IMAGE_SIZE)
  out, inter = models.apply_with_intermediates(scanned, params, images,
                                               attention_layers=[1])
  # Random (non-zero) heads: float32 sums in another order (every token's
  # last block is computed where attention is captured).
  np.testing.assert_allclose(out, scanned.apply({'params': params}, images),
                             rtol=1e-5, atol=1e-5)
  assert inter['attention_weights'][1].shape == (1, 2, 17, 17)


def test_fused_attention_equals_the_einsum_path():
  # pylint: disable-next=g-import-not-at-top
  from vit_jax.models import vit_sublayers
  x = np.random.default_rng(0).normal(size=(2, 17, 32)).astype(np.float32)
  fused = vit_sublayers.MultiHeadAttention(2, implementation='fused')
  einsum = vit_sublayers.MultiHeadAttention(2, implementation='einsum')
  variables = fused.init(jax.random.PRNGKey(0), x, train=False)
  np.testing.assert_allclose(fused.apply(variables, x, train=False),
                             einsum.apply(variables, x, train=False),
                             rtol=1e-5, atol=1e-6)
  # On this CPU, 'auto' takes the einsum path; elsewhere the fused one.
  auto = vit_sublayers.MultiHeadAttention(2)
  assert auto._use_fused(False, False) == (jax.default_backend() != 'cpu')
  assert not auto._use_fused(True, False)


@pytest.mark.slow
@pytest.mark.parametrize('scan_layers', [False, True])
def test_model_attention_choice_is_passed_down(scan_layers):
  kwargs = dict(num_classes=3, num_layers=2, hidden_size=32, mlp_dim=64,
                num_heads=2, patch_size=8, scan_layers=scan_layers)
  images = np.random.default_rng(1).uniform(
      -1, 1, (2, 16, 16, 3)).astype(np.float32)
  fused = models.create_model('ViT-Ti_16', attention='fused', **kwargs)
  einsum = models.create_model('ViT-Ti_16', attention='einsum', **kwargs)
  params = helpers.quick_random_params(fused, (16, 16))
  np.testing.assert_allclose(fused.apply({'params': params}, images),
                             einsum.apply({'params': params}, images),
                             rtol=1e-5, atol=1e-6)
  misspelt = models.create_model('ViT-Ti_16', attention='flash', **kwargs)
  with pytest.raises(ValueError, match="unknown attention implementation"):
    misspelt.apply({'params': params}, images)
