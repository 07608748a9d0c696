"""The way back to timm's VisionTransformer for its options beyond the
paper's block (`vit_jax.weights.to_timm_vit` through `save_timm`): RMSNorm
and the patch-embedding norm, SwiGLU and GluMlp, inner norms, post-norm and
parallel blocks, differential attention, bias-free output projections. Each
tiny model, shaped as a timm family, is written as a hub directory under
that family's name, read back by our loader to the same parameters,
computed by the independent NumPy forward pass on timm's keys
(tests/numpy_timm.py) to our outputs and, where timm is installed, by
`timm.create_model('local-dir:...')`; what timm's ViT lacks is refused by
name."""

import jax
import numpy as np
import pytest

from tests import data_helpers
from tests import numpy_timm
from tests import timm_fixtures
from vit_jax import weights
from vit_jax.models import vit
from vit_jax.weights import to_timm

SIZE = 32
BASE = dict(num_classes=5, patch_size=(8, 8), hidden_size=48, num_layers=2,
            num_heads=2, mlp_dim=64)
# timm's "reg1_gap" ViTs: one register, average pooling, a position
# embedding of the patches only, LayerScale, erf GELU.
REG1_GAP = dict(classifier='gap', num_register_tokens=1,
                posemb_covers_prefix=False, layer_scale_init=1e-5,
                activation='gelu_erf')
AIMV2 = dict(classifier='gap', mlp_gated=True, activation='silu',
             norm_layer='rms_norm', layer_norm_epsilon=1e-5, embed_norm=True,
             qkv_bias=False)
# Tiny models shaped as each family, and the architecture each is named
# (the definitions differ from them in sizes only, unless the model says
# otherwise; of families alike but for sizes, the first name).
MODELS = {
    # AIMv2 as timm builds it: no output-projection biases (proj_bias=False).
    'aimv2': (AIMV2, 'aimv2_1b_patch14_224'),
    'aimv2_trained_biases': (AIMV2, 'aimv2_1b_patch14_224'),
    'dinov2_giant': (dict(mlp_gated=True, activation='silu',
                          layer_scale_init=1e-5), 'vit_giant_patch14_dinov2'),
    'beit3': (dict(classifier='gap', extra_class_token=True, fc_norm=True,
                   attention_norm=True, mlp_norm=True,
                   layer_norm_epsilon=1e-5, activation='gelu_erf'),
              'beit3_base_patch16_224'),
    'parallel': (dict(block='parallel', **REG1_GAP),
                 'vit_pwee_patch16_reg1_gap_256'),
    'diff_parallel': (dict(block='parallel', differential_attention=True,
                           **REG1_GAP), 'vit_dpwee_patch16_reg1_gap_256'),
    'differential': (dict(differential_attention=True, **REG1_GAP),
                     'vit_dlittle_patch16_reg1_gap_256'),
    'post_norm': (dict(block='post_norm', classifier='gap', qkv_bias=False,
                       activation='gelu_erf'), 'vit_base_patch16_rpn_224'),
}
# Our classifier -> timm's global_pool, for the NumPy reference.
_POOL = {'token': 'token', 'gap': 'avg'}


def _model(name: str) -> vit.VisionTransformer:
  return vit.VisionTransformer(**{**BASE, **MODELS[name][0]})


def _params(model, name: str):
  params = data_helpers.numpy_params(model, SIZE)
  if name == 'diff_parallel':  # One out_proj: its bias is read as `out`'s.
    for layer in range(model.num_layers):
      dense = params['Transformer'][f'encoderblock_{layer}']['MlpBlock_0'][
          'Dense_1']
      dense['bias'] = np.zeros_like(dense['bias'])
  if name == 'aimv2':  # timm's AIMv2 has no output-projection biases.
    for layer in range(model.num_layers):
      block = params['Transformer'][f'encoderblock_{layer}']
      for sublayer, dense in (('MultiHeadDotProductAttention_0', 'out'),
                              ('MlpBlock_0', 'Dense_0'),
                              ('MlpBlock_0', 'Dense_value'),
                              ('MlpBlock_0', 'Dense_1')):
        bias = block[sublayer][dense]['bias']
        block[sublayer][dense]['bias'] = np.zeros_like(bias)
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


