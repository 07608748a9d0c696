"""Released checkpoints by name: which files exist, and fetching them once.

A released name is the bucket folder and the file stem, the folder naming
what the model was trained on:

  imagenet21k/ViT-B_16                  gs://vit_models/imagenet21k/ViT-B_16.npz
  imagenet21k+imagenet2012/ViT-B_16     ... fine-tuned on ImageNet-1k
  augreg/<stem>                         gs://vit_models/augreg/<stem>.npz
  sam/ViT-B_16                          gs://vit_models/sam/ViT-B_16.npz
  imagenet21k/Mixer-B_16                gs://mixer_models/imagenet21k/...

`released()` is the one list every other view (the programs' listing,
checkpoints/README.md's table) is generated from. Sources:
  * ViT (Dosovitskiy et al. 2021): `gs://vit_models/imagenet21k` and
    `imagenet21k+imagenet2012` as the upstream README of
    google-research/vision_transformer lists them (ViT-H_14 has no
    ImageNet-1k fine-tune; ViT-B_16-224 and ViT-L_16-224 are the 224-pixel
    fine-tunes of its 2020-10-29 changelog entry).
  * AugReg (Steiner et al. 2021, "How to train your ViT?", arXiv
    2106.10270): the recommended checkpoint per model and its ImageNet-1k
    fine-tune, as the same README's table names them. The bucket holds
    about 50k more, indexed by `gs://vit_models/augreg/index.csv`; any
    `augreg/<stem>` whose stem follows that index's naming resolves to
    its file without being listed.
  * SAM (Chen et al. 2021, arXiv 2106.01548): the two ViTs timm loads from
    `gs://vit_models/sam`. Other SAM and the GSAM files are not listed:
    their names are not documented.
  * MLP-Mixer (Tolstikhin et al. 2021): Mixer-B_16 and Mixer-L_16 in
    `gs://mixer_models/imagenet21k` and `imagenet1k` (paper Table 3).

Files are read through etils.epath (the file layer of TFDS and orbax) from
`gs://<bucket>/...` by default: epath opens gs:// (through tf.io.gfile,
which reads public buckets without credentials) but not the buckets'
https://storage.googleapis.com/ mirrors, which error messages give for a
manual download. $VIT_JAX_CHECKPOINT_BASE redirects the source to a
directory laid out like the buckets (`<base>/vit_models/imagenet21k/...`);
files land in $VIT_JAX_CACHE (default ~/.cache/vit_jax), in the same layout.

A fetch downloads once (a cached file is used without contacting the
source), atomically (`<file>.part`, renamed when verified), verified (the
size the source reports, the zip's CRCs and, where the list records one,
the sha256) and resumably (see `download`). A cached file is verified
each time it is used; a damaged one is moved aside (`<file>.corrupt`) and
fetched again. One writer at a time: in a multi-process job, fetch on one
process before the others read.
"""

import dataclasses
import difflib
import os
import re
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
from etils import epath

from vit_jax import commands
from vit_jax.weights import download

BASE_ENV = 'VIT_JAX_CHECKPOINT_BASE'
CACHE_ENV = 'VIT_JAX_CACHE'
DEFAULT_CACHE = '~/.cache/vit_jax'
HTTPS_MIRROR = 'https://storage.googleapis.com'

_VIT_BUCKET, _MIXER_BUCKET = 'vit_models', 'mixer_models'
_IMAGENET21K, _IMAGENET2012 = 'imagenet21k', 'imagenet2012'
_MAX_SUGGESTIONS = 5
# Classes of the head a file trained last on this dataset has: ImageNet-21k's
# 21,843 (the ViT paper's, AugReg's and Mixer's files alike, as timm's
# configs for them record) and ImageNet-1k's 1,000. Others: not known
# without reading the file.
DATASET_CLASSES = {_IMAGENET21K: 21843, _IMAGENET2012: 1000}


@dataclasses.dataclass(frozen=True)
class Released:
  """One released checkpoint file.

  Attributes:
    name: the released name, '<folder>/<file stem>'.
    model: the variant as our model families name it ('ViT-B_16',
      'R50+ViT-B_16', 'Mixer-B_16').
    datasets: what it was trained on, in order (TFDS names; a second entry
      is a fine-tune).
    resolution: native input size in pixels.
    bucket: the public bucket ('vit_models' or 'mixer_models').
    path: the file inside the bucket.
    sha256: hex digest the download must have; None: not recorded.
    size: bytes the file must have; None: not recorded (the source's size
      is checked either way).
  """
  name: str
  model: str
  datasets: Tuple[str, ...]
  resolution: int
  bucket: str
  path: str
  sha256: Optional[str] = None
  size: Optional[int] = None

  @property
  def num_classes(self) -> Optional[int]:
    """The head's classes, from the last dataset; None: not known."""
    return DATASET_CLASSES.get(self.datasets[-1])

  @property
  def url(self) -> str:
    return f'gs://{self.bucket}/{self.path}'

  @property
  def https_url(self) -> str:
    return f'{HTTPS_MIRROR}/{self.bucket}/{self.path}'


