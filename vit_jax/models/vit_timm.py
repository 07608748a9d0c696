"""What timm's ViT parameter layout means, as our `vit.VisionTransformer`.

timm 1.0's `VisionTransformer` (timm/models/vision_transformer.py; the
distilled DeiT in deit.py, the MAP head `AttentionPoolLatent` in
timm/layers/attention_pool.py) names its state dict as below. The mapping is
the inverse of that file's `_load_weights`, which reads our `.npz` tree into
timm (D width, A heads, E head width, M MLP width, p patch):

  timm key (torch shape)            ours (shape)
  patch_embed.proj (D, 3, p, p)     embedding (p, p, 3, D)
  cls_token, dist_token, reg_token  cls, dist_token, reg_token
  pos_embed                         Transformer/posembed_input/pos_embedding
  norm_pre                          Transformer/pre_norm
  blocks.i.norm1, .norm2            Transformer/encoderblock_i/LayerNorm_0, _1
  blocks.i.attn.qkv (3*A*E, D)      .../MultiHeadDotProductAttention_0/
                                      query, key, value (D, A, E)
  blocks.i.attn.proj (D, A*E)       .../MultiHeadDotProductAttention_0/out
                                      (A, E, D)
  blocks.i.mlp.fc1, .fc2            .../MlpBlock_0/Dense_0, Dense_1
    (M, D), (D, M)                    (D, M), (M, D)
  blocks.i.ls1.gamma, .ls2.gamma    .../LayerScale_0/scale, LayerScale_1/scale
  norm | fc_norm                    Transformer/encoder_norm | fc_norm
  attn_pool.latent, .q, .kv, .proj  MAPHead_0/probe, its attention's query,
                                      key, value, out
  attn_pool.norm, .mlp              MAPHead_0/LayerNorm_0, MlpBlock_0
  head, head_dist                   head, head_dist

The prefix tokens are the class token (Dosovitskiy et al. 2021, "An Image is
Worth 16x16 Words", arXiv:2010.11929), DeiT's distillation token (Touvron et
al. 2021, arXiv:2012.12877) and registers (Darcet et al. 2024, "Vision
Transformers Need Registers", arXiv:2309.16588); LayerScale is CaiT's
(Touvron et al. 2021, arXiv:2103.17239), norm_pre CLIP's ln_pre (Radford et
al. 2021, arXiv:2103.00020), fc_norm the norm after average pooling of MAE's
fine-tuning (He et al. 2022, arXiv:2111.06377), and the MAP head that of
"Scaling Vision Transformers" (Zhai et al. 2022, arXiv:2106.04560), as in
SigLIP (Zhai et al. 2023, arXiv:2303.15343).

timm's block variants map onto the same names (`vit_block_variants`):
ResPostBlock has Block's keys; a (Diff)ParallelScalingBlock's in_norm is
LayerNorm_0, its in_proj stacks MlpBlock_0/Dense_0 and query, key, value,
its attn_out_proj and mlp_out_proj (or one out_proj, split by columns) are
`out` and Dense_1, its ls LayerScale_0; DiffAttention's lambda_q1 ...
lambda_k2 and sub_norm sit in the attention module. patch_embed.norm is
`embedding_norm`; a class token beside average or attention pooling is
`extra_cls`.

What the arrays show is read off them: width, depth, patch, MLP width, the
prefix tokens, LayerScale, q/k/v biases, the pre-norm, fc_norm, the MAP head
and the heads. What they cannot show (attention heads, the activation, the
norm layer and its epsilon, the pooling, the block and attention kinds)
comes from timm's definition of the architecture merged with config.json's
`model_args` (`vit_jax.models.vit_timm_recipe`, which also refuses the timm
features our model lacks: qk-norm, gated MLPs, rotary embeddings, ...).
The layers timm's other layouts share (Linear, norms, fused qkv, the MAP
head, the patch embedding) are mapped by `timm_keys`. Every array is used or
the mapping fails naming it; the reader of timm's files
(`vit_jax.weights.timm_hub`) checks the result key by key and shape by shape
against the model it is for.

`LAYOUT` is the ViT family's `foreign_layouts['timm']`: timm's other
families get their own layout beside their family, not in the reader.
"""

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from vit_jax.models import family
from vit_jax.models import timm_keys
from vit_jax.models import vit
from vit_jax.models import vit_timm_recipe as timm_recipe


# ---------------------------------------------------------------- blocks --

