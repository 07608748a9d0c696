"""timm checkpoints (Hugging Face hub layout) as a model family's tree.

timm (Wightman, "PyTorch Image Models", github.com/huggingface/
pytorch-image-models) publishes its ViTs on the Hugging Face hub as a
directory of `config.json` (`architecture`, `num_classes`, `global_pool`,
optional `model_args` and `label_names`, and `pretrained_cfg` with
`input_size`, `mean`, `std`) and `model.safetensors` (the PyTorch state
dict). `read` turns one into our parameter tree and the module attributes
that compute the same function:

  ckpt = timm_hub.read('hf-hub:timm/vit_base_patch16_224.augreg_in1k')
  model = vit.VisionTransformer(**ckpt.model_kwargs)
  mean, std = ckpt.preprocessing.mean, ckpt.preprocessing.std
  model.apply({'params': ckpt.params}, (pixels_BHWC - mean) / std)

gives timm's output on the same pixels (NCHW there): its logits, or without
a head its pooled features (what timm gives with num_classes=0).

This module finds and reads the files (hub ids through huggingface_hub,
local directories), takes the image size, preprocessing and class names from
config.json, and checks the tree against the model it describes. What the
arrays and the architecture name mean, and which timm features are errors,
is the business of the model family: the registered family whose
`foreign_layouts['timm']` recognises the checkpoint maps it (the ViT's is
`vit_jax.models.vit_timm`). timm's `dynamic_img_size` / `dynamic_img_pad`
change nothing at the native size (`image_size`), the only size the position
embedding is stored for.
Pickled `pytorch_model.bin` files are never loaded: unpickling runs code.
"""

import dataclasses
import json
import re
import socket
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib import parse
from urllib import request

from etils import epath
import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors
import numpy as np

from vit_jax import models
from vit_jax.models import family
from vit_jax.models import merge
from vit_jax.weights import arrays
from vit_jax.weights import safetensors_file

Params = family.Params

HF_HUB_PREFIX = 'hf-hub:'
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
PICKLE_FILE = 'pytorch_model.bin'
# The name families list their timm layouts under (`foreign_layouts`).
LAYOUT = 'timm'
# Seconds to wait for a connection to the hub before calling it unreachable.
# huggingface_hub itself retries a failed connection with backoff for about
# 25 s before it gives up on a file that is not cached.
CONNECT_TIMEOUT = 3.0



@dataclasses.dataclass(frozen=True)
class TimmCheckpoint:
  """A timm checkpoint in our terms.

  Attributes:
    architecture: timm's model name from config.json, e.g.
      'vit_base_patch16_224'.
    model_family: the family whose timm layout the arrays have.
    params: our nested parameter tree for the family's module, float32.
    model_kwargs: the module attributes of the exact model (for a ViT:
      num_classes (None without a head), patch_size, hidden_size,
      num_layers, num_heads, mlp_dim, classifier, and every option that
      differs from its default).
    image_size: the native (H, W), pretrained_cfg's input_size.
    preprocessing: pretrained_cfg's mean and std in 0-255 pixel units.
    class_names: config.json's label_names, or None.
  """
  architecture: str
  model_family: family.ModelFamily
  params: Params
  model_kwargs: Dict[str, Any]
  image_size: Tuple[int, int]
  preprocessing: family.Preprocessing
  class_names: Optional[Tuple[str, ...]]


# ---------------------------------------------------------------- sources --

def _is_hub_id(source) -> bool:
  return isinstance(source, str) and source.startswith(HF_HUB_PREFIX)


def is_timm_source(source) -> bool:
  """'hf-hub:ORG/NAME' ids, or a local directory holding config.json."""
  if _is_hub_id(source):
    return True
  try:
    path = epath.Path(source)
  except TypeError:
    return False
  return path.is_dir() and (path / CONFIG_FILE).exists()


def read(source) -> TimmCheckpoint:
  """Reads a timm hub directory (config.json + model.safetensors) or an
  hf-hub: id (through huggingface_hub's cache, which HF_HOME, HF_HUB_CACHE
  and HF_HUB_OFFLINE steer).

  Raises:
    FileNotFoundError: a file is missing, only a pickle is there, or the
      hub cannot be reached and the cache lacks the files.
    ValueError: config.json is malformed.
    family.CheckpointMismatchError: no registered family reads the arrays,
      or they use a timm feature its model lacks.
  """
  if _is_hub_id(source):
    config_path, weights_path = _hub_files(source)
  else:
    config_path, weights_path = _directory_files(source)
  return convert(_read_config(config_path), _read_safetensors(weights_path))


def read_preprocessing(source) -> family.Preprocessing:
  """The pixel normalisation of `source` (as `read(source).preprocessing`),
  from its config.json alone: the weights are neither read nor fetched."""
  if _is_hub_id(source):
    repo_id, revision = _hub_repo(source)
    config_path = _hub_download(source, repo_id, revision, CONFIG_FILE)
  else:
    config_path, _ = _directory_files(source)
  return _preprocessing(_read_config(config_path)['pretrained_cfg'])