CheckpointUnavailableError = download.CheckpointUnavailableError
DownloadMismatchError = download.DownloadMismatchError


# ------------------------------------------------------------ the list --

def _entry(folder: str, stem: str, model: str, datasets: Tuple[str, ...],
           resolution: int, bucket: str = _VIT_BUCKET) -> Released:
  return Released(name=f'{folder}/{stem}', model=model, datasets=datasets,
                  resolution=resolution, bucket=bucket,
                  path=f'{folder}/{stem}.npz')


_VIT_PAPER_MODELS = ('ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32',
                     'ViT-H_14', 'R50+ViT-B_16')
# Fine-tuned on ImageNet-1k at 384 px: all but ViT-H_14.
_VIT_PAPER_FINE_TUNED = ('ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32',
                         'R50+ViT-B_16')
_VIT_PAPER_FINE_TUNED_224 = ('ViT-B_16', 'ViT-L_16')


def _vit_paper() -> Tuple[Released, ...]:
  pretrained = tuple(
      _entry(_IMAGENET21K, model, model, (_IMAGENET21K,), 224)
      for model in _VIT_PAPER_MODELS)
  folder = f'{_IMAGENET21K}+{_IMAGENET2012}'
  fine_tuned = tuple(
      _entry(folder, model, model, (_IMAGENET21K, _IMAGENET2012), 384)
      for model in _VIT_PAPER_FINE_TUNED)
  fine_tuned_224 = tuple(
      _entry(folder, f'{model}-224', model, (_IMAGENET21K, _IMAGENET2012), 224)
      for model in _VIT_PAPER_FINE_TUNED_224)
  return pretrained + fine_tuned + fine_tuned_224


# AugReg file-name prefix -> our variant name.
AUGREG_MODELS: Dict[str, str] = {
    'Ti_16': 'ViT-Ti_16',
    'S_16': 'ViT-S_16',
    'S_32': 'ViT-S_32',
    'B_8': 'ViT-B_8',
    'B_16': 'ViT-B_16',
    'B_32': 'ViT-B_32',
    'L_16': 'ViT-L_16',
    'R_Ti_16': 'R+ViT-Ti_16',
    'R26_S_32': 'R26+ViT-S_32',
    'R50_L_32': 'R50+ViT-L_32',
}
_AUGREG_UPSTREAM = {'i21k': _IMAGENET21K, 'i1k': _IMAGENET2012}
_AUGREG_RESOLUTION = 224  # Of every AugReg pre-training.
_NUMBER = r'\d+(?:\.\d+)?'
# The index's file stems: '<model>-<upstream>-<epochs>ep-lr_..-aug_..-wd_..-
# do_..-sd_..', and for a fine-tune '--<dataset>-steps_<k>k-lr_..-res_<px>'.
_AUGREG_STEM = re.compile(
    rf'(?P<model>{"|".join(sorted(AUGREG_MODELS, key=len, reverse=True))})'
    rf'-(?P<upstream>{"|".join(_AUGREG_UPSTREAM)})-\d+ep-lr_{_NUMBER}'
    rf'-aug_[a-z]+\d*-wd_{_NUMBER}-do_{_NUMBER}-sd_{_NUMBER}'
    rf'(?:--(?P<dataset>[a-z][a-z0-9_]*)-steps_\d+k-lr_{_NUMBER}'
    r'-res_(?P<resolution>\d+))?')
_AUGREG_FOLDER = 'augreg'

# The recommended pre-training per model and the learning rate of its
# ImageNet-1k fine-tune at 384 px (vision_transformer README's AugReg table).
_AUGREG_RECOMMENDED = (
    ('Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', '0.03'),
    ('S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0', '0.01'),
    ('S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0', '0.03'),
    ('B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0', '0.01'),
    ('B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0', '0.03'),
    ('L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0', '0.01'),
    ('R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0', '0.03'),
    ('R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0', '0.01'),
    ('R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1', '0.01'),
)


def parse_augreg_stem(stem: str) -> Optional[Released]:
  """The entry of an AugReg file stem, or None when it does not follow
  `gs://vit_models/augreg/index.csv`'s naming."""
  match = _AUGREG_STEM.fullmatch(stem)
  if not match:
    return None
  datasets = (_AUGREG_UPSTREAM[match['upstream']],)
  resolution = _AUGREG_RESOLUTION
  if match['dataset']:
    datasets += (match['dataset'],)
    resolution = int(match['resolution'])
  return _entry(_AUGREG_FOLDER, stem, AUGREG_MODELS[match['model']], datasets,
                resolution)


def _augreg() -> Tuple[Released, ...]:
  entries = []
  for stem, fine_tune_lr in _AUGREG_RECOMMENDED:
    fine_tuned = f'{stem}--{_IMAGENET2012}-steps_20k-lr_{fine_tune_lr}-res_384'
    entries += [parse_augreg_stem(stem), parse_augreg_stem(fine_tuned)]
  return tuple(entries)


def _sam() -> Tuple[Released, ...]:
  return tuple(_entry('sam', model, model, (_IMAGENET2012,), 224)
               for model in ('ViT-B_16', 'ViT-B_32'))


