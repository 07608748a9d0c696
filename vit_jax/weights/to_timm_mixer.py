"""Our MLP-Mixer as timm's: its state dict and the arguments timm builds it
with.

The inverse of `vit_jax.models.mixer_timm` (whose docstring has the key
table): each of our arrays goes to the timm key that mapping reads it from,
transposed back, and each option of `mixer.MlpMixer` to the argument of timm
1.0's `MlpMixer` (timm/models/mlp_mixer.py) that computes the same:

  ours                                  timm
  patch_size, num_layers, hidden_size   patch_size, num_blocks, embed_dim
  tokens_mlp_dim, channels_mlp_dim      mlp_ratio, a (tokens, channels) pair
  classifier gap | unpooled             global_pool 'avg' | ''
  activation gelu_erf                   act_layer: the class default, nn.GELU

Two limits of timm's code decide what can go back:
- Its Mixer entrypoints (`mixer_b16_224`, ...) put patch_size, num_blocks
  and embed_dim in a dict beside `**kwargs`, so config.json's model_args
  cannot override them (timm raises "got multiple values for keyword
  argument"): they select the definition (`Conversion.fixed`), and a Mixer
  of another shape than a definition's is refused.
- Its `Mlp` calls `act_layer()` as given and `MlpMixer` does not resolve a
  name (no `get_act_layer`), so model_args cannot name an activation: only
  the class default, torch's erf GELU, is written. The released models'
  tanh GELU (our default) and the quick GELU are refused.
Dropout and stochastic depth are training settings, not written; LayerNorm
epsilon is 1e-6 on both sides.
"""

from typing import Any, Dict, Mapping, Tuple

import flax
import numpy as np

from vit_jax.models import mixer
from vit_jax.models import timm_definitions
from vit_jax.weights import to_timm_arrays
from vit_jax.weights import to_timm_vit

Untranslatable = to_timm_vit.Untranslatable

_GLOBAL_POOL = {'gap': 'avg', 'unpooled': ''}
# timm 1.0's MlpMixer defaults of the arguments we write.
MIXER_DEFAULTS = {
    'num_classes': 1000, 'img_size': 224, 'in_chans': 3, 'patch_size': 16,
    'num_blocks': 8, 'embed_dim': 512, 'mlp_ratio': [0.5, 4.0],
    'global_pool': 'avg',
}
# The arguments timm's Mixer entrypoints pass themselves.
_ENTRYPOINT_ARGS = ('patch_size', 'num_blocks', 'embed_dim')
# Layer arguments (classes in timm, JSON cannot give one): a definition that
# sets any builds other blocks (ResMLP, gMLP, gMixer) or activation.
_LAYER_ARGS = ('block_layer', 'mlp_layer', 'norm_layer', 'act_layer')


def _check_expressible(model: mixer.MlpMixer) -> None:
  """Raises Untranslatable naming what timm's MlpMixer cannot compute."""
  if model.activation != 'gelu_erf':
    raise Untranslatable(
        f"timm cannot express the MLP activation {model.activation!r} in its "
        "MlpMixer (its act_layer is a class config.json cannot name; it "
        "computes torch's erf GELU): build the Mixer with "
        "activation='gelu_erf', as timm's port of the released Mixers does")


def _entrypoint_shapes() -> Dict[str, Dict[str, Any]]:
  """Mixer definition -> the patch_size, num_blocks and embed_dim its
  entrypoint fixes, over timm's definitions of plain Mixer blocks."""
  shapes = {}
  for name in timm_definitions.architectures():
    definition = timm_definitions.definition(name)
    given = definition.model_args
    if definition.model_class == 'MlpMixer' and not any(
        key in given for key in _LAYER_ARGS):
      shapes[name] = {key: given.get(key) for key in _ENTRYPOINT_ARGS}
  return shapes


def _check_shape(args: Mapping[str, Any]) -> None:
  """Raises Untranslatable unless a definition fixes the shape `args`
  give."""
  shape = {key: args[key] for key in _ENTRYPOINT_ARGS}
  shapes = _entrypoint_shapes()
  if shape not in shapes.values():
    said = lambda values: ', '.join(f'{key}={value}'
                                    for key, value in values.items())
    known = '; '.join(f'{name} ({said(values)})'
                      for name, values in shapes.items())
    raise Untranslatable(
        f'timm cannot express an MLP-Mixer of {said(shape)}: its Mixer '
        "entrypoints fix these and config.json's model_args cannot override "
        f'them; timm {timm_definitions.timm_version()} defines {known}')


