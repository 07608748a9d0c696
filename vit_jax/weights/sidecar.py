"""The sidecar: what an exported `.npz` cannot say, in a JSON file beside it.

A released-layout `.npz` holds arrays only. Their shapes give the
architecture (the family's `describe`), but not the options without
parameters (the MLP's activation, the LayerNorm epsilon, a fixed position
embedding), the resolution of a model without a learned position embedding,
the pixel normalisation its weights expect, or the names of its classes.
Our exports (`pretrained.save_npz(..., model=...)`, which training calls)
write them to `<stem>.json` next to `<stem>.npz` (`model.npz` ->
`model.json`, `model_ema.npz` -> `model_ema.json`); `pretrained.load` reads
it when it is there. Files without one (every released file) load as
before; the original code and timm ignore it.

The file (version 1), tuples written as lists:

  {"format": "vit_jax.sidecar", "version": 1,
   "family": "vit",                          # the registered family's name
   "model": {"classifier": "token", ...},    # the module's attributes
   "image_size": [224, 224],                 # trained at, or null
   "preprocessing": {"mean": [127.5, 127.5, 127.5],
                     "std": [127.5, 127.5, 127.5]},  # uint8 units, or null
   "class_names": ["tench", ...]}            # or null

The same description comes from a hub checkpoint's config.json
(`pretrained` builds a `Sidecar` from it): it is what is stored beside the
arrays, whatever stored it.
"""

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence, Tuple

from etils import epath
import numpy as np

from vit_jax import atomic
from vit_jax.models import family

FORMAT, VERSION = 'vit_jax.sidecar', 1
_KEYS = ('format', 'version', 'family', 'model', 'image_size',
         'preprocessing', 'class_names')


@dataclasses.dataclass(frozen=True)
class Sidecar:
  """What is stored beside a checkpoint's arrays.

  Attributes:
    family: name of the model family (`vit_jax.models.family.ModelFamily`).
    model_kwargs: attributes of the family's module (the family's
      `stored_kwargs`); sequences are tuples.
    image_size: (H, W) the weights were trained or fine-tuned at, or None.
    preprocessing: the pixel normalisation the weights expect, or None for
      the family's default.
    class_names: one name per output class, or None.
  """
  family: str
  model_kwargs: Mapping[str, Any]
  image_size: Optional[Tuple[int, int]] = None
  preprocessing: Optional[family.Preprocessing] = None
  class_names: Optional[Tuple[str, ...]] = None


def path_for(npz_path) -> epath.Path:
  """The sidecar of `npz_path`: the same stem with `.json`."""
  return epath.Path(npz_path).with_suffix('.json')


def write(npz_path, sidecar: Sidecar) -> None:
  """Writes the sidecar of `npz_path` atomically (temp file + rename)."""
  path = path_for(npz_path)
  preprocessing = sidecar.preprocessing
  record = {
      'format': FORMAT, 'version': VERSION, 'family': sidecar.family,
      'model': {key: _to_json(value)
                for key, value in sidecar.model_kwargs.items()},
      'image_size': _to_json(sidecar.image_size),
      'preprocessing': (None if preprocessing is None else
                        {'mean': _to_json(preprocessing.mean),
                         'std': _to_json(preprocessing.std)}),
      'class_names': _to_json(sidecar.class_names),
  }
  atomic.write_text(path, json.dumps(record, indent=1) + '\n')


def remove(npz_path) -> None:
  """Deletes the sidecar of `npz_path`, if there is one."""
  path = path_for(npz_path)
  if path.exists():
    path.unlink()


def read(npz_path) -> Optional[Sidecar]:
  """The sidecar of `npz_path`, or None when it has none.

  Raises:
    ValueError: the file is not a sidecar this code can read (its message
      names the file and what is wrong with it).
  """
  path = path_for(npz_path)
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); delete it, or export '
                     'the model again') from None
  if not isinstance(record, dict) or record.get('format') != FORMAT:
    raise ValueError(f'{path} is not a {FORMAT} file: move it away from '
                     f'{epath.Path(npz_path).name}, which it would describe')
  if record.get('version') != VERSION:
    raise ValueError(f'{path} is {FORMAT} version {record.get("version")}; '
                     f'this code reads version {VERSION}')
  missing = [key for key in _KEYS if key not in record]
  if missing:
    raise ValueError(f'{path} lacks {", ".join(missing)}')
  return Sidecar(
      family=_checked(path, 'family', record['family'], str),
      model_kwargs={key: _from_json(value) for key, value in
                    _checked(path, 'model', record['model'], dict).items()},
      image_size=_image_size(path, record['image_size']),
      preprocessing=_preprocessing(path, record['preprocessing']),
      class_names=_class_names(path, record['class_names']))


def _to_json(value: Any) -> Any:
  """Tuples as lists and numpy scalars as Python numbers."""
  if isinstance(value, (tuple, list)):
    return [_to_json(item) for item in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _from_json(value: Any) -> Any:
  """Lists back to tuples (module attributes take sequences as tuples)."""
  if isinstance(value, list):
    return tuple(_from_json(item) for item in value)
  return value


def _checked(path, key: str, value: Any, kind: type) -> Any:
  if not isinstance(value, kind):
    raise ValueError(f'{path}: "{key}" must be a {kind.__name__}, got '
                     f'{value!r}')
  return value


def _numbers(path, key: str, value: Any, count: int,
             kind: type) -> Tuple[Any, ...]:
  if not (isinstance(value, list) and len(value) == count and all(
      isinstance(x, (int, float)) and not isinstance(x, bool)
      for x in value)):
    raise ValueError(f'{path}: "{key}" must be {count} numbers, got '
                     f'{value!r}')
  return tuple(kind(x) for x in value)


def _image_size(path, value: Any) -> Optional[Tuple[int, int]]:
  return None if value is None else _numbers(path, 'image_size', value, 2,
                                             int)


def _preprocessing(path, value: Any) -> Optional[family.Preprocessing]:
  if value is None:
    return None
  value = _checked(path, 'preprocessing', value, dict)
  return family.Preprocessing(
      mean=_numbers(path, 'preprocessing.mean', value.get('mean'), 3, float),
      std=_numbers(path, 'preprocessing.std', value.get('std'), 3, float))


def _class_names(path, value: Any) -> Optional[Tuple[str, ...]]:
  if value is None:
    return None
  if not (isinstance(value, list) and all(isinstance(x, str)
                                          for x in value)):
    raise ValueError(f'{path}: "class_names" must be a list of strings')
  return tuple(value)


def as_pair(image_size: Optional[Any]) -> Optional[Tuple[int, int]]:
  """An image size given as one side or (H, W), as (H, W)."""
  if image_size is None:
    return None
  if isinstance(image_size, Sequence):
    height, width = image_size
    return int(height), int(width)
  return int(image_size), int(image_size)
