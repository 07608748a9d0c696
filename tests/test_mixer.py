"""MLP-Mixer, the second built-in family: its variants and exact parameter
counts, its released layout against an independent NumPy forward pass, and
the code paths every family shares (training, export, loading, prediction,
fine-tuning, features, weight decay) run for real on a tiny Mixer."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import common
from tests import data_helpers
from tests import helpers
from tests import numpy_mixer
from vit_jax.cli import predict
from vit_jax import models
from vit_jax.models import mixer
from vit_jax.models import mixer_family
from vit_jax.models import stochastic_depth
from vit_jax.training import loop
from vit_jax.training import optim
from vit_jax.weights import npz
from vit_jax.weights import pretrained

# Tolstikhin et al. (2021), Table 1: patch, blocks, hidden C, tokens MLP,
# channels MLP, and the parameter count in millions.
TABLE_1 = {
    'Mixer-S_32': (32, 8, 512, 256, 2048, 19),
    'Mixer-S_16': (16, 8, 512, 256, 2048, 18),
    'Mixer-B_32': (32, 12, 768, 384, 3072, 60),
    'Mixer-B_16': (16, 12, 768, 384, 3072, 59),
    'Mixer-L_32': (32, 24, 1024, 512, 4096, 206),
    'Mixer-L_16': (16, 24, 1024, 512, 4096, 207),
}

# A Mixer that runs in milliseconds: 16 px images, 4 px patches, 16 tokens
# of 24 channels (unequal, so a token/channel axis mix-up changes shapes).
TINY = dict(patch_size=4, hidden_size=24, num_layers=2, tokens_mlp_dim=8,
            channels_mlp_dim=32)
IMAGE_SIZE = 16
NUM_TOKENS = (IMAGE_SIZE // 4)**2
NUM_CLASSES = 3


def tiny_mixer(num_classes=NUM_CLASSES, **overrides):
  return models.create_model('Mixer-S_16', num_classes=num_classes,
                             **{**TINY, **overrides})


def released_flat(seed=0, num_classes=5, num_layers=2):
  """Random TINY weights keyed as the released files are, written from the
  paper's description rather than from our module."""
  rng = np.random.default_rng(seed)
  patch, c, t, s = (TINY[k] for k in ('patch_size', 'hidden_size',
                                      'tokens_mlp_dim', 'channels_mlp_dim'))
  shapes = {'stem/kernel': (patch, patch, 3, c), 'stem/bias': (c,),
            'pre_head_layer_norm/scale': (c,),
            'pre_head_layer_norm/bias': (c,)}
  if num_classes:
    shapes.update({'head/kernel': (c, num_classes),
                   'head/bias': (num_classes,)})
  for i in range(num_layers):
    block = f'MixerBlock_{i}'
    for norm in ('LayerNorm_0', 'LayerNorm_1'):
      shapes[f'{block}/{norm}/scale'] = (c,)
      shapes[f'{block}/{norm}/bias'] = (c,)
    for mlp, width, hidden in (('token_mixing', NUM_TOKENS, t),
                               ('channel_mixing', c, s)):
      shapes[f'{block}/{mlp}/Dense_0/kernel'] = (width, hidden)
      shapes[f'{block}/{mlp}/Dense_0/bias'] = (hidden,)
      shapes[f'{block}/{mlp}/Dense_1/kernel'] = (hidden, width)
      shapes[f'{block}/{mlp}/Dense_1/bias'] = (width,)
  return {key: (float(key.endswith('/scale')) + 0.3 * rng.standard_normal(
      shape)).astype(np.float32) for key, shape in shapes.items()}


@pytest.fixture
def released_file(tmp_path):
  flat = released_flat()
  path = tmp_path / 'Mixer-tiny.npz'
  npz.write_npz(flat, path)
  return path, flat


