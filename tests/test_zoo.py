"""Released checkpoints by name (vit_jax/weights/zoo.py, vit_jax/cli/weights.py):
the list, name resolution, and fetching from a local directory laid out like
the public buckets (they are unreachable here): once, atomically, verified
and resumably."""

import dataclasses
import hashlib
import pathlib
import re

from absl import flags
from etils import epath
import numpy as np
import pytest

from vit_jax.cli import predict
from vit_jax.cli import weights
from vit_jax import models
from vit_jax.weights import download
from vit_jax.weights import pretrained
from vit_jax.weights import zoo

README = pathlib.Path(__file__).resolve().parent.parent / 'checkpoints' / (
    'README.md')
VIT = 'imagenet21k/ViT-B_16'
MIXER = 'imagenet21k/Mixer-B_16'
AUGREG_TI = 'augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0'
AUGREG_R50_L_FINE_TUNED = (
    'augreg/R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1'
    '--imagenet2012-steps_20k-lr_0.01-res_384')
# In the bucket's index but not in our list.
AUGREG_UNLISTED_I1K = (
    'augreg/S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0'
    '--imagenet2012-steps_20k-lr_0.01-res_224')
AUGREG_UNLISTED_PETS = (
    'augreg/R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1'
    '--oxford_iiit_pet-steps_0k-lr_0.003-res_384')


# ------------------------------------------------------------ the list --

def _vit_names(folder):
  """The file stems listed in gs://vit_models/<folder>."""
  return [e.name.split('/', 1)[1] for e in zoo.released()
          if e.bucket == 'vit_models' and e.name.split('/', 1)[0] == folder]


def test_the_list_has_exactly_the_documented_files():
  assert _vit_names('imagenet21k') == ['ViT-B_16', 'ViT-B_32', 'ViT-L_16',
                                   'ViT-L_32', 'ViT-H_14', 'R50+ViT-B_16']
  assert _vit_names('imagenet21k+imagenet2012') == [
      'ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'R50+ViT-B_16',
      'ViT-B_16-224', 'ViT-L_16-224']
  assert _vit_names('sam') == ['ViT-B_16', 'ViT-B_32']
  mixer = [e.name for e in zoo.released() if e.bucket == 'mixer_models']
  assert mixer == ['imagenet21k/Mixer-B_16', 'imagenet21k/Mixer-L_16',
                   'imagenet1k/Mixer-B_16', 'imagenet1k/Mixer-L_16']
  augreg = [e for e in zoo.released() if e.name.startswith('augreg/')]
  assert len(augreg) == 18
  assert sorted({e.model for e in augreg}) == [
      'R+ViT-Ti_16', 'R26+ViT-S_32', 'R50+ViT-L_32', 'ViT-B_16', 'ViT-B_32',
      'ViT-L_16', 'ViT-S_16', 'ViT-S_32', 'ViT-Ti_16']
  # Each recommended pre-training comes with its ImageNet fine-tune.
  for pretrain, fine_tuned in zip(augreg[::2], augreg[1::2], strict=True):
    assert fine_tuned.name.startswith(pretrain.name + '--imagenet2012-')
    assert (pretrain.resolution, fine_tuned.resolution) == (224, 384)
  assert len(zoo.released()) == 6 + 7 + 18 + 2 + 4


def test_every_entry_is_consistent():
  names = [e.name for e in zoo.released()]
  assert len(set(names)) == len(names)
  for entry in zoo.released():
    assert entry.path == entry.name + '.npz'
    assert entry.url == f'gs://{entry.bucket}/{entry.name}.npz'
    assert entry.https_url == (
        f'https://storage.googleapis.com/{entry.bucket}/{entry.name}.npz')
    assert entry.bucket in ('vit_models', 'mixer_models')
    # The model name is one our families build, spelled as they spell it.
    assert models.resolve(entry.model)[1] == entry.model
    assert zoo.resolve(entry.name) is entry
    assert zoo.is_released_name(entry.name)