def _block(arrays: timm_keys.Arrays, out, layer: int, num_heads: int,
           recipe: timm_recipe.Recipe) -> int:
  """blocks.{layer} -> Transformer/encoderblock_{layer}; its MLP width.
  Block and ResPostBlock have the same keys (the norms' places differ)."""
  timm, ours = f'blocks.{layer}', f'Transformer/encoderblock_{layer}'
  attention = f'{ours}/MultiHeadDotProductAttention_0'
  if recipe.block == 'parallel':
    return _parallel_block(arrays, out, timm, ours, num_heads,
                           recipe.differential_attention)
  timm_keys.norm(arrays, out, f'{timm}.norm1', f'{ours}/LayerNorm_0')
  if recipe.differential_attention:
    _differential_qkv(out, attention, num_heads,
                      arrays.take(f'{timm}.attn.qkv.weight'),
                      arrays.take_optional(f'{timm}.attn.qkv.bias'))
    _differential_extras(arrays, out, f'{timm}.attn', attention)
  else:
    timm_keys.split_heads(arrays, out, f'{timm}.attn.qkv', attention,
                          ('query', 'key', 'value'), num_heads)
  timm_keys.attention_out(arrays, out, f'{timm}.attn.proj',
                          f'{attention}/out', num_heads)
  # scale_attn_norm: (A*E,).
  timm_keys.attention_inner_norm(arrays, out, f'{timm}.attn', attention,
                                 num_heads)
  timm_keys.norm(arrays, out, f'{timm}.norm2', f'{ours}/LayerNorm_1')
  mlp_dim = timm_keys.mlp(arrays, out, f'{timm}.mlp', f'{ours}/MlpBlock_0',
                          recipe.mlp_gate_last)
  for index in (0, 1):
    gamma = arrays.take_optional(f'{timm}.ls{index + 1}.gamma')
    if gamma is not None:
      out[f'{ours}/LayerScale_{index}/scale'] = gamma
  return mlp_dim


def _differential_qkv(out, ours: str, num_heads: int, weight_OI, bias) -> None:
  """DiffAttention's qkv: q and k as 2A heads of E/2 (head a's halves are
  2a and 2a + 1), v as A heads of E."""
  timm_keys.stacked_heads(out, ours, weight_OI, bias,
                          (('query', 2 * num_heads), ('key', 2 * num_heads),
                           ('value', num_heads)))


def _differential_extras(arrays: timm_keys.Arrays, out, timm: str,
                         ours: str) -> None:
  """DiffAttention's lambda vectors and per-head output RmsNorm."""
  for name in ('lambda_q1', 'lambda_k1', 'lambda_q2', 'lambda_k2'):
    out[f'{ours}/{name}'] = arrays.take(f'{timm}.{name}')
  out[f'{ours}/sub_norm/scale'] = arrays.take(f'{timm}.sub_norm.weight')


def _parallel_block(arrays: timm_keys.Arrays, out, timm: str, ours: str,
                    num_heads: int, differential: bool) -> int:
  """(Diff)ParallelScalingBlock -> our parallel block; its MLP width.
  in_proj stacks fc1, q, k, v on its output axis (timm's in_split); the
  output projection is attn_out_proj + mlp_out_proj, or one out_proj of
  the concatenated (attention, MLP) outputs: the same sum."""
  attention = f'{ours}/MultiHeadDotProductAttention_0'
  mlp = f'{ours}/MlpBlock_0'
  timm_keys.norm(arrays, out, f'{timm}.in_norm', f'{ours}/LayerNorm_0')
  weight_OI = arrays.take(f'{timm}.in_proj.weight')
  bias = arrays.take_optional(f'{timm}.in_proj.bias')
  width = weight_OI.shape[1]
  mlp_dim = weight_OI.shape[0] - 3 * width
  mlp_bias = (arrays.take(f'{timm}.mlp_bias') if bias is None
              else bias[:mlp_dim])
  out[f'{mlp}/Dense_0/kernel'] = weight_OI[:mlp_dim].T
  out[f'{mlp}/Dense_0/bias'] = mlp_bias
  qkv_OI = weight_OI[mlp_dim:]
  qkv_bias = None if bias is None else bias[mlp_dim:]
  if differential:
    _differential_qkv(out, attention, num_heads, qkv_OI, qkv_bias)
    _differential_extras(arrays, out, timm, attention)
  else:
    timm_keys.stacked_heads(out, attention, qkv_OI, qkv_bias,
                            [(name, num_heads)
                             for name in ('query', 'key', 'value')])
  _parallel_out_projections(arrays, out, timm, attention, mlp, num_heads,
                            width)
  gamma = arrays.take_optional(f'{timm}.ls.gamma')
  if gamma is not None:
    out[f'{ours}/LayerScale_0/scale'] = gamma
  return mlp_dim


