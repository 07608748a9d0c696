"""Loaded parameters checked against a model's, key by key and shape by
shape: what every reader of weights does last, whatever the file's format
(`vit_jax.weights`) or foreign layout (`family.ForeignLayout`)."""

import re
from typing import Sequence

import flax

from vit_jax.models import family

Params = family.Params

# Lists in error messages are cut here; the count is always given.
_MAX_LISTED = 20


def merge_strict(init_params: Params, loaded_params: Params, *,
                 dont_load: Sequence[str] = ()) -> Params:
  """Returns `loaded_params` checked key by key against `init_params`.

  Args:
    init_params: the model's freshly initialised parameters (the reference
      for the key set and shapes).
    loaded_params: parameters read from a checkpoint, in the model's layout.
    dont_load: regular expressions (re.fullmatch on '/'-joined keys); matching
      keys keep their init value, and matching checkpoint keys are dropped.

  Returns:
    The merged nested tree.

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape
      mismatches, with how to proceed.
  """
  init = flax.traverse_util.flatten_dict(flax.core.unfreeze(init_params),
                                         sep='/')
  loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded_params),
                                           sep='/')
  skip = lambda key: any(re.fullmatch(p, key) for p in dont_load)
  missing = sorted(k for k in init if k not in loaded and not skip(k))
  extra = sorted(k for k in loaded if k not in init and not skip(k))
  mismatched = sorted(
      f'{k}: checkpoint {tuple(loaded[k].shape)} vs model '
      f'{tuple(init[k].shape)}'
      for k in init
      if k in loaded and not skip(k) and loaded[k].shape != init[k].shape)
  if missing or extra or mismatched:
    raise family.CheckpointMismatchError(
        _mismatch_message(missing, extra, mismatched))
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
