"""The MLP-Mixer family (`mixer.MlpMixer`) as a `family.ModelFamily`.

Variants are named as the released checkpoints are (`Mixer-B_16`); the form
`Mixer-B/16` selects the same variant. Architectures are Table 1 of
Tolstikhin et al. (2021), "MLP-Mixer: An all-MLP Architecture for Vision":

  name        patch  blocks  hidden C  tokens MLP  channels MLP  params
  Mixer-S_16   16      8       512       256         2048     18,528,264
  Mixer-S_32   32      8       512       256         2048     19,104,624
  Mixer-B_16   16     12       768       384         3072     59,880,472
  Mixer-B_32   32     12       768       384         3072     60,293,428
  Mixer-L_16   16     24      1024       512         4096    208,196,168
  Mixer-L_32   32     24      1024       512         4096    206,939,264

The counts are for 224-pixel inputs and a 1000-class head. Without the head
they are 18.0M, 18.6M, 59.1M, 59.5M, 207.2M and 205.9M, which round to the
paper's Table 1 (18M, 19M, 59M, 60M, 207M, 206M): the paper leaves the head
out.

The released `.npz` layout is our parameter tree flattened with '/', so the
inherited `from_released` / `to_released` apply unchanged; timm's layout of
the same models is `mixer_timm` (the family's `foreign_layouts`). What differs from
the ViT: the token-mixing weights are (tokens, tokens MLP), so a checkpoint
runs only at its native number of tokens (there is no position embedding to
resample), and there are no attention weights and no class token.
"""

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax.models import family
from vit_jax.models import mixer
from vit_jax.models import mixer_timm

Params = family.Params


@dataclasses.dataclass(frozen=True)
class Variant:
  """Architecture of one named Mixer (independent of classes and head)."""
  patch_size: int
  num_layers: int
  hidden_size: int
  tokens_mlp_dim: int
  channels_mlp_dim: int


VARIANTS: Dict[str, Variant] = {
    'Mixer-S_16': Variant(16, 8, 512, 256, 2048),
    'Mixer-S_32': Variant(32, 8, 512, 256, 2048),
    'Mixer-B_16': Variant(16, 12, 768, 384, 3072),
    'Mixer-B_32': Variant(32, 12, 768, 384, 3072),
    'Mixer-L_16': Variant(16, 24, 1024, 512, 4096),
    'Mixer-L_32': Variant(32, 24, 1024, 512, 4096),
}

# `config.model` keys (and program flags) that override a variant; None
# keeps the variant's value.
ARCHITECTURE_KEYS = ('patch_size', 'hidden_size', 'num_layers',
                     'tokens_mlp_dim', 'channels_mlp_dim')

_STEM, _FINAL_NORM, _BLOCK = 'stem', 'pre_head_layer_norm', 'MixerBlock_{}'
# MlpMixer attributes a caller may set (flax's own `parent`/`name` left out).
_MODULE_FIELDS = frozenset(
    field.name for field in dataclasses.fields(mixer.MlpMixer)) - {
        'parent', 'name'}


def _block(params: Params, layer: int) -> Optional[Params]:
  return params.get(_BLOCK.format(layer))


def num_layers_of(params: Params) -> int:
  """Number of consecutive MixerBlock_{i} in a parameter tree."""
  layers = 0
  while _block(params, layers) is not None:
    layers += 1
  return layers


def num_tokens_of(params: Params) -> Optional[int]:
  """Tokens the token-mixing weights were made for (None: no blocks)."""
  block = _block(params, 0)
  if block is None:
    return None
  return int(block['token_mixing']['Dense_0']['kernel'].shape[0])


def _square_side(num_tokens: int) -> Optional[int]:
  side = math.isqrt(num_tokens)
  return side if side * side == num_tokens else None


