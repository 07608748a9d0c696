"""Tests of vit_jax.cli.visualize: figures, analysis.json, closed-form numbers and
command-line errors. Checkpoints and images are generated here."""

import json
import math
import os
import subprocess
import sys

from absl import flags
import jax
import numpy as np
from PIL import Image
import pytest

from tests import data_helpers
from tests import helpers
from vit_jax.analysis import plots
from vit_jax.cli import visualize
from vit_jax.data import preprocess
from vit_jax import models
from vit_jax.weights import pretrained

IMAGE_SIZE = 32  # A 8x8 grid of the tiny ViT's 4-pixel patches.
TINY_FLAGS = [f'--{name}={value}' for name, value in helpers.TINY_VIT.items()]
JSON_KEYS = {
    'model', 'image_size', 'grid', 'patch_pixels', 'classifier', 'images',
    'rollout_kind', 'rollout_description', 'rollout_maps', 'rollout_file',
    'mean_attention_distance_px', 'filter_pca_explained_variance', 'figures',
    'notes'}


def _tiny_models():
  # The token model has a pre_logits layer, as ImageNet-21k checkpoints do.
  return {'token': helpers.tiny_model(representation_size=8),
          'gap': helpers.tiny_model(classifier='gap'),
          'hybrid': helpers.tiny_hybrid()}


@pytest.fixture(scope='module')
def random_params():
  """{kind: params} for each of _tiny_models(), initialised once."""
  return {kind: data_helpers.numpy_params(model, IMAGE_SIZE)
          for kind, model in _tiny_models().items()}


@pytest.fixture(scope='module')
def files(tmp_path_factory, random_params):
  """Checkpoints of a token ViT, a gap ViT and a hybrid, and images."""
  root = tmp_path_factory.mktemp('visualize')
  paths = {}
  for kind, params in random_params.items():
    paths[kind] = str(root / f'{kind}.npz')
    pretrained.save_npz(params, paths[kind])
  # Any size works: images are resized to the run resolution.
  paths['images'] = [data_helpers.write_png(root / 'cat.png', 40, 50, seed=1),
                     data_helpers.write_png(root / 'dog 2.png', 32, 32, seed=2)]
  paths['not_an_image'] = str(root / 'notes.png')
  with open(paths['not_an_image'], 'w') as f:
    f.write('not a png')
  return paths


def _cli(argv):
  """Parses `argv` on fresh flags and runs visualize.main, as `python -m`."""
  flag_values = flags.FlagValues()
  visualize.define_flags(flag_values)
  return visualize.main(flag_values(['visualize', *argv]), flag_values)


