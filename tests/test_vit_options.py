"""The ViT's options (vit.VisionTransformer fields, off by default): each
against the independent NumPy forward pass, stochastic depth's statistics,
the sin-cos embedding by hand, validation, and export/load round trips."""

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from tests import helpers
from tests import numpy_vit
from vit_jax import models
from vit_jax.models import posemb
from vit_jax.models import stochastic_depth
from vit_jax.models import vit_blocks
from vit_jax.models import vit_family
from vit_jax.models import vit_layout
from vit_jax.weights import pretrained

FAMILY = vit_family.FAMILY
SIZE = helpers.TINY_IMAGE_SIZE

# One case per option, then the combinations of the timm families.
OPTION_CASES = {
    'drop_path (eval)': dict(drop_path_rate=0.3),
    'sincos2d gap': dict(posemb='sincos2d', classifier='gap'),
    'sincos2d token': dict(posemb='sincos2d'),
    'no posemb': dict(posemb='none'),
    'posemb over patches': dict(posemb_covers_prefix=False),
    'registers': dict(num_register_tokens=3),
    'registers gap': dict(num_register_tokens=2, classifier='gap'),
    'distillation': dict(distillation=True),
    'distillation features': dict(distillation=True, num_classes=0,
                                  representation_size=8),
    'layer scale': dict(layer_scale_init=0.1),
    'pre_norm': dict(pre_norm=True),
    'fc_norm gap': dict(fc_norm=True, classifier='gap'),
    'fc_norm token': dict(fc_norm=True),
    'map': dict(classifier='map'),
    'map fused attention': dict(classifier='map', attention='fused'),
    'no qkv bias': dict(qkv_bias=False),
    'epsilon': dict(layer_norm_epsilon=0.1),
    'gelu_erf': dict(activation='gelu_erf'),
    'quick_gelu': dict(activation='quick_gelu'),
    'DeiT-III': dict(layer_scale_init=1e-5, posemb_covers_prefix=False,
                     activation='gelu_erf'),
    'DINOv2 registers': dict(num_register_tokens=4, layer_scale_init=1.0,
                             posemb_covers_prefix=False, num_classes=0),
    'DeiT distilled': dict(distillation=True, num_register_tokens=1,
                           posemb_covers_prefix=False),
    'CLIP': dict(pre_norm=True, layer_norm_epsilon=1e-5,
                 activation='quick_gelu'),
    'SigLIP': dict(classifier='map', num_classes=0, posemb='sincos2d'),
    'GAP medium': dict(classifier='gap', fc_norm=True, layer_scale_init=0.1,
                       qkv_bias=False),
    'scanned': dict(scan_layers=True, classifier='map', layer_scale_init=0.5,
                    num_register_tokens=2, posemb_covers_prefix=False,
                    qkv_bias=False, pre_norm=True, drop_path_rate=0.2),
}

# Options a file cannot show (they have no parameters): `load` needs them.
NO_PARAMETER_OPTIONS = ('drop_path_rate', 'activation', 'layer_norm_epsilon',
                        'scan_layers', 'attention')


def _numpy_options(model):
  """The NumPy reference's arguments for the options without parameters."""
  return dict(classifier=model.classifier, posemb=model.posemb,
              posemb_covers_prefix=model.posemb_covers_prefix,
              eps=model.layer_norm_epsilon, activation=model.activation)


def _flat(params):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')


def _numpy_forward(model, params, images, **kwargs):
  return numpy_vit.forward(
      FAMILY.to_released(params), images, num_layers=model.num_layers,
      patch=model.patch_size[0], **{**_numpy_options(model), **kwargs})


def _model_and_params(options, seed=0):
  model = helpers.tiny_model(**options)
  return model, helpers.quick_random_params(model, SIZE, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(OPTION_CASES))
