"""Weight formats: what a source is, and how its weights are read.

A source is whatever `vit_jax.weights.load` takes: a path, a directory, an
'hf-hub:' id, a released name. Each format (`WeightFormat`) recognises its
own sources and reads them into a model family's parameter tree, with what
is stored beside the arrays (model attributes, image size, pixel
normalisation, class names: a `sidecar.Sidecar`). `find` asks the formats
in `formats()` order and takes the first that recognises the source;
`pretrained` (load, load_for_fine_tuning, load_preprocessing) only talks to
them through it.

Built in (`_BUILT_IN`, in the order they are asked):
  npz       an `.npz` file in a family's released layout, with the sidecar
            our exports write beside it, if any (`npz`, `sidecar`)
  timm      a timm checkpoint: 'hf-hub:ORG/NAME' or a directory of
            config.json + model.safetensors (`timm_hub`); the model family
            whose `foreign_layouts['timm']` recognises the state dict maps
            its keys (the ViT's: `vit_jax.models.vit_timm`)
  timm name a timm model name, e.g. 'vit_base_patch16_224.augreg_in1k'
            (with or without 'timm/'; a bare architecture is its default
            tag): its hf-hub: id (`timm_names`), read as above
  released  a released Google file by name, e.g. 'imagenet21k/ViT-B_16'
            (`zoo` fetches it once; then it is an npz)

Where a new format goes: a `WeightFormat` subclass here and its instance in
`_BUILT_IN` (this one file), plus a reader module in this package when its
container is new (as `safetensors_file` reads safetensors for `timm_hub`);
its arrays are checked as every format's are (`arrays`: float dtypes,
sizes from the headers, finite values), and read only when used. Another
library's keys for a family we have are that family's business: a
`family.ForeignLayout` beside the family in `vit_jax.models`, listed in its
`foreign_layouts` (so a timm family touches its family, not the loader).
Registering is explicit: `_BUILT_IN` lists the built-in formats, and
`register` adds one at run time (tests add temporary ones); importing a
module registers nothing.
"""

import abc
import dataclasses
from typing import Any, List, Optional, Sequence, Tuple

from etils import epath

from vit_jax import models
from vit_jax.models import family
from vit_jax.weights import npz
from vit_jax.weights import sidecar as sidecar_lib
from vit_jax.weights import timm_hub
from vit_jax.weights import timm_names
from vit_jax.weights import zoo

Params = family.Params


@dataclasses.dataclass(frozen=True)
class Weights:
  """A source read: its arrays as a family's tree and what is stored beside
  them.

  Attributes:
    name: the path or id, for messages.
    model_family: the family whose layout the arrays have.
    params: the arrays, as the family's nested float32 tree; a leaf may be
      an `arrays.StoredArray` (shape known, values read and checked when
      asked for: `arrays.read_values`), so that keys and shapes are checked
      against a model before any data is read.
    stored: what the format stores beside the arrays (the sidecar, a hub
      checkpoint's config), or None.
    stored_in: where `stored` comes from, for messages.
  """
  name: str
  model_family: family.ModelFamily
  params: Params
  stored: Optional[sidecar_lib.Sidecar]
  stored_in: str


class WeightFormat(abc.ABC):
  """One kind of weight source.

  Attributes:
    name: short name, e.g. 'npz'.
    sources: what its sources look like, for the error that lists what was
      tried (e.g. 'an .npz file').
  """
  name: str
  sources: str

  @abc.abstractmethod
  def recognises(self, source: Any) -> bool:
    """Whether `source` is this format's; cheap (no download, no arrays)."""

  @abc.abstractmethod
  def read(self, source: Any) -> Weights:
    """Reads a recognised source.

    Raises:
      FileNotFoundError: a file is missing or cannot be fetched.
      ValueError: a file is unreadable; CheckpointMismatchError (a
        ValueError) when its arrays are no family's or contradict what is
        stored beside them.
    """

  def read_preprocessing(self, source: Any) -> Optional[family.Preprocessing]:
    """The pixel normalisation stored with the weights of `source`, or None
    when nothing says (the family's default then applies). This default
    reads the source; formats that store it apart read only that."""
    stored = self.read(source).stored
    return stored and stored.preprocessing


# ------------------------------------------------------------ built in --