_PICKLE_ADVICE = (
    f'vit_jax never loads {PICKLE_FILE}, a pickle (unpickling runs arbitrary '
    'code). Convert it once where torch is installed, e.g. '
    f'safetensors.torch.save_file(torch.load("{PICKLE_FILE}", '
    f'weights_only=True), "{WEIGHTS_FILE}"), and put {WEIGHTS_FILE} beside '
    f'{CONFIG_FILE}')


def _directory_files(source) -> Tuple[epath.Path, epath.Path]:
  directory = epath.Path(source)
  if not directory.is_dir():
    raise FileNotFoundError(
        f'{directory} is not a directory: a timm checkpoint is a directory '
        f'holding {CONFIG_FILE} and {WEIGHTS_FILE}, or an '
        f'"{HF_HUB_PREFIX}ORG/NAME" id')
  if not (directory / CONFIG_FILE).exists():
    raise FileNotFoundError(f'{directory} has no {CONFIG_FILE}: not a timm '
                            'hub directory')
  if not (directory / WEIGHTS_FILE).exists():
    if (directory / PICKLE_FILE).exists():
      raise FileNotFoundError(f'{directory} has only {PICKLE_FILE}: '
                              f'{_PICKLE_ADVICE}')
    raise FileNotFoundError(f'{directory} has no {WEIGHTS_FILE}')
  return directory / CONFIG_FILE, directory / WEIGHTS_FILE


def _hub_repo(source: str) -> Tuple[str, Optional[str]]:
  """(repository id, revision or None) of 'hf-hub:ORG/NAME[@REVISION]'."""
  repo_id, _, revision = source[len(HF_HUB_PREFIX):].partition('@')
  if not re.fullmatch(r'[^/\s]+/[^/\s]+', repo_id):
    raise ValueError(f'{source!r} is not an "{HF_HUB_PREFIX}ORG/NAME" id')
  return repo_id, revision or None


def _hub_files(source: str) -> Tuple[epath.Path, epath.Path]:
  """Both files of an hf-hub: id, from the cache or the hub."""
  repo_id, revision = _hub_repo(source)
  return tuple(_hub_download(source, repo_id, revision, name)
               for name in (CONFIG_FILE, WEIGHTS_FILE))


def _hub_download(source: str, repo_id: str, revision: Optional[str],
                  filename: str) -> epath.Path:
  """`filename` of the hub repository, from the cache or the hub.

  A file that is not cached is fetched only if the hub accepts a connection
  within `CONNECT_TIMEOUT`: otherwise the error comes at once, not after
  huggingface_hub's retries. A cached file goes through huggingface_hub as
  before (it checks for a newer revision once, without retries).
  """
  local_files_only = (not _is_cached(repo_id, revision, filename) and
                      not _hub_reachable())
  try:
    return epath.Path(huggingface_hub.hf_hub_download(
        repo_id, filename, revision=revision,
        local_files_only=local_files_only))
  except hub_errors.LocalEntryNotFoundError as e:
    raise FileNotFoundError(
        f'{source}: {filename} is not in the Hugging Face cache '
        f'({hub_constants.HF_HUB_CACHE}) and the hub cannot be '
        f'reached (offline: HF_HUB_OFFLINE, or no network to '
        f'{hub_constants.ENDPOINT}). Fetch the files '
        f'where the hub is reachable (`hf download {repo_id} {CONFIG_FILE} '
        f'{WEIGHTS_FILE}` fills the cache that HF_HUB_CACHE or HF_HOME '
        f'points to), or put {CONFIG_FILE} and {WEIGHTS_FILE} in one '
        f'directory and pass that directory instead of the id') from e
  except hub_errors.EntryNotFoundError as e:
    if filename == WEIGHTS_FILE:
      raise FileNotFoundError(
          f'{source} has no {WEIGHTS_FILE}; if it has {PICKLE_FILE}: '
          f'{_PICKLE_ADVICE}, in a directory to pass instead of the id'
      ) from e
    raise FileNotFoundError(f'{source} has no {filename}: not a timm model '
                            'repository') from e
  except hub_errors.HfHubHTTPError as e:
    # Unknown or private repository, unknown revision, refused access.
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise FileNotFoundError(
        f'{source}: the hub refused {filename} ({first_line}). Check the id '
        'and revision; gated or private repositories need `hf auth login`'
    ) from e


def _is_cached(repo_id: str, revision: Optional[str], filename: str) -> bool:
  return isinstance(huggingface_hub.try_to_load_from_cache(
      repo_id, filename, revision=revision), str)


def _hub_reachable() -> bool:
  """Whether the hub's endpoint (HF_ENDPOINT) accepts a TCP connection
  within `CONNECT_TIMEOUT`; False offline (HF_HUB_OFFLINE) without trying,
  True behind a proxy (HTTPS_PROXY, ...), which a direct connection would
  miss."""
  if hub_constants.HF_HUB_OFFLINE:
    return False
  if request.getproxies():
    return True  # Only huggingface_hub's own requests go through a proxy.
  url = parse.urlsplit(hub_constants.ENDPOINT)
  port = url.port or (443 if url.scheme == 'https' else 80)
  try:
    with socket.create_connection((url.hostname, port),
                                  timeout=CONNECT_TIMEOUT):
      return True
  except OSError:  # Refused, unreachable, no DNS, timed out.
    return False


