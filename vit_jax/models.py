"""The variant table (REFERENCE section 1) and the model factory.

Variants are named as the released checkpoints are (`ViT-B_16`,
`R50+ViT-B_16`, ...); the short forms `B/16`, `R50+B/16` and `ViT-B/16` select
the same variant.
"""

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint
from vit_jax import models_vit


@dataclasses.dataclass(frozen=True)
class Variant:
  """Architecture of one named model (independent of classes and head)."""
  patch_size: int
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  # Units per ResNet stage for hybrids; () is the root only; None: pure ViT.
  resnet_units: Optional[Tuple[int, ...]] = None


def _vit(patch, hidden, mlp, heads, layers):
  return Variant(patch, hidden, mlp, heads, layers)


VARIANTS: Dict[str, Variant] = {
    'ViT-Ti_16': _vit(16, 192, 768, 3, 12),
    'ViT-S_16': _vit(16, 384, 1536, 6, 12),
    'ViT-S_32': _vit(32, 384, 1536, 6, 12),
    'ViT-B_8': _vit(8, 768, 3072, 12, 12),
    'ViT-B_16': _vit(16, 768, 3072, 12, 12),
    'ViT-B_32': _vit(32, 768, 3072, 12, 12),
    'ViT-L_16': _vit(16, 1024, 4096, 16, 24),
    'ViT-L_32': _vit(32, 1024, 4096, 16, 24),
    'ViT-H_14': _vit(14, 1280, 5120, 16, 32),
    'ViT-g_14': _vit(14, 1408, 6144, 16, 40),
    'ViT-G_14': _vit(14, 1664, 8192, 16, 48),
    # Hybrids: the ViT's patch size applies to the ResNet stem's output.
    'R+ViT-Ti_16': Variant(8, 192, 768, 3, 12, resnet_units=()),
    'R26+ViT-S_32': Variant(1, 384, 1536, 6, 12, resnet_units=(2, 2, 2, 2)),
    'R26+ViT-B_32': Variant(1, 768, 3072, 12, 12, resnet_units=(2, 2, 2, 2)),
    'R50+ViT-B_16': Variant(1, 768, 3072, 12, 12, resnet_units=(3, 4, 9)),
    'R50+ViT-L_32': Variant(1, 1024, 4096, 16, 24, resnet_units=(3, 4, 6, 3)),
}


def _short_form(name: str) -> str:
  return name.replace('ViT-', '').replace('_', '/')


_BY_SHORT_FORM = {_short_form(name): name for name in VARIANTS}


def canonical_name(name: str) -> str:
  """Maps `ViT-B_16`, `ViT-B/16` or `B/16` to the released name `ViT-B_16`."""
  if name in VARIANTS:
    return name
  canonical = _BY_SHORT_FORM.get(_short_form(name.strip()))
  if canonical is None:
    raise ValueError(
        f'unknown model {name!r}. Known models: {", ".join(VARIANTS)} '
        f'(short forms such as "B/16" or "R50+B/16" work too).')
  return canonical


def stem_stride(resnet_units: Optional[Sequence[int]]) -> int:
  """Input pixels per stem-output pixel: 1 for a pure ViT (None), else the
  root's 4x and 2x for every ResNet stage after the first."""
  if resnet_units is None:
    return 1
  return 4 * 2**max(len(resnet_units) - 1, 0)


def effective_patch_pixels(name: str) -> int:
  """Input pixels per token side: 16 for ViT-B_16 and R50+ViT-B_16."""
  variant = VARIANTS[canonical_name(name)]
  return stem_stride(variant.resnet_units) * variant.patch_size


def patch_pixels(model: models_vit.VisionTransformer) -> Tuple[int, int]:
  """Input pixels per token side (h, w) of a built model.

  Unlike `effective_patch_pixels`, which reads the variant table, this
  follows the model's own attributes, so a model built with overridden
  `patch_size` or `resnet_units` gets its true token size.
  """
  stride = stem_stride(model.resnet_units)
  patch_h, patch_w = model.patch_size
  return stride * patch_h, stride * patch_w


def create_model(name: str, num_classes: Optional[int] = 1000,
                 **overrides: Any) -> models_vit.VisionTransformer:
  """Builds the named variant.

  Args:
    name: a key of VARIANTS or one of its short forms.
    num_classes: size of the head; 0/None returns features.
    **overrides: any other VisionTransformer attribute (classifier,
      representation_size, dropout_rate, dtype, ...), or an architecture
      field to override (e.g. num_layers=2 for a tiny test model).

  Returns:
    An unbound VisionTransformer.
  """
  variant = VARIANTS[canonical_name(name)]
  fields = dataclasses.asdict(variant)
  fields['patch_size'] = (variant.patch_size, variant.patch_size)
  for key, value in overrides.items():
    if key == 'patch_size' and isinstance(value, int):
      value = (value, value)
    fields[key] = value
  return models_vit.VisionTransformer(num_classes=num_classes, **fields)


def init_params(model: models_vit.VisionTransformer, rng: jax.Array,
                image_size: Sequence[int]) -> Dict[str, Any]:
  """Initialises the parameters for (H, W) inputs without running the model."""
  images = jnp.zeros((1, *image_size, 3), jnp.float32)
  init = jax.jit(lambda rng: model.init(rng, images, train=False))
  return flax.core.unfreeze(init(rng))['params']


def param_shapes(model: models_vit.VisionTransformer,
                 image_size: Sequence[int]) -> Dict[str, Any]:
  """The parameter tree as ShapeDtypeStructs: costs no memory or FLOPs."""
  images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda images: model.init(jax.random.PRNGKey(0), images, train=False),
      images)
  return flax.core.unfreeze(variables)['params']


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def apply_with_intermediates(
    model: models_vit.VisionTransformer, params, images,
    attention_layers: Sequence[int] = (), block_outputs: bool = False):
  """Runs the model and returns what it computed along the way.

  Args:
    model: the VisionTransformer.
    params: its parameters.
    images: (B, H, W, 3) in [-1, 1].
    attention_layers: layers whose attention weights to return; negative
      indices count from the last layer.
    block_outputs: also return each block's output.

  Returns:
    (outputs, intermediates) where intermediates has 'pre_logits' (the
    features before the head), 'attention_weights' {layer: (B, heads, N, N)}
    when asked, and 'block_outputs' [(B, N, D)] * num_layers when asked.
  """
  layers = sorted({i % model.num_layers for i in attention_layers})
  if model.scan_layers:  # Per-layer captures need the unrolled encoder.
    model = model.clone(scan_layers=False)
    params = checkpoint.unstack_blocks(params)
  outputs, state = model.apply(
      {'params': params}, images, train=False, capture_attention=layers,
      capture_block_outputs=block_outputs, mutable=['intermediates'])
  sown = state['intermediates']
  result = {'pre_logits': sown['features'][0]}
  encoder = sown.get('Transformer', {})
  if layers:
    result['attention_weights'] = {
        layer: encoder[f'encoderblock_{layer}']
        ['MultiHeadDotProductAttention_0']['attention_weights'][0]
        for layer in layers}
  if block_outputs:
    result['block_outputs'] = list(encoder['block_outputs'])
  return outputs, result

