"""What timm's MLP-Mixer layout means, as our `mixer.MlpMixer`.

timm 1.0's `MlpMixer` (timm/models/mlp_mixer.py) ports the released
Mixer-B/16 and L/16 (`mixer_b16_224`, `mixer_l16_224`, ...). Its state dict
(D hidden, N tokens, T tokens MLP, S channels MLP, p patch):

  timm key (torch shape)                  ours (shape)
  stem.proj (D, 3, p, p)                  stem (p, p, 3, D)
  blocks.i.norm1, norm2                   MixerBlock_i/LayerNorm_0, _1
  blocks.i.mlp_tokens.fc1, fc2 (T, N),    MixerBlock_i/token_mixing/Dense_0,
    (N, T)                                  Dense_1 (N, T), (T, N)
  blocks.i.mlp_channels.fc1, fc2          MixerBlock_i/channel_mixing/...
  norm                                    pre_head_layer_norm
  head                                    head

It computes what ours does with the erf GELU (torch's nn.GELU; the released
models use tanh's: model option `activation`) and LayerNorm epsilon 1e-6;
global_pool 'avg' is our 'gap', '' our 'unpooled'. The same module's other
models have blocks our Mixer lacks, refused by name: ResMLP (Touvron et al.
2021: Affine norms, a linear token mixer, LayerScale), gMLP (Liu et al. 2021:
a spatial gating unit) and gMixer (GluMlp, gated SiLU MLPs).
"""

import re
from typing import Any, Dict, Mapping, Tuple

import flax
import numpy as np

from vit_jax.models import family

# timm's MlpMixer keys of features our Mixer lacks (re.search), checked
# before mapping so the error names the feature.
_UNSUPPORTED_KEYS = (
    (r'^blocks\.\d+\.(linear_tokens\.|ls[12]$|norm[12]\.alpha)',
     'ResMLP blocks (Affine norms, a linear token mixer and LayerScale; '
     'resmlp_*)'),
    (r'^blocks\.\d+\.mlp_channels\.gate\.',
     "gMLP's spatial gating unit (gmlp_*)"),
    (r'^norm\.alpha$', "ResMLP's Affine final norm"),
    (r'^stem\.norm\.', 'a norm in the stem (stem_norm=True)'),
)
# Architectures whose keys look like Mixer's but compute otherwise.
_UNSUPPORTED_ARCHITECTURES = (
    (r'gmixer_', 'gated MLPs (GluMlp with SiLU; gmixer_*)'),
)
# model_args the arrays show, or that only matter in training.
_MODEL_ARGS_SHOWN = frozenset({
    'num_classes', 'img_size', 'in_chans', 'patch_size', 'num_blocks',
    'embed_dim', 'mlp_ratio', 'drop_rate', 'proj_drop_rate', 'drop_path_rate',
    'nlhb', 'global_pool'})
_ACT_LAYERS = {'gelu': 'gelu_erf', 'gelu_tanh': 'gelu_tanh',
               'quick_gelu': 'quick_gelu'}
_CLASSIFIERS = {'avg': 'gap', '': 'unpooled'}


def _check_features(name: str, arrays: Mapping[str, Any],
                    model_args: Mapping[str, Any]) -> None:
  for pattern, feature in _UNSUPPORTED_KEYS:
    keys = sorted(key for key in arrays if re.search(pattern, key))
    if keys:
      raise family.CheckpointMismatchError(
          f'the checkpoint uses {feature} (e.g. {keys[0]!r}), which vit_jax\'s '
          'MLP-Mixer does not implement')
  for pattern, feature in _UNSUPPORTED_ARCHITECTURES:
    if re.match(pattern, name):
      raise family.CheckpointMismatchError(
          f'timm architecture {name!r} uses {feature}, which vit_jax\'s '
          'MLP-Mixer does not implement')
  for key, value in model_args.items():
    if key not in _MODEL_ARGS_SHOWN and not (key == 'act_layer' or (
        key == 'stem_norm' and not value)):
      raise family.CheckpointMismatchError(
          f'config.json model_args {key}={value!r}: a timm option vit_jax\'s '
          'MLP-Mixer does not implement')


