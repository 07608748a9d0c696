"""The released `.npz` checkpoints: read, normalise, merge strictly, write.

All knowledge of legacy layouts lives here:
  * keys are parameter paths joined with '/'; later files may prefix them with
    'params/' or 'opt/target/';
  * the ViT-paper files number the modules inside an encoder block globally
    (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3);
    newer Flax code, and our model, numbers them per type (LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0);
  * old hybrid files store GroupNorm scale/bias as (1, 1, 1, C);
  * bfloat16 arrays may be stored as 2-byte numpy void.
Files are opened through etils.epath (the file layer of TFDS and orbax), so
local paths, gs:// and other fsspec/gfile paths all work where reachable.
Archives are never unpickled.
"""

import io
import re
import zipfile
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from etils import epath
import flax
import jax
import ml_dtypes
import numpy as np

from vit_jax import posemb

Params = Dict[str, Any]

_PREFIXES = ('opt/target/', 'params/')
_OLD_TO_NEW_BLOCK_NAMES = {
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
_NEW_TO_OLD_BLOCK_NAMES = {v: k for k, v in _OLD_TO_NEW_BLOCK_NAMES.items()}
_GROUP_NORM = re.compile(r'(^|/)gn(_root|_proj|\d+)/(scale|bias)$')
# Lists in error messages are cut here; the count is always given.
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
  """The checkpoint's parameters do not fit the model."""


# ----------------------------------------------------------------- reading --


def read_npz(path) -> Dict[str, np.ndarray]:
  """Reads a `.npz` into a flat {'a/b/c': float32 array} dict, as stored.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable, pickle-free npz archive.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  data = path.read_bytes()
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
      flat = {key: archive[key] for key in archive.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(
        f'{path} is not a readable .npz checkpoint (truncated or corrupt '
        f'download?): {e}') from e
  if not flat:
    raise ValueError(f'{path} holds no arrays')
  return {key: _to_float32(key, value) for key, value in flat.items()}


def _to_float32(key: str, value: np.ndarray) -> np.ndarray:
  if value.dtype.kind == 'V' and value.dtype.itemsize == 2:
    value = value.view(ml_dtypes.bfloat16)  # bf16 saved without its dtype.
  if value.dtype.kind not in 'fiu' and value.dtype != ml_dtypes.bfloat16:
    raise ValueError(f'checkpoint array {key!r} has unsupported dtype '
                     f'{value.dtype}')
  return np.asarray(value, np.float32)


def normalise_layout(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Maps any released layout to ours: no prefix, per-type block numbering,
  GroupNorm params as (C,)."""
  return {_normalise_key(key): _normalise_value(key, value)
          for key, value in _strip_prefix(flat).items()}


def _strip_prefix(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  for prefix in _PREFIXES:
    if all(key.startswith(prefix) for key in flat):
      return {key[len(prefix):]: value for key, value in flat.items()}
  return dict(flat)


def _normalise_key(key: str) -> str:
  return '/'.join(_OLD_TO_NEW_BLOCK_NAMES.get(part, part)
                  for part in key.split('/'))


def _normalise_value(key: str, value: np.ndarray) -> np.ndarray:
  if _GROUP_NORM.search(key) and value.ndim == 4:
    return value.reshape(-1)  # Old hybrids: (1, 1, 1, C).
  return value


def load_params(path) -> Params:
  """Reads any released layout into our nested parameter tree (float32)."""
  flat = read_npz(path)
  _check_block_numbering(flat)
  return flax.traverse_util.unflatten_dict(normalise_layout(flat), sep='/')


def _check_block_numbering(flat: Mapping[str, np.ndarray]):
  """Refuses files that mix old and new numbering (they would collide)."""
  parts = {part for key in flat for part in key.split('/')}
  old = parts & set(_OLD_TO_NEW_BLOCK_NAMES)
  new = parts & set(_NEW_TO_OLD_BLOCK_NAMES)
  if old and new:
    raise ValueError(f'checkpoint mixes old ({sorted(old)}) and new '
                     f'({sorted(new)}) encoder-block module numbering')


# ------------------------------------------- scanned (stacked) encoder blocks --

_STACKED, _BLOCK = 'encoderblock', 'encoderblock_{}'


def is_stacked(params: Params) -> bool:
  return _STACKED in params.get('Transformer', {})


def unstack_blocks(params: Params) -> Params:
  """A scanned model's `encoderblock` (layer axis first) -> encoderblock_{i}."""
  if not is_stacked(params):
    return params
  encoder = dict(params['Transformer'])
  stacked = encoder.pop(_STACKED)
  num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  for layer in range(num_layers):
    encoder[_BLOCK.format(layer)] = jax.tree_util.tree_map(
        lambda x, i=layer: x[i], stacked)
  return {**params, 'Transformer': encoder}


def stack_blocks(params: Params) -> Params:
  """encoderblock_{i} -> one `encoderblock` with a leading layer axis."""
  if is_stacked(params) or 'Transformer' not in params:
    return params
  encoder = dict(params['Transformer'])
  blocks = []
  while _BLOCK.format(len(blocks)) in encoder:
    blocks.append(encoder.pop(_BLOCK.format(len(blocks))))
  if not blocks:
    return params
  encoder[_STACKED] = jax.tree_util.tree_map(lambda *x: np.stack(x), *blocks)
  return {**params, 'Transformer': encoder}


def match_block_layout(params: Params, like: Params) -> Params:
  """Stacks or unstacks the encoder blocks of `params` as `like` has them."""
  return stack_blocks(params) if is_stacked(like) else unstack_blocks(params)


# ----------------------------------------------------------------- writing --


def to_released_layout(params: Params) -> Dict[str, np.ndarray]:
  """Our tree -> the ViT-paper layout: flat, old numbering, float32, one
  entry per encoder block whether or not the model scans them."""
  params = unstack_blocks(flax.core.unfreeze(params))
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return {
      '/'.join(_NEW_TO_OLD_BLOCK_NAMES.get(part, part)
               for part in key.split('/')): np.asarray(value, np.float32)
      for key, value in flat.items()
  }


def save_npz(params: Params, path) -> None:
  """Writes `params` in the released layout, atomically (temp file + rename),
  so an interrupted write never leaves a half-written checkpoint."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **to_released_layout(params))
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)  # Overwrites an older export.


# ----------------------------------------------------------------- merging --


def merge_strict(init_params: Params, loaded_params: Params, *,
                 dont_load: Sequence[str] = ()) -> Params:
  """Returns `loaded_params` checked key by key against `init_params`.

  Args:
    init_params: the model's freshly initialised parameters (the reference
      for the key set and shapes).
    loaded_params: parameters read from a checkpoint.
    dont_load: regular expressions (re.fullmatch on '/'-joined keys); matching
      keys keep their init value, and matching checkpoint keys are dropped.

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape
      mismatches, with how to proceed.
  """
  init_params = flax.core.unfreeze(init_params)
  loaded_params = match_block_layout(flax.core.unfreeze(loaded_params),
                                     like=init_params)
  init = flax.traverse_util.flatten_dict(init_params, sep='/')
  loaded = flax.traverse_util.flatten_dict(loaded_params, sep='/')
  skip = lambda key: any(re.fullmatch(p, key) for p in dont_load)
  missing = sorted(k for k in init if k not in loaded and not skip(k))
  extra = sorted(k for k in loaded if k not in init and not skip(k))
  mismatched = sorted(
      f'{k}: checkpoint {tuple(loaded[k].shape)} vs model '
      f'{tuple(init[k].shape)}'
      for k in init
      if k in loaded and not skip(k) and loaded[k].shape != init[k].shape)
  if missing or extra or mismatched:
    raise CheckpointMismatchError(_mismatch_message(missing, extra, mismatched))
  merged = {k: (init[k] if skip(k) else loaded[k]) for k in init}
  return flax.traverse_util.unflatten_dict(merged, sep='/')


def _mismatch_message(missing, extra, mismatched) -> str:
  lines = ['the checkpoint does not match the model.']
  for title, keys in (('missing from the checkpoint', missing),
                      ('not in the model', extra),
                      ('shape mismatch', mismatched)):
    if keys:
      lines.append(f'  {len(keys)} {title}:')
      lines += [f'    {k}' for k in keys[:_MAX_LISTED]]
      if len(keys) > _MAX_LISTED:
        lines.append(f'    ... and {len(keys) - _MAX_LISTED} more')
  lines.append('Is it the right model name / classifier for this file? To '
               'keep the model\'s own values for chosen keys, pass their '
               'patterns as dont_load (e.g. "head/.*").')
  return '\n'.join(lines)


# ------------------------------------------------ reading for a given model --


def num_prefix_tokens(classifier: str) -> int:
  return 1 if classifier in ('token', 'token_unpooled') else 0


def adapt_pos_embedding(loaded_params: Params, init_params: Params, *,
                        classifier: str, new_grid: Sequence[int],
                        old_grid: Optional[Sequence[int]] = None,
                        method: str = 'bilinear_aligned') -> Params:
  """Resizes the checkpoint's position embedding to the model's grid."""
  encoder = loaded_params.get('Transformer', {})
  embedding = encoder.get('posembed_input', {}).get('pos_embedding')
  target = init_params['Transformer']['posembed_input']['pos_embedding']
  if embedding is None or embedding.shape == target.shape:
    return loaded_params
  prefix = num_prefix_tokens(classifier)
  if embedding.shape[-1] != target.shape[-1]:
    return loaded_params  # Hidden sizes differ: merge_strict reports it.
  resized = posemb.resize(embedding, new_grid, num_prefix_tokens=prefix,
                          old_grid=old_grid, method=method)
  return _replace(loaded_params, ('Transformer', 'posembed_input',
                                  'pos_embedding'), resized)


def _replace(tree: Params, path: Iterable[str], value) -> Params:
  *parents, leaf = path
  tree = dict(tree)
  node = tree
  for name in parents:
    node[name] = dict(node[name])
    node = node[name]
  node[leaf] = value
  return tree


def load_for_fine_tuning(path, init_params: Params, *, classifier: str,
                         grid: Sequence[int],
                         method: str = 'bilinear_aligned',
                         dont_load: Sequence[str] = ()) -> Params:
  """Loads a released checkpoint to fine-tune the model of `init_params`.

  The head is always the model's fresh (zero) head; `pre_logits` is taken
  from the file when the model has one and dropped otherwise; the position
  embedding is resized to `grid` (rows, cols) with `method`.
  """
  loaded = load_params(path)
  loaded.pop('head', None)
  if 'pre_logits' not in init_params:
    loaded.pop('pre_logits', None)
  loaded = adapt_pos_embedding(loaded, init_params, classifier=classifier,
                               new_grid=grid, method=method)
  return merge_strict(init_params, loaded,
                      dont_load=('head/.*', *dont_load))