class MixerFamily(family.ModelFamily):
  """MLP-Mixer (`mixer.MlpMixer`).

  Inherited as they are: `from_released` / `to_released` (the released
  layout is our tree), `without_head` (drops `head`), `num_prefix_tokens`
  (0: no class token) and `position_embedding` (None: Mixer has none).
  """
  name = 'mixer'
  module_type = mixer.MlpMixer
  # The released Mixer weights expect [-1, 1] pixels, like the ViT's.
  preprocessing = family.Preprocessing()
  # Every ndim >= 2 parameter is a kernel (stem, Dense, head): nothing to
  # exempt beyond what the 'kernels' mask already leaves out.
  no_weight_decay = ()
  architecture_keys = ARCHITECTURE_KEYS
  # Training settings: evaluation computes the same without them.
  unstored_fields = ('dtype', 'param_dtype', 'head_bias_init', 'dropout_rate',
                     'drop_path_rate')
  # timm's MlpMixer state dicts (hub directories and ids): mixer_timm.py.
  foreign_layouts = {'timm': mixer_timm.LAYOUT}

  @property
  def variants(self) -> Mapping[str, Variant]:
    return VARIANTS

  def default_config(self) -> ml_collections.ConfigDict:
    """See `family.ModelFamily.default_config`; the defaults are the
    released model."""
    model = ml_collections.ConfigDict()
    no_int = lambda: ml_collections.FieldReference(None, int)
    model.classifier = 'gap'  # gap (mean of the tokens, released) | unpooled (every token).
    model.dropout_rate = 0.0  # Dropout after every MLP's GELU and output.
    model.drop_path_rate = 0.0  # Stochastic depth at the last block (0 at the first, linear between).
    model.head_bias_init = 0.0  # Head bias init: -10 with sigmoid pre-training.
    model.dtype = 'float32'  # Matmul operand dtype: float32 | bfloat16 | auto (bf16 where the hardware multiplies it natively; accumulation is always float32).
    model.param_dtype = 'float32'  # Parameter storage dtype.
    # Architecture overrides of the named variant (None keeps the variant's).
    model.patch_size = no_int()  # Patch side in pixels.
    model.hidden_size = no_int()  # Channels C of every token.
    model.num_layers = no_int()  # Mixer blocks.
    model.tokens_mlp_dim = no_int()  # Hidden width of the token-mixing MLPs.
    model.channels_mlp_dim = no_int()  # Hidden width of the channel-mixing MLPs.
    model.activation = 'gelu_tanh'  # MLP nonlinearity: gelu_tanh (released) | gelu_erf (timm's port) | quick_gelu.
    return model

  def canonical_name(self, name: str) -> Optional[str]:
    candidate = name.strip().replace('/', '_')
    return candidate if candidate in VARIANTS else None

  def create(self, name: str, num_classes: Optional[int],
             **overrides: Any) -> mixer.MlpMixer:
    """See `family.ModelFamily.create`.

    Raises:
      ValueError: an override that is no MlpMixer attribute (e.g. the ViT's
        num_heads).
    """
    return _build(name, {**dataclasses.asdict(VARIANTS[name]), **overrides,
                         'num_classes': num_classes})

  def build(self, fields: Mapping[str, Any]) -> mixer.MlpMixer:
    """See `family.ModelFamily.build`."""
    return _build('the MLP-Mixer', fields)

  def patch_pixels(self, model: mixer.MlpMixer) -> Tuple[int, int]:
    patch_h, patch_w = model.patch_size
    return patch_h, patch_w

  # --- Released layout ---------------------------------------------------

  def recognises(self, flat) -> bool:
    tops = {key.split('/')[0] for key in flat}
    return {_STEM, _FINAL_NORM} <= tops

  def describe(self, params: Params) -> family.CheckpointFacts:
    """Class count from `head`; hidden size, patch size, block count and
    both MLP widths must match the model; the native grid is the square
    root of the token count (None if it is not square)."""
    for required in (_STEM, _FINAL_NORM):
      if required not in params:
        raise family.CheckpointMismatchError(
            f'the checkpoint has no {required!r} parameters: not an '
            'MLP-Mixer checkpoint')
    stem_kernel = params[_STEM]['kernel']
    expected = {'hidden_size': int(stem_kernel.shape[-1]),
                'patch_size': tuple(int(s) for s in stem_kernel.shape[:2]),
                'num_layers': num_layers_of(params)}
    native_grid = None
    num_tokens = num_tokens_of(params)
    if num_tokens is not None:
      block = _block(params, 0)
      expected['tokens_mlp_dim'] = int(
          block['token_mixing']['Dense_0']['kernel'].shape[-1])
      expected['channels_mlp_dim'] = int(
          block['channel_mixing']['Dense_0']['kernel'].shape[-1])
      side = _square_side(num_tokens)
      native_grid = None if side is None else (side, side)
    head = params.get('head')
    return family.CheckpointFacts(
        model_kwargs={'num_classes': (None if head is None else
                                      int(head['kernel'].shape[-1]))},
        expected=expected, native_grid=native_grid)

  def adapt_resolution(self, params: Params, model: mixer.MlpMixer,
                       shapes: Params, image_size: Sequence[int],
                       method: str) -> Params:
    """Returns `params` unchanged when `image_size` gives their token count.

    Raises:
      ValueError: it does not. Token-mixing weights are (tokens, tokens
        MLP), with nothing to resample, so the message names the native
        image size.
    """
    del method
    native, wanted = num_tokens_of(params), num_tokens_of(shapes)
    if native is None or wanted is None or native == wanted:
      return params
    patch_h, patch_w = self.patch_pixels(model)
    side = _square_side(native)
    if side is None:
      native_size, fix = 'a non-square grid', 'run it at its training size'
    else:
      pixels = f'{side * patch_h}x{side * patch_w}'
      native_size, fix = f'{pixels}-pixel images', f'run it at {pixels} pixels'
    raise ValueError(
        f'MLP-Mixer needs the native token count: the checkpoint\'s '
        f'token-mixing weights are for {native} tokens ({native_size}), not '
        f'the {wanted} tokens of {image_size[0]}x{image_size[1]} images; '
        f'{fix}')

  # --- Running -------------------------------------------------------------

  def apply_with_intermediates(self, model, params, images_BHWC,
                               attention_layers: Sequence[int] = (),
                               block_outputs: bool = False):
    """See `family.ModelFamily`: 'pre_logits' are the pooled features and
    'block_outputs' the (B, N, C) output of every MixerBlock.

    Raises:
      ValueError: `attention_layers` was given; MLP-Mixer has no attention.
    """
    if attention_layers:
      raise ValueError('MLP-Mixer has no attention weights to capture (it '
                       'mixes tokens with MLPs); ask for block_outputs')
    outputs, state = model.apply(
        {'params': params}, images_BHWC, train=False,
        capture_block_outputs=block_outputs, mutable=['intermediates'])
    sown = state['intermediates']
    result = {'pre_logits': sown['features'][0]}
    if block_outputs:
      result['block_outputs'] = list(sown.get('block_outputs', ()))
    return outputs, result

  def pools_features(self, model: mixer.MlpMixer) -> bool:
    return model.classifier == 'gap'

  # --- Analyses ------------------------------------------------------------

  def embedding_filters(self, model, params) -> Optional[np.ndarray]:
    """The (ph, pw, 3, C) `stem` kernel: it acts on RGB pixels."""
    del model
    return params[_STEM]['kernel']


def _build(label: str, fields: Mapping[str, Any]) -> mixer.MlpMixer:
  """An MlpMixer of `fields`, normalised: an int patch size is square, a
  sequence one a tuple, dtypes are numpy's. `label` names the model in the
  error.

  Raises:
    ValueError: a field that is no MlpMixer attribute (e.g. the ViT's
      num_heads).
  """
  unknown = sorted(set(fields) - _MODULE_FIELDS)
  if unknown:
    raise ValueError(f'{label} has no {", ".join(unknown)}; Mixer '
                     f'attributes are {", ".join(sorted(_MODULE_FIELDS))}')
  fields = dict(fields)
  if isinstance(fields['patch_size'], int):
    fields['patch_size'] = (fields['patch_size'],) * 2
  fields['patch_size'] = tuple(fields['patch_size'])
  for key in ('dtype', 'param_dtype'):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  return mixer.MlpMixer(**fields)


FAMILY = MixerFamily()
