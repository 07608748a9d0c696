"""The way back to timm's Eva (`vit_jax.weights.to_timm_eva` through
`save_timm`): our ViTs with RoPE, gated MLPs or inner norms, written as hub
directories, read back by our own loader to the same parameters, computed
by the independent NumPy forward pass on timm's keys (tests/numpy_eva.py)
to our outputs and, where timm is installed, by
`timm.create_model('local-dir:...')`; timm's own Eva checkpoints go back
array for array under their own name; what Eva lacks is refused by name."""

import json

import jax
import numpy as np
import pytest

from tests import data_helpers
from tests import eva_fixtures
from tests import numpy_eva
from tests import timm_fixtures
from vit_jax import weights
from vit_jax.models import timm_definitions
from vit_jax.models import vit
from vit_jax.weights import timm_hub
from vit_jax.weights import to_timm

SIZE = 32
BASE = dict(num_classes=5, patch_size=(8, 8), hidden_size=48, num_layers=2,
            num_heads=2, mlp_dim=64)
AXIAL = dict(rope='axial', rope_ref_grid=(16, 16))
SWIGLU = dict(mlp_gated=True, activation='silu')
GELU = dict(activation='gelu_erf')
# Tiny models shaped as each family timm's Eva holds, and the architecture
# each is named (the definitions differ from them in sizes only, unless the
# model says otherwise: `attn_type`, `class_token`).
MODELS = {
    # EVA-02 as loaded: its key bias is zero (timm's EvaAttention has none),
    # its class token, read by no head, a register.
    'eva02': (dict(classifier='gap', fc_norm=True, mlp_norm=True,
                   num_register_tokens=1, **AXIAL, **SWIGLU),
              'eva02_base_patch14_224'),
    # EVA-CLIP fine-tuned in JAX: a trained key bias needs AttentionRope.
    'eva02_clip_key_bias': (
        dict(attention_norm=True, mlp_norm=True, **AXIAL, **SWIGLU),
        'eva02_base_patch16_clip_224'),
    'eva02_packed': (dict(classifier='gap', fc_norm=True, **AXIAL, **SWIGLU),
                     'eva02_small_patch14_224'),
    # DINOv3's class token and 4 registers: 5 of our registers.
    'dinov3': (dict(classifier='gap', num_register_tokens=5, posemb='none',
                    rope='dinov3', rope_temperature=100.,
                    rope_rotate_half=True, layer_scale_init=1e-5,
                    layer_norm_epsilon=1e-5, qkv_bias=False, num_classes=0,
                    **GELU), 'vit_base_patch16_dinov3'),
    'rope_reg_gap': (dict(classifier='gap', num_register_tokens=1,
                          posemb='none', layer_scale_init=1e-5, **AXIAL,
                          **GELU), 'vit_base_patch16_rope_reg1_gap_256'),
    'rope_axial_ape': (dict(rope='axial', rope_grid_indexing='xy',
                            rope_temperature=100., posemb_covers_prefix=False,
                            layer_scale_init=1e-5, **GELU),
                       'vit_base_patch16_rope_ape_224'),
    'rope_mixed': (dict(rope='mixed', rope_grid_indexing='xy', posemb='none',
                        layer_scale_init=1e-5, **GELU),
                   'vit_base_patch16_rope_mixed_224'),
    # Perception Encoder: the core tower's attention pool of its own heads
    # and width; the spatial tower's every token, no final norm.
    'pe_core': (dict(classifier='map', num_register_tokens=1, pre_norm=True,
                     rope='axial', rope_grid_indexing='xy',
                     rope_grid_offset=1., rope_ref_grid=(14, 14),
                     layer_norm_epsilon=1e-5, map_num_heads=4, map_mlp_dim=96,
                     **GELU), 'vit_pe_core_base_patch16_224'),
    'pe_spatial': (dict(classifier='token_unpooled', num_classes=0,
                        final_norm=False, pre_norm=True, rope='axial',
                        rope_grid_indexing='xy', rope_grid_offset=1.,
                        rope_ref_grid=(32, 32), layer_norm_epsilon=1e-5,
                        **GELU), 'vit_pe_spatial_base_patch16_512'),
}
# Our classifier -> timm's global_pool, for the NumPy reference.
_POOL = {'token': 'token', 'gap': 'avg', 'token_unpooled': ''}
# Definition arguments a tiny model overrides whatever its architecture.
_SIZES = {'embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'img_size',
          'patch_size'}