def _images(batch=2, size=IMAGE_SIZE, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


# --- Names and architecture ------------------------------------------------


@pytest.mark.parametrize('name', sorted(TABLE_1))
def test_variants_are_table_1_and_short_forms_resolve(name):
  patch, blocks, hidden, tokens_mlp, channels_mlp, _ = TABLE_1[name]
  family, canonical = models.resolve(name.replace('_', '/'))
  assert (family.name, canonical) == ('mixer', name)
  model = models.create_model(name, num_classes=10)
  assert isinstance(model, mixer.MlpMixer)
  assert (model.patch_size, model.num_layers, model.hidden_size,
          model.tokens_mlp_dim, model.channels_mlp_dim, model.num_classes) == (
              (patch, patch), blocks, hidden, tokens_mlp, channels_mlp, 10)
  assert models.effective_patch_pixels(name) == patch


def test_vit_names_stay_vit_and_unknown_attributes_are_refused():
  assert models.resolve('B/16') == (models.resolve('ViT-B_16')[0], 'ViT-B_16')
  assert models.resolve('ViT-B/16')[0].name == 'vit'
  assert set(mixer_family.VARIANTS) == set(TABLE_1)
  with pytest.raises(ValueError, match='Mixer-B_16 has no num_heads'):
    models.create_model('Mixer-B/16', num_heads=12)
  with pytest.raises(ValueError, match='unknown model'):
    models.create_model('Mixer-H/14')


def _closed_form_count(patch, blocks, c, t, s, image_size=224,
                       num_classes=1000):
  """Parameters of a Mixer, term by term (Tolstikhin et al. 2021, Sec. 2)."""
  tokens = (image_size // patch)**2
  stem = patch * patch * 3 * c + c
  layer_norm = 2 * c
  token_mlp = tokens * t + t + t * tokens + tokens
  channel_mlp = c * s + s + s * c + c
  block = 2 * layer_norm + token_mlp + channel_mlp
  head = c * num_classes + num_classes if num_classes else 0
  return stem + blocks * block + layer_norm + head


@pytest.mark.parametrize('name', sorted(TABLE_1))
def test_parameter_counts_are_exact(name):
  *architecture, paper_millions = TABLE_1[name]
  with_head = models.count_params(models.param_shapes(
      models.create_model(name, num_classes=1000), (224, 224)))
  assert with_head == _closed_form_count(*architecture)
  # The paper's Table 1 counts leave out the head.
  without_head = models.count_params(models.param_shapes(
      models.create_model(name, num_classes=0), (224, 224)))
  assert without_head == _closed_form_count(*architecture, num_classes=0)
  assert round(without_head / 1e6) == paper_millions


def test_documented_counts_are_the_computed_ones():
  table = mixer_family.__doc__
  for name, (*architecture, _) in TABLE_1.items():
    assert name in table
    assert f'{_closed_form_count(*architecture):,}' in table


def test_parameter_tree_is_the_released_layout():
  shapes = flax.traverse_util.flatten_dict(
      models.param_shapes(tiny_mixer(num_classes=5), (IMAGE_SIZE,) * 2),
      sep='/')
  expected = released_flat(num_classes=5)
  assert {k: v.shape for k, v in shapes.items()} == {
      k: v.shape for k, v in expected.items()}


def test_initial_head_is_zero_and_no_head_gives_features():
  model = tiny_mixer(num_classes=5)
  params = models.init_params(model, jax.random.PRNGKey(0), (IMAGE_SIZE,) * 2)
  np.testing.assert_array_equal(params['head']['kernel'], 0)
  np.testing.assert_array_equal(params['head']['bias'], 0)
  for num_classes in (0, None):
    features = tiny_mixer(num_classes=num_classes)
    assert 'head' not in models.param_shapes(features, (IMAGE_SIZE,) * 2)
    out = features.apply({'params': {k: v for k, v in params.items()
                                     if k != 'head'}}, _images())
    assert out.shape == (2, TINY['hidden_size'])


# --- The released layout and its numerics ----------------------------------


def test_logits_equal_the_numpy_reference(released_file):
  path, flat = released_file
  assert models.family_of_checkpoint(flat).name == 'mixer'
  loaded = pretrained.load(path, 'Mixer-S/16', **TINY)
  model, params = loaded.model, loaded.params
  assert (model.num_classes, loaded.image_size) == (5, IMAGE_SIZE)  # Native.
  # No name needed: every width, the patch and the depth are in the arrays.
  assert pretrained.load(path).model == model
  images = _images(3)
  np.testing.assert_allclose(
      model.apply({'params': params}, images),
      numpy_mixer.forward(flat, images), rtol=1e-5, atol=1e-5)
  # Features: the same file without its head.
  features_model, features_params = models.without_head(model, params)
  without_head = {k: v for k, v in flat.items() if not k.startswith('head/')}
  np.testing.assert_allclose(
      features_model.apply({'params': features_params}, images),
      numpy_mixer.forward(without_head, images), rtol=1e-5, atol=1e-5)


def test_released_layout_round_trips(released_file, tmp_path):
  path, flat = released_file
  family = mixer_family.FAMILY
  tree = family.from_released(flat)
  again = family.to_released(tree)
  assert sorted(again) == sorted(flat)
  for key in flat:
    np.testing.assert_array_equal(again[key], flat[key])
  pretrained.save_npz(pretrained.load_params(path), tmp_path / 'again.npz')
  rewritten = npz.read_npz(tmp_path / 'again.npz')
  assert sorted(rewritten) == sorted(flat)
  for key in flat:
    np.testing.assert_array_equal(rewritten[key], flat[key])


def test_describe_reads_the_facts_off_the_arrays():
  shapes = models.param_shapes(models.create_model('Mixer-B_16', 1000),
                               (224, 224))
  facts = mixer_family.FAMILY.describe(shapes)
  assert facts.model_kwargs == {'num_classes': 1000}
  assert facts.expected == {'hidden_size': 768, 'patch_size': (16, 16),
                            'num_layers': 12, 'tokens_mlp_dim': 384,
                            'channels_mlp_dim': 3072}
  assert facts.native_grid == (14, 14)  # 196 tokens: 224 px at patch 16.
  features = mixer_family.FAMILY.describe(models.param_shapes(
      models.create_model('Mixer-S_32', 0), (384, 384)))
  assert (features.model_kwargs, features.native_grid) == (
      {'num_classes': None}, (12, 12))
  with pytest.raises(npz.CheckpointMismatchError, match='not an MLP-Mixer'):
    mixer_family.FAMILY.describe({'embedding': {}, 'Transformer': {}})


def test_families_recognise_only_their_own_files():
  vit_flat = flax.traverse_util.flatten_dict(models.param_shapes(
      models.create_model('ViT-Ti_16', 10, num_layers=1), (32, 32)), sep='/')
  assert models.family_of_checkpoint(vit_flat).name == 'vit'
  assert not mixer_family.FAMILY.recognises(vit_flat)
  assert models.family_of_checkpoint(released_flat()).name == 'mixer'


def test_a_wrong_variant_is_named_in_one_line(released_file):
  path, _ = released_file
  with pytest.raises(npz.CheckpointMismatchError) as error:
    pretrained.load(path, 'Mixer-B_16')
  assert str(error.value).count('\n') == 0
  assert 'hidden size 24 but Mixer-B_16 has 768' in str(error.value)
  with pytest.raises(npz.CheckpointMismatchError,
                     match='num layers 2 but Mixer-S_16 has 3'):
    pretrained.load(path, 'Mixer-S_16', **{**TINY, 'num_layers': 3})
  with pytest.raises(npz.CheckpointMismatchError,
                     match='tokens mlp dim 8 but Mixer-S_16 has 256'):
    pretrained.load(path, 'Mixer-S_16', **{**TINY, 'tokens_mlp_dim': 256})


def test_another_resolution_is_refused_clearly(released_file):
  path, _ = released_file
  with pytest.raises(ValueError) as error:
    pretrained.load(path, 'Mixer-S_16', image_size=32, **TINY)
  message = str(error.value)
  assert message == (
      'MLP-Mixer needs the native token count: the checkpoint\'s '
      'token-mixing weights are for 16 tokens (16x16-pixel images), not the '
      '64 tokens of 32x32 images; run it at 16x16 pixels')
  model = tiny_mixer(num_classes=2)
  init = models.init_params(model, jax.random.PRNGKey(0), (32, 32))
  with pytest.raises(ValueError,
                     match=r'for 16 tokens \(16x16-pixel images\)'):
    pretrained.load_for_fine_tuning(path, model, init, image_size=(32, 32))


# --- What the family computes ----------------------------------------------


def test_block_outputs_and_pre_logits(released_file):
  path, flat = released_file
  loaded = pretrained.load(path, 'Mixer-S_16', **TINY)
  model, params = loaded.model, loaded.params
  images = _images()
  outputs, inside = models.apply_with_intermediates(
      model, params, images, block_outputs=True)
  np.testing.assert_array_equal(outputs, model.apply({'params': params},
                                                     images))
  blocks = inside['block_outputs']
  assert [b.shape for b in blocks] == [(2, NUM_TOKENS, TINY['hidden_size'])] * 2
  pooled = numpy_mixer.layer_norm(
      np.asarray(blocks[-1], np.float64), flat['pre_head_layer_norm/scale'],
      flat['pre_head_layer_norm/bias']).mean(axis=1)
  np.testing.assert_allclose(inside['pre_logits'], pooled, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(
      inside['pre_logits'] @ params['head']['kernel'] + params['head']['bias'],
      outputs, rtol=1e-5, atol=1e-5)
  _, plain = models.apply_with_intermediates(model, params, images)
  assert sorted(plain) == ['pre_logits']
  with pytest.raises(ValueError, match='MLP-Mixer has no attention weights'):
    models.apply_with_intermediates(model, params, images,
                                    attention_layers=(0,))


def test_analysis_hooks():
  family = mixer_family.FAMILY
  model = tiny_mixer()
  params = data_helpers.numpy_params(model, IMAGE_SIZE)
  assert family.num_prefix_tokens(model) == 0
  assert family.position_embedding(params) is None
  np.testing.assert_array_equal(family.embedding_filters(model, params),
                                params['stem']['kernel'])
  assert family.preprocessing.mean == (127.5,) * 3
  assert family.preprocessing.std == (127.5,) * 3


def test_bfloat16_compute_follows_float32():
  params = data_helpers.numpy_params(tiny_mixer(), IMAGE_SIZE)
  images = _images()
  exact = tiny_mixer().apply({'params': params}, images)
  bf16 = tiny_mixer(dtype='bfloat16')
  assert bf16.dtype == jnp.bfloat16
  approx = bf16.apply({'params': params}, images)
  assert approx.dtype == jnp.float32  # Products accumulate in float32.
  scale = float(np.abs(exact).max())
  np.testing.assert_allclose(approx, exact, atol=0.05 * scale)
  assert not np.array_equal(approx, exact)  # bf16 operands were used.


def test_weight_decay_mask_decays_kernels_only():
  model = tiny_mixer(num_classes=2, num_layers=1)
  params = models.param_shapes(model, (IMAGE_SIZE,) * 2)
  mask = optim.weight_decay_mask(
      'kernels', models.family_of(model).no_weight_decay)(params)
  dense = {'kernel': True, 'bias': False}
  norm = {'scale': False, 'bias': False}
  assert mask == {
      'stem': dense,
      'MixerBlock_0': {'LayerNorm_0': norm, 'LayerNorm_1': norm,
                       'token_mixing': {'Dense_0': dense, 'Dense_1': dense},
                       'channel_mixing': {'Dense_0': dense, 'Dense_1': dense}},
      'pre_head_layer_norm': norm,
      'head': dense}


def test_a_config_builds_the_mixer_with_its_settings():
  config = common.set_model(common.get_config(), 'Mixer-B/16')
  assert config.model_name == 'Mixer-B/16'
  assert sorted(config.model.keys()) == [
      'activation', 'channels_mlp_dim', 'classifier', 'drop_path_rate',
      'dropout_rate', 'dtype', 'head_bias_init', 'hidden_size', 'num_layers',
      'param_dtype', 'patch_size', 'tokens_mlp_dim']
  # The defaults are the released model's.
  assert models.create_model_from_config(config, 1000) == models.create_model(
      'Mixer-B_16', 1000)
  config.model.update(dtype='bfloat16', param_dtype='bfloat16',
                      num_layers=2, tokens_mlp_dim=64, channels_mlp_dim=128,
                      head_bias_init=-6.9, classifier='unpooled',
                      dropout_rate=0.1, drop_path_rate=0.2)
  model = models.create_model_from_config(config, num_classes=4)
  assert (model.num_classes, model.patch_size, model.hidden_size,
          model.num_layers, model.tokens_mlp_dim, model.channels_mlp_dim,
          model.dtype, model.param_dtype, model.head_bias_init,
          model.classifier, model.dropout_rate, model.drop_path_rate) == (
              4, (16, 16), 768, 2, 64, 128, jnp.bfloat16, jnp.bfloat16, -6.9,
              'unpooled', 0.1, 0.2)
  config.model.patch_size = 8
  config.model.hidden_size = 32
  assert models.create_model_from_config(config, 4).clone(parent=None) == (
      model.clone(patch_size=(8, 8), hidden_size=32, parent=None))


def test_mlp_widths_from_a_config_change_the_parameter_shapes():
  config = common.set_model(common.get_config(), 'Mixer-S_16')
  config.model.update(TINY)
  config.model.update(tokens_mlp_dim=5, channels_mlp_dim=7)
  shapes = models.param_shapes(models.create_model_from_config(config, 3),
                               (IMAGE_SIZE,) * 2)['MixerBlock_1']
  assert shapes['token_mixing']['Dense_0']['kernel'].shape == (NUM_TOKENS, 5)
  assert shapes['token_mixing']['Dense_1']['kernel'].shape == (5, NUM_TOKENS)
  assert shapes['channel_mixing']['Dense_0']['kernel'].shape == (24, 7)
  assert shapes['channel_mixing']['Dense_1']['kernel'].shape == (7, 24)


def test_vit_keys_or_a_misspelt_key_are_refused_in_one_line():
  config = common.get_config()  # ViT's section left in config.model.
  config.model_name = 'Mixer-B_16'
  with pytest.raises(ValueError) as error:
    models.check_model_config(config)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(
      'config.model has keys the mixer family does not have: attention, '
      'attention_dropout_rate, attention_norm, distillation, fc_norm, '
      'layer_norm_epsilon, layer_scale_init, mlp_dim, mlp_gated, mlp_norm, '
      'num_heads, ')
  assert message.endswith(
      '; its keys are: activation, channels_mlp_dim, classifier, '
      'drop_path_rate, dropout_rate, dtype, head_bias_init, hidden_size, '
      'num_layers, param_dtype, patch_size, tokens_mlp_dim (a config file '
      'switches family with configs.common.set_model(config, MODEL_NAME))')
  with pytest.raises(ValueError, match='the mixer family does not have'):
    models.create_model_from_config(config, num_classes=2)
  locked = common.lock(common.set_model(common.get_config(), 'Mixer-B_16'))
  with pytest.raises(AttributeError, match='tokens_mlp_dimm'):
    locked.model.tokens_mlp_dimm = 8
  unlocked = common.set_model(common.get_config(), 'Mixer-B_16')
  unlocked.model.tokens_mlp_dimm = 8
  with pytest.raises(ValueError, match=r'does not have: tokens_mlp_dimm;'):
    models.create_model_from_config(unlocked, num_classes=2)


def test_set_model_keeps_a_locked_config_locked():
  config = common.lock(common.get_config())
  common.set_model(config, 'Mixer-S_32')
  assert config.model_name == 'Mixer-S_32'
  with pytest.raises(AttributeError):
    config.model.num_heads = 2
  common.set_model(config, 'ViT-B_16')  # And back: ViT's section again.
  assert config.model.to_dict() == common.get_config().model.to_dict()


@pytest.mark.parametrize('options,message', [
    (dict(classifier='token'), "unknown classifier 'token'"),
    (dict(drop_path_rate=1.0), r'drop_path_rate must be in \[0, 1\)')])
def test_bad_options_are_named(options, message):
  with pytest.raises(ValueError, match=message):
    models.param_shapes(tiny_mixer(**options), (IMAGE_SIZE,) * 2)


def test_dropout_changes_training_outputs_only():
  params = data_helpers.numpy_params(tiny_mixer(), IMAGE_SIZE)
  images = _images()
  plain = tiny_mixer().apply({'params': params}, images)
  dropped = tiny_mixer(dropout_rate=0.5)
  rngs = {'dropout': jax.random.PRNGKey(0)}
  np.testing.assert_array_equal(
      dropped.apply({'params': params}, images, rngs=rngs), plain)
  trained = dropped.apply({'params': params}, images, train=True, rngs=rngs)
  assert not np.allclose(trained, plain, atol=1e-3)
  # The default (rate 0) needs no rng in training and changes nothing.
  np.testing.assert_array_equal(
      tiny_mixer().apply({'params': params}, images, train=True), plain)


def _block_rates(model, params, images):
  """The drop_path_rate of each MixerBlock that `model` runs."""
  rates = []
  def record(next_method, args, kwargs, context):
    if (isinstance(context.module, mixer.MixerBlock) and
        context.method_name == '__call__'):
      rates.append(context.module.drop_path_rate)
    return next_method(*args, **kwargs)
  with flax.linen.intercept_methods(record):
    model.apply({'params': params}, images)
  return rates


def _block_candidates(params, x_NC):
  """A MixerBlock's output for one example with each of its two branches
  kept (scaled by 2, for rate 0.5) or dropped: {(token, channel): output}."""
  norm = lambda name, x: flax.linen.LayerNorm(
      epsilon=mixer.LAYER_NORM_EPSILON).apply({'params': params[name]}, x)
  mlp = lambda name, width, x: mixer.MlpBlock(width).apply(
      {'params': params[name]}, x)
  token = jnp.swapaxes(mlp('token_mixing', TINY['tokens_mlp_dim'],
                           jnp.swapaxes(norm('LayerNorm_0', x_NC), 0, 1)),
                       0, 1)
  outputs = {}
  for keep_token in (0, 2):
    x1_NC = x_NC + keep_token * token
    channel = mlp('channel_mixing', TINY['channels_mlp_dim'],
                  norm('LayerNorm_1', x1_NC))
    for keep_channel in (0, 2):
      outputs[keep_token > 0, keep_channel > 0] = x1_NC + keep_channel * channel
  return outputs


@pytest.mark.slow
def test_drop_path_drops_whole_branches_per_example_as_the_vit():
  model = tiny_mixer(drop_path_rate=0.5, num_layers=3)
  params = data_helpers.numpy_params(model, IMAGE_SIZE)
  images = _images(8)
  # The ViT's linear rule: 0 at the first block, the rate at the last.
  assert _block_rates(model, params, images) == [0.0, 0.25, 0.5]
  assert list(stochastic_depth.rates(0.5, 3)) == [0.0, 0.25, 0.5]
  # Evaluation is unaffected.
  np.testing.assert_array_equal(
      model.apply({'params': params}, images),
      tiny_mixer(num_layers=3).apply({'params': params}, images))
  # In training each example keeps each branch (scaled by 1 / (1 - 0.5)) or
  # drops it whole.
  block = mixer.MixerBlock(TINY['tokens_mlp_dim'], TINY['channels_mlp_dim'],
                           drop_path_rate=0.5)
  block_params = params['MixerBlock_2']
  x_BNC = jnp.asarray(np.random.default_rng(0).standard_normal(
      (16, NUM_TOKENS, TINY['hidden_size'])), jnp.float32)
  trained = block.apply({'params': block_params}, x_BNC, train=True,
                        rngs={'dropout': jax.random.PRNGKey(1)})
  # Each example's candidates, computed for all 16 at once.
  candidates_B = jax.jit(jax.vmap(_block_candidates, in_axes=(None, 0)))(
      block_params, x_BNC)
  seen = set()
  for example in range(16):
    matches = [kept for kept, output in candidates_B.items()
               if np.allclose(trained[example], output[example], atol=1e-5)]
    assert len(matches) == 1, (example, matches)
    seen.add(matches[0])
  assert {kept[0] for kept in seen} == {kept[1] for kept in seen} == {
      True, False}


def test_unpooled_classifier_keeps_every_token():
  params = data_helpers.numpy_params(tiny_mixer(), IMAGE_SIZE)
  images = _images()
  unpooled = tiny_mixer(classifier='unpooled')
  logits_BNK = unpooled.apply({'params': params}, images)
  assert logits_BNK.shape == (2, NUM_TOKENS, NUM_CLASSES)
  # The same parameters; pooling the per-token logits gives the 'gap' ones.
  np.testing.assert_allclose(
      logits_BNK.mean(axis=1), tiny_mixer().apply({'params': params}, images),
      rtol=1e-5, atol=1e-5)
  family = mixer_family.FAMILY
  assert family.pools_features(tiny_mixer())
  assert not family.pools_features(unpooled)
  _, inside = models.apply_with_intermediates(unpooled, params, images)
  assert inside['pre_logits'].shape == (2, NUM_TOKENS, TINY['hidden_size'])


# --- The paths every family shares, for real -------------------------------


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('mixer_data')
  written = data_helpers.write_image_folder(
      root, {'train': 4, 'test': 3}, NUM_CLASSES, IMAGE_SIZE)
  return str(root), written


def _train_config(data_dir):
  # Every architecture key, both MLP widths included; dropout and stochastic
  # depth on (training runs them, the export does not store them).
  return helpers.tiny_config(
      data_dir, model_name='Mixer-S_16', **helpers.ONE_STEP,
      shuffle_buffer=16, lr=1e-2, weight_decay=0.1,
      **{f'model.{key}': value for key, value in TINY.items()},
      **{'model.dropout_rate': 0.1, 'model.drop_path_rate': 0.1})


@pytest.mark.slow
def test_trains_exports_loads_and_predicts(image_folder, tmp_path):
  data_dir, written = image_folder
  workdir = tmp_path / 'run'
  record = loop.train_and_evaluate(_train_config(data_dir), str(workdir))
  assert record['num_examples'] == NUM_CLASSES * 3

  overrides = TINY
  trained = tiny_mixer()
  flat = npz.read_npz(workdir / 'model.npz')
  expected = flax.traverse_util.flatten_dict(
      models.param_shapes(trained, (IMAGE_SIZE,) * 2), sep='/')
  assert {k: v.shape for k, v in flat.items()} == {
      k: v.shape for k, v in expected.items()}
  assert 'MixerBlock_1/token_mixing/Dense_0/kernel' in flat
  assert np.any(flat['head/kernel'] != 0)  # One Adam step moved the head.

  loaded = pretrained.load(workdir / 'model.npz', 'Mixer-S/16', **overrides)
  model, params = loaded.model, loaded.params
  assert (model.num_classes, loaded.image_size) == (NUM_CLASSES, IMAGE_SIZE)
  # The architecture is in the arrays: the export loads by itself.
  assert pretrained.load(workdir / 'model.npz').model == model
  images = [path for path, _ in written['test'][:2]]
  logits = predict.run(str(workdir / 'model.npz'), 'Mixer-S_16', images,
                       top_k=2, **overrides)
  pixels = np.stack([(np.asarray(Image.open(path), np.float32) - 127.5)
                     / 127.5 for path in images])
  np.testing.assert_allclose(logits, model.apply({'params': params}, pixels),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      predict.run(str(workdir / 'model.npz'), None, images, top_k=2), logits)

def test_fine_tuning_keeps_the_backbone_and_takes_a_fresh_head(tmp_path):
  source = tiny_mixer(num_classes=5)
  params = data_helpers.numpy_params(source, IMAGE_SIZE)
  path = tmp_path / 'source.npz'
  pretrained.save_npz(params, path)
  assert sorted(npz.read_npz(path)) == sorted(released_flat(num_classes=5))

  target = tiny_mixer(num_classes=2)
  init = models.init_params(target, jax.random.PRNGKey(1), (IMAGE_SIZE,) * 2)
  tuned = pretrained.load_for_fine_tuning(path, target, init,
                                          image_size=(IMAGE_SIZE,) * 2)
  assert tuned['head']['kernel'].shape == (TINY['hidden_size'], 2)
  np.testing.assert_array_equal(tuned['head']['kernel'], 0)
  tuned_flat = flax.traverse_util.flatten_dict(tuned, sep='/')
  source_flat = flax.traverse_util.flatten_dict(params, sep='/')
  for key, value in tuned_flat.items():
    if not key.startswith('head/'):
      np.testing.assert_array_equal(value, source_flat[key])