def _activation(model_args: Mapping[str, Any]) -> str:
  name = str(model_args.get('act_layer', 'gelu'))
  if name not in _ACT_LAYERS:
    raise family.CheckpointMismatchError(
        f'config.json model_args act_layer={name!r}: vit_jax\'s MLP-Mixer '
        f'implements {sorted(_ACT_LAYERS)}')
  return _ACT_LAYERS[name]


class _Arrays:
  """timm's arrays, each taken once (read when taken)."""

  def __init__(self, arrays: Mapping[str, Any]):
    self._arrays = dict(arrays)

  def has(self, key: str) -> bool:
    return key in self._arrays

  def take(self, key: str) -> np.ndarray:
    if key not in self._arrays:
      raise family.CheckpointMismatchError(
          f'the checkpoint has no {key!r}, which a timm MLP-Mixer of its '
          'shape has')
    return np.asarray(self._arrays.pop(key))

  def left(self) -> Tuple[str, ...]:
    return tuple(sorted(self._arrays))


def _norm(arrays: _Arrays, out, timm: str, ours: str) -> None:
  out[f'{ours}/scale'] = arrays.take(f'{timm}.weight')
  out[f'{ours}/bias'] = arrays.take(f'{timm}.bias')


def _dense(arrays: _Arrays, out, timm: str, ours: str) -> np.ndarray:
  """torch Linear (out, in) -> Dense kernel (in, out); returns the kernel."""
  out[f'{ours}/kernel'] = arrays.take(f'{timm}.weight').T
  out[f'{ours}/bias'] = arrays.take(f'{timm}.bias')
  return out[f'{ours}/kernel']


def _mlp(arrays: _Arrays, out, timm: str, ours: str) -> int:
  """fc1, fc2 -> Dense_0, Dense_1; returns the hidden width."""
  kernel_in = _dense(arrays, out, f'{timm}.fc1', f'{ours}/Dense_0')
  kernel_out = _dense(arrays, out, f'{timm}.fc2', f'{ours}/Dense_1')
  if kernel_in.shape[1] != kernel_out.shape[0]:
    raise family.CheckpointMismatchError(
        f'{timm}.fc1 has {kernel_in.shape[1]} outputs but fc2 '
        f'{kernel_out.shape[0]} inputs: a gated MLP (GluMlp), which vit_jax\'s '
        'MLP-Mixer does not implement')
  return int(kernel_in.shape[1])