@pytest.mark.parametrize('name,model,datasets,resolution,url', [
    (VIT, 'ViT-B_16', ('imagenet21k',), 224,
     'gs://vit_models/imagenet21k/ViT-B_16.npz'),
    ('imagenet21k+imagenet2012/R50+ViT-B_16', 'R50+ViT-B_16',
     ('imagenet21k', 'imagenet2012'), 384,
     'gs://vit_models/imagenet21k+imagenet2012/R50+ViT-B_16.npz'),
    ('imagenet21k+imagenet2012/ViT-L_16-224', 'ViT-L_16',
     ('imagenet21k', 'imagenet2012'), 224,
     'gs://vit_models/imagenet21k+imagenet2012/ViT-L_16-224.npz'),
    (AUGREG_TI, 'ViT-Ti_16', ('imagenet21k',), 224,
     f'gs://vit_models/{AUGREG_TI}.npz'),
    (AUGREG_R50_L_FINE_TUNED, 'R50+ViT-L_32', ('imagenet21k', 'imagenet2012'),
     384, f'gs://vit_models/{AUGREG_R50_L_FINE_TUNED}.npz'),
    (AUGREG_UNLISTED_I1K, 'ViT-S_16', ('imagenet2012', 'imagenet2012'), 224,
     f'gs://vit_models/{AUGREG_UNLISTED_I1K}.npz'),
    (AUGREG_UNLISTED_PETS, 'R26+ViT-S_32', ('imagenet21k', 'oxford_iiit_pet'),
     384, f'gs://vit_models/{AUGREG_UNLISTED_PETS}.npz'),
    ('augreg/R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0',
     'R+ViT-Ti_16', ('imagenet21k',), 224,
     'gs://vit_models/augreg/R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-'
     'do_0.0-sd_0.0.npz'),
    ('sam/ViT-B_32', 'ViT-B_32', ('imagenet2012',), 224,
     'gs://vit_models/sam/ViT-B_32.npz'),
    (MIXER, 'Mixer-B_16', ('imagenet21k',), 224,
     'gs://mixer_models/imagenet21k/Mixer-B_16.npz'),
    ('imagenet1k/Mixer-L_16', 'Mixer-L_16', ('imagenet2012',), 224,
     'gs://mixer_models/imagenet1k/Mixer-L_16.npz'),
])
def test_resolves_every_kind_of_name(name, model, datasets, resolution, url):
  entry = zoo.resolve(name)
  assert (entry.name, entry.model, entry.datasets, entry.resolution,
          entry.url) == (name, model, datasets, resolution, url)
  assert zoo.is_released_name(name)


@pytest.mark.parametrize('name', [
    'checkpoints/ViT-B_16.npz',
    'imagenet21k/ViT-B_16.npz',
    'ViT-B_16',
    'imagenet21k+imagenet2012/ViT-H_14',  # Never released.
    'augreg/Ti_16',
    'augreg/X_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0',
    'augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz',
    'gs://vit_models/imagenet21k/ViT-B_16.npz',
    '',
])
def test_other_strings_are_not_released_names(name):
  assert not zoo.is_released_name(name)
  with pytest.raises(ValueError, match='is not a released checkpoint name'):
    zoo.resolve(name)


def test_a_path_object_is_never_a_name():
  assert not zoo.is_released_name(epath.Path(VIT))
  assert not zoo.is_released_name(pathlib.Path(VIT))


def test_unknown_name_lists_close_matches():
  with pytest.raises(ValueError) as error:
    zoo.fetch('imagenet21k/ViT-B16')
  message = str(error.value)
  assert message.startswith("'imagenet21k/ViT-B16' is not a released")
  assert 'did you mean imagenet21k/ViT-B_16, ' in message


def test_a_misspelt_augreg_name_explains_the_pattern():
  with pytest.raises(ValueError, match=r'augreg/<file stem>.*index\.csv'):
    zoo.resolve('augreg/Ti_16-i21k-300ep-lr_0.001-aug_none')


