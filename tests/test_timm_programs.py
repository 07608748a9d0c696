"""The programs on timm's RoPE / SwiGLU families, as a user runs them.

Three tiny hub directories in timm's format (tests/eva_fixtures.py): EVA-02
(axial RoPE rescaled onto a reference grid, SwiGLU with its hidden norm, a
class token beside average pooling), DINOv3 (rotate-half RoPE, a class
token and 4 registers, LayerScale, no learned position embedding; given a
head here, as a fine-tuned one has) and Naver's mixed RoPE (learned
per-layer frequencies, a class-token head). Each goes through predict
(against the independent NumPy reference on timm's keys), visualize
(every prefix token kept off the maps), few-shot, export (each file in
its runtime against predict), the way back to timm (refused by name) and
fine-tuning with a new head at another resolution.
"""

import dataclasses
import json
import os
import types

from absl import flags
import jax
import numpy as np
from PIL import Image
import pytest

from tests import data_helpers
from tests import eva_fixtures
from tests import helpers
from tests import numpy_eva
from tests import timm_fixtures
from vit_jax.analysis import measures
from vit_jax.cli import export as export_cli
from vit_jax.cli import fewshot
from vit_jax.cli import predict
from vit_jax.cli import visualize
from vit_jax import export
from vit_jax.export import serving
from vit_jax import models
from vit_jax.data import image_file
from vit_jax.models import family
from vit_jax.training import loop
from vit_jax.training import run_spec
from vit_jax.training import setup as setup_lib
from vit_jax.weights import pretrained
from vit_jax.weights import safetensors_file
from vit_jax.weights import to_timm

NAMES = ('eva02', 'dinov3', 'rope_mixed')
# The head the DINOv3 fixture (a backbone) gets: predict and export need one.
DINOV3_CLASSES = 4
IMAGE_SIZE = 32  # The fixtures' native resolution: a 4x4 grid of 8 px.
FINE_TUNE_SIZE = 48  # Another resolution: a 6x6 grid.
NUM_CLASSES = 3  # Of the image folder.
# Which rollout each head calls for: EVA-02 and DINOv3 average the patches
# (their class token is a prefix token like the registers).
ROLLOUT_KIND = {'eva02': visualize.ROLLOUT_MEAN_QUERY,
                'dinov3': visualize.ROLLOUT_MEAN_QUERY,
                'rope_mixed': visualize.ROLLOUT_CLASS_TOKEN}


def _spec(name):
  spec = eva_fixtures.FAMILIES[name]
  if not spec.num_classes:
    spec = dataclasses.replace(spec, num_classes=DINOV3_CLASSES)
  return spec


def _num_prefix(spec):
  """Prefix tokens by the fixture's own arrays, not the loader's count."""
  return int(spec.class_token) + spec.reg_tokens


@pytest.fixture(scope='module')
def hubs(tmp_path_factory):
  """The hub directories, their loaded models, PNGs and an image folder."""
  root = tmp_path_factory.mktemp('timm_programs')
  directories, loaded, arrays = {}, {}, {}
  for name in NAMES:
    spec = _spec(name)
    arrays[name] = eva_fixtures.state_dict(spec)
    directories[name] = str(timm_fixtures.write_hub_dir(
        root / name, eva_fixtures.config(spec), arrays[name]))
    loaded[name] = pretrained.load(directories[name])
  # 40x48 and 24x24 images are resized to the run resolution.
  images = [data_helpers.write_png(root / 'a.png', 32, 32, seed=1),
            data_helpers.write_png(root / 'b.png', 40, 48, seed=2),
            data_helpers.write_png(root / 'c.png', 24, 24, seed=3)]
  data_helpers.write_image_folder(str(root / 'data'), {'train': 4, 'test': 2},
                                  NUM_CLASSES, IMAGE_SIZE)
  return types.SimpleNamespace(
      directories=directories, loaded=loaded, arrays=arrays, images=images,
      data_dir=str(root / 'data'))


