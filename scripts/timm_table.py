"""Writes vit_jax/models/timm_architectures.json from timm's definitions.

For every architecture with a pretrained tag in timm's ViT modules, the
table records what timm's model definition passes to its model class (the
`model_args` of the entrypoint: heads, activation and norm layers, RoPE
settings, ...), the class, and each pretrained tag's hub id and input size.
The library reads this table for what a checkpoint's arrays cannot say.

vit_jax/weights/timm_state_dicts.json.gz records what timm's `save_for_hf`
writes for each architecture built with one block (as scripts/timm_census.py
builds it): config.json and the shape of every array of model.safetensors
(and its dtype where not float32). The listing of what loads
(`vit_jax.weights.timm_listing`) runs the loader on zero arrays of those
shapes. The library never imports timm. Regenerate both
after a timm upgrade (needs torch and timm, the `benchmark` extra):

  .venv/bin/python scripts/timm_table.py
"""

import dataclasses
import functools
import gzip
import importlib
import inspect
import json
import pathlib
import sys
import tempfile
from typing import Any, Dict, Mapping, Tuple

import timm
from timm.models import _hub
from timm.models import _registry
import torch

MODULES = ('vision_transformer', 'deit', 'vision_transformer_hybrid',
           'mlp_mixer', 'eva', 'naflexvit')
OUT = (pathlib.Path(__file__).resolve().parents[1] / 'vit_jax' / 'models' /
       'timm_architectures.json')
STATE_DICTS = OUT.parents[1] / 'weights' / 'timm_state_dicts.json.gz'
# build_model_with_cfg arguments that say how to build or load, not what.
_BUILDER_ARGS = frozenset({
    'pretrained_cfg', 'pretrained_cfg_overlay', 'model_cfg', 'feature_cfg',
    'pretrained_strict', 'pretrained_filter_fn', 'cache_dir', 'kwargs_filter',
    'pretrained_model_args'})


class _Captured(Exception):
  """Raised by the stand-in builder once it has the definition's arguments."""

  def __init__(self, model_class: str, model_args: Dict[str, Any]):
    super().__init__(model_class)
    self.model_class = model_class
    self.model_args = model_args


def _describe(value: Any) -> Any:
  """A JSON value for a definition argument: layers and functions by name,
  partials with their arguments."""
  if isinstance(value, functools.partial):
    return {'partial': _describe(value.func),
            'args': [_describe(arg) for arg in value.args],
            'kwargs': {key: _describe(arg)
                       for key, arg in sorted(value.keywords.items())}}
  if dataclasses.is_dataclass(value) and not inspect.isclass(value):
    return {'dataclass': type(value).__name__,
            **{field.name: _describe(getattr(value, field.name))
               for field in dataclasses.fields(value)}}
  if isinstance(value, (list, tuple)):
    return [_describe(item) for item in value]
  if isinstance(value, dict):
    return {str(key): _describe(item) for key, item in value.items()}
  if inspect.isclass(value) or inspect.isfunction(value) or callable(value):
    return getattr(value, '__name__', type(value).__name__)
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def _capture_builder(*args, **kwargs):
  model_cls = args[0] if args else kwargs.pop('model_cls')
  model_args = {key: _describe(value) for key, value in kwargs.items()
                if key not in _BUILDER_ARGS}
  raise _Captured(getattr(model_cls, '__name__', str(model_cls)), model_args)


def _definition(module, architecture: str) -> Tuple[str, Dict[str, Any]]:
  original = module.build_model_with_cfg
  module.build_model_with_cfg = _capture_builder
  try:
    _registry.model_entrypoint(architecture)(pretrained=False)
  except _Captured as captured:
    return captured.model_class, captured.model_args
  finally:
    module.build_model_with_cfg = original
  raise RuntimeError(f'{architecture}: its entrypoint built no model')