@pytest.mark.parametrize('name', sorted(MODELS))
def test_the_numpy_reference_on_the_written_keys(tmp_path, name):
  """tests/numpy_timm.py on the written state dict, with facts from our
  model, gives our outputs."""
  model, params, _ = _written(tmp_path, name)
  pixels = _pixels()
  reference = numpy_timm.forward(
      _state_dict(tmp_path), pixels.transpose(0, 3, 1, 2),
      num_heads=model.num_heads, global_pool=_POOL[model.classifier],
      no_embed_class=not model.posemb_covers_prefix,
      eps=model.layer_norm_epsilon, activation=model.activation,
      post_norm=model.block == 'post_norm')
  timm_fixtures.assert_relatively_close(
      reference, model.apply({'params': params}, pixels))


def test_aimv2_needs_no_override_but_its_size(tmp_path):
  _, _, config = _written(tmp_path, 'aimv2')
  assert config['model_args'] == {
      'patch_size': 8, 'embed_dim': 48, 'depth': 2, 'num_heads': 2,
      'mlp_ratio': 64 / 48, 'act_layer': 'silu', 'img_size': [32, 32],
      'num_classes': 5, 'global_pool': 'avg', 'in_chans': 3}
  assert 'blocks.0.attn.proj.bias' not in _state_dict(tmp_path)


def test_trained_output_biases_are_written_with_proj_bias(tmp_path):
  _, _, config = _written(tmp_path, 'aimv2_trained_biases')
  assert config['model_args']['proj_bias'] is True
  assert {'blocks.0.attn.proj.bias', 'blocks.0.mlp.fc1_g.bias',
          'blocks.0.mlp.fc2.bias'} <= set(_state_dict(tmp_path))


def test_glu_mlp_packs_gate_then_value(tmp_path):
  """The DINOv2 giants' GluMlp(gate_last=False): one fc1 of [gate; value],
  its mlp_ratio twice ours."""
  _, params, config = _written(tmp_path, 'dinov2_giant')
  assert config['model_args']['mlp_ratio'] == 2 * 64 / 48
  mlp = params['Transformer']['encoderblock_0']['MlpBlock_0']
  np.testing.assert_array_equal(
      _state_dict(tmp_path)['blocks.0.mlp.fc1.weight'],
      np.concatenate([mlp['Dense_0']['kernel'].T,
                      mlp['Dense_value']['kernel'].T]))


def test_a_gelu_gated_mlp_overrides_the_glu_mlp_activation(tmp_path):
  """timm's Block passes its act_layer over the GluMlp partial's SiLU."""
  model = vit.VisionTransformer(**BASE, mlp_gated=True, activation='gelu_erf')
  params = data_helpers.numpy_params(model, SIZE)
  config = weights.save_timm(params, model, tmp_path, image_size=SIZE)
  assert config['architecture'] == 'vit_giant_patch14_dinov2'
  assert config['model_args']['act_layer'] == 'gelu'


@pytest.mark.parametrize('changes, message', [
    (dict(block='post_norm', layer_scale_init=1e-5),
     "LayerScale in post-norm blocks (timm's ResPostBlock has none)"),
    (dict(block='parallel', mlp_gated=True, activation='silu',
          norm_layer='rms_norm'),
     'gated MLPs or inner norms in parallel blocks'),
    (dict(norm_layer='rms_norm', attention_norm=True),
     "inner norms beside norm_layer='rms_norm'"),
    (dict(classifier='map', map_num_heads=4),
     'a MAP head unlike the blocks'),
    (dict(norm_layer='rms_norm'),
     'no VisionTransformer definition of timm'),
])
def test_what_timm_vit_cannot_express_is_refused_by_name(tmp_path, changes,
                                                         message):
  model = vit.VisionTransformer(**{**BASE, **changes})
  params = data_helpers.numpy_params(model, SIZE)
  with pytest.raises(to_timm.Untranslatable) as error:
    weights.save_timm(params, model, tmp_path, image_size=SIZE)
  assert message in str(error.value)
  assert '\n' not in str(error.value)
  assert not list(tmp_path.iterdir())


# ------------------------------------------------------------ timm itself --

@pytest.mark.parametrize('name', sorted(MODELS))
def test_timm_gives_our_outputs(tmp_path, name):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  model, params, _ = _written(tmp_path, name)
  pixels = _pixels()
  timm_model = timm.create_model(f'local-dir:{tmp_path}',
                                 pretrained=True).eval()
  assert type(timm_model).__name__ == 'VisionTransformer'
  with torch.no_grad():
    actual = timm_model(torch.from_numpy(
        pixels.transpose(0, 3, 1, 2).copy())).numpy()
  timm_fixtures.assert_relatively_close(
      actual, model.apply({'params': params}, pixels), tolerance=1e-4)
