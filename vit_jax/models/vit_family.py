"""The ViT family: ViT and R+ViT hybrids as a `family.ModelFamily`.

Variants are named as the released checkpoints are (`ViT-B_16`,
`R50+ViT-B_16`, ...); the short forms `B/16`, `R50+B/16` and `ViT-B/16`
select the same variant. Their architectures are Table 1 of Dosovitskiy et
al. (2021), plus Ti (Touvron et al. 2021), g/G (Zhai et al. 2022) and the
hybrids of the released checkpoints.

The released `.npz` layout and what a tree says about its model (read back
by `describe`) are `vit_layout`; timm's layout of the same models is
`vit_timm`, of the hybrids `vit_hybrid_timm`, of its Eva models
`eva_timm` and of its NaFlexViT `naflex_timm` (the family's
`foreign_layouts`).
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax.models import eva_timm
from vit_jax.models import family
from vit_jax.models import naflex_timm
from vit_jax.models import posemb
from vit_jax.models import vit
from vit_jax.models import vit_hybrid_timm
from vit_jax.models import vit_layout
from vit_jax.models import vit_timm

Params = family.Params


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

# The `config.model` keys (and program flags) that override a variant.
ARCHITECTURE_KEYS = ('patch_size', 'hidden_size', 'mlp_dim', 'num_heads',
                     'num_layers')
# VisionTransformer attributes a caller may set (flax's `parent`/`name` left
# out).
_MODULE_FIELDS = frozenset(
    field.name for field in dataclasses.fields(vit.VisionTransformer)) - {
        'parent', 'name'}


def _short_form(name: str) -> str:
  return name.replace('ViT-', '').replace('_', '/')


_BY_SHORT_FORM = {_short_form(name): name for name in VARIANTS}


def stem_stride(resnet_units: Optional[Sequence[int]]) -> int:
  """Input pixels per stem-output pixel: 1 for a pure ViT (None), else the
  root's 4x and 2x for every ResNet stage after the first."""
  if resnet_units is None:
    return 1
  return 4 * 2**max(len(resnet_units) - 1, 0)


def posemb_prefix_tokens(model: vit.VisionTransformer) -> int:
  """Prefix tokens the learned position embedding has entries for."""
  return model.num_prefix_tokens if model.posemb_covers_prefix else 0