def _mixer() -> Tuple[Released, ...]:
  return tuple(
      _entry(folder, model, model, (dataset,), 224, bucket=_MIXER_BUCKET)
      for folder, dataset in (('imagenet21k', _IMAGENET21K),
                              ('imagenet1k', _IMAGENET2012))
      for model in ('Mixer-B_16', 'Mixer-L_16'))


_RELEASED: Tuple[Released, ...] = _vit_paper() + _augreg() + _sam() + _mixer()
_BY_NAME: Dict[str, Released] = {entry.name: entry for entry in _RELEASED}


def released() -> Sequence[Released]:
  """Every listed release, in a fixed order (ViT paper, AugReg, SAM,
  Mixer)."""
  return _RELEASED


def _lookup(name) -> Optional[Released]:
  if not isinstance(name, str):
    return None  # A path object is a file, not a name.
  if name in _BY_NAME:
    return _BY_NAME[name]
  folder, _, stem = name.partition('/')
  return parse_augreg_stem(stem) if folder == _AUGREG_FOLDER else None


def is_released_name(name: str) -> bool:
  """Whether `name` names a released file (listed, or an AugReg stem)."""
  return _lookup(name) is not None


def resolve(name: str) -> Released:
  """The entry of a released name.

  Raises:
    ValueError: `name` is neither listed nor an AugReg file stem; the
      message lists the closest released names (`did_you_mean`).
  """
  entry = _lookup(name)
  if entry is not None:
    return entry
  hint = did_you_mean(name) or (
      f'{commands.python_m("vit_jax.cli.weights")} lists them.')
  raise ValueError(f'{name!r} is not a released checkpoint name: {hint}')


def did_you_mean(name) -> str:
  """The released names closest to the unknown `name`, as a sentence
  ('did you mean a, b?'), with the AugReg naming for an 'augreg/' name;
  '' when nothing is close. What every program says of a checkpoint it
  cannot find (`formats.find`) and `resolve` of an unknown name."""
  close = difflib.get_close_matches(str(name), list(_BY_NAME),
                                    n=_MAX_SUGGESTIONS)
  hint = f'did you mean {", ".join(close)}?' if close else ''
  if str(name).startswith(f'{_AUGREG_FOLDER}/'):
    hint += (' AugReg names are augreg/<file stem>, stems as in '
             f'gs://{_VIT_BUCKET}/{_AUGREG_FOLDER}/index.csv.')
  return hint.strip()


# ----------------------------------------------------------- fetching --

def source_path(entry: Released, base: Optional[str] = None) -> epath.Path:
  """Where `entry` is read from: `base` (a directory laid out like the
  buckets), else $VIT_JAX_CHECKPOINT_BASE, else its gs:// bucket.

  Raises:
    ValueError: `base` is an http(s) URL, which epath cannot open.
  """
  base = base or os.environ.get(BASE_ENV)
  if not base:
    return epath.Path(entry.url)
  if base.startswith(('http://', 'https://')):
    raise ValueError(
        f'{BASE_ENV}={base}: etils.epath cannot read http(s) URLs; set it to '
        'a directory laid out like the buckets (or a gs:// path), or unset '
        'it to read the public buckets')
  return epath.Path(base) / entry.bucket / entry.path


def cache_path(entry: Released, cache_dir=None) -> epath.Path:
  """Where `entry` is kept: `cache_dir`, else $VIT_JAX_CACHE, else
  ~/.cache/vit_jax; then `<bucket>/<path>`."""
  return cache_root(cache_dir) / entry.bucket / entry.path


def cache_root(cache_dir=None) -> epath.Path:
  """The cache directory: `cache_dir`, else $VIT_JAX_CACHE, else
  ~/.cache/vit_jax."""
  root = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
  return epath.Path(root).expanduser()


def fetch(name: str, *, cache_dir=None) -> epath.Path:
  """The local path of the released file `name`, downloaded once.

  Args:
    name: a released name (see `released()`), e.g. 'imagenet21k/ViT-B_16'.
    cache_dir: where files are kept; default $VIT_JAX_CACHE or
      ~/.cache/vit_jax.

  Raises:
    ValueError: an unknown name (with the closest released names), or an
      http(s) $VIT_JAX_CHECKPOINT_BASE.
    CheckpointUnavailableError: the source cannot be read; the message names
      the URL and the cache path to put the file at by hand.
    DownloadMismatchError: the download is not the file it must be.
  """
  return fetch_released(resolve(name), cache_dir=cache_dir)


def fetch_released(entry: Released, *, cache_dir=None,
                   base: Optional[str] = None) -> epath.Path:
  """`fetch` for an entry; `base` as in `source_path`."""
  target = cache_path(entry, cache_dir)
  if download.usable(target, entry.size):
    return target
  source = source_path(entry, base)
  download.download(
      source, target, size=entry.size, sha256=entry.sha256,
      offline_hint=(f'Offline? Download {entry.https_url} elsewhere and put '
                    f'it at {target}, or set {BASE_ENV} to a directory laid '
                    'out like the buckets.'))
  logging.info('Fetched %s to %s', entry.name, target)
  return target