def to_mixer(config: Mapping[str, Any], timm_arrays: Mapping[str, Any]
             ) -> Tuple[family.Params, Dict[str, Any]]:
  """timm's MlpMixer state dict -> our parameter tree and model attributes.

  Args:
    config: config.json (architecture, global_pool, model_args).
    timm_arrays: timm key -> array.

  Returns:
    (params, model_kwargs): the nested float32 tree and the
    `mixer.MlpMixer` attributes (num_classes, None without a head, the
    sizes, classifier and activation).

  Raises:
    family.CheckpointMismatchError: a feature our Mixer lacks, or an array
      missing or left over.
  """
  model_args = config.get('model_args') or {}
  _check_features(config['architecture'].split('.')[0], timm_arrays,
                  model_args)
  arrays, out = _Arrays(timm_arrays), {}
  weight_DCPP = arrays.take('stem.proj.weight')
  out['stem/kernel'] = weight_DCPP.transpose(2, 3, 1, 0)
  out['stem/bias'] = arrays.take('stem.proj.bias')
  num_layers, widths = 0, set()
  while arrays.has(f'blocks.{num_layers}.norm1.weight'):
    timm, ours = f'blocks.{num_layers}', f'MixerBlock_{num_layers}'
    _norm(arrays, out, f'{timm}.norm1', f'{ours}/LayerNorm_0')
    tokens_mlp_dim = _mlp(arrays, out, f'{timm}.mlp_tokens',
                          f'{ours}/token_mixing')
    _norm(arrays, out, f'{timm}.norm2', f'{ours}/LayerNorm_1')
    channels_mlp_dim = _mlp(arrays, out, f'{timm}.mlp_channels',
                            f'{ours}/channel_mixing')
    widths.add((tokens_mlp_dim, channels_mlp_dim))
    num_layers += 1
  if len(widths) > 1:
    raise family.CheckpointMismatchError(
        f'MLP widths differ between blocks: {sorted(widths)}')
  _norm(arrays, out, 'norm', 'pre_head_layer_norm')
  num_classes = None
  if arrays.has('head.weight'):
    num_classes = int(_dense(arrays, out, 'head', 'head').shape[1])
  if arrays.left():
    raise family.CheckpointMismatchError(
        f'{len(arrays.left())} timm keys fit no part of vit_jax\'s MLP-Mixer: '
        f'{", ".join(arrays.left()[:20])}')
  pool = model_args.get('global_pool', config.get('global_pool', 'avg'))
  if pool not in _CLASSIFIERS:
    raise family.CheckpointMismatchError(
        f'global_pool {pool!r}: timm\'s MlpMixer pools with \'avg\' or \'\'')
  (tokens_mlp_dim, channels_mlp_dim), = widths or {(None, None)}
  model_kwargs = dict(
      num_classes=num_classes,
      patch_size=(int(weight_DCPP.shape[2]), int(weight_DCPP.shape[3])),
      hidden_size=int(weight_DCPP.shape[0]), num_layers=num_layers,
      tokens_mlp_dim=tokens_mlp_dim, channels_mlp_dim=channels_mlp_dim,
      classifier=_CLASSIFIERS[pool], activation=_activation(model_args))
  tree = flax.traverse_util.unflatten_dict(
      {key: np.ascontiguousarray(value, np.float32)
       for key, value in out.items()}, sep='/')
  return tree, model_kwargs


def _check_tokens(params: family.Params, patch_size: Tuple[int, int],
                  image_size: Tuple[int, int]) -> None:
  block = params.get('MixerBlock_0')
  if block is None:
    return
  tokens = block['token_mixing']['Dense_0']['kernel'].shape[0]
  grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
  if image_size[0] % patch_size[0] or image_size[1] % patch_size[1] or (
      tokens != grid[0] * grid[1]):
    raise family.CheckpointMismatchError(
        f'the token-mixing arrays are for {tokens} tokens, but input_size '
        f'{image_size} in {patch_size} patches is not that: is '
        'pretrained_cfg input_size right?')


class TimmLayout(family.ForeignLayout):
  """timm's MlpMixer state dict (see the module docstring)."""
  describes = ("timm's MlpMixer (Mixer, ResMLP, gMLP): arrays with "
               'stem.proj and blocks')

  def recognises(self, config: Mapping[str, Any],
                 arrays: family.FlatParams) -> bool:
    """timm's MlpMixer embeds patches with a `PatchEmbed` named `stem`;
    ResMLP and gMLP (same module) are recognised too, so that `to_params`
    names what they use."""
    del config
    return 'stem.proj.weight' in arrays and any(
        key.startswith('blocks.0.') for key in arrays)

  def to_params(self, config: Mapping[str, Any], arrays: family.FlatParams,
                image_size: Tuple[int, int]
                ) -> Tuple[family.Params, Dict[str, Any]]:
    """See `family.ForeignLayout.to_params`.

    Raises:
      family.CheckpointMismatchError: as `to_mixer`'s, or the token-mixing
        arrays are for another token count than `image_size` gives.
    """
    params, model_kwargs = to_mixer(config, arrays)
    _check_tokens(params, model_kwargs['patch_size'], image_size)
    return params, model_kwargs


LAYOUT = TimmLayout()