def _pixels(hubs, name):
  """The PNGs as predict feeds them to the model."""
  preprocessing = hubs.loaded[name].preprocessing
  return np.stack([image_file.load_image(path, IMAGE_SIZE, preprocessing)
                   for path in hubs.images])


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) /
               np.max(np.abs(expected)))


# ------------------------------------------------------------------ predict --

@pytest.mark.parametrize('name', NAMES)
def test_predict_gives_the_numpy_reference_logits(hubs, name, tmp_path,
                                                  capsys):
  out = str(tmp_path / 'logits.npy')
  logits = predict.run(hubs.directories[name], None, hubs.images, top_k=2,
                       logits_out=out)
  spec = _spec(name)
  assert logits.shape == (3, spec.num_classes)
  np.testing.assert_array_equal(np.load(out), logits)
  pixels = _pixels(hubs, name)
  loaded = hubs.loaded[name]
  np.testing.assert_allclose(
      logits, pretrained.predict_logits(loaded.model, loaded.params, pixels),
      rtol=1e-6, atol=1e-6)
  expected = numpy_eva.forward(hubs.arrays[name], pixels.transpose(0, 3, 1, 2),
                               **spec.reference_options())
  assert _relative_error(logits, expected) < 1e-5
  assert capsys.readouterr().out.count('class') == 3 * 2


def test_predict_refuses_a_backbone_in_one_line(tmp_path):
  directory = eva_fixtures.write_family(tmp_path, 'dinov3')  # No head.
  with pytest.raises(ValueError, match='has no head: it gives features'):
    predict.run(str(directory), None, [data_helpers.write_png(
        tmp_path / 'a.png', 32, 32)])


# ---------------------------------------------------------------- visualize --

def _rollout(loaded, pixels):
  """The rollout matrix of every layer's attention, captured here."""
  model, params = loaded.model, loaded.params
  _, captured = models.apply_with_intermediates(
      model, params, pixels, attention_layers=tuple(range(model.num_layers)))
  return measures.attention_rollout(captured['attention_weights'],
                                    has_class_token=False).matrix_BNN


@pytest.mark.parametrize('name', NAMES)
def test_visualize_maps_the_patch_grid_only(hubs, name, tmp_path):
  record = visualize.run(hubs.directories[name], None, hubs.images,
                         str(tmp_path))
  grid = IMAGE_SIZE // _spec(name).patch
  assert (record['grid'], record['rollout_kind']) == (
      [grid, grid], ROLLOUT_KIND[name])
  maps = np.load(tmp_path / 'rollout.npy')
  assert maps.shape == (3, grid, grid)
  np.testing.assert_array_equal(maps, np.asarray(record['rollout_maps'],
                                                 np.float32))

  # Every token the model attends over: the fixture's prefix and the patches.
  rollout = _rollout(hubs.loaded[name], _pixels(hubs, name))
  prefix = _num_prefix(_spec(name))
  assert rollout.shape == (3, prefix + grid**2, prefix + grid**2)
  np.testing.assert_allclose(rollout.sum(axis=-1), 1, rtol=1e-5)
  if ROLLOUT_KIND[name] == visualize.ROLLOUT_CLASS_TOKEN:
    expected = rollout[:, 0, prefix:]  # The class token's row.
  else:
    expected = rollout[:, prefix:, prefix:].mean(axis=1)  # Patch queries.
  np.testing.assert_allclose(maps, expected.reshape(-1, grid, grid),
                             rtol=1e-4, atol=1e-7)
  # What the prefix tokens keep is left out: the maps sum to less than 1.
  assert np.all(maps >= 0)
  assert np.all(maps.sum(axis=(1, 2)) < 1)

  distances = np.asarray(record['mean_attention_distance_px'])
  assert distances.shape == (2, 2) and np.all(distances > 0)
  # Only EVA-02 has a learned position embedding to compare.
  has_embedding = name == 'eva02'
  assert ('position_embedding_similarity.png' in record['figures']) == (
      has_embedding)
  assert any('no learned position embedding' in note
             for note in record['notes']) != has_embedding
  for figure in record['figures']:
    assert (tmp_path / figure).stat().st_size > 0