def _model(name: str) -> vit.VisionTransformer:
  return vit.VisionTransformer(**{**BASE, **MODELS[name][0]})


def _params(model, name: str):
  params = data_helpers.numpy_params(model, SIZE)
  if model.pre_norm:  # timm's pre-norm Eva has no patch-embedding bias.
    params['embedding']['bias'] = np.zeros_like(params['embedding']['bias'])
  if name in ('eva02', 'eva02_packed', 'dinov3'):
    for layer in range(model.num_layers):
      key = params['Transformer'][f'encoderblock_{layer}'][
          'MultiHeadDotProductAttention_0']['key']
      if 'bias' in key:
        key['bias'] = np.zeros_like(key['bias'])
  return params


def _pixels(seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      -1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def _written(tmp_path, name):
  model = _model(name)
  params = _params(model, name)
  config = weights.save_timm(params, model, tmp_path, image_size=SIZE)
  return model, params, config


_state_dict = timm_fixtures.written_state_dict


def _reference_rope(model):
  """tests.numpy_eva's RoPE facts, from our model's fields."""
  return dict(kind=model.rope,
              temperature=float(model.rope_temperature),
              indexing=model.rope_grid_indexing,
              offset=float(model.rope_grid_offset),
              ref=model.rope_ref_grid if model.rope == 'axial' else None,
              rotate_half=model.rope_rotate_half)


# ----------------------------------------------- round trip, no timm needed --

@pytest.mark.parametrize('name', sorted(MODELS))
def test_round_trip_and_the_architecture(tmp_path, name):
  """Our loader gives back our tree and outputs; the architecture is the
  family's own."""
  model, params, config = _written(tmp_path, name)
  assert config['architecture'] == MODELS[name][1]
  loaded = weights.load(tmp_path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params,
                         jax.tree_util.tree_map(np.asarray, params))
  pixels = _pixels()
  np.testing.assert_array_equal(
      loaded.model.apply({'params': loaded.params}, pixels),
      model.apply({'params': params}, pixels))


@pytest.mark.parametrize('name', sorted(set(MODELS) - {'pe_core'}))
def test_the_numpy_reference_on_the_written_keys(tmp_path, name):
  """tests/numpy_eva.py (no MAP pool: pe_core is timm's to check) on the
  written state dict, with facts from our model, gives our outputs."""
  model, params, _ = _written(tmp_path, name)
  pixels = _pixels()
  reference = numpy_eva.forward(
      _state_dict(tmp_path), pixels.transpose(0, 3, 1, 2),
      num_heads=model.num_heads, global_pool=_POOL[model.classifier],
      eps=model.layer_norm_epsilon,
      activation='silu' if model.mlp_gated else 'gelu_erf',
      rope=_reference_rope(model),
      no_embed_class=not model.posemb_covers_prefix)
  timm_fixtures.assert_relatively_close(
      reference, model.apply({'params': params}, pixels))


def test_eva02_needs_no_override_but_its_size(tmp_path):
  _, _, config = _written(tmp_path, 'eva02')
  assert config['model_args'] == {
      'patch_size': 8, 'embed_dim': 48, 'depth': 2, 'num_heads': 2,
      'mlp_ratio': 64 / 48, 'img_size': [32, 32],
      'num_classes': 5, 'global_pool': 'avg', 'in_chans': 3}


def test_a_trained_key_bias_goes_to_attention_rope(tmp_path):
  _, _, config = _written(tmp_path, 'eva02_clip_key_bias')
  assert config['model_args']['attn_type'] == 'rope'
  assert 'blocks.0.attn.k_proj.bias' in _state_dict(tmp_path)


@pytest.mark.parametrize('family', [
    'eva02', 'eva02_clip', 'eva02_packed', 'dinov3', 'rope_reg_gap',
    'rope_axial_ape', 'rope_mixed'])
def test_timm_checkpoints_go_back_array_for_array(tmp_path, family):
  """A timm Eva checkpoint, loaded and written back: its own state dict,
  key for key and value for value, under its architecture or one that
  differs from it in sizes only (the tiny sizes fit every size of it)."""
  spec = eva_fixtures.FAMILIES[family]
  source = eva_fixtures.write_family(tmp_path / 'source', family)
  loaded = weights.load(source)
  config = weights.save_timm(loaded.params, loaded.model, tmp_path / 'back',
                             image_size=spec.image_size)
  ours = timm_definitions.definition(config['architecture']).model_args
  theirs = timm_definitions.definition(spec.architecture).model_args
  assert {key for key in set(ours) | set(theirs)
          if ours.get(key) != theirs.get(key)} <= _SIZES
  written = _state_dict(tmp_path / 'back')
  original = _state_dict(source)
  assert sorted(written) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)