def test_option_matches_numpy_reference(case):
  model, params = _model_and_params(OPTION_CASES[case])
  images = helpers.random_images(3, SIZE)
  np.testing.assert_allclose(model.apply({'params': params}, images),
                             _numpy_forward(model, params, images),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('options,baseline', [
    (dict(posemb='sincos2d'), dict(posemb='none')),
    (dict(activation='gelu_erf'), dict()),
    (dict(activation='quick_gelu'), dict()),
    (dict(layer_norm_epsilon=0.1), dict()),
])
def test_options_without_parameters_change_the_output(options, baseline):
  # Guards the reference comparisons above against an ignored option. The
  # initialised params (gelu_erf and gelu_tanh differ by ~1e-3 with them).
  model = helpers.tiny_model(**options)
  params = helpers.random_params(model, SIZE)
  images = helpers.random_images(2, SIZE)
  assert not np.allclose(
      model.apply({'params': params}, images),
      helpers.tiny_model(**baseline).apply({'params': params}, images),
      atol=1e-3)


# -------------------------------------------------- defaults: today's model --

def _released_tiny_tree():
  """Path -> shape of the tiny default model (token head, 10 classes)."""
  d, heads, mlp = 32, 2, 64
  tree = {'cls': (1, 1, d), 'embedding/kernel': (4, 4, 3, d),
          'embedding/bias': (d,), 'head/kernel': (d, 10), 'head/bias': (10,),
          'Transformer/posembed_input/pos_embedding': (1, 17, d),
          'Transformer/encoder_norm/scale': (d,),
          'Transformer/encoder_norm/bias': (d,)}
  for i in range(2):
    block = f'Transformer/encoderblock_{i}'
    for norm in ('LayerNorm_0', 'LayerNorm_1'):
      tree.update({f'{block}/{norm}/scale': (d,), f'{block}/{norm}/bias': (d,)})
    attention = f'{block}/MultiHeadDotProductAttention_0'
    for projection in ('query', 'key', 'value'):
      tree[f'{attention}/{projection}/kernel'] = (d, heads, d // heads)
      tree[f'{attention}/{projection}/bias'] = (heads, d // heads)
    tree[f'{attention}/out/kernel'] = (heads, d // heads, d)
    tree[f'{attention}/out/bias'] = (d,)
    tree.update({f'{block}/MlpBlock_0/Dense_0/kernel': (d, mlp),
                 f'{block}/MlpBlock_0/Dense_0/bias': (mlp,),
                 f'{block}/MlpBlock_0/Dense_1/kernel': (mlp, d),
                 f'{block}/MlpBlock_0/Dense_1/bias': (d,)})
  return tree


EXPLICIT_DEFAULTS = dict(
    drop_path_rate=0.0, posemb='learned', posemb_covers_prefix=True,
    num_register_tokens=0, distillation=False, layer_scale_init=None,
    pre_norm=False, fc_norm=False, qkv_bias=True, layer_norm_epsilon=1e-6,
    activation='gelu_tanh')


def test_options_off_keep_todays_tree_and_logits():
  default = helpers.tiny_model()
  explicit = helpers.tiny_model(**EXPLICIT_DEFAULTS)
  assert default == explicit  # The defaults are the values above.
  shapes = models.param_shapes(explicit, (SIZE, SIZE))
  assert {k: v.shape for k, v in _flat(shapes).items()} == (
      _released_tiny_tree())
  params = helpers.quick_random_params(default, SIZE)
  images = helpers.random_images(2, SIZE)
  ours = explicit.apply({'params': params}, images)
  np.testing.assert_array_equal(ours, default.apply({'params': params},
                                                    images))
  # Today's numerics: the paper's ViT written out in NumPy, no option.
  np.testing.assert_allclose(
      ours, numpy_vit.forward(FAMILY.to_released(params), images,
                              num_layers=2, patch=4), rtol=1e-5, atol=1e-5)


def test_initial_values_of_the_new_parameters():
  model = helpers.tiny_model(layer_scale_init=0.25, num_register_tokens=4,
                             distillation=True)
  params = models.init_params(model, jax.random.PRNGKey(0), (SIZE, SIZE))
  block = params['Transformer']['encoderblock_1']
  for name in ('LayerScale_0', 'LayerScale_1'):
    np.testing.assert_array_equal(block[name]['scale'], np.full(32, 0.25))
  registers = params['reg_token']
  assert registers.shape == (1, 4, 32) and 0 < np.abs(registers).max() < 1e-5
  assert params['dist_token'].shape == (1, 1, 32)
  assert 0.01 < float(np.std(params['dist_token'])) < 0.04
  np.testing.assert_array_equal(params['head_dist']['kernel'], 0)


# --------------------------------------------------------- posemb sincos2d --

def test_sincos2d_equals_a_hand_computed_2x2_grid():
  # D = 8: F = 2 frequencies, omega = (1, 1/10000); tokens row-major:
  # (row, col) = (0, 0), (0, 1), (1, 0), (1, 1); [sin x, cos x, sin y, cos y]
  # with x the column.
  s1, c1 = 0.8414709848078965, 0.5403023058681398  # sin(1), cos(1)
  s4, c4 = 9.999999983333334e-05, 0.999999995  # sin(1e-4), cos(1e-4)
  expected = [[0, 0, 1, 1, 0, 0, 1, 1],
              [s1, s4, c1, c4, 0, 0, 1, 1],
              [0, 0, 1, 1, s1, s4, c1, c4],
              [s1, s4, c1, c4, s1, s4, c1, c4]]
  embedding = posemb.sincos_2d((2, 2), 8)
  assert embedding.shape == (1, 4, 8) and embedding.dtype == np.float32
  np.testing.assert_allclose(embedding[0], expected, rtol=1e-7, atol=1e-7)


def test_sincos2d_of_a_wide_grid_equals_the_reference():
  np.testing.assert_allclose(posemb.sincos_2d((3, 5), 16)[0],
                             numpy_vit.sincos_2d(3, 5, 16), atol=1e-7)


@pytest.mark.parametrize('width', [4, 6, 30])
def test_sincos2d_refuses_widths_it_cannot_split(width):
  with pytest.raises(ValueError, match='multiple of 4 and at least 8'):
    posemb.sincos_2d((2, 2), width)


@pytest.mark.slow
def test_sincos2d_has_no_parameter_and_runs_at_any_resolution():
  model, params = _model_and_params(dict(posemb='sincos2d', classifier='gap'))
  assert 'posembed_input' not in params['Transformer']
  images = helpers.random_images(2, 24)  # A 6x6 grid; params made at 4x4.
  np.testing.assert_allclose(model.apply({'params': params}, images),
                             _numpy_forward(model, params, images),
                             rtol=1e-5, atol=1e-5)


# -------------------------------------------------------- stochastic depth --

def test_drop_path_rates_grow_linearly_from_zero():
  np.testing.assert_allclose(stochastic_depth.rates(0.3, 4), [0, .1, .2, .3])
  assert stochastic_depth.rates(0.3, 1) == (0.0,)


@pytest.mark.slow
def test_unrolled_blocks_get_the_linear_rates():
  model, params = _model_and_params(dict(drop_path_rate=0.3, num_layers=4))
  rates = []

  def record(next_fun, args, kwargs, context):
    if (type(context.module).__name__ == 'EncoderBlock'
        and context.method_name == '__call__'):
      rates.append(context.module.drop_path_rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({'params': params}, helpers.random_images(1, SIZE))
  np.testing.assert_allclose(rates, [0, .1, .2, .3])


@pytest.mark.slow
@pytest.mark.parametrize('scan_layers', [False, True])
def test_stochastic_depth_is_the_identity_at_evaluation(scan_layers):
  plain = helpers.tiny_model(scan_layers=scan_layers)
  dropping = helpers.tiny_model(scan_layers=scan_layers, drop_path_rate=0.5)
  params = helpers.quick_random_params(helpers.tiny_model(), SIZE)
  if scan_layers:
    params = vit_layout.stack_blocks(params)
  images = helpers.random_images(2, SIZE)
  for seed in (0, 1):
    np.testing.assert_array_equal(
        dropping.apply({'params': params}, images, train=False,
                       rngs={'dropout': jax.random.PRNGKey(seed)}),
        plain.apply({'params': params}, images))


def _zero(params, *path):
  """`params` with the Dense at `path` zeroed: its branch outputs 0."""
  params = jax.tree_util.tree_map(np.array, flax.core.unfreeze(params))
  node = params
  for name in path:
    node = node[name]
  for leaf in node:
    node[leaf] = np.zeros_like(node[leaf])
  return params


@pytest.mark.slow
@pytest.mark.parametrize('kept_branch', ['attention', 'mlp'])
def test_a_dropped_branch_is_unbiased(kept_branch):
  # With the other branch zeroed a block is x + mask * branch(x) / keep.
  # Every example is either x or x + branch / keep, and the mean over many
  # examples (independent draws) is the plain block's output.
  rate, draws = 0.3, 4000
  block = vit_blocks.EncoderBlock(num_heads=2, mlp_dim=64,
                                  drop_path_rate=rate, train=True)
  x_1ND = np.random.default_rng(0).normal(size=(1, 5, 32)).astype(np.float32)
  params = block.init(jax.random.PRNGKey(0), x_1ND)['params']
  params = (_zero(params, 'MlpBlock_0', 'Dense_1') if kept_branch == 'attention'
            else _zero(params, 'MultiHeadDotProductAttention_0', 'out'))
  branch_ND = np.asarray(block.clone(train=False).apply(
      {'params': params}, x_1ND))[0] - x_1ND[0]
  assert np.abs(branch_ND).max() > 0.1

  x_BND = np.repeat(x_1ND, draws, axis=0)
  out_BND = np.asarray(block.apply({'params': params}, x_BND,
                                   rngs={'dropout': jax.random.PRNGKey(1)}))
  kept_B = np.abs(out_BND - x_BND).max(axis=(1, 2)) > 0
  np.testing.assert_allclose(out_BND[~kept_B], x_BND[~kept_B], atol=0)
  np.testing.assert_allclose(out_BND[kept_B] - x_BND[kept_B],
                             np.broadcast_to(branch_ND / (1 - rate),
                                             out_BND[kept_B].shape),
                             rtol=1e-5, atol=1e-6)
  # The mean of `draws` Bernoulli(keep) / keep factors has standard deviation
  # sqrt(rate / (keep * draws)); allow five of them.
  sigma = np.sqrt(rate / ((1 - rate) * draws))
  mean_ND = out_BND.mean(axis=0) - x_1ND[0]
  assert np.all(np.abs(mean_ND - branch_ND) <= 5 * sigma * np.abs(branch_ND)
                + 1e-5)
  assert abs(kept_B.mean() - (1 - rate)) <= 5 * np.sqrt(
      rate * (1 - rate) / draws)


@pytest.mark.slow
@pytest.mark.parametrize('scan_layers', [False, True])
def test_training_drops_each_layers_branches_at_its_rate(scan_layers):
  # Three blocks, rate 0.5: layer rates (0, 0.25, 0.5). Each example of a
  # batch of one repeated image must equal the NumPy model with one of the
  # 16 keep/drop patterns of layers 1 and 2 (layer 0 never drops), and each
  # branch must be dropped as often as its layer's rate says.
  rates, draws = (0.0, 0.25, 0.5), 1000
  options = dict(num_layers=3, drop_path_rate=0.5, scan_layers=scan_layers)
  model = helpers.tiny_model(**options)
  params = helpers.quick_random_params(helpers.tiny_model(num_layers=3), SIZE)
  image = helpers.random_images(1, SIZE)
  patterns = np.array(np.meshgrid(*[[0, 1]] * 4, indexing='ij')).reshape(
      4, -1).T  # (16, 4): keep flags of (l1 attn, l1 mlp, l2 attn, l2 mlp).
  references = []
  for keep in patterns:
    scales = np.ones((3, 2, 1))
    scales[1:] = (keep.reshape(2, 2) / (1 - np.array(rates[1:]))[:, None]
                  )[..., None]
    references.append(_numpy_forward(model, params, image,
                                     branch_scales=scales)[0])
  references = np.stack(references)  # (16, C)

  if scan_layers:
    params = vit_layout.stack_blocks(params)
  logits = np.asarray(model.apply(
      {'params': params}, np.repeat(image, draws, axis=0), train=True,
      rngs={'dropout': jax.random.PRNGKey(0)}))
  distances = np.abs(logits[:, None] - references[None]).max(axis=-1)
  nearest = distances.argmin(axis=1)
  assert distances.min(axis=1).max() < 1e-4
  assert np.sort(distances, axis=1)[:, 1].min() > 1e-3  # Unambiguous.
  dropped = 1 - patterns[nearest]  # (draws, 4)
  expected = np.array([rates[1], rates[1], rates[2], rates[2]])
  tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
  assert np.all(np.abs(dropped.mean(axis=0) - expected) <= tolerance)


# -------------------------------------------------------------- validation --

@pytest.mark.parametrize('options,message', [
    (dict(classifier='cls'), "unknown classifier 'cls'"),
    (dict(posemb='sincos'), "unknown posemb 'sincos'.*sincos2d"),
    (dict(activation='gelu'), "unknown activation 'gelu'.*quick_gelu"),
    (dict(drop_path_rate=1.0), 'drop_path_rate must be in'),
    (dict(drop_path_rate=-0.1), 'drop_path_rate must be in'),
    (dict(num_register_tokens=-1), 'num_register_tokens must be'),
    (dict(num_register_tokens=1.5), 'num_register_tokens must be'),
    (dict(distillation=True, classifier='gap'), 'distillation=True needs'),
    (dict(layer_norm_epsilon=0.0), 'layer_norm_epsilon must be'),
])
def test_bad_options_are_refused_by_name(options, message):
  model = helpers.tiny_model(**options)
  with pytest.raises(ValueError, match=message):
    models.param_shapes(model, (SIZE, SIZE))


# ------------------------------------------------------- the parameter tree --

def test_options_name_their_parameters():
  model = helpers.tiny_model(
      num_register_tokens=2, distillation=True, layer_scale_init=0.1,
      pre_norm=True, fc_norm=True, qkv_bias=False,
      posemb_covers_prefix=False)
  flat = _flat(models.param_shapes(model, (SIZE, SIZE)))
  block = 'Transformer/encoderblock_0'
  assert flat['reg_token'].shape == (1, 2, 32)
  assert flat['dist_token'].shape == (1, 1, 32)
  assert flat['head_dist/kernel'].shape == (32, 10)
  assert flat[f'{block}/LayerScale_0/scale'].shape == (32,)
  assert flat[f'{block}/LayerScale_1/scale'].shape == (32,)
  assert flat['Transformer/pre_norm/scale'].shape == (32,)
  assert flat['fc_norm/scale'].shape == (32,)
  assert 'Transformer/encoder_norm/scale' not in flat
  assert flat['Transformer/posembed_input/pos_embedding'].shape == (1, 16, 32)
  attention = f'{block}/MultiHeadDotProductAttention_0'
  assert not any(f'{attention}/{p}/bias' in flat
                 for p in ('query', 'key', 'value'))
  assert f'{attention}/out/bias' in flat


def test_map_head_keeps_big_visions_names_in_the_file():
  model, params = _model_and_params(dict(classifier='map'))
  released = FAMILY.to_released(params)
  assert 'MAPHead_0/probe' in released
  assert released['MAPHead_0/MultiHeadDotProductAttention_0/query/kernel'
                  ].shape == (32, 2, 16)
  assert 'MAPHead_0/MlpBlock_0/Dense_1/bias' in released
  assert 'MAPHead_0/LayerNorm_0/scale' in released
  # The blocks still get the released (global) numbering.
  assert 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel' in released
  assert 'cls' not in released


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(OPTION_CASES))
def test_released_layout_round_trips(case):
  _, params = _model_and_params(OPTION_CASES[case])
  back = FAMILY.from_released(FAMILY.to_released(params))
  flat, original = _flat(back), _flat(vit_layout.unstack_blocks(params))
  assert sorted(flat) == sorted(original)
  for key in flat:
    np.testing.assert_array_equal(flat[key], original[key], err_msg=key)


def _load(*args, **kwargs):
  """(model, params, image_size) of `pretrained.load`."""
  loaded = pretrained.load(*args, **kwargs)
  return loaded.model, loaded.params, loaded.image_size


def _tree_fields(model):
  return {k: getattr(model, k) for k in (
      'classifier', 'distillation', 'num_register_tokens', 'pre_norm',
      'fc_norm', 'qkv_bias', 'posemb_covers_prefix')}


# The combined cases hold every single option but these three; the single
# ones are covered against the NumPy reference above (export and load cost a
# compilation per case).
EXPORT_CASES = ('DeiT-III', 'DINOv2 registers', 'DeiT distilled', 'CLIP',
                'SigLIP', 'GAP medium', 'scanned', 'distillation features',
                'fc_norm token', 'map fused attention')


@pytest.mark.slow
@pytest.mark.parametrize('case', EXPORT_CASES)
def test_each_option_survives_export_and_load(tmp_path, case):
  options = OPTION_CASES[case]
  model, params = _model_and_params(options)
  path = tmp_path / 'model.npz'
  pretrained.save_npz(params, path)
  images = helpers.random_images(2, SIZE)
  expected = model.apply({'params': params}, images)

  # A file without a learned position embedding does not say its size.
  size = None if model.posemb == 'learned' else SIZE
  loaded_model, loaded, image_size = _load(
      path, 'ViT-Ti_16', image_size=size, **helpers.TINY_VIT, **options)
  assert image_size == SIZE
  assert _tree_fields(loaded_model) == _tree_fields(model)
  np.testing.assert_array_equal(
      loaded_model.apply({'params': loaded}, images), expected)

  # Passing only the options a file cannot show builds the same model:
  # `describe` reads the others off the arrays.
  unseen = {k: v for k, v in options.items()
            if k in NO_PARAMETER_OPTIONS or (k == 'posemb' and v != 'learned')}
  again_model, again, _ = _load(
      path, 'ViT-Ti_16', image_size=size, **helpers.TINY_VIT, **unseen)
  assert again_model == loaded_model.clone(
      layer_scale_init=again_model.layer_scale_init)
  assert (again_model.layer_scale_init is None) == (
      model.layer_scale_init is None)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      np.array_equal, again, loaded))


def test_a_file_without_position_embedding_needs_the_image_size(tmp_path):
  model, params = _model_and_params(dict(posemb='sincos2d'))
  path = tmp_path / 'model.npz'
  pretrained.save_npz(params, path)
  with pytest.raises(ValueError, match='pass image_size'):
    pretrained.load(path, 'ViT-Ti_16', posemb='sincos2d', **helpers.TINY_VIT)
  loaded_model, loaded, _ = _load(
      path, 'ViT-Ti_16', image_size=24, posemb='sincos2d', **helpers.TINY_VIT)
  images = helpers.random_images(2, 24)
  np.testing.assert_allclose(
      loaded_model.apply({'params': loaded}, images),
      _numpy_forward(model, params, images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('covers_prefix', [True, False])
def test_loading_at_another_resolution_resizes_only_the_patch_grid(
    tmp_path, covers_prefix):
  options = dict(num_register_tokens=2, distillation=True,
                 posemb_covers_prefix=covers_prefix)
  model, params = _model_and_params(options)
  path = tmp_path / 'model.npz'
  pretrained.save_npz(params, path)
  loaded_model, loaded, _ = _load(path, 'ViT-Ti_16', image_size=24,
                                  **helpers.TINY_VIT)
  prefix = 4 if covers_prefix else 0
  old = params['Transformer']['posembed_input']['pos_embedding']
  new = loaded['Transformer']['posembed_input']['pos_embedding']
  assert new.shape == (1, prefix + 36, 32)
  np.testing.assert_array_equal(new[:, :prefix], old[:, :prefix])
  np.testing.assert_array_equal(
      new, posemb.resize(old, (6, 6), num_prefix_tokens=prefix))
  images = helpers.random_images(2, 24)
  np.testing.assert_allclose(
      loaded_model.apply({'params': loaded}, images),
      _numpy_forward(loaded_model, loaded, images), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the family --

def test_family_counts_every_prefix_token():
  for options, count in ((dict(), 1), (dict(classifier='gap'), 0),
                         (dict(num_register_tokens=4), 5),
                         (dict(distillation=True, num_register_tokens=4), 6),
                         (dict(classifier='map', num_register_tokens=2), 2)):
    assert FAMILY.num_prefix_tokens(helpers.tiny_model(**options)) == count


@pytest.mark.slow
def test_family_position_embedding_is_laid_out_as_the_tokens():
  _, params = _model_and_params(dict(num_register_tokens=2,
                                     posemb_covers_prefix=False))
  raw = params['Transformer']['posembed_input']['pos_embedding']
  embedding = FAMILY.position_embedding(params)
  assert embedding.shape == (1, 3 + 16, 32)
  np.testing.assert_array_equal(embedding[:, :3], 0)  # No embedding there.
  np.testing.assert_array_equal(embedding[:, 3:], raw)
  _, covering = _model_and_params(dict(num_register_tokens=2))
  np.testing.assert_array_equal(
      FAMILY.position_embedding(covering),
      covering['Transformer']['posembed_input']['pos_embedding'])
  _, fixed = _model_and_params(dict(posemb='sincos2d'))
  assert FAMILY.position_embedding(fixed) is None


@pytest.mark.slow
def test_distilled_features_model_drops_both_heads():
  model, params = _model_and_params(dict(distillation=True))
  features_model, features_params = models.without_head(model, params)
  assert 'head' not in features_params and 'head_dist' not in features_params
  images = helpers.random_images(2, SIZE)
  features = features_model.apply({'params': features_params}, images)
  np.testing.assert_allclose(
      features, _numpy_forward(features_model, features_params, images),
      rtol=1e-5, atol=1e-5)
  # The output is the mean of the two heads, which are sown for a loss.
  logits, state = model.apply({'params': params}, images,
                              mutable=['intermediates'])
  sown = state['intermediates']
  np.testing.assert_allclose(
      logits, (sown['head_logits'][0] + sown['head_dist_logits'][0]) / 2,
      rtol=1e-6)
  assert not np.allclose(sown['head_logits'][0], sown['head_dist_logits'][0])


def test_map_model_pools_features():
  model = helpers.tiny_model(classifier='map')
  assert FAMILY.pools_features(model)


def test_config_keys_reach_the_module():
  config = ml_collections.ConfigDict(dict(
      classifier='map', drop_path_rate=0.1, posemb='sincos2d',
      posemb_covers_prefix=False, num_register_tokens=4, layer_scale_init=0.1,
      pre_norm=True, fc_norm=True, qkv_bias=False, layer_norm_epsilon=1e-5,
      activation='quick_gelu', hidden_size=None))
  model = FAMILY.create_from_config('ViT-Ti_16', config, num_classes=3)
  for key, value in config.items():
    if key != 'hidden_size':
      assert getattr(model, key) == value, key
  assert model.hidden_size == 192


def test_config_resnet_units_none_keeps_the_variants_stem():
  def create(name, resnet_units):
    config = ml_collections.ConfigDict({'resnet_units': resnet_units})
    return FAMILY.create_from_config(name, config, num_classes=3)
  assert create('R+ViT-Ti_16', None).resnet_units == ()
  assert create('ViT-Ti_16', None).resnet_units is None
  assert create('R+ViT-Ti_16', (1,)).resnet_units == (1,)
  assert create('R50+ViT-B_16', [3, 4]).resnet_units == (3, 4)
