"""The listing of which of timm's models load (`vit_jax.weights.timm_listing`,
`vit-jax weights --timm`): the loader's own answer on timm's one-block
checkpoints, recorded by scripts/timm_table.py; checked against the whole
loader on those checkpoints written as hub directories, and (where timm is
installed) the record against what timm writes today."""

import pathlib
import sys

import numpy as np
import pytest

from tests import timm_fixtures
from vit_jax import weights
from vit_jax.cli import weights as weights_cli
from vit_jax.models import timm_definitions
from vit_jax.weights import timm_listing

# Architectures of each of timm's six ViT modules, loading and refused, small
# enough at one block to write and load in a test.
SAMPLE = (
    'vit_small_patch14_reg4_dinov2', 'flexivit_small', 'test_vit',
    'vit_pwee_patch16_reg1_gap_256', 'vit_so400m_patch14_siglip_384',
    'deit_tiny_distilled_patch16_224',
    'vit_small_r26_s32_224', 'vit_base_mci_224',
    'mixer_b16_224', 'resmlp_12_224',
    'eva02_tiny_patch14_224', 'vit_small_patch16_dinov3',
    'eva_large_patch14_196',
    'naflexvit_base_patch16_gap',
)


def test_the_listing_has_every_tag_of_timms_table():
  rows = timm_listing.table()
  names = [f'{architecture}.{tag}' for architecture, tag, _, _ in rows]
  assert len(names) == len(set(names))
  assert set(names) == {
      f'{architecture}.{tag}'
      for architecture in timm_definitions.architectures()
      for tag in timm_definitions.definition(architecture).tags}
  for architecture, tag, hub_id, _ in rows:
    definition = timm_definitions.definition(architecture)
    assert hub_id == definition.tags[tag]['hf_hub_id']


def test_each_of_timms_modules_has_models_that_load_and_that_do_not():
  why = {architecture: timm_listing.refusal(architecture)
         for architecture in timm_definitions.architectures()}
  for loads in ('vit_base_patch16_224', 'vit_base_patch16_clip_224',
                'deit_tiny_distilled_patch16_224', 'vit_base_r50_s16_384',
                'mixer_b16_224', 'eva02_base_patch14_224',
                'vit_small_patch16_dinov3', 'naflexvit_base_patch16_gap'):
    assert why[loads] is None, loads
  for architecture, reason in (
      ('resmlp_12_224', 'the checkpoint uses ResMLP blocks'),
      ('gmlp_s16_224', "the checkpoint uses gMLP's spatial gating unit"),
      # Its BatchNorms' int64 counters are skipped as timm skips them.
      ('vit_base_mci_224', "the checkpoint's CNN backbone "
       "(patch_embed.backbone.0.bn.bias) is MobileCLIP's convolutional stem"),
      ('vit_base_patch16_sapiens2', 'the checkpoint uses qk-norm')):
    assert why[architecture].startswith(reason), architecture


@pytest.mark.parametrize('architecture', SAMPLE)
def test_the_listing_says_what_the_loader_does(architecture, tmp_path):
  # The same checkpoint (zeros of the recorded shapes) as files, through
  # the whole loader: reading, the strict shape check, the arrays' values.
  # pylint: disable-next=protected-access
  recorded = timm_listing._recorded()[architecture]
  dtypes = recorded.get('dtypes', {})
  directory = timm_fixtures.write_hub_dir(
      tmp_path / architecture, recorded['config'],
      {key: np.zeros(shape, dtypes.get(key, np.float32))
       for key, shape in recorded['arrays'].items()})
  try:
    weights.load(str(directory))
  except ValueError as error:
    message = str(error).splitlines()[0]
    for path in (directory / 'model.safetensors', directory):
      message = message.replace(str(path), architecture)
    assert timm_listing.refusal(architecture) == message
  else:
    assert timm_listing.refusal(architecture) is None


def test_a_tag_is_listed_at_its_own_input_size(monkeypatch):
  definition = timm_definitions.definition('vit_base_patch16_224')
  tag = definition.default_tag
  assert timm_listing.refusal(f'vit_base_patch16_224.{tag}') is None
  # A tag whose input size does not fit the position embedding.
  monkeypatch.setitem(definition.tags, tag,
                      {**definition.tags[tag], 'input_size': [3, 448, 448]})
  monkeypatch.setattr(timm_definitions, 'definition', lambda name: definition)
  assert timm_listing.refusal(f'vit_base_patch16_224.{tag}') == (
      'pos_embed has 197 positions, but the native 28x28 patch grid has 784 '
      '(+ 1 prefix tokens): is pretrained_cfg input_size right?')


def test_an_unknown_architecture_is_a_key_error():
  with pytest.raises(KeyError):
    timm_listing.refusal('not_a_timm_model')


def test_weights_program_lists_the_timm_names(capsys):
  output = weights_cli.run(timm=True)
  lines = output.splitlines()
  assert lines[0].split() == ['timm', 'name', 'vit_jax']
  by_name = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:-1]}
  assert by_name['vit_base_patch16_224.augreg2_in21k_ft_in1k'] == 'loads'
  assert by_name['vit_base_r50_s16_384.orig_in21k_ft_in1k'] == 'loads'
  assert by_name['resmlp_12_224.fb_in1k'].startswith(
      'refused: the checkpoint uses ResMLP blocks')
  loads = {name.split('.')[0] for name, status in by_name.items()
           if status.startswith('loads')}
  assert lines[-1] == (f'{len(loads)} of '
                       f'{len(timm_definitions.architectures())} '
                       'architectures of timm 1.0.31 load')
  assert capsys.readouterr().out == output + '\n'


def test_the_recorded_checkpoints_are_what_timm_writes():
  pytest.importorskip('timm')
  sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'scripts'))
  try:
    import timm_table  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  for architecture in SAMPLE:
    # pylint: disable-next=protected-access
    recorded = timm_listing._recorded()[architecture]
    assert timm_table.saved_for_hf(
        architecture,
        timm_definitions.definition(architecture).model_args) == recorded