class NpzFile(WeightFormat):
  """A family's released `.npz` layout, with our sidecar if there is one."""
  name = 'npz'
  sources = 'an .npz file'

  def recognises(self, source) -> bool:
    # Any existing file, local or remote (epath): a file that is no .npz
    # gets read_npz's error naming it.
    return epath.Path(source).is_file()

  def read(self, source) -> Weights:
    """The arrays (unread: `npz.open_npz`), in the layout of the family
    that recognises their keys, and the sidecar, which must be of that
    family."""
    flat = npz.open_npz(source)
    model_family = models.family_of_checkpoint(flat)
    stored = sidecar_lib.read(source)
    stored_in = str(sidecar_lib.path_for(source))
    if stored is not None and stored.family != model_family.name:
      raise family.CheckpointMismatchError(
          f'{stored_in} describes a {stored.family} model but {source} holds '
          f'{model_family.name} arrays: it belongs to other weights; delete '
          'it or export the model again')
    return Weights(str(source), model_family,
                   model_family.from_released(flat), stored, stored_in)

  def read_preprocessing(self, source) -> Optional[family.Preprocessing]:
    stored = sidecar_lib.read(source)
    return stored and stored.preprocessing


class TimmHub(WeightFormat):
  """timm's hub layout (`timm_hub`): what config.json says is stored beside
  the arrays."""
  name = 'timm'
  sources = ('a timm checkpoint (hf-hub:ORG/NAME or a directory with '
             'config.json)')

  def recognises(self, source) -> bool:
    return timm_hub.is_timm_source(str(source))

  def read(self, source) -> Weights:
    location = str(source)
    return self.weights(location, timm_hub.read(location))

  @staticmethod
  def weights(location: str, hub: timm_hub.TimmCheckpoint) -> Weights:
    """The Weights of a checkpoint read from `location`."""
    stored = sidecar_lib.Sidecar(
        family=hub.model_family.name, model_kwargs=dict(hub.model_kwargs),
        image_size=sidecar_lib.as_pair(hub.image_size),
        preprocessing=hub.preprocessing,
        class_names=(None if hub.class_names is None else
                     tuple(hub.class_names)))
    return Weights(location, hub.model_family, hub.params, stored,
                   f'the config of {location}')

  def read_preprocessing(self, source) -> Optional[family.Preprocessing]:
    """From config.json alone: the weights are neither read nor fetched."""
    return timm_hub.read_preprocessing(str(source))


class TimmName(WeightFormat):
  """A timm model name (`timm_names`): the hub id of its tag, fetched
  through the Hugging Face cache as hf-hub: ids are."""
  name = 'timm name'
  sources = 'a timm name (e.g. vit_base_patch16_224.augreg_in1k)'

  def recognises(self, source) -> bool:
    return timm_names.is_timm_name(source) and not epath.Path(
        source).exists()

  def read(self, source) -> Weights:
    return TimmHub().read(timm_names.hub_source(source))

  def read_preprocessing(self, source) -> Optional[family.Preprocessing]:
    return TimmHub().read_preprocessing(timm_names.hub_source(source))


class ReleasedName(WeightFormat):
  """A released file by name (`zoo`): fetched once, then an `.npz`."""
  name = 'released'
  sources = 'the name of a released file'

  def recognises(self, source) -> bool:
    return zoo.is_released_name(str(source))

  def read(self, source) -> Weights:
    return NpzFile().read(zoo.fetch(str(source)))

  def read_preprocessing(self, source) -> Optional[family.Preprocessing]:
    return NpzFile().read_preprocessing(zoo.fetch(str(source)))


# ------------------------------------------------------------ registry --

# Asked in this order; a file is an npz before anything else.
_BUILT_IN: Tuple[WeightFormat, ...] = (NpzFile(), TimmHub(), TimmName(),
                                       ReleasedName())
_FORMATS: List[WeightFormat] = list(_BUILT_IN)


def register(new_format: WeightFormat) -> None:
  """Makes `new_format` known to `find` (asked after those before it).

  Raises:
    ValueError: a format of that name is already registered.
  """
  if any(known.name == new_format.name for known in _FORMATS):
    raise ValueError(f'a weight format called {new_format.name!r} is '
                     'already registered')
  _FORMATS.append(new_format)


def unregister(name: str) -> None:
  """Removes the format called `name` (tests register temporary ones)."""
  _FORMATS[:] = [known for known in _FORMATS if known.name != name]


def formats() -> Tuple[WeightFormat, ...]:
  """The registered formats, in the order `find` asks them."""
  return tuple(_FORMATS)


def find(source: Any) -> WeightFormat:
  """The first registered format that recognises `source`.

  Raises:
    FileNotFoundError: none does; the message lists what each takes.
  """
  for candidate in _FORMATS:
    if candidate.recognises(source):
      return candidate
  suggestion = zoo.did_you_mean(source)  # A misspelt released name?
  raise FileNotFoundError(
      f'checkpoint {source} does not exist: give '
      f'{_one_of([known.sources for known in _FORMATS])}'
      + (f'; {suggestion}' if suggestion else ''))


def read(source: Any) -> Weights:
  """`source` read by its format (see `find`)."""
  return find(source).read(source)


def _one_of(options: Sequence[str]) -> str:
  """'a, b or c'."""
  if len(options) == 1:
    return options[0]
  return f'{", ".join(options[:-1])} or {options[-1]}'