def _assert_valid_png(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    image.verify()
  with Image.open(path) as image:
    width, height = image.size
    assert width > 0 and height > 0
    assert np.asarray(image).std() > 0  # Something was drawn.


def test_cli_writes_every_figure_and_the_json(files, tmp_path):
  out_dir = tmp_path / 'out'
  _cli([f'--checkpoint={files["token"]}', '--model=ViT-Ti_16',
        f'--out_dir={out_dir}', f'--image_size={IMAGE_SIZE}', *TINY_FLAGS,
        *files['images']])
  with open(out_dir / 'analysis.json') as f:
    record = json.load(f)

  assert record['figures'] == [
      'rollout_00_cat.png', 'rollout_01_dog_2.png', 'attention_distance.png',
      'position_embedding_similarity.png', 'embedding_filters_pca.png']
  assert sorted(p for p in os.listdir(out_dir) if p.endswith('.png')) == (
      sorted(record['figures']))
  for figure in record['figures']:
    _assert_valid_png(out_dir / figure)

  saved = record
  assert set(saved) == JSON_KEYS
  assert (saved['model'], saved['image_size'], saved['grid'],
          saved['patch_pixels'], saved['classifier'], saved['rollout_kind'],
          saved['images'], saved['notes']) == (
              'ViT-Ti_16', [32, 32], [8, 8], [4, 4], 'token', 'class_token',
              files['images'], [])
  maps = np.asarray(saved['rollout_maps'])
  assert maps.shape == (2, 8, 8)
  rollout = np.load(out_dir / 'rollout.npy')
  assert rollout.dtype == np.float32
  np.testing.assert_array_equal(rollout, maps.astype(np.float32))
  # The class token's row over patches: non-negative, at most 1 in total.
  assert np.all(maps >= 0) and np.all(maps.sum(axis=(1, 2)) <= 1 + 1e-6)
  distances = np.asarray(saved['mean_attention_distance_px'])
  assert distances.shape == (2, 2)  # (layers, heads)
  assert np.all((distances > 0) & (distances < 8 * 4 * math.sqrt(2)))
  assert len(saved['filter_pca_explained_variance']) == 28


def _uniform_attention(params, num_layers):
  """Zero query and key projections: every logit is 0, so every query
  attends uniformly to all tokens."""
  params = jax.tree_util.tree_map(np.array, params)
  for layer in range(num_layers):
    block = params['Transformer'][f'encoderblock_{layer}'][
        'MultiHeadDotProductAttention_0']
    for name in ('query', 'key'):
      block[name] = {k: np.zeros_like(v) for k, v in block[name].items()}
  return params


def _mean_pairwise_centre_distance(rows, cols, patch_pixels):
  """By brute force over every (query, key) pair of patch centres."""
  centres = [((r + 0.5) * patch_pixels, (c + 0.5) * patch_pixels)
             for r in range(rows) for c in range(cols)]
  return np.mean([math.dist(a, b) for a in centres for b in centres])


@pytest.mark.parametrize('kind', ['token', 'gap', 'hybrid'])
def test_uniform_attention_matches_the_closed_form(random_params, kind):
  model = _tiny_models()[kind]
  params = _uniform_attention(random_params[kind], model.num_layers)
  images = helpers.random_images(4, IMAGE_SIZE)
  result = visualize.compute_analysis(model, params, images, kind,
                                      batch_size=2)  # Two chunks.

  # The hybrid's stem downsamples 32 -> 4 (root 4x, one more stage 2x): each
  # token covers 8 pixels, not the 16 the R50+ViT-B_16 name would give.
  patch = 8 if kind == 'hybrid' else 4
  rows = IMAGE_SIZE // patch
  assert result['grid'] == [rows, rows]
  assert result['patch_pixels'] == [patch, patch]
  expected = _mean_pairwise_centre_distance(rows, rows, patch)
  np.testing.assert_allclose(result['mean_attention_distance_px'],
                             np.full((2, 2), expected), rtol=1e-5)

  # Each layer's rollout factor is I/2 + U/2 (U: uniform rows), so two
  # layers give I/4 + 3U/4.
  patches = rows * rows
  if kind == 'gap':
    # Averaged over the patch queries the identity part spreads evenly too.
    expected_map = 1 / patches
  else:
    expected_map = 0.75 / (patches + 1)  # The class token is one more key.
  np.testing.assert_allclose(result['rollout_maps'],
                             np.full((4, rows, rows), expected_map), rtol=1e-5)


def test_gap_model_gets_the_mean_query_map_and_says_so(files, tmp_path,
                                                       monkeypatch):
  titles = []
  plot_rollout = plots.plot_rollout
  def recording_plot_rollout(image, map_rc, title, path):
    titles.append(title)
    plot_rollout(image, map_rc, title, path)
  monkeypatch.setattr(plots, 'plot_rollout', recording_plot_rollout)

  record = visualize.run(files['gap'], 'Ti/16', files['images'][:1],
                         str(tmp_path), **helpers.TINY_VIT)
  assert record['classifier'] == 'gap'
  assert record['rollout_kind'] == 'mean_over_patch_queries'
  assert 'no class token' in record['rollout_description']
  assert len(record['notes']) == 1
  assert 'mean over patch queries' in record['notes'][0]
  assert 'no class token' in record['notes'][0]
  assert len(titles) == 1
  assert 'mean over patch queries (no class token)' in titles[0]
  _assert_valid_png(tmp_path / record['figures'][0])


def test_hybrid_skips_the_filter_figure_and_says_why(files, tmp_path, capsys):
  record = visualize.run(files['hybrid'], 'R50+ViT-B_16', files['images'],
                         str(tmp_path), hidden_size=32, mlp_dim=64,
                         num_heads=2, num_layers=2, patch_size=1,
                         resnet_units=(1, 1))
  assert 'embedding_filters_pca.png' not in record['figures']
  assert not (tmp_path / 'embedding_filters_pca.png').exists()
  assert record['filter_pca_explained_variance'] is None
  assert len(record['notes']) == 1
  assert 'skipped' in record['notes'][0] and 'RGB' in record['notes'][0]
  assert f'note: {record["notes"][0]}' in capsys.readouterr().out
  assert record['patch_pixels'] == [8, 8] and record['grid'] == [4, 4]
  for figure in record['figures']:
    _assert_valid_png(tmp_path / figure)


@pytest.mark.parametrize('case, message', [
    ('missing checkpoint', 'does not exist'),
    ('wrong model', 'hidden size 32 but ViT-B_16 has 768'),
    ('unknown model', 'unknown model'),
    ('undecodable image', 'Cannot decode image file'),
    ('missing image', 'does not exist'),
    ('no images', 'at least one image'),
    ('no out_dir', '--out_dir is required'),
])
def test_bad_input_exits_with_status_1_and_a_message(files, tmp_path, capsys,
                                                     case, message):
  args = {'checkpoint': files['token'], 'model': 'ViT-Ti_16',
          'out_dir': str(tmp_path / 'out')}
  images = files['images']
  if case == 'missing checkpoint':
    args['checkpoint'] = str(tmp_path / 'nope.npz')
  elif case == 'wrong model':
    args['model'] = 'ViT-B_16'
  elif case == 'unknown model':
    args['model'] = 'ViT-Q_99'
  elif case == 'undecodable image':
    images = [files['not_an_image']]
  elif case == 'missing image':
    images = [str(tmp_path / 'nope.png')]
  elif case == 'no images':
    images = []
  elif case == 'no out_dir':
    del args['out_dir']
  overrides = [] if case == 'wrong model' else TINY_FLAGS
  with pytest.raises(SystemExit) as exit_info:
    _cli([f'--{k}={v}' for k, v in args.items()] + overrides + images)
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('error: ') and message in error


@pytest.mark.slow
def test_python_dash_m_runs_and_exits_with_status_0(files, tmp_path):
  process = subprocess.run(
      [sys.executable, '-m', 'vit_jax.cli.visualize',
       f'--checkpoint={files["gap"]}', '--model=ViT-Ti_16',
       f'--out_dir={tmp_path}', *TINY_FLAGS, files['images'][0]],
      capture_output=True, text=True, timeout=120, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert process.returncode == 0, process.stderr
  assert f'wrote {tmp_path / "analysis.json"}' in process.stdout
  assert 'note: rollout maps are the mean over patch queries' in (
      process.stdout)


def test_only_the_checkpoint_of_an_export_is_needed(tmp_path, capsys):
  # The sidecar has the options no array shows and the normalisation.
  model = helpers.tiny_model(num_classes=3, activation='gelu_erf',
                             layer_norm_epsilon=1e-5)
  params = data_helpers.numpy_params(model, IMAGE_SIZE)
  path = tmp_path / 'model.npz'
  imagenet = models.Preprocessing(mean=(123.675, 116.28, 103.53),
                                  std=(58.395, 57.12, 57.375))
  pretrained.save_npz(params, path, model=model, class_names=('a', 'b', 'c'),
                      preprocessing=imagenet, image_size=IMAGE_SIZE)
  image = data_helpers.write_png(tmp_path / 'cat.png', 40, 50, seed=1)
  out_dir = tmp_path / 'out'
  _cli([f'--checkpoint={path}', f'--out_dir={out_dir}', image])
  with open(out_dir / 'analysis.json') as f:
    record = json.load(f)
  assert (record['model'], record['image_size'], record['grid']) == (
      'model.npz', [32, 32], [8, 8])
  assert 'model.npz at 32 px, grid 8x8' in capsys.readouterr().out
  expected = visualize.compute_analysis(
      model, params, preprocess.load_image(image, IMAGE_SIZE, imagenet)[None],
      'model.npz')
  np.testing.assert_allclose(record['rollout_maps'], expected['rollout_maps'],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(record['mean_attention_distance_px'],
                             expected['mean_attention_distance_px'],
                             rtol=1e-5)
