"""timm's model definitions, as data: what a timm checkpoint's arrays cannot say.

A timm architecture name (`vit_base_patch16_clip_224`) stands for a model
definition: the class it builds and the arguments its entrypoint passes
(`num_heads`, `act_layer`, `norm_layer`, RoPE settings, ...). Those are facts
of timm's code, read once from timm itself by `scripts/timm_table.py` into
timm_architectures.json beside this file, for every architecture with a
pretrained tag in timm's ViT modules. Layer arguments are recorded by name
(`"act_layer": "gelu_tanh"`), partials as
`{"partial": NAME, "args": [...], "kwargs": {...}}` and config dataclasses as
`{"dataclass": NAME, field: value, ...}`.

A checkpoint's config.json `model_args` (the create_model overrides timm
saved with it) take precedence over the definition's, as they do in timm.
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any, Dict, Mapping, Optional, Tuple

_TABLE = pathlib.Path(__file__).with_name('timm_architectures.json')


@dataclasses.dataclass(frozen=True)
class Definition:
  """One timm architecture.

  Attributes:
    architecture: the name, without a pretrained tag.
    module: the timm.models module defining it ('vision_transformer', 'eva',
      ...).
    model_class: the class the entrypoint builds ('VisionTransformer',
      'Eva', 'NaFlexVit', 'MlpMixer', ...).
    model_args: the entrypoint's arguments to that class.
    tags: pretrained tag -> {'hf_hub_id', 'input_size', 'num_classes'}.
    default_tag: the tag timm means by the bare architecture name.
  """
  architecture: str
  module: str
  model_class: str
  model_args: Mapping[str, Any]
  tags: Mapping[str, Mapping[str, Any]]
  default_tag: Optional[str] = None


@functools.lru_cache(maxsize=None)
def _table() -> Dict[str, Any]:
  return json.loads(_TABLE.read_text())


def timm_version() -> str:
  """The timm release the table was read from."""
  return _table()['timm_version']


def architectures() -> Tuple[str, ...]:
  """Every architecture the table holds, sorted."""
  return tuple(sorted(_table()['architectures']))


def split_name(name: str) -> Tuple[str, Optional[str]]:
  """'timm/ARCH.TAG' or 'ARCH.TAG' or 'ARCH' -> (ARCH, TAG or None)."""
  name = name.split('/', 1)[1] if name.startswith('timm/') else name
  architecture, _, tag = name.partition('.')
  return architecture, tag or None


def definition(name: str) -> Optional[Definition]:
  """The definition of a timm architecture (a pretrained tag and a `timm/`
  prefix are ignored), or None when the table does not hold it."""
  architecture, _ = split_name(name)
  entry = _table()['architectures'].get(architecture)
  if entry is None:
    return None
  return Definition(architecture=architecture, module=entry['module'],
                    model_class=entry['class'],
                    model_args=entry['model_args'], tags=entry['tags'],
                    default_tag=entry.get('default_tag'))


def model_args(config: Mapping[str, Any]) -> Dict[str, Any]:
  """The arguments timm builds a checkpoint's model with: its
  architecture's definition, overridden by config.json's `model_args`.

  Args:
    config: a timm config.json (`architecture`, optional `model_args`).

  Returns:
    The merged arguments; only config.json's when the table does not hold
    the architecture.
  """
  found = definition(config.get('architecture', ''))
  merged = dict(found.model_args) if found else {}
  merged.update(config.get('model_args') or {})
  return merged


def layer_name(value: Any) -> Optional[str]:
  """A recorded layer argument's class or function name (a partial's
  function), or None."""
  if isinstance(value, Mapping) and 'partial' in value:
    return layer_name(value['partial'])
  return value if isinstance(value, str) else None


def layer_kwargs(value: Any) -> Mapping[str, Any]:
  """The keyword arguments a recorded partial binds ({} for a plain name)."""
  if isinstance(value, Mapping) and 'partial' in value:
    return value.get('kwargs', {})
  return {}