def _parallel_out_projections(arrays: timm_keys.Arrays, out, timm: str,
                              attention: str, mlp: str, num_heads: int,
                              width: int) -> None:
  """attn_out_proj and mlp_out_proj, or one out_proj split by its input
  columns (attention's first), -> `out` and Dense_1."""
  if arrays.has(f'{timm}.out_proj.weight'):
    fused_OI = arrays.take(f'{timm}.out_proj.weight')
    fused_bias = arrays.take_optional(f'{timm}.out_proj.bias')
    out[f'{attention}/out/kernel'] = fused_OI[:, :width].T.reshape(
        num_heads, -1, width)
    out[f'{attention}/out/bias'] = timm_keys.bias_or_zeros(fused_bias, width)
    out[f'{mlp}/Dense_1/kernel'] = fused_OI[:, width:].T
    out[f'{mlp}/Dense_1/bias'] = np.zeros(width, np.float32)
  else:
    timm_keys.attention_out(arrays, out, f'{timm}.attn_out_proj',
                            f'{attention}/out', num_heads)
    timm_keys.dense(arrays, out, f'{timm}.mlp_out_proj', f'{mlp}/Dense_1')


# ------------------------------------------------------------ conversion --

def _prefix_tokens(arrays: timm_keys.Arrays, out) -> timm_keys.PrefixTokens:
  for timm, ours in (('cls_token', 'cls'), ('dist_token', 'dist_token'),
                     ('reg_token', 'reg_token')):
    if arrays.has(timm):
      out[ours] = arrays.take(timm)
  tokens = timm_keys.PrefixTokens(
      'cls' in out, 'dist_token' in out,
      int(out['reg_token'].shape[1]) if 'reg_token' in out else 0)
  if tokens.distilled and tokens.num_registers:
    raise family.CheckpointMismatchError(
        "register tokens beside a distillation token (timm's distilled "
        'model ignores them): vit_jax does not implement it')
  return tokens


def _encoder(arrays: timm_keys.Arrays, out, num_heads: int,
             recipe: timm_recipe.Recipe) -> Tuple[int, set]:
  """norm_pre and the blocks; returns (layers, the blocks' MLP widths)."""
  if arrays.has('norm_pre.weight'):
    timm_keys.norm(arrays, out, 'norm_pre', 'Transformer/pre_norm')
  first_norm = 'in_norm' if recipe.block == 'parallel' else 'norm1'
  num_layers = 0
  while arrays.has(f'blocks.{num_layers}.{first_norm}.weight'):
    num_layers += 1
  if not num_layers:
    raise family.CheckpointMismatchError(
        f'the checkpoint has no blocks.0.{first_norm}: not a timm ViT of '
        'its definition')
  return num_layers, {_block(arrays, out, layer, num_heads, recipe)
                      for layer in range(num_layers)}


def _final_norm(arrays: timm_keys.Arrays, out,
                tokens: timm_keys.PrefixTokens, final_norm: bool) -> bool:
  """`norm` (every token) or `fc_norm` (after pooling), or neither with
  timm's final_norm=False; returns fc_norm."""
  fc_norm = arrays.has('fc_norm.weight')
  has_norm = arrays.has('norm.weight')
  if not (fc_norm or has_norm) and not final_norm:
    return False
  if fc_norm == has_norm:
    raise family.CheckpointMismatchError(
        f'the checkpoint has {"both" if fc_norm else "neither"} of `norm` '
        f'and `fc_norm`, but its definition says final_norm={final_norm}: '
        'timm builds exactly one final norm, or none with final_norm=False')
  if fc_norm and tokens.distilled:
    raise family.CheckpointMismatchError(
        "fc_norm with a distillation token (timm's distilled head skips "
        'it): vit_jax does not implement it')
  timm_keys.norm(arrays, out, 'fc_norm' if fc_norm else 'norm',
                 'fc_norm' if fc_norm else 'Transformer/encoder_norm')
  return fc_norm