def test_visualize_at_another_resolution_follows_the_rope_grid(hubs,
                                                               tmp_path):
  record = visualize.run(hubs.directories['dinov3'], None, hubs.images[:1],
                         str(tmp_path), image_size=FINE_TUNE_SIZE)
  grid = FINE_TUNE_SIZE // _spec('dinov3').patch
  assert record['grid'] == [grid, grid]
  assert np.asarray(record['rollout_maps']).shape == (1, grid, grid)


# ------------------------------------------------------------------ fewshot --

@pytest.mark.parametrize('name', NAMES)
def test_fewshot_runs_on_an_image_folder(hubs, name, tmp_path):
  record = fewshot.run(
      hubs.directories[name], None, 'imagefolder', data_dir=hubs.data_dir,
      shots=(1, 2), seeds=(0,), val_per_class=1, batch_size=8,
      json_out=str(tmp_path / 'fewshot.json'))
  assert (record['feature_dim'], record['num_classes'],
          record['num_train_examples'], record['num_test_examples']) == (
              _spec(name).embed_dim, NUM_CLASSES, 4 * NUM_CLASSES,
              2 * NUM_CLASSES)
  for result in record['results'].values():
    assert 0 <= result['top1_mean'] <= 1
  with open(tmp_path / 'fewshot.json') as f:
    assert sorted(json.load(f)['results']) == ['1', '2']


# ------------------------------------------------------------------- export --

def _export_cli(argv):
  flag_values = flags.FlagValues()
  export_cli.define_flags(flag_values)
  return export_cli.main(flag_values(['export', *argv]), flag_values)


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_each_exported_file_gives_predicts_logits(hubs, name, tmp_path):
  out = str(tmp_path / 'exported')
  _export_cli([f'--checkpoint={hubs.directories[name]}', f'--out={out}'])
  assert sorted(os.listdir(out)) == ['model.onnx', 'model.tflite',
                                     'saved_model']
  expected = predict.run(hubs.directories[name], None, hubs.images)
  # One image a batch, resized inside the file: the 40x48 image down and the
  # 24x24 one up (export checked the native size against JAX).
  for index in (1, 2):
    with Image.open(hubs.images[index]) as image:
      pixels = np.asarray(image.convert('RGB'))[None]
    for file_name, run in export.RUNTIMES.items():
      error = serving.relative_error(run(os.path.join(out, file_name), pixels),
                                     expected[index:index + 1])
      assert error <= export.TOLERANCE[file_name], (file_name, index, error)


# --------------------------------------------------------- the way back ----

@pytest.mark.parametrize('name', NAMES)
def test_the_way_back_to_timm_writes_the_checkpoint_again(hubs, name,
                                                          tmp_path):
  """--format=timm writes timm's Eva: the fixture's arrays, key for key."""
  out = tmp_path / 'timm'
  _export_cli([f'--checkpoint={hubs.directories[name]}', f'--out={out}',
               '--format=timm'])
  written = safetensors_file.open_safetensors(out / 'model.safetensors')
  assert sorted(written) == sorted(hubs.arrays[name])
  for key, value in hubs.arrays[name].items():
    np.testing.assert_array_equal(np.asarray(written[key]), value)


def test_save_timm_writes_a_gelu_gated_mlp_as_timm_vit(tmp_path):
  # timm's ViT with GluMlp and GELU (timm's Eva gates with SiLU only) goes
  # back as timm's ViT: GluMlp's packed fc1 (gate first) and act_layer.
  loaded = pretrained.load(str(eva_fixtures.write_family(
      tmp_path / 'hub', 'vit_glu_inner_norms')))
  config = to_timm.save_timm(loaded.params, loaded.model, tmp_path / 'out')
  assert config['architecture'] == 'vit_giant_patch14_dinov2'
  assert config['model_args']['act_layer'] == 'gelu'
  back = pretrained.load(str(tmp_path / 'out'))
  jax.tree_util.tree_map(np.testing.assert_array_equal, back.params,
                         loaded.params)


