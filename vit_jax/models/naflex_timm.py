"""timm's NaFlexViT state dict as our `vit.VisionTransformer`, at one fixed
resolution.

timm 1.0's `NaFlexVit` (timm/models/naflexvit.py; NaViT, Dehghani et al.
2023, arXiv:2307.06304, with FlexiViT's flexible patches, Beyer et al. 2023,
arXiv:2212.08013; the SigLIP 2 NaFlex towers, Tschannen et al. 2025,
arXiv:2502.14786; C-RADIO) runs its blocks, norms, pools and heads under
the same keys as timm's VisionTransformer. Only its embedding differs
(D width, p patch, C channels):

  NaFlexVit key                     timm VisionTransformer key
  embeds.proj (D, ph*pw*C)          patch_embed.proj (D, C, ph, pw)
    a Linear over patches flattened
    (ph, pw, C) (patchify_channels_last, the default) or (C, ph, pw)
  embeds.pos_embed (1, gh, gw, D)   pos_embed (1, rows*cols, D), patches
  embeds.pos_embed_y (1, gh, D),      only (no_embed_class): the grid
    embeds.pos_embed_x (1, gw, D)     resized to the input's patch grid
  embeds.cls_token, .reg_token      cls_token, reg_token

so a checkpoint is rewritten under VisionTransformer's keys and mapped by
`vit_timm.to_vit`. The learned position embedding is stored on its own grid
(`pos_embed_grid_size`) and resized in every forward pass to the input's
patch grid: with `F.interpolate(mode=pos_embed_interp_mode,
align_corners=pos_embed_align_corners, antialias=pos_embed_antialias)`
(`posemb.METHODS` names the ones it matches), to the square of the longer
side and then cropped at the top left when `pos_embed_ar_preserving`. The
factorized one ('factorized') resizes its row and column tables linearly
and adds them. At a fixed resolution that is a constant, computed here once
for the native input size (pretrained_cfg's `input_size`): the model is our
plain ViT with a learned embedding at that grid. Loading at another size
(`pretrained.load(image_size=...)`) resamples this grid with the caller's
`posemb_method`, not timm's path from the stored grid.

What the arrays cannot say comes from the architecture's NaFlexVitCfg
(`timm_definitions`, its `model_args['cfg']`) overridden by config.json's
`model_args`, as timm's `_create_naflexvit` overlays them. Settings our
model does not compute (rotary embeddings, EVA blocks, gated MLPs, inner
norms, ...) are refused, each by name; so are the combinations of arrays
`vit_timm.to_vit` refuses (C-RADIO's `final_norm=False`: no final norm).
"""

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from vit_jax.models import family
from vit_jax.models import posemb
from vit_jax.models import timm_definitions
from vit_jax.models import vit_timm
from vit_jax.models import vit_timm_recipe as timm_recipe

# NaFlexVit's constructor arguments beside its NaFlexVitCfg.
_CONSTRUCTOR_ARGS = frozenset({'in_chans', 'num_classes', 'img_size'})

# NaFlexVitCfg fields read here, with timm 1.0.31's defaults (a definition
# the table lacks, and config.json's overrides, start from them).
_DEFAULTS = {
    'patch_size': 16, 'num_heads': 12, 'mlp_ratio': 4.0,
    'act_layer': None, 'norm_layer': None, 'global_pool': 'map',
    'pool_include_prefix': False,
    'pos_embed': 'learned', 'pos_embed_interp_mode': 'bicubic',
    'pos_embed_ar_preserving': False, 'pos_embed_antialias': True,
    'pos_embed_align_corners': False, 'patchify_channels_last': True,
    'embed_proj_type': 'linear', 'attn_pool_num_heads': None,
    'attn_pool_mlp_ratio': None,
}