def _tags(architecture: str) -> Dict[str, Dict[str, Any]]:
  tags = {}
  for name in timm.list_pretrained(f'{architecture}.*'):
    config = timm.models.get_pretrained_cfg(name).to_dict()
    hub_id = config.get('hf_hub_id') or ''
    if hub_id.endswith('/'):  # timm's shorthand: ORG/ARCH.TAG
      hub_id += name
    tags[name.split('.', 1)[1]] = {
        'hf_hub_id': hub_id or None,
        'input_size': list(config.get('input_size', ())),
        'num_classes': config.get('num_classes'),
    }
  return tags


def _default_tag(architecture: str) -> str:
  """The tag timm means by the bare architecture name."""
  return timm.models.get_pretrained_cfg(architecture).tag


def table() -> Dict[str, Any]:
  """architecture -> {module, class, model_args, tags}."""
  entries = {}
  for module_name in MODULES:
    module = importlib.import_module(f'timm.models.{module_name}')
    for architecture in sorted({name.split('.')[0] for name in timm.list_models(
        module=module_name, pretrained=True)}):
      model_class, model_args = _definition(module, architecture)
      entries[architecture] = {'module': module_name, 'class': model_class,
                               'model_args': model_args,
                               'tags': _tags(architecture),
                               'default_tag': _default_tag(architecture)}
  return {'timm_version': timm.__version__, 'architectures': entries}


def one_block_model(architecture: str, definition_args: Mapping[str, Any]):
  """timm's model of `architecture` with one block, and the `model_args` it
  was created with ({'depth': 1}, with per-block lists cut to one block; {}
  for a definition that fixes its depth, as timm's Mixers do).

  Args:
    architecture: a timm architecture name.
    definition_args: its definition's model_args (`table()`).
  """
  model_args = {'depth': 1}
  depth = definition_args.get('depth')
  for key, value in definition_args.items():  # Per-block settings.
    if isinstance(value, list) and len(value) == depth and depth > 2:
      model_args[key] = value[:1]
  try:
    return timm.create_model(architecture, pretrained=False,
                             **model_args), model_args
  except TypeError:  # A definition that fixes its depth (timm's Mixers).
    return timm.create_model(architecture, pretrained=False), {}


def saved_for_hf(architecture: str,
                  definition_args: Mapping[str, Any]) -> Dict[str, Any]:
  """{'config': config.json, 'arrays': {key: shape}, 'dtypes': {key:
  dtype}}: what `save_for_hf` writes for the one-block model, its arrays by
  shape (the model is built on torch's 'meta' device: nothing is
  allocated) and, where not float32, dtype (a BatchNorm's int64 count)."""
  with torch.device('meta'):
    model, model_args = one_block_model(architecture, definition_args)
  with tempfile.TemporaryDirectory() as directory:
    path = pathlib.Path(directory) / 'config.json'
    _hub.save_config_for_hf(model, path, model_args=model_args)
    config = json.loads(path.read_text())
  state_dict = model.state_dict()
  return {'config': config,
          'arrays': {key: list(value.shape)
                     for key, value in state_dict.items()},
          'dtypes': {key: str(value.dtype).replace('torch.', '')
                     for key, value in state_dict.items()
                     if value.dtype != torch.float32}}


def write_state_dicts(definitions: Mapping[str, Any]) -> None:
  """STATE_DICTS: `saved_for_hf` of every architecture."""
  saved = {architecture: saved_for_hf(architecture, entry['model_args'])
           for architecture, entry in sorted(definitions.items())}
  text = json.dumps({'timm_version': timm.__version__,
                     'architectures': saved}, sort_keys=True,
                    separators=(',', ':'))
  # mtime=0: the same table gives the same bytes.
  with open(STATE_DICTS, 'wb') as file:
    with gzip.GzipFile(fileobj=file, mode='wb', mtime=0) as packed:
      packed.write(text.encode())


def main() -> int:
  result = table()
  lines = [f' {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}'
           for name, entry in sorted(result['architectures'].items())]
  OUT.write_text(
      f'{{"timm_version": {json.dumps(result["timm_version"])},\n'
      '"architectures": {\n' + ',\n'.join(lines) + '\n}}\n')
  print(f'{len(result["architectures"])} architectures of timm '
        f'{result["timm_version"]} -> {OUT}')
  write_state_dicts(result['architectures'])
  print(f'their one-block state dicts -> {STATE_DICTS}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