def to_vit(recipe: timm_recipe.Recipe, timm_arrays: Mapping[str, np.ndarray],
           image_size: Tuple[int, int], *, in_channels: int = 3
           ) -> Tuple[family.Params, Dict[str, Any]]:
  """timm's state dict -> our parameter tree and model attributes.

  Args:
    recipe: `recipe(config, timm_arrays)`.
    timm_arrays: timm key -> float32 array.
    image_size: the native (H, W), the size `pos_embed` is stored for; of
      the feature map for a hybrid (`vit_hybrid_timm`).
    in_channels: what patch_embed.proj takes: 3, or a hybrid's features.

  Returns:
    (params, model_kwargs): the nested float32 tree and the
    `vit.VisionTransformer` attributes (num_classes, None without a head,
    the sizes, classifier, and every option that differs from its default).
    The tree is not yet checked against that model (the reader of the files
    does it, `family.ForeignLayout`).

  Raises:
    family.CheckpointMismatchError: an array is missing, left over, or of a
      shape or combination vit_jax does not implement.
  """
  arrays = timm_keys.Arrays(timm_arrays,
                            norm_bias=recipe.norm_layer == 'layer_norm')
  out = {}
  width, patch_size = timm_keys.patch_embedding(arrays, out, in_channels)
  num_heads = timm_recipe.num_heads(recipe, width)
  tokens = _prefix_tokens(arrays, out)
  pos_embed = timm_keys.position_embedding(arrays, out)
  num_layers, mlp_dims = _encoder(arrays, out, num_heads, recipe)
  fc_norm = _final_norm(arrays, out, tokens, recipe.final_norm)
  has_map = arrays.has('attn_pool.latent')
  if has_map:
    mlp_dims.add(timm_keys.map_head(arrays, out, num_heads))
  if len(mlp_dims) != 1:
    raise family.CheckpointMismatchError(
        f'MLP widths differ between blocks: {sorted(mlp_dims)}')
  num_classes = timm_keys.classifier_heads(arrays, out, tokens)
  arrays.check_all_taken()
  options = _options(recipe, out, tokens, fc_norm=fc_norm, posemb=(
      timm_keys.posemb_options(
          pos_embed, grid=timm_keys.patch_grid(image_size, patch_size),
          num_prefix=tokens.count)))
  pooling = timm_recipe.pooling(recipe, has_cls=tokens.has_cls,
                                num_prefix=tokens.count, has_map=has_map,
                                distilled=tokens.distilled)
  if pooling.get('extra_class_token'):  # A class token no head reads.
    out['extra_cls'] = out.pop('cls')
  model_kwargs = dict(
      num_classes=num_classes, patch_size=patch_size, hidden_size=width,
      num_layers=num_layers, num_heads=num_heads, mlp_dim=int(mlp_dims.pop()),
      **pooling, **options)
  return timm_keys.nested_float32(out), model_kwargs


def _options(recipe: timm_recipe.Recipe, out: Dict[str, np.ndarray],
             tokens: timm_keys.PrefixTokens, *, fc_norm: bool,
             posemb: Dict[str, Any]) -> Dict[str, Any]:
  """The model options that differ from `vit.VisionTransformer`'s defaults
  (an option at its default is left out of model_kwargs)."""
  block = 'Transformer/encoderblock_0'
  mlp_gated = f'{block}/MlpBlock_0/Dense_value/kernel' in out
  options = dict(
      activation=recipe.mlp_activation if mlp_gated else recipe.activation,
      mlp_gated=mlp_gated,
      mlp_norm=f'{block}/MlpBlock_0/LayerNorm_0/scale' in out,
      attention_norm=(f'{block}/MultiHeadDotProductAttention_0/LayerNorm_0/'
                      'scale' in out),
      layer_norm_epsilon=recipe.layer_norm_epsilon,
      num_register_tokens=tokens.num_registers,
      distillation=tokens.distilled,
      pre_norm='Transformer/pre_norm/scale' in out, fc_norm=fc_norm,
      qkv_bias=f'{block}/MultiHeadDotProductAttention_0/query/bias' in out,
      layer_scale_init=(vit.LOADED_LAYER_SCALE_INIT
                        if f'{block}/LayerScale_0/scale' in out else None),
      final_norm=fc_norm or 'Transformer/encoder_norm/scale' in out,
      norm_layer=recipe.norm_layer,
      embed_norm='embedding_norm/scale' in out, block=recipe.block,
      differential_attention=recipe.differential_attention,
      **posemb)
  defaults = {field.name: field.default
              for field in dataclasses.fields(vit.VisionTransformer)}
  return {key: value for key, value in options.items()
          if value != defaults[key]}


class TimmLayout(family.ForeignLayout):
  """timm's ViT state dict (see the module docstring)."""
  describes = ("timm's VisionTransformer and its DeiT, CLIP, SigLIP, DINOv2 "
               '... towers: arrays with patch_embed.proj')

  def recognises(self, config: Mapping[str, Any],
                 arrays: family.FlatParams) -> bool:
    """timm's ViTs embed patches with `PatchEmbed` (`patch_embed.proj`);
    those with a feature our model lacks are recognised too, so that
    `to_params` names the feature."""
    del config
    return 'patch_embed.proj.weight' in arrays

  def to_params(self, config: Mapping[str, Any], arrays: family.FlatParams,
                image_size: Tuple[int, int]
                ) -> Tuple[family.Params, Dict[str, Any]]:
    """See `family.ForeignLayout.to_params`; `config` is timm's config.json
    (its architecture name and model_args)."""
    return to_vit(timm_recipe.recipe(config, arrays), arrays, image_size)


LAYOUT = TimmLayout()