def test_augreg_stems_parse_back_to_their_entries():
  for entry in zoo.released():
    if entry.name.startswith('augreg/'):
      assert zoo.parse_augreg_stem(entry.name[len('augreg/'):]) == entry
  assert zoo.parse_augreg_stem('B_16-i21k-300ep') is None


# --------------------------------------------------- a bucket stand-in --

def _tiny_released_vit(rng):
  """A 2-block ViT (width 8, 4-pixel patches, 8x8 images, 10 classes) in
  the ViT paper's released key layout (old block numbering)."""
  shapes = {
      'embedding/kernel': (4, 4, 3, 8), 'embedding/bias': (8,),
      'cls': (1, 1, 8),
      'Transformer/posembed_input/pos_embedding': (1, 5, 8),
      'Transformer/encoder_norm/scale': (8,),
      'Transformer/encoder_norm/bias': (8,),
      'head/kernel': (8, 10), 'head/bias': (10,),
  }
  for i in range(2):
    block = f'Transformer/encoderblock_{i}'
    for norm in ('LayerNorm_0', 'LayerNorm_2'):
      shapes[f'{block}/{norm}/scale'] = shapes[f'{block}/{norm}/bias'] = (8,)
    attention = f'{block}/MultiHeadDotProductAttention_1'
    for projection in ('query', 'key', 'value'):
      shapes[f'{attention}/{projection}/kernel'] = (8, 2, 4)
      shapes[f'{attention}/{projection}/bias'] = (2, 4)
    shapes[f'{attention}/out/kernel'] = (2, 4, 8)
    shapes[f'{attention}/out/bias'] = (8,)
    shapes[f'{block}/MlpBlock_3/Dense_0/kernel'] = (8, 16)
    shapes[f'{block}/MlpBlock_3/Dense_0/bias'] = (16,)
    shapes[f'{block}/MlpBlock_3/Dense_1/kernel'] = (16, 8)
    shapes[f'{block}/MlpBlock_3/Dense_1/bias'] = (8,)
  return {key: rng.standard_normal(shape).astype(np.float32)
          for key, shape in shapes.items()}


def _tiny_released_mixer(rng):
  shapes = {'stem/kernel': (4, 4, 3, 8), 'stem/bias': (8,),
            'MixerBlock_0/LayerNorm_0/scale': (8,),
            'MixerBlock_0/token_mixing/Dense_0/kernel': (4, 6),
            'pre_head_layer_norm/scale': (8,), 'head/kernel': (8, 10)}
  return {key: rng.standard_normal(shape).astype(np.float32)
          for key, shape in shapes.items()}


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """A directory laid out like gs://vit_models and gs://mixer_models, set as
  the base; the cache is a fresh directory. Returns (base, cache)."""
  base, cache = tmp_path / 'bucket', tmp_path / 'cache'
  rng = np.random.default_rng(0)
  for name, arrays in ((VIT, _tiny_released_vit(rng)),
                       (AUGREG_UNLISTED_I1K, _tiny_released_vit(rng)),
                       (MIXER, _tiny_released_mixer(rng))):
    entry = zoo.resolve(name)
    path = base / entry.bucket / entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
  monkeypatch.setenv(zoo.BASE_ENV, str(base))
  monkeypatch.setenv(zoo.CACHE_ENV, str(cache))
  return base, cache


def _source(base, name):
  entry = zoo.resolve(name)
  return base / entry.bucket / entry.path


def _files(directory):
  return sorted(str(p.relative_to(directory))
                for p in pathlib.Path(directory).rglob('*') if p.is_file())


@pytest.mark.parametrize('name', [VIT, AUGREG_UNLISTED_I1K, MIXER])
def test_first_fetch_copies_into_the_cache(bucket, name):
  base, cache = bucket
  path = zoo.fetch(name)
  entry = zoo.resolve(name)
  assert path == epath.Path(cache) / entry.bucket / entry.path
  assert path.read_bytes() == _source(base, name).read_bytes()
  assert _files(cache) == [f'{entry.bucket}/{entry.path}']  # No .part left.