# (setting, the values our model computes, the feature another value
# means): checked before any key is mapped, so a refusal names the feature.
_SUPPORTED_SETTINGS = (
    ('rope_type', ('', 'none', None), 'rotary position embeddings'),
    ('attn_type', ('standard',), 'EVA attention blocks'),
    ('swiglu_mlp', (False,), 'a gated MLP'),
    ('attn_gated', (False,), 'gated attention'),
    ('attn_only_layer_scale', (False,), 'LayerScale on attention only'),
    ('num_kv_heads', (None,), 'grouped key/value heads'),
    ('qk_norm', (False,), 'qk-norm'),
    ('scale_attn_inner_norm', (False,), 'an attention inner norm'),
    ('scale_mlp_norm', (False,), 'an MLP hidden norm'),
    ('block_fn', (None,), 'another block class'),
    ('mlp_layer', (None,), 'another MLP class'),
    ('attn_layer', (None, '', 'attn'), 'another attention class'),
    ('input_norm_layer', (None,), 'a norm of the patch pixels'),
    ('embed_norm_layer', (None,), 'a norm in the patch embedding'),
    ('norm_layer', (None, 'layernorm'), 'a norm other than LayerNorm'),
    ('pos_embed', ('learned', 'factorized', 'none', ''),
     'an unknown position embedding'),
    ('embed_proj_type', ('linear', 'conv'), 'an unknown patch embedding'),
)
_ACT_LAYERS = {None: 'gelu_erf', 'gelu': 'gelu_erf', 'gelu_tanh': 'gelu_tanh',
               'quick_gelu': 'quick_gelu'}
# (interp_mode, align_corners, antialias) -> the posemb method that computes
# what PyTorch's F.interpolate does with them.
_RESIZE_METHODS = {
    ('bilinear', True, False): 'bilinear_aligned',
    ('bilinear', False, False): 'bilinear',
    ('bilinear', False, True): 'bilinear_antialias',
    ('bicubic', False, True): 'bicubic_antialias',
}
_EPSILON = 1e-6  # timm.layers.LayerNorm's, NaFlexVit's default norm.


def naflex_config(config: Mapping[str, Any]) -> Dict[str, Any]:
  """The NaFlexVitCfg fields timm builds a checkpoint's model with.

  Args:
    config: timm's config.json (`architecture`, optional `model_args`).

  Returns:
    The definition's cfg (`timm_definitions`), else timm's defaults, with
    config.json's model_args (a `cfg` dict, and fields given directly) over
    it.

  Raises:
    family.CheckpointMismatchError: a model_args key NaFlexVit does not
      take.
  """
  found = timm_definitions.definition(config.get('architecture', ''))
  base = dict(found.model_args.get('cfg') or {}) if found else {}
  cfg = {**_DEFAULTS, **base}
  model_args = dict(config.get('model_args') or {})
  if isinstance(model_args.get('cfg'), Mapping):
    cfg.update(model_args.pop('cfg'))
  known = set(cfg) if base else None
  for key, value in model_args.items():
    if key in _CONSTRUCTOR_ARGS:
      continue
    if known is not None and key not in known:
      raise family.CheckpointMismatchError(
          f'config.json model_args {key}={value!r}: no NaFlexVitCfg field')
    cfg[key] = value
  cfg.pop('dataclass', None)
  return cfg


def _check_settings(cfg: Mapping[str, Any]) -> None:
  for key, supported, feature in _SUPPORTED_SETTINGS:
    value = cfg.get(key, supported[0])
    if (value.lower() if isinstance(value, str) else value) not in supported:
      raise family.CheckpointMismatchError(
          f'the NaFlexViT checkpoint uses {feature} ({key}={value!r}), which '
          'vit_jax does not implement')
  if cfg['act_layer'] not in _ACT_LAYERS:
    raise family.CheckpointMismatchError(
        f'the NaFlexViT checkpoint uses act_layer={cfg["act_layer"]!r}, '
        'which vit_jax does not implement (it has gelu, gelu_tanh and '
        'quick_gelu)')
  for pool_key, block_key in (('attn_pool_num_heads', 'num_heads'),
                              ('attn_pool_mlp_ratio', 'mlp_ratio')):
    if cfg[pool_key] not in (None, cfg[block_key]):
      raise family.CheckpointMismatchError(
          f'the NaFlexViT checkpoint pools with {pool_key}='
          f'{cfg[pool_key]!r} beside {block_key}={cfg[block_key]!r} in its '
          "blocks, which vit_jax's MAP head does not implement")