class VitFamily(family.ModelFamily):
  """ViT and R+ViT hybrids (`vit.VisionTransformer`)."""
  name = 'vit'
  module_type = vit.VisionTransformer
  head_names = ('head', 'head_dist')
  droppable_for_fine_tuning = ('pre_logits',)
  # Tokens, embeddings and the MAP probe: not weights, though ndim >= 2.
  no_weight_decay = ('cls', 'pos_embedding', 'dist_token', 'reg_token',
                     'probe')
  architecture_keys = ARCHITECTURE_KEYS
  # Every field of a Variant (the architecture keys and a hybrid's
  # resnet_units): None in config.model keeps the variant's value.
  variant_keys = tuple(field.name for field in dataclasses.fields(Variant))
  token_classifiers = vit.TOKEN_CLASSIFIERS
  # Training and execution settings: evaluation computes the same without
  # them (dropout and stochastic depth are off; a scanned encoder and either
  # attention implementation give the same outputs).
  unstored_fields = ('dtype', 'param_dtype', 'dropout_rate',
                     'attention_dropout_rate', 'drop_path_rate',
                     'head_bias_init', 'scan_layers', 'remat_policy',
                     'attention')
  # timm's ViT state dicts (hub directories and ids): vit_timm.py; its R+ViT
  # hybrids (a ViT with patch_embed.backbone): vit_hybrid_timm.py; its Eva
  # models: eva_timm.py; its NaFlexVit: naflex_timm.py. The hybrids' layout
  # goes before the ViT's, which would recognise them too.
  foreign_layouts = {'timm': family.FirstRecognising(
      vit_hybrid_timm.LAYOUT, eva_timm.LAYOUT, naflex_timm.LAYOUT,
      vit_timm.LAYOUT)}

  @property
  def variants(self) -> Mapping[str, Variant]:
    return VARIANTS

  def default_config(self) -> ml_collections.ConfigDict:
    """See `family.ModelFamily.default_config`; the defaults are the
    released model."""
    model = ml_collections.ConfigDict()
    no_int = lambda: ml_collections.FieldReference(None, int)
    model.classifier = 'token'  # token | gap | unpooled | token_unpooled | map.
    model.representation_size = no_int()  # pre_logits width; None: no pre_logits.
    model.dropout_rate = 0.0  # Dropout after pos-emb, attention out, GELU, MLP out.
    model.attention_dropout_rate = 0.0  # Dropout on attention probabilities.
    model.head_bias_init = 0.0  # Head bias init: -10 with sigmoid pre-training.
    model.dtype = 'float32'  # Matmul operand dtype: float32 | bfloat16 | auto (bf16 where the hardware multiplies it natively; accumulation is always float32).
    model.param_dtype = 'float32'  # Parameter storage dtype.
    # Architecture overrides of the named variant (None keeps the variant's).
    model.patch_size = no_int()  # Patch side in stem-output pixels.
    model.hidden_size = no_int()  # Token width D.
    model.mlp_dim = no_int()  # MLP hidden width.
    model.num_heads = no_int()  # Attention heads.
    model.num_layers = no_int()  # Encoder blocks.
    model.resnet_units = ml_collections.FieldReference(None, tuple)  # Hybrids: bottleneck units per ResNet stage, e.g. '(1,)'; () the root only; None the variant's.
    model.scan_layers = False  # One nn.scan over the blocks: compiles once, params stacked (npz unchanged).
    model.remat_policy = 'none'  # Recompute in backward: none | full | dots | dots_no_batch.
    model.attention = 'auto'  # auto (einsum on CPU, fused elsewhere) | fused | einsum.
    # Options of the follow-up papers (vit.VisionTransformer); the defaults are the released model.
    model.drop_path_rate = 0.0  # Stochastic depth at the last block (0 at the first, linear between).
    model.posemb = 'learned'  # learned | sincos2d (fixed) | none.
    model.posemb_covers_prefix = True  # False: learned posemb on patch tokens only (timm no_embed_class).
    model.num_register_tokens = 0  # Register tokens after the class token.
    model.distillation = False  # DeiT distillation token and second head (classifier token).
    model.layer_scale_init = ml_collections.FieldReference(None, float)  # LayerScale init; None: no LayerScale.
    model.pre_norm = False  # LayerNorm before the blocks (CLIP).
    model.fc_norm = False  # Final LayerNorm after pooling instead of before.
    model.qkv_bias = True  # Biases of the query/key/value projections.
    model.layer_norm_epsilon = 1e-6  # Every LayerNorm's epsilon (CLIP: 1e-5).
    model.activation = 'gelu_tanh'  # MLP nonlinearity: gelu_tanh | gelu_erf | quick_gelu | silu | sigmoid (gates of mlp_gated).
    model.resnet_norm_epsilon = 1e-6  # Hybrids: GroupNorm epsilon (timm's port: 1e-5).
    model.resnet_variance_epsilon = ml_collections.FieldReference(None, float)  # Hybrids: None standardises kernels by std + 1e-5 (released); e by sqrt(var + e) (timm's port: 1e-8).
    # timm's Eva-style options, as a checkpoint's config.json sets them (fine-tuning checks the rope ones).
    model.rope = ml_collections.FieldReference(None, str)  # Rotary position embeddings: None | axial | dinov3 | mixed.
    model.rope_temperature = 10000.0  # RoPE frequency base.
    model.rope_grid_indexing = 'ij'  # RoPE axis order: ij | xy.
    model.rope_grid_offset = 0.0  # RoPE patch-position offset.
    model.rope_ref_grid = ml_collections.FieldReference(None, tuple)  # Grid 'axial' positions are rescaled onto, e.g. (16, 16); None: none.
    model.rope_rotate_half = False  # RoPE pairs (i, i + E/2) instead of (2i, 2i + 1).
    model.attention_norm = False  # LayerNorm on the attention output (timm's scale_attn_norm).
    model.mlp_gated = False  # Gated MLP, activation(x W) * (x V) (SwiGLU with activation silu).
    model.mlp_norm = False  # LayerNorm on the MLP hidden units (timm's scale_mlp_norm).
    return model

  def canonical_name(self, name: str) -> Optional[str]:
    if name in VARIANTS:
      return name
    return _BY_SHORT_FORM.get(_short_form(name.strip()))

  def create(self, name: str, num_classes: Optional[int],
             **overrides: Any) -> vit.VisionTransformer:
    """See `family.ModelFamily.create`.

    Raises:
      ValueError: an override that is no VisionTransformer attribute.
    """
    return _build(name, {**dataclasses.asdict(VARIANTS[name]),
                         'num_classes': num_classes, **overrides})

  def build(self, fields: Mapping[str, Any]) -> vit.VisionTransformer:
    """See `family.ModelFamily.build`."""
    return _build('the ViT', fields)

  def contradicts(self, key: str, from_arrays: Any, stored: Any) -> bool:
    """LayerScale's init value is not in the arrays (`describe` reports
    vit.LOADED_LAYER_SCALE_INIT): only its presence can contradict them.
    Nor do they tell a pooled classifier from its unpooled twin ('token'
    from 'token_unpooled', 'gap' from 'unpooled'). An int patch size is
    square."""
    if key == 'layer_scale_init':
      return (from_arrays is None) != (stored is None)
    if key == 'classifier':
      return (vit_layout.parameters_of(from_arrays) !=
              vit_layout.parameters_of(stored))
    if key == 'patch_size' and isinstance(stored, int):
      stored = (stored, stored)
    return super().contradicts(key, from_arrays, stored)

  def patch_pixels(self, model: vit.VisionTransformer) -> Tuple[int, int]:
    # The model's own attributes, not the variant table: a model built with
    # overridden patch_size or resnet_units gets its true token size.
    stride = stem_stride(model.resnet_units)
    patch_h, patch_w = model.patch_size
    return stride * patch_h, stride * patch_w

  # --- Released layout ---------------------------------------------------

  def recognises(self, flat) -> bool:
    tops = {key.split('/')[0] for key in flat}
    return {'embedding', vit_layout.ENCODER} <= tops

  def from_released(self, flat) -> Params:
    return flax.traverse_util.unflatten_dict(
        vit_layout.normalise_layout(flat), sep='/')

  def to_released(self, params: Params) -> Dict[str, np.ndarray]:
    """The ViT-paper layout: old numbering, one entry per encoder block
    whether or not the model scans them."""
    flat = super().to_released(
        vit_layout.unstack_blocks(flax.core.unfreeze(params)))
    return vit_layout.to_old_numbering(flat)

  def match_layout(self, params: Params, like: Params) -> Params:
    if vit_layout.is_stacked(like):
      return vit_layout.stack_blocks(params)
    return vit_layout.unstack_blocks(params)

  def describe(self, params: Params) -> family.CheckpointFacts:
    """Class count from `head`, representation size from `pre_logits`, the
    classifier ('map' with `MAPHead_0`, 'token' with `cls`, else 'gap'),
    the options that add parameters, the architecture (see
    `vit_layout`) and the grid from the position embedding (None without a
    learned one)."""
    for required in ('embedding', vit_layout.ENCODER):
      if required not in params:
        raise family.CheckpointMismatchError(
            f'the checkpoint has no {required!r} parameters: not a ViT '
            'checkpoint')
    posemb_options, grid = vit_layout.posemb_layout(params)
    head, pre_logits = params.get('head'), params.get('pre_logits')
    return family.CheckpointFacts(
        model_kwargs={
            'num_classes': (None if head is None else
                            int(head['kernel'].shape[-1])),
            'representation_size': (None if pre_logits is None else
                                    int(pre_logits['kernel'].shape[-1])),
            **vit_layout.tree_options(params),
            **posemb_options,
        },
        expected=vit_layout.architecture_of(params),
        native_grid=grid)

  def adapt_resolution(self, params: Params, model: vit.VisionTransformer,
                       shapes: Params, image_size: Sequence[int],
                       method: str) -> Params:
    """Resamples the position embedding to the grid of `image_size`."""
    if model.posemb != 'learned':
      return params  # 'sincos2d' is computed for any grid.
    _, module, name = vit_layout.POS_EMBEDDING
    embedding = params.get(vit_layout.ENCODER, {}).get(module, {}).get(name)
    target = vit_layout.position_embedding(shapes)
    if embedding is None or embedding.shape == target.shape:
      return params
    if embedding.shape[-1] != target.shape[-1]:
      return params  # Hidden sizes differ: merge_strict reports it.
    patch_h, patch_w = self.patch_pixels(model)
    grid = (image_size[0] // patch_h, image_size[1] // patch_w)
    resized = posemb.resize(
        embedding, grid, num_prefix_tokens=posemb_prefix_tokens(model),
        method=method)
    return vit_layout.with_position_embedding(params, resized)

  # --- Running -------------------------------------------------------------

  def apply_with_intermediates(self, model, params, images_BHWC,
                               attention_layers: Sequence[int] = (),
                               block_outputs: bool = False):
    """See `family.ModelFamily`; per-layer captures run the unrolled
    encoder (a scanned model's params are unstacked for it)."""
    layers = sorted({i % model.num_layers for i in attention_layers})
    if model.scan_layers:
      model = model.clone(scan_layers=False)
      params = vit_layout.unstack_blocks(params)
    outputs, state = model.apply(
        {'params': params}, images_BHWC, train=False,
        capture_attention=layers, capture_block_outputs=block_outputs,
        mutable=['intermediates'])
    sown = state['intermediates']
    result = {'pre_logits': sown['features'][0]}
    encoder = sown.get(vit_layout.ENCODER, {})
    if layers:
      result['attention_weights'] = {
          layer: encoder[vit_layout.BLOCK.format(layer)]
          ['MultiHeadDotProductAttention_0']['attention_weights'][0]
          for layer in layers}
    if block_outputs:
      result['block_outputs'] = list(encoder['block_outputs'])
    return outputs, result

  def pools_features(self, model):
    return model.classifier in ('token', 'gap', 'map')

  # --- Analyses ------------------------------------------------------------

  def num_prefix_tokens(self, model: vit.VisionTransformer) -> int:
    """Class, distillation and register tokens."""
    return model.num_prefix_tokens

  def position_embedding(self, params: Params):
    """The learned embedding as the tokens receive it: (1, prefix +
    rows*cols, D), zeros for prefix tokens it does not cover; None without
    a learned one."""
    if vit_layout.POS_EMBEDDING[1] not in params.get(vit_layout.ENCODER, {}):
      return None
    embedding_1ND = vit_layout.position_embedding(params)
    options, _ = vit_layout.posemb_layout(params)
    if options.get('posemb_covers_prefix', True):
      return embedding_1ND
    prefix_1PD = np.zeros((1, vit_layout.prefix_tokens_in_tree(params),
                           embedding_1ND.shape[-1]), embedding_1ND.dtype)
    return np.concatenate([prefix_1PD, np.asarray(embedding_1ND)], axis=1)

  def embedding_filters(self, model, params) -> Optional[np.ndarray]:
    """None for hybrids: their patch embedding acts on ResNet features."""
    if model.resnet_units is not None:
      return None
    return params['embedding']['kernel']


def _build(label: str, fields: Mapping[str, Any]) -> vit.VisionTransformer:
  """A VisionTransformer of `fields`, normalised: an int patch size is
  square, sequences (e.g. a sidecar's lists) are tuples, dtypes are numpy's.
  `label` names the model in the error."""
  unknown = sorted(set(fields) - _MODULE_FIELDS)
  if unknown:
    raise ValueError(f'{label} has no {", ".join(unknown)}; ViT attributes '
                     f'are {", ".join(sorted(_MODULE_FIELDS))}')
  fields = dict(fields)
  if isinstance(fields.get('patch_size'), int):
    fields['patch_size'] = (fields['patch_size'],) * 2
  for key in ('patch_size', 'resnet_units'):
    if fields.get(key) is not None:
      fields[key] = tuple(fields[key])
  for key in ('dtype', 'param_dtype'):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  return vit.VisionTransformer(**fields)


FAMILY = VitFamily()
