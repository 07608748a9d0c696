"""The registry of weight formats (`vit_jax.weights.formats`): which format
a source is, the error for a source that is none, and a format added at run
time loading through `weights.load`."""

import numpy as np
import pytest

from tests import helpers
from tests import timm_fixtures
from vit_jax import models
from vit_jax import weights
from vit_jax.weights import formats
from vit_jax.weights import npz
from vit_jax.weights import sidecar
from vit_jax.weights import timm_hub

RELEASED_NAME = 'imagenet21k/ViT-B_16'


@pytest.fixture(scope='module')
def vit_params():
  return helpers.quick_random_params(helpers.tiny_model(),
                                     helpers.TINY_IMAGE_SIZE)


@pytest.fixture
def sources(tmp_path, monkeypatch, vit_params):
  """One source of each built-in format, by the format's name."""
  monkeypatch.chdir(tmp_path)  # No file is called like the released name.
  npz_path = tmp_path / 'model.npz'
  weights.save_npz(vit_params, npz_path)
  return {
      'npz': [npz_path, str(npz_path)],
      'timm': [timm_fixtures.write_family(tmp_path / 'hub', 'deit'),
               'hf-hub:timm/vit_base_patch16_224.augreg_in1k'],
      'timm name': ['vit_base_patch16_224.augreg_in1k',
                    'timm/vit_base_patch16_224.augreg_in1k',
                    'vit_small_patch14_reg4_dinov2'],
      'released': [RELEASED_NAME,
                   'augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-'
                   'sd_0.0'],
  }


def test_the_built_in_formats_in_the_order_they_are_asked():
  assert [f.name for f in formats.formats()] == ['npz', 'timm', 'timm name',
                                                  'released']


def test_each_format_recognises_its_sources_and_no_other(sources):
  for name, its_sources in sources.items():
    for source in its_sources:
      recognised_by = [f.name for f in formats.formats()
                       if f.recognises(source)]
      assert recognised_by == [name], source
      assert formats.find(source).name == name


def test_a_source_of_no_format_names_every_format(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    formats.find(tmp_path / 'nope.npz')
  assert str(error.value) == (
      f'checkpoint {tmp_path / "nope.npz"} does not exist: give an .npz '
      'file, a timm checkpoint (hf-hub:ORG/NAME or a directory with '
      'config.json), a timm name (e.g. vit_base_patch16_224.augreg_in1k) '
      'or the name of a released file')


def test_an_empty_directory_is_no_timm_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist: give'):
    weights.load(tmp_path)


def test_the_npz_format_reads_arrays_and_sidecar(tmp_path, vit_params):
  path = tmp_path / 'model.npz'
  weights.save_npz(vit_params, path, model=helpers.tiny_model(),
                   class_names=[str(i) for i in range(10)])
  read = formats.read(path)
  assert read.model_family is models.families()[0]
  assert read.stored.class_names == tuple(str(i) for i in range(10))
  assert read.stored_in == str(sidecar.path_for(path))
  np.testing.assert_array_equal(read.params['head']['kernel'],
                                vit_params['head']['kernel'])


def test_the_timm_format_stores_what_config_json_says(tmp_path):
  directory = timm_fixtures.write_family(tmp_path, 'deit')
  hub = timm_hub.read(directory)
  read = formats.read(directory)
  assert read.model_family.name == 'vit'
  assert read.stored.model_kwargs == hub.model_kwargs
  assert read.stored.preprocessing == hub.preprocessing
  assert read.stored.image_size == hub.image_size
  assert read.stored_in == f'the config of {directory}'


# --------------------------------------------- a format added at run time --

_TOY_PREFIX = 'toy:'
_TOY_PREPROCESSING = models.Preprocessing(mean=(1.0, 2.0, 3.0),
                                          std=(4.0, 5.0, 6.0))


class _ToyFormat(formats.WeightFormat):
  """Weights kept in memory under 'toy:NAME'."""
  name = 'toy'
  sources = 'a toy:NAME'

  def __init__(self, params):
    self._params = params

  def recognises(self, source) -> bool:
    return str(source).startswith(_TOY_PREFIX)

  def read(self, source) -> formats.Weights:
    model_family = models.families()[0]
    stored = sidecar.Sidecar(family=model_family.name, model_kwargs={},
                             preprocessing=_TOY_PREPROCESSING,
                             class_names=tuple('abcdefghij'))
    return formats.Weights(str(source), model_family, self._params, stored,
                           f'the toy store of {source}')


@pytest.fixture
def toy_format(vit_params):
  toy = _ToyFormat(vit_params)
  formats.register(toy)
  yield toy
  formats.unregister(toy.name)
  assert toy not in formats.formats()


def test_a_registered_format_loads_through_load(toy_format, vit_params):
  loaded = weights.load('toy:tiny')
  assert loaded.image_size == helpers.TINY_IMAGE_SIZE
  assert loaded.class_names == tuple('abcdefghij')
  assert loaded.preprocessing == _TOY_PREPROCESSING
  assert loaded.model.num_layers == 2 and loaded.model.hidden_size == 32
  images = helpers.random_images(2, helpers.TINY_IMAGE_SIZE)
  np.testing.assert_array_equal(
      loaded.model.apply({'params': loaded.params}, images, train=False),
      helpers.tiny_model().apply({'params': vit_params}, images,
                                 train=False))
  assert weights.load_preprocessing(
      'toy:tiny', helpers.tiny_model()) == _TOY_PREPROCESSING


def test_a_registered_format_is_named_when_nothing_fits(toy_format, tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=', the name of a released file or a toy:NAME$'):
    formats.find(tmp_path / 'nope.npz')


def test_a_format_name_is_registered_once(toy_format):
  with pytest.raises(ValueError, match="'toy' is already registered"):
    formats.register(_ToyFormat({}))


# ------------------------------------------ timm layouts of the families --

def test_a_timm_checkpoint_of_no_family_says_what_each_family_reads(
    tmp_path):
  spec = timm_fixtures.FAMILIES['deit']
  arrays = timm_fixtures.state_dict(spec)
  del arrays['patch_embed.proj.weight']
  directory = timm_fixtures.write_hub_dir(
      tmp_path, timm_fixtures.config(spec), arrays)
  with pytest.raises(models.CheckpointMismatchError) as error:
    weights.load(directory)
  message = str(error.value)
  assert message.startswith(
      f'timm architecture {spec.architecture!r} is of no model family '
      'vit_jax reads from timm (vit: ')
  for what_each_reads in ('arrays with patch_embed.backbone (ResNetV2)',
                          'architectures of timm.models.eva',
                          'arrays with embeds.proj',
                          'arrays with patch_embed.proj',
                          'mixer: timm\'s MlpMixer'):
    assert what_each_reads in message


def test_the_error_class_is_one_class_wherever_it_is_named():
  assert (npz.CheckpointMismatchError is weights.CheckpointMismatchError
          is models.CheckpointMismatchError)