def _check_tokens(params, model: mixer.MlpMixer,
                  image_size: Tuple[int, int]) -> None:
  """Raises ValueError unless `image_size` gives the token-mixing arrays'
  token count (timm builds those arrays from img_size)."""
  if 'MixerBlock_0' not in params:
    return
  tokens = params['MixerBlock_0']['token_mixing']['Dense_0']['kernel'].shape[0]
  (height, width), (patch_h, patch_w) = image_size, model.patch_size
  if height % patch_h or width % patch_w or (
      (height // patch_h) * (width // patch_w) != tokens):
    raise ValueError(
        f'image_size {height}x{width} in {patch_h}x{patch_w} patches does not '
        f'give the {tokens} tokens the token-mixing weights are for: pass '
        'the resolution the Mixer was trained at')


def timm_args(model: mixer.MlpMixer,
              image_size: Tuple[int, int]) -> Dict[str, Any]:
  """The arguments of timm's MlpMixer that compute what `model` computes.

  Raises:
    Untranslatable: `model` has a feature timm's MlpMixer lacks.
  """
  _check_expressible(model)
  patch_h, patch_w = (int(side) for side in model.patch_size)
  width = int(model.hidden_size)
  return {
      'img_size': [int(image_size[0]), int(image_size[1])], 'in_chans': 3,
      'num_classes': int(model.num_classes or 0),
      'patch_size': patch_h if patch_h == patch_w else [patch_h, patch_w],
      'num_blocks': int(model.num_layers), 'embed_dim': width,
      'mlp_ratio': [to_timm_vit.mlp_ratio(width, model.tokens_mlp_dim),
                    to_timm_vit.mlp_ratio(width, model.channels_mlp_dim)],
      'global_pool': _GLOBAL_POOL[model.classifier],
  }


def state_dict(params) -> Dict[str, np.ndarray]:
  """Our Mixer tree -> timm's MlpMixer state dict, float32."""
  params = flax.core.unfreeze(params)
  out = {}
  stem = params['stem']
  out['stem.proj.weight'] = np.asarray(stem['kernel']).transpose(3, 2, 0, 1)
  out['stem.proj.bias'] = np.asarray(stem['bias'])
  layer = 0
  while f'MixerBlock_{layer}' in params:
    ours, timm = params[f'MixerBlock_{layer}'], f'blocks.{layer}'
    to_timm_arrays.norm(out, f'{timm}.norm1', ours['LayerNorm_0'])
    to_timm_arrays.mlp(out, f'{timm}.mlp_tokens', ours['token_mixing'])
    to_timm_arrays.norm(out, f'{timm}.norm2', ours['LayerNorm_1'])
    to_timm_arrays.mlp(out, f'{timm}.mlp_channels', ours['channel_mixing'])
    layer += 1
  to_timm_arrays.norm(out, 'norm', params['pre_head_layer_norm'])
  if 'head' in params:
    to_timm_arrays.linear(out, 'head', params['head'])
  return {key: np.ascontiguousarray(value, np.float32)
          for key, value in out.items()}


def convert(params, model: mixer.MlpMixer,
            image_size: Tuple[int, int]) -> to_timm_vit.Conversion:
  """`model` and its `params` as timm's MlpMixer (see the module docstring).

  Raises:
    Untranslatable: a feature timm's MlpMixer lacks, or a shape no timm
      Mixer definition has.
    ValueError: `image_size` does not give the model's token count.
  """
  args = timm_args(model, image_size)
  _check_shape(args)
  _check_tokens(params, model, image_size)
  return to_timm_vit.Conversion(
      model_class='MlpMixer', module='mlp_mixer', args=args,
      defaults=MIXER_DEFAULTS,
      fixed={**{key: args[key] for key in _ENTRYPOINT_ARGS},
             **{key: None for key in _LAYER_ARGS}},
      state_dict=state_dict(params), classifiers=('head',),
      first_conv='stem.proj')
