"""timm names as sources (`vit_jax.weights.timm_names`, the 'timm name'
weight format): resolution to hub ids, loading through a local stand-in for
the Hugging Face cache, and the one-line offline error."""

import time

from huggingface_hub import constants as hub_constants
import numpy as np
import pytest

from tests import timm_fixtures
from vit_jax import weights
from vit_jax.weights import formats
from vit_jax.weights import timm_hub
from vit_jax.weights import timm_names


@pytest.mark.parametrize('name, hub_id', [
    ('vit_base_patch16_224.augreg2_in21k_ft_in1k',
     'hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k'),
    ('timm/vit_base_patch16_224.augreg_in1k',
     'hf-hub:timm/vit_base_patch16_224.augreg_in1k'),
    # A bare architecture is timm's default tag (not the first by name).
    ('vit_base_patch16_224',
     'hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k'),
    ('vit_base_patch16_clip_224',
     'hf-hub:timm/vit_base_patch16_clip_224.laion2b_ft_in12k_in1k'),
])
def test_a_timm_name_resolves_to_its_hub_id(name, hub_id):
  assert timm_names.is_timm_name(name)
  assert timm_names.hub_source(name) == hub_id


@pytest.mark.parametrize('source', [
    'imagenet21k/ViT-B_16', 'hf-hub:timm/vit_base_patch16_224',
    'not_a_timm_model', 'model.npz', 'timm/', None, 3])
def test_other_sources_are_no_timm_names(source):
  assert not timm_names.is_timm_name(source)


def test_an_unknown_tag_names_the_known_ones():
  with pytest.raises(ValueError) as error:
    timm_names.hub_source('vit_small_patch16_224.nope')
  assert str(error.value) == (
      "vit_small_patch16_224 has no pretrained tag 'nope': it has "
      'augreg_in1k, augreg_in21k, augreg_in21k_ft_in1k, dino')


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  """An empty hub cache, offline (huggingface_hub reads its environment at
  import: its constants are set too)."""
  cache = tmp_path / 'hub-cache'
  cache.mkdir()
  monkeypatch.setenv('HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(hub_constants, 'HF_HUB_OFFLINE', True)
  return cache


def test_a_timm_name_loads_from_the_hub_cache(tmp_path, offline_cache,
                                              monkeypatch):
  directory = timm_fixtures.write_family(tmp_path / 'files', 'augreg')
  repo_id = 'timm/vit_tiny_patch16_224.augreg_in21k'
  timm_fixtures.write_hub_cache(offline_cache, repo_id, directory)
  monkeypatch.chdir(tmp_path)  # No file is called like the name.
  for name in ('vit_tiny_patch16_224.augreg_in21k',
               'timm/vit_tiny_patch16_224.augreg_in21k'):
    assert formats.find(name).name == 'timm name'
    loaded = weights.load(name)
    expected = weights.load(directory)
    assert loaded.class_names == expected.class_names
    np.testing.assert_array_equal(loaded.params['head']['kernel'],
                                  expected.params['head']['kernel'])
    assert weights.load_preprocessing(name, loaded.model) == (
        expected.preprocessing)


def test_offline_a_timm_name_fails_at_once_in_one_line(offline_cache):
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as error:
    weights.load('vit_base_patch16_224.augreg_in1k')
  assert time.monotonic() - start < 3
  message = str(error.value)
  assert '\n' not in message
  for part in ('hf-hub:timm/vit_base_patch16_224.augreg_in1k',
               f'not in the Hugging Face cache ({offline_cache})',
               'hf download timm/vit_base_patch16_224.augreg_in1k '
               'config.json model.safetensors'):
    assert part in message


def test_hub_source_of_a_timm_name_is_what_timm_hub_reads():
  # The format hands timm_hub an id of its own kind.
  assert timm_hub.is_timm_source(timm_names.hub_source('vit_base_patch16_224'))
