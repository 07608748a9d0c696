"""Which of timm's models vit_jax loads (the listing of `vit-jax weights
--timm`).

Not a hand-kept list: for every architecture of timm's table
(`vit_jax.models.timm_definitions`), the loader itself runs on what timm's
`save_for_hf` writes for that architecture built with one block, as
scripts/timm_census.py builds it. scripts/timm_table.py recorded those
checkpoints from timm into timm_state_dicts.json.gz beside this file:
config.json as timm writes it, and the shape of every array (its dtype where
not float32, which the file reader refuses first). The arrays become zeros,
and go through the loader's own steps for a hub directory:
`timm_hub.convert` (the registered family whose timm layout recognises them
maps them) and `pretrained.model_of` (the model they describe, checked
against config.json; the native size, a multiple of the patch). An
architecture loads when those succeed; otherwise the listing gives the first
line of the loader's error, which names the feature.

Left out, to list all of timm's table in seconds: the comparison of the
mapped tree with the model's parameter shapes, which traces each model
(`timm_hub.convert`'s `check_shapes`). That and the outputs are what
scripts/timm_census.py checks, against timm itself.
"""

import functools
import gzip
import json
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from vit_jax.models import timm_definitions
from vit_jax.weights import arrays
from vit_jax.weights import formats
from vit_jax.weights import pretrained
from vit_jax.weights import timm_hub

_STATE_DICTS = pathlib.Path(__file__).with_name('timm_state_dicts.json.gz')
# A row of `table()`: architecture, tag, hub id or None, refusal or None.
Row = Tuple[str, str, Optional[str], Optional[str]]


@functools.lru_cache(maxsize=None)
def _recorded() -> Mapping[str, Any]:
  with gzip.open(_STATE_DICTS, 'rt') as file:
    return json.load(file)['architectures']


def _zeros(shape: Sequence[int]) -> arrays.StoredArray:
  """An array of `shape` as a safetensors file's header gives it, whose
  values are zeros: a read-only view of one zero, so that the layouts'
  transposes and copies of them stay cheap (a few seconds for the whole
  table, where allocated zeros take several times that)."""
  shape = tuple(shape)
  return arrays.StoredArray(
      shape, lambda: np.broadcast_to(np.float32(0), shape))


def one_block_checkpoint(architecture: str
                         ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(config.json, state dict of zero arrays) of timm's one-block model of
  `architecture`, as `save_for_hf` writes them.

  Raises:
    KeyError: the architecture is not in timm's table.
    ValueError: an array is stored as other than a float, which the
      loader's file reader refuses (`arrays.float_dtype`).
  """
  recorded = _recorded()[architecture]
  for key, dtype in recorded.get('dtypes', {}).items():
    if not timm_hub.is_bookkeeping(key):  # The file reader skips those.
      arrays.float_dtype(np.dtype(dtype), key, architecture)
  return (recorded['config'],
          {key: _zeros(shape) for key, shape in recorded['arrays'].items()
           if not timm_hub.is_bookkeeping(key)})


def refusal(name: str) -> Optional[str]:
  """Why vit_jax refuses timm's model `name`, or None if it loads it.

  Args:
    name: an architecture of timm's table, with or without a tag (the
      tag's input size replaces the default tag's; the other tags of an
      architecture differ only in their head, which the loader reads off
      the arrays).

  Returns:
    None, or the first line of the loader's error.

  Raises:
    KeyError: the architecture is not in timm's table.
  """
  architecture, tag = timm_definitions.split_name(name)
  definition = timm_definitions.definition(architecture)
  if definition is None:
    raise KeyError(f'{architecture!r} is not in timm\'s table')
  size = definition.tags.get(tag or definition.default_tag, {}).get(
      'input_size')
  return _refusal(architecture, tuple(size) if size else None)


@functools.lru_cache(maxsize=None)
def _refusal(architecture: str,
             input_size: Optional[Tuple[int, ...]]) -> Optional[str]:
  """`refusal` of the architecture at `input_size` (None: its default
  tag's); remembered, as the table asks once per tag."""
  try:
    config, state_dict = one_block_checkpoint(architecture)
    if input_size:
      config = {**config, 'pretrained_cfg': {**config['pretrained_cfg'],
                                             'input_size': list(input_size)}}
    checkpoint = timm_hub.convert(config, state_dict, check_shapes=False)
    pretrained.model_of(formats.TimmHub.weights(architecture, checkpoint))
  except ValueError as e:  # CheckpointMismatchError among them.
    return str(e).splitlines()[0]
  return None


def table() -> Tuple[Row, ...]:
  """(architecture, tag, hub id or None, refusal or None) of every tag of
  timm's table, sorted; the default tag first in each architecture."""
  rows = []
  for architecture in timm_definitions.architectures():
    definition = timm_definitions.definition(architecture)
    tags = sorted(definition.tags,
                  key=lambda tag: (tag != definition.default_tag, tag))
    rows += [(architecture, tag, definition.tags[tag].get('hf_hub_id'),
              refusal(f'{architecture}.{tag}')) for tag in tags]
  return tuple(rows)


def summary(rows: Optional[Sequence[Row]] = None) -> str:
  """'N of M architectures of timm VERSION load' over `table()`."""
  rows = table() if rows is None else rows
  by_architecture = {}
  for architecture, _, _, why in rows:  # Loads if its default tag does.
    by_architecture.setdefault(architecture, why)
  loads = sum(why is None for why in by_architecture.values())
  return (f'{loads} of {len(by_architecture)} architectures of timm '
          f'{timm_definitions.timm_version()} load')