def _pair(value) -> Tuple[int, int]:
  return (int(value), int(value)) if np.isscalar(value) else (
      int(value[0]), int(value[1]))


def _patch_weight(weight: np.ndarray, patch: Tuple[int, int],
                  channels_last: bool) -> np.ndarray:
  """embeds.proj.weight -> patch_embed.proj.weight (D, C, ph, pw).

  A Linear's input is a patch flattened (ph, pw, C) with channels_last,
  else (C, ph, pw); a Conv2d's weight ('conv') already is (D, C, ph, pw).
  """
  if weight.ndim == 4:
    return weight
  width, inputs = weight.shape
  if inputs % (patch[0] * patch[1]):
    raise family.CheckpointMismatchError(
        f'embeds.proj.weight takes {inputs} values per patch, not a multiple '
        f'of its {patch[0]}x{patch[1]} pixels: is patch_size right?')
  if channels_last:
    return weight.reshape(width, *patch, -1).transpose(0, 3, 1, 2)
  return weight.reshape(width, -1, *patch)


def _resize_method(cfg: Mapping[str, Any]) -> str:
  key = (cfg['pos_embed_interp_mode'], bool(cfg['pos_embed_align_corners']),
         bool(cfg['pos_embed_antialias']))
  if key not in _RESIZE_METHODS:
    raise family.CheckpointMismatchError(
        f'the NaFlexViT position embedding is resized with interp_mode, '
        f'align_corners, antialias = {key}, which vit_jax does not '
        f'implement (it has {sorted(_RESIZE_METHODS)})')
  return _RESIZE_METHODS[key]


def _resized_grid(grid_HWD: np.ndarray, grid: Tuple[int, int],
                  cfg: Mapping[str, Any], method: str) -> np.ndarray:
  """A (h, w, D) table as timm adds it to a `grid` of patches: (rows*cols,
  D). Aspect preserving: resized to the longer side squared, then the top
  left `grid` of it."""
  side = max(grid)
  target = (side, side) if cfg['pos_embed_ar_preserving'] else grid
  if tuple(grid_HWD.shape[:2]) == tuple(grid):
    return grid_HWD.reshape(grid[0] * grid[1], -1)  # timm skips the resize.
  resized_1ND = posemb.resize(
      grid_HWD.reshape(1, -1, grid_HWD.shape[-1]), target,
      num_prefix_tokens=0, old_grid=grid_HWD.shape[:2], method=method)
  resized_HWD = resized_1ND.reshape(*target, -1)[:grid[0], :grid[1]]
  return resized_HWD.reshape(grid[0] * grid[1], -1)


def _factorized(table_1LD: np.ndarray, length: int, target: int) -> np.ndarray:
  """One axis's table linearly resized (align_corners=False) to `target`,
  its first `length` entries: (length, D)."""
  table_LD = table_1LD[0]
  if table_LD.shape[0] != target:
    table_LD = posemb.resize(
        table_LD[None], (target, 1), num_prefix_tokens=0,
        old_grid=(table_LD.shape[0], 1), method='bilinear')[0]
  return table_LD[:length]