@pytest.mark.parametrize('changes, message', [
    (dict(mlp_gated=True, activation='gelu_erf'),
     "a gated MLP of activation 'gelu_erf': timm's Eva gates with SiLU"),
    (dict(activation='gelu_tanh'), "the MLP activation 'gelu_tanh' in "
     "timm's Eva"),
    (dict(norm_layer='rms_norm'), "norm_layer='rms_norm' in timm's Eva"),
    (dict(layer_norm_epsilon=1e-3), 'layer_norm_epsilon=0.001'),
    (dict(block='parallel'), "parallel blocks in timm's Eva"),
    (dict(block='post_norm', layer_scale_init=0.1),
     'LayerScale in post-norm blocks'),
    (dict(differential_attention=True), 'differential attention'),
    (dict(embed_norm=True), 'a patch-embedding norm'),
    (dict(distillation=True), "a distillation token in timm's Eva"),
    (dict(representation_size=8), 'a tanh pre_logits layer'),
    (dict(classifier='map', mlp_gated=True, activation='silu'),
     'a MAP head beside gated MLPs'),
    (dict(classifier='gap', pool_include_prefix=True),
     'an average over the prefix tokens'),
])
def test_what_timm_eva_cannot_express_is_refused_by_name(tmp_path, changes,
                                                         message):
  model = vit.VisionTransformer(**{**BASE, **AXIAL, **GELU, **changes})
  params = data_helpers.numpy_params(model, SIZE)
  with pytest.raises(to_timm.Untranslatable,
                     match='^timm cannot express ' + message.replace(
                         '(', r'\(').replace(')', r'\)')):
    weights.save_timm(params, model, tmp_path, image_size=SIZE)
  assert not list(tmp_path.iterdir())


def test_a_plain_vit_still_goes_to_vision_transformer():
  model = vit.VisionTransformer(**BASE)
  params = data_helpers.numpy_params(model, SIZE)
  assert to_timm.convert(params, model, (SIZE, SIZE)).model_class == (
      'VisionTransformer')


# ------------------------------------------------------------ timm itself --

@pytest.mark.parametrize('name', sorted(MODELS))
def test_timm_gives_our_outputs(tmp_path, name):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  model, params, _ = _written(tmp_path, name)
  pixels = _pixels()
  timm_model = timm.create_model(f'local-dir:{tmp_path}',
                                 pretrained=True).eval()
  assert type(timm_model).__name__ == 'Eva'
  with torch.no_grad():
    actual = timm_model(torch.from_numpy(
        pixels.transpose(0, 3, 1, 2).copy())).numpy()
  timm_fixtures.assert_relatively_close(
      actual, model.apply({'params': params}, pixels), tolerance=1e-4)


# --------------------------------------------------- the export program --

def test_export_program_writes_an_eva(tmp_path, capsys):
  from vit_jax.cli import export as export_cli  # pylint: disable=g-import-not-at-top
  source = eva_fixtures.write_family(tmp_path / 'source', 'eva02')
  out = tmp_path / 'out'
  assert export_cli.run(str(source), str(out), output_format='timm') == {}
  assert 'eva02_base_patch14_224' in capsys.readouterr().out
  config = json.loads((out / 'config.json').read_text())
  assert config['architecture'] == 'eva02_base_patch14_224'
  before, after = timm_hub.read(source), timm_hub.read(out)
  jax.tree_util.tree_map(np.testing.assert_array_equal, after.params,
                         before.params)