def test_the_fetched_file_loads_as_a_vit(bucket):
  base, _ = bucket
  params = pretrained.load_params(zoo.fetch(VIT))
  with np.load(_source(base, VIT)) as source:
    expected = source['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel']
  np.testing.assert_array_equal(
      params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']
      ['kernel'], expected)


def test_second_fetch_does_not_touch_the_source(bucket, monkeypatch):
  base, _ = bucket
  first = zoo.fetch(VIT)
  content = first.read_bytes()
  _source(base, VIT).unlink()
  monkeypatch.setattr(download, '_copy_range', _must_not_be_called)
  assert zoo.fetch(VIT) == first
  assert first.read_bytes() == content


def _must_not_be_called(*args):
  raise AssertionError(f'the source was read: {args}')


def _recording(copies, copy_range):
  def copy(source, part, offset):
    copied = copy_range(source, part, offset)
    copies.append((offset, copied))
    return copied
  return copy


def test_a_torn_part_resumes_from_its_length(bucket, monkeypatch):
  base, cache = bucket
  data = _source(base, VIT).read_bytes()
  target = zoo.cache_path(zoo.resolve(VIT))
  target.parent.mkdir(parents=True)
  torn = len(data) // 3
  (target.parent / (target.name + '.part')).write_bytes(data[:torn])
  copies = []
  monkeypatch.setattr(download, '_copy_range',
                      _recording(copies, download._copy_range))
  assert zoo.fetch(VIT).read_bytes() == data
  assert copies == [(torn, len(data) - torn)]  # Only the rest was read.
  assert _files(cache) == [f'vit_models/{VIT}.npz']


def test_an_interrupted_download_keeps_its_part_and_resumes(bucket,
                                                            monkeypatch):
  base, cache = bucket
  data = _source(base, VIT).read_bytes()
  half = len(data) // 2
  copy_range = download._copy_range

  def interrupted(source, part, offset):
    with part.open('ab') as f:
      f.write(source.read_bytes()[offset:half])
    raise OSError('connection reset by peer')

  monkeypatch.setattr(download, '_copy_range', interrupted)
  part = f'{cache}/vit_models/{VIT}.npz.part'
  with pytest.raises(zoo.CheckpointUnavailableError,
                     match=r'connection reset by peer.*again resumes '
                     + re.escape(part)):
    zoo.fetch(VIT)
  assert pathlib.Path(part).read_bytes() == data[:half]
  copies = []
  monkeypatch.setattr(download, '_copy_range', _recording(copies, copy_range))
  assert zoo.fetch(VIT).read_bytes() == data
  assert copies == [(half, len(data) - half)]
  assert _files(cache) == [f'vit_models/{VIT}.npz']


def test_a_part_longer_than_the_source_starts_over(bucket):
  base, _ = bucket
  data = _source(base, VIT).read_bytes()
  target = zoo.cache_path(zoo.resolve(VIT))
  target.parent.mkdir(parents=True)
  (target.parent / (target.name + '.part')).write_bytes(b'x' * (len(data) + 1))
  assert zoo.fetch(VIT).read_bytes() == data


def test_a_source_that_changes_size_mid_download_is_refused(bucket,
                                                            monkeypatch):
  _, cache = bucket
  copy_range = download._copy_range

  def growing(source, part, offset):
    with source.open('ab') as f:  # After fetch read its size.
      f.write(b'\0' * 7)
    return copy_range(source, part, offset)

  monkeypatch.setattr(download, '_copy_range', growing)
  with pytest.raises(zoo.DownloadMismatchError,
                     match='but it has .* change during the download'):
    zoo.fetch(VIT)
  assert _files(cache) == []


def test_a_recorded_size_must_match(bucket):
  _, cache = bucket
  entry = dataclasses.replace(zoo.resolve(VIT), size=123)
  with pytest.raises(zoo.DownloadMismatchError, match='must have 123'):
    zoo.fetch_released(entry)
  assert _files(cache) == []