def _read_config(path) -> Dict[str, Any]:
  try:
    config = json.loads(epath.Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e
  if (not isinstance(config, dict)
      or not isinstance(config.get('architecture'), str)
      or not isinstance(config.get('pretrained_cfg'), dict)):
    raise ValueError(f'{path} is not a timm config.json: it needs '
                     '"architecture" and "pretrained_cfg"')
  if not isinstance(config.get('model_args', {}), dict):
    raise ValueError(f'{path}: "model_args" must be an object')
  return config


def is_bookkeeping(key: str) -> bool:
  """BatchNorm's step counter (int64 in torch's state dicts): training
  bookkeeping, not a weight; timm's own loading skips it too."""
  return key.endswith('.num_batches_tracked')



def _read_safetensors(path) -> Dict[str, arrays.StoredArray]:
  """timm key -> its array, known by the file's header and read (float32,
  checked) only when the layout takes it (`safetensors_file`); BatchNorm
  counters left out."""
  return safetensors_file.open_safetensors(
      path, skip=is_bookkeeping)


# ---------------------------------------------------- what config.json says --

def _image_size(pretrained_cfg: Mapping[str, Any]) -> Tuple[int, int]:
  size = pretrained_cfg.get('input_size')
  if not (isinstance(size, (list, tuple)) and len(size) == 3):
    raise ValueError(f'pretrained_cfg input_size {size!r} is not [C, H, W]')
  return int(size[1]), int(size[2])


def _preprocessing(pretrained_cfg: Mapping[str, Any]) -> family.Preprocessing:
  """timm's mean/std act on [0, 1] pixels; ours on [0, 255]."""
  values = {}
  for name in ('mean', 'std'):
    value = pretrained_cfg.get(name)
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
      raise ValueError(f'pretrained_cfg {name} {value!r} is not 3 numbers')
    values[name] = tuple(255.0 * float(v) for v in value)
  return family.Preprocessing(**values)


def _class_names(config: Mapping[str, Any],
                 num_classes: Optional[int]) -> Optional[Tuple[str, ...]]:
  """label_names as a list, or a {class index: name} dict (timm allows gaps;
  a missing index is named by its number)."""
  names = config.get('label_names')
  if not names:
    return None
  if isinstance(names, dict):
    by_index = {int(index): str(name) for index, name in names.items()}
    count = num_classes or max(by_index) + 1
    names = [by_index.get(index, str(index)) for index in range(count)]
  names = tuple(str(name) for name in names)
  if num_classes and len(names) != num_classes:
    raise family.CheckpointMismatchError(
        f'config.json has {len(names)} label_names for {num_classes} classes')
  return names


# ------------------------------------------------------------ conversion --

def convert(config: Mapping[str, Any],
            timm_arrays: Mapping[str, np.ndarray], *,
            check_shapes: bool = True) -> TimmCheckpoint:
  """config.json and the state dict -> a TimmCheckpoint (see `read`).

  Args:
    config: config.json's contents.
    timm_arrays: timm key -> array (or `arrays.StoredArray`, unread).
    check_shapes: whether to compare the mapped tree with the parameter
      shapes of the model it describes, which traces that model (a tenth
      of a second). `read` always does; the listing of what loads
      (`timm_listing`), which maps every architecture of timm's table,
      leaves it to the census of scripts/timm_census.py.

  Raises:
    As `read`, but for the files.
  """
  model_family, layout = _layout_of(config, timm_arrays)
  image_size = _image_size(config['pretrained_cfg'])
  params, model_kwargs = layout.to_params(config, timm_arrays, image_size)
  if check_shapes:
    # Checked here for every family: a block unlike the others, for one,
    # fails here.
    shapes = models.param_shapes(model_family.build(model_kwargs), image_size)
    params = merge.merge_strict(shapes, params)
  return TimmCheckpoint(
      architecture=config['architecture'], model_family=model_family,
      params=params, model_kwargs=model_kwargs,
      image_size=image_size,
      preprocessing=_preprocessing(config['pretrained_cfg']),
      class_names=_class_names(config, model_kwargs['num_classes']))


def _layout_of(config: Mapping[str, Any],
               timm_arrays: Mapping[str, np.ndarray]
               ) -> Tuple[family.ModelFamily, family.ForeignLayout]:
  """The first registered family whose timm layout recognises the
  checkpoint, with that layout.

  Raises:
    family.CheckpointMismatchError: none does; the message says what each
      reads.
  """
  layouts = [(model_family, model_family.foreign_layouts[LAYOUT])
             for model_family in models.families()
             if LAYOUT in model_family.foreign_layouts]
  for model_family, layout in layouts:
    if layout.recognises(config, timm_arrays):
      return model_family, layout
  known = '; '.join(f'{model_family.name}: {layout.describes}'
                    for model_family, layout in layouts)
  raise family.CheckpointMismatchError(
      f'timm architecture {config["architecture"]!r} is of no model family '
      f'vit_jax reads from timm ({known})')