# -------------------------------------------------------------- fine-tuning --

def _config_model(model):
  """config.model as a user sets it for this checkpoint: every key whose
  value differs from the section's default (sizes always)."""
  section = models.family_of(model).default_config()
  overrides = {}
  for key in section.keys():
    if key in ('dtype', 'param_dtype'):
      continue
    value = getattr(model, key)
    if key == 'patch_size':
      value = int(value[0])
    elif isinstance(value, list):
      value = tuple(value)
    if value != section[key]:
      overrides[f'model.{key}'] = value
  return overrides


def _config(hubs, name, **overrides):
  return helpers.tiny_config(
      hubs.data_dir, pretrained_path=hubs.directories[name],
      image_size=FINE_TUNE_SIZE, **helpers.ONE_STEP, **_config_model(hubs.loaded[name].model),
      **overrides)


class _NoCheckpoint:
  """A workdir without checkpoints: `initial_state` loads the hub's."""

  def restore_intact(self, abstract):
    del abstract


def _step_zero_params(config):
  spec = run_spec.from_config(config)
  setup = setup_lib.make_setup(spec, NUM_CLASSES)
  state = setup_lib.initial_state(spec, setup, _NoCheckpoint())
  return setup.model, jax.tree_util.tree_map(np.asarray, state.params)


# One family in the quick tests; each compiles its initialiser.
@pytest.mark.parametrize('name', [
    pytest.param('eva02', marks=pytest.mark.slow), 'dinov3',
    pytest.param('rope_mixed', marks=pytest.mark.slow)])
def test_fine_tuning_starts_from_the_hub_weights_and_a_new_head(hubs, name):
  model, params = _step_zero_params(_config(hubs, name))
  # What the checkpoint computes at the fine-tuning resolution.
  hub = pretrained.load(hubs.directories[name], image_size=FINE_TUNE_SIZE)
  assert (model.num_classes, model.rope, model.mlp_gated) == (
      NUM_CLASSES, hub.model.rope, hub.model.mlp_gated)
  assert params['head']['kernel'].shape == (_spec(name).embed_dim,
                                            NUM_CLASSES)
  np.testing.assert_array_equal(params['head']['kernel'], 0)
  without_head = lambda tree: {key: value for key, value in tree.items()
                               if key != 'head'}
  helpers.assert_trees_close(without_head(params), without_head(hub.params),
                             rtol=0, atol=0)


def test_fine_tuning_without_the_rope_settings_is_refused(hubs):
  # RoPE has no arrays for the key and shape checks to miss: without
  # config.model.rope the run would fine-tune another computation.
  config = _config(hubs, 'rope_mixed')
  config.model.rope = None
  model = run_spec.build_model(run_spec.from_config(config), NUM_CLASSES)
  with pytest.raises(family.CheckpointMismatchError,
                     match="rotary position embeddings rope='mixed', "
                           'which the model lacks: set them on the model '
                           r'\(config.model in a training config\)'):
    # What the training program calls before its first step.
    pretrained.load_for_fine_tuning(
        hubs.directories['rope_mixed'], model, init_params={},
        image_size=(FINE_TUNE_SIZE, FINE_TUNE_SIZE))


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_fine_tuning_runs_at_another_resolution(hubs, name, tmp_path):
  workdir = str(tmp_path / 'run')
  record = loop.train_and_evaluate(_config(hubs, name), workdir)
  assert np.isfinite(record['loss'])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    losses = [json.loads(line).get('train_loss') for line in f]
  assert [loss for loss in losses if loss is not None]
  assert all(np.isfinite(loss) for loss in losses if loss is not None)
  # The export keeps the options (its sidecar) and the new resolution.
  tuned = pretrained.load(os.path.join(workdir, 'model.npz'))
  hub = hubs.loaded[name].model
  assert (tuned.model.rope, tuned.model.mlp_gated, tuned.model.num_classes,
          tuned.image_size) == (hub.rope, hub.mlp_gated, NUM_CLASSES,
                                FINE_TUNE_SIZE)