def test_a_recorded_sha256_must_match(bucket):
  base, cache = bucket
  entry = zoo.resolve(VIT)
  with pytest.raises(zoo.DownloadMismatchError, match='sha256'):
    zoo.fetch_released(dataclasses.replace(entry, sha256='0' * 64))
  assert _files(cache) == []
  data = _source(base, VIT).read_bytes()
  digest = hashlib.sha256(data).hexdigest().upper()  # Either case.
  path = zoo.fetch_released(dataclasses.replace(entry, sha256=digest))
  assert path.read_bytes() == data


def test_a_cached_file_of_the_wrong_recorded_size_is_fetched_again(bucket):
  base, _ = bucket
  data = _source(base, VIT).read_bytes()
  entry = dataclasses.replace(zoo.resolve(VIT), size=len(data))
  target = zoo.cache_path(entry)
  target.parent.mkdir(parents=True)
  target.write_bytes(b'stale')
  assert zoo.fetch_released(entry).read_bytes() == data


# ------------------------------------------------- damaged files --

def _cached(name):
  """The cache path of `name`, its directory made."""
  target = zoo.cache_path(zoo.resolve(name))
  target.parent.mkdir(parents=True, exist_ok=True)
  return target


def _flip_byte_of_data(data):
  """`data` (an uncompressed .npz) with one byte of its last array's values
  changed: the zip structure is intact, that member's CRC is not."""
  index = data.rindex(b'PK\x01\x02') - 8  # Inside the last member's data.
  return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]