def position_embedding(arrays: Mapping[str, np.ndarray],
                       cfg: Mapping[str, Any], grid: Tuple[int, int]):
  """What NaFlexVit adds to the patch tokens of a `grid` (rows, cols):
  (1, rows*cols, D) float32, or None without a position embedding."""
  if 'embeds.pos_embed' in arrays:
    grid_1HWD = np.asarray(arrays['embeds.pos_embed'], np.float32)
    return _resized_grid(grid_1HWD[0], grid, cfg, _resize_method(cfg))[None]
  if 'embeds.pos_embed_y' in arrays:
    side = max(grid)
    targets = (side, side) if cfg['pos_embed_ar_preserving'] else grid
    rows_HD = _factorized(np.asarray(arrays['embeds.pos_embed_y'],
                                     np.float32), grid[0], targets[0])
    cols_WD = _factorized(np.asarray(arrays['embeds.pos_embed_x'],
                                     np.float32), grid[1], targets[1])
    return (rows_HD[:, None] + cols_WD[None]).reshape(1, -1, rows_HD.shape[1])
  return None


def vit_state_dict(arrays: Mapping[str, np.ndarray], cfg: Mapping[str, Any],
                   image_size: Tuple[int, int]) -> Dict[str, np.ndarray]:
  """NaFlexVit's state dict under timm VisionTransformer's keys, its
  position embedding resized for `image_size` (H, W).

  Raises:
    family.CheckpointMismatchError: the image is no whole number of patches,
      or the patch embedding does not fit the patch size.
  """
  patch = _pair(cfg['patch_size'])
  if image_size[0] % patch[0] or image_size[1] % patch[1]:
    raise family.CheckpointMismatchError(
        f'input_size {tuple(image_size)} is not a multiple of the patch size '
        f'{patch}')
  grid = (image_size[0] // patch[0], image_size[1] // patch[1])
  out = {key: value for key, value in arrays.items()
         if not key.startswith('embeds.')}
  embeds = {key[len('embeds.'):]: value for key, value in arrays.items()
            if key.startswith('embeds.')}
  out['patch_embed.proj.weight'] = _patch_weight(
      np.asarray(embeds.pop('proj.weight')), patch,
      bool(cfg['patchify_channels_last']))
  for name, timm_vit_key in (('proj.bias', 'patch_embed.proj.bias'),
                             ('cls_token', 'cls_token'),
                             ('reg_token', 'reg_token')):
    if name in embeds:
      out[timm_vit_key] = embeds.pop(name)
  pos_embed = position_embedding(arrays, cfg, grid)
  for name in ('pos_embed', 'pos_embed_y', 'pos_embed_x'):
    embeds.pop(name, None)
  if pos_embed is not None:
    out['pos_embed'] = pos_embed
  # Anything else under embeds (a norm, ...) stays to be reported.
  out.update({f'embeds.{key}': value for key, value in embeds.items()})
  return out


def _recipe(config: Mapping[str, Any],
            cfg: Mapping[str, Any]) -> timm_recipe.Recipe:
  return timm_recipe.Recipe(
      architecture=config['architecture'], num_heads=int(cfg['num_heads']),
      activation=_ACT_LAYERS[cfg['act_layer']], layer_norm_epsilon=_EPSILON,
      global_pool=cfg['global_pool'],
      pool_include_prefix=bool(cfg['pool_include_prefix']),
      norm_layer='layer_norm', final_norm=bool(cfg['final_norm']),
      block='pre_norm', differential_attention=False)


class NaFlexLayout(family.ForeignLayout):
  """timm's NaFlexVit state dict (see the module docstring)."""
  describes = "timm's NaFlexVit: arrays with embeds.proj"

  def recognises(self, config: Mapping[str, Any],
                 arrays: family.FlatParams) -> bool:
    """NaFlexVit embeds patches in `embeds` (timm's other ViTs in
    `patch_embed`)."""
    del config
    return 'embeds.proj.weight' in arrays

  def to_params(self, config: Mapping[str, Any], arrays: family.FlatParams,
                image_size: Tuple[int, int]
                ) -> Tuple[family.Params, Dict[str, Any]]:
    """See `family.ForeignLayout.to_params`: the ViT that computes what
    NaFlexVit does on `image_size` images."""
    cfg = naflex_config(config)
    _check_settings(cfg)
    return vit_timm.to_vit(_recipe(config, cfg),
                           vit_state_dict(arrays, cfg, image_size),
                           image_size)


LAYOUT = NaFlexLayout()