@pytest.mark.parametrize('damage', ['truncated', 'flipped byte', 'garbage'])
def test_a_damaged_cached_file_is_moved_aside_and_fetched_again(
    bucket, damage, monkeypatch):
  base, cache = bucket
  data = _source(base, VIT).read_bytes()
  target = _cached(VIT)
  damaged = {'truncated': data[:len(data) // 2],
             'flipped byte': _flip_byte_of_data(data),
             'garbage': b'\x80\x04' * (len(data) // 2)}[damage]
  target.write_bytes(damaged)
  assert zoo.fetch(VIT).read_bytes() == data
  assert (target.parent / f'{target.name}.corrupt').read_bytes() == damaged
  assert _files(cache) == [f'vit_models/{VIT}.npz',
                           f'vit_models/{VIT}.npz.corrupt']
  # Once whole, it is used as it is.
  monkeypatch.setattr(download, '_copy_range', _must_not_be_called)
  assert zoo.fetch(VIT).read_bytes() == data


def test_a_damaged_cached_file_that_cannot_be_moved_is_named(
    bucket, monkeypatch):
  target = _cached(VIT)
  target.write_bytes(b'not an npz')

  def read_only(*args):
    raise PermissionError(13, 'Permission denied')
  monkeypatch.setattr(type(target), 'replace', read_only)
  with pytest.raises(zoo.DownloadMismatchError) as error:
    zoo.fetch(VIT)
  assert str(error.value) == (
      f'the cached {target} is damaged (not a whole zip archive (File is not '
      'a zip file)) and cannot be moved aside ([Errno 13] Permission '
      'denied): delete it and fetch again')


def _part(target):
  return target.parent / f'{target.name}.part'


def test_a_same_size_garbage_part_is_discarded(bucket, monkeypatch):
  base, cache = bucket
  data = _source(base, VIT).read_bytes()
  target = _cached(VIT)
  _part(target).write_bytes(b'x' * len(data))
  copies = []
  monkeypatch.setattr(download, '_copy_range',
                      _recording(copies, download._copy_range))
  assert zoo.fetch(VIT).read_bytes() == data
  # Nothing was left to append; it did not verify: all of it again.
  assert copies == [(len(data), 0), (0, len(data))]
  assert _files(cache) == [f'vit_models/{VIT}.npz']


def test_a_part_of_other_content_is_not_completed_into_a_bad_file(
    bucket, monkeypatch):
  base, cache = bucket
  data = _source(base, VIT).read_bytes()
  other = _source(base, AUGREG_UNLISTED_I1K).read_bytes()  # Same layout.
  assert len(other) == len(data) and other != data
  target = _cached(VIT)
  torn = len(data) // 2
  _part(target).write_bytes(other[:torn])
  copies = []
  monkeypatch.setattr(download, '_copy_range',
                      _recording(copies, download._copy_range))
  assert zoo.fetch(VIT).read_bytes() == data
  assert copies == [(torn, len(data) - torn), (0, len(data))]
  assert _files(cache) == [f'vit_models/{VIT}.npz']


@pytest.mark.parametrize('content,reason', [
    (b'\x80\x04garbage' * 100, 'not a whole zip archive'),
    ('flipped byte', 'fails its CRC-32 check'),
])
def test_a_corrupt_source_is_a_corrupt_download(bucket, content, reason):
  base, cache = bucket
  source = _source(base, VIT)
  if content == 'flipped byte':
    content = _flip_byte_of_data(source.read_bytes())
  source.write_bytes(content)
  with pytest.raises(zoo.DownloadMismatchError) as error:
    pretrained.load(VIT)
  message = str(error.value)
  assert message.startswith(f'corrupt download of {source}: ')
  assert reason in message and message.endswith('; deleted')
  assert 'pickle' not in message
  assert _files(cache) == []


def test_every_program_suggests_close_names(capsys, tmp_path):
  flag_values = flags.FlagValues()
  predict.define_flags(flag_values)
  image = tmp_path / 'image.png'
  image.write_bytes(b'')
  argv = flag_values(['predict', '--checkpoint=imagenet21k/ViT-B_17',
                      str(image)])
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argv, flag_values)
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: checkpoint imagenet21k/ViT-B_17 does not '
                          'exist: give ')
  assert error.rstrip().endswith(
      '; did you mean imagenet21k/ViT-B_16, imagenet21k/ViT-L_16, '
      'imagenet21k/ViT-H_14, imagenet21k/ViT-B_32, imagenet21k/R50+ViT-B_16?')
  assert len(error.splitlines()) == 1


def test_an_unreachable_source_names_the_url_and_the_cache_path(
    bucket, tmp_path, monkeypatch):
  _, cache = bucket
  monkeypatch.setenv(zoo.BASE_ENV, str(tmp_path / 'offline'))
  with pytest.raises(zoo.CheckpointUnavailableError) as error:
    zoo.fetch(VIT)
  assert isinstance(error.value, FileNotFoundError)
  message = str(error.value)
  assert f'{tmp_path}/offline/vit_models/{VIT}.npz' in message
  assert f'https://storage.googleapis.com/vit_models/{VIT}.npz' in message
  assert f'put it at {cache}/vit_models/{VIT}.npz' in message
  assert _files(cache) == []


class _OfflineBucket:
  """A gs:// source as tf.io.gfile reports it without a network."""

  def stat(self):
    raise RuntimeError("Could not resolve host: www.googleapis.com\n\t when "
                       'reading metadata')

  def __str__(self):
    return 'gs://vit_models/imagenet21k/ViT-B_16.npz'


def test_a_backend_error_is_reported_in_one_line(bucket, monkeypatch):
  monkeypatch.setattr(zoo, 'source_path',
                      lambda entry, base=None: _OfflineBucket())
  with pytest.raises(zoo.CheckpointUnavailableError) as error:
    zoo.fetch(VIT)
  message = str(error.value)
  assert message.startswith(
      'cannot read gs://vit_models/imagenet21k/ViT-B_16.npz (RuntimeError: '
      'Could not resolve host: www.googleapis.com when reading metadata). '
      'Offline? Download https://storage.googleapis.com/vit_models/')
  assert '\n' not in message


def test_an_https_base_is_refused_with_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv(zoo.BASE_ENV, 'https://storage.googleapis.com')
  with pytest.raises(ValueError,
                     match='cannot read http.*directory laid out like'):
    zoo.fetch(VIT)


def test_default_locations(monkeypatch):
  monkeypatch.delenv(zoo.BASE_ENV, raising=False)
  monkeypatch.delenv(zoo.CACHE_ENV, raising=False)
  entry = zoo.resolve(MIXER)
  assert str(zoo.source_path(entry)) == (
      'gs://mixer_models/imagenet21k/Mixer-B_16.npz')
  assert zoo.cache_path(entry) == (
      epath.Path('~/.cache/vit_jax').expanduser() /
      'mixer_models/imagenet21k/Mixer-B_16.npz')
  assert zoo.cache_path(entry, '/c') == epath.Path(
      '/c/mixer_models/imagenet21k/Mixer-B_16.npz')


# ------------------------------------------------------------ program --

def test_the_readme_table_is_the_generated_one():
  assert weights.table_in(README.read_text()) == (
      weights.markdown_table()), (
          'regenerate: python -m vit_jax.cli.weights '
          '--update_readme=checkpoints/README.md')


def test_markdown_table_rows():
  lines = weights.markdown_table().splitlines()
  assert len(lines) == 2 + len(zoo.released())
  assert lines[2] == ('| `imagenet21k/ViT-B_16` | ViT-B_16 | imagenet21k | '
                      '224 | `gs://vit_models/imagenet21k/ViT-B_16.npz` |')
  assert ('| `imagenet21k+imagenet2012/ViT-L_16-224` | ViT-L_16 | '
          'imagenet21k -> imagenet2012 | 224 | '
          '`gs://vit_models/imagenet21k+imagenet2012/ViT-L_16-224.npz` |'
          in lines)


def test_update_readme_rewrites_only_the_table(tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text(f'intro\n{weights.BEGIN_MARKER}\nold\n'
                    f'{weights.END_MARKER}\nend\n')
  weights.update_readme(readme)
  assert readme.read_text() == (
      f'intro\n{weights.BEGIN_MARKER}\n{weights.markdown_table()}\n'
      f'{weights.END_MARKER}\nend\n')
  with pytest.raises(ValueError, match='no .* pair'):
    weights.with_table('no markers', 'table')


def test_the_program_lists_and_fetches(bucket, capsys):
  _, cache = bucket
  listed = weights.run(names=True)
  assert listed.splitlines() == [e.name for e in zoo.released()]
  fetched = weights.run(fetch=VIT)
  assert fetched == f'{cache}/vit_models/{VIT}.npz'
  assert capsys.readouterr().out == f'{listed}\n{fetched}\n'


AUGREG_CIFAR = ('augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-'
                'sd_0.0--cifar100-steps_2k-lr_0.01-res_384')


def test_the_listing_shows_model_resolution_classes_and_cache(bucket):
  _, cache = bucket
  entries = [zoo.resolve(name) for name in
             (VIT, 'imagenet21k+imagenet2012/ViT-B_16', MIXER,
              AUGREG_UNLISTED_I1K, AUGREG_CIFAR)]
  before = weights.listing(entries).splitlines()
  path = zoo.fetch(VIT)
  megabytes = path.stat().length / 1e6
  assert before[1].split() == ['ViT-B_16', '224', '21843', '-', VIT]
  size = f'{megabytes:.1f} MB'.rjust(6)
  assert weights.listing(entries).splitlines() == [
      'model        px  classes  cached  name',
      f'ViT-B_16    224    21843  {size}  {VIT}',
      'ViT-B_16    384     1000       -  imagenet21k+imagenet2012/ViT-B_16',
      f'Mixer-B_16  224    21843       -  {MIXER}',
      f'ViT-S_16    224     1000       -  {AUGREG_UNLISTED_I1K}',
      f'ViT-B_16    384        ?       -  {AUGREG_CIFAR}',
      f'cached: in {cache} ("-": fetched on first use, or now by '
      '--fetch=NAME)']


def test_the_program_reports_an_unknown_name_in_one_line(capsys):
  flag_values = flags.FlagValues()
  weights.define_flags(flag_values)
  flag_values(['checkpoints', '--fetch=imagenet21k/ViT-B16'])
  with pytest.raises(SystemExit) as exit_info:
    weights.main(['checkpoints'], flag_values)
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith("error: 'imagenet21k/ViT-B16' is not a released")
  assert len(error.splitlines()) == 1
