"""Tests of vit_jax.analysis.measures on inputs whose answers are known."""

import itertools

import jax
import numpy as np
import pytest

from vit_jax.analysis import measures
from vit_jax import models


def _random_attention(rng, batch, heads, tokens):
  logits = rng.normal(size=(batch, heads, tokens, tokens))
  weights = np.exp(logits)
  return weights / weights.sum(axis=-1, keepdims=True)


def _brute_force_mean_distance(rows, cols, patch):
  """Mean over all ordered patch pairs (self pairs included) of the distance."""
  centres = [(r * patch + patch / 2, c * patch + patch / 2)
             for r in range(rows) for c in range(cols)]
  total = 0.0
  for (y1, x1), (y2, x2) in itertools.product(centres, centres):
    total += ((y1 - y2)**2 + (x1 - x2)**2)**0.5
  return total / len(centres)**2


# Rollout.


def test_rollout_of_identity_attention_is_identity():
  eye = np.broadcast_to(np.eye(5), (2, 3, 5, 5))
  rollout = measures.attention_rollout([eye, eye, eye], has_class_token=True)
  np.testing.assert_allclose(rollout.matrix_BNN,
                             np.broadcast_to(np.eye(5), (2, 5, 5)))


def test_rollout_of_one_layer_is_half_mean_attention_plus_half_identity():
  attention = _random_attention(np.random.default_rng(0), 2, 3, 5)
  rollout = measures.attention_rollout([attention], has_class_token=True)
  by_hand = 0.5 * attention.mean(axis=1) + 0.5 * np.eye(5)
  np.testing.assert_allclose(rollout.matrix_BNN, by_hand, rtol=1e-6)


def test_rollout_multiplies_later_layers_on_the_left():
  rng = np.random.default_rng(1)
  first, second = (_random_attention(rng, 1, 2, 4) for _ in range(2))
  rollout = measures.attention_rollout({1: second, 0: first},
                                       has_class_token=False)
  expected = (measures.residual_attention(second)
              @ measures.residual_attention(first))
  np.testing.assert_allclose(rollout.matrix_BNN, expected, rtol=1e-6)
  # The other order differs for generic matrices, so the test has teeth.
  assert not np.allclose(expected, measures.residual_attention(first)
                         @ measures.residual_attention(second))


def test_rollout_rejects_missing_layers():
  attention = _random_attention(np.random.default_rng(2), 1, 1, 3)
  with pytest.raises(ValueError, match='every layer'):
    measures.attention_rollout({0: attention, 2: attention},
                               has_class_token=True)


def test_class_token_map_takes_row_zero_over_patches():
  matrix = np.arange(2 * 7 * 7, dtype=np.float32).reshape(2, 7, 7)
  rollout = measures.Rollout(matrix, has_class_token=True)
  maps = rollout.class_token_map((2, 3))
  assert maps.shape == (2, 2, 3)
  np.testing.assert_array_equal(maps[1], matrix[1, 0, 1:].reshape(2, 3))


def test_maps_skip_every_prefix_token():
  # A class token, a distillation token and two registers before 2x3 patches:
  # the class-token map reads row 0 over the patch keys only, and the mean
  # query map leaves all four prefix tokens out of queries and keys.
  matrix = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10)
  rollout = measures.Rollout(matrix, has_class_token=True, prefix_tokens=4)
  np.testing.assert_array_equal(rollout.class_token_map((2, 3))[1],
                                matrix[1, 0, 4:].reshape(2, 3))
  np.testing.assert_allclose(rollout.mean_query_map((2, 3))[0],
                             matrix[0, 4:, 4:].mean(axis=0).reshape(2, 3))
  with pytest.raises(ValueError, match='4 prefix token'):
    rollout.class_token_map((3, 3))


def test_rollout_passes_prefix_tokens_on():
  attention = _random_attention(np.random.default_rng(5), 1, 2, 6)
  rollout = measures.attention_rollout([attention], has_class_token=False,
                                       num_prefix_tokens=2)
  assert rollout.num_prefix_tokens == 2
  assert rollout.mean_query_map((2, 2)).shape == (1, 2, 2)


def test_class_token_map_of_gap_model_raises():
  rollout = measures.Rollout(np.eye(4)[None], has_class_token=False)
  with pytest.raises(ValueError, match='mean_query_map'):
    rollout.class_token_map((2, 2))
  np.testing.assert_allclose(rollout.mean_query_map((2, 2)),
                             np.full((1, 2, 2), 0.25))


def test_maps_reject_wrong_grid():
  rollout = measures.Rollout(np.eye(5)[None], has_class_token=True)
  with pytest.raises(ValueError, match='tokens'):
    rollout.class_token_map((3, 3))


# Mean attention distance.


@pytest.mark.parametrize('num_prefix_tokens', [0, 1])
def test_uniform_attention_gives_mean_pairwise_patch_distance(
    num_prefix_tokens):
  rows, cols, patch = 3, 4, 16
  tokens = rows * cols + num_prefix_tokens
  uniform = np.full((2, 3, tokens, tokens), 1.0 / tokens)
  distance = measures.mean_attention_distance(
      uniform, (rows, cols), patch, num_prefix_tokens=num_prefix_tokens)
  assert distance.shape == (3,)
  np.testing.assert_allclose(
      distance, _brute_force_mean_distance(rows, cols, patch), rtol=1e-6)


def test_identity_attention_gives_zero_distance():
  eye = np.broadcast_to(np.eye(10), (2, 4, 10, 10))
  distance = measures.mean_attention_distance(eye, (3, 3), 16,
                                              num_prefix_tokens=1)
  np.testing.assert_array_equal(distance, np.zeros(4))


def test_attention_to_right_neighbour_is_one_patch_away():
  rows, cols, patch = 2, 3, 8
  # Every query attends to the next patch on its right (wrapping at the row
  # end, which is cols - 1 patches away).
  attention = np.zeros((1, 1, rows * cols, rows * cols))
  for query in range(rows * cols):
    row, col = divmod(query, cols)
    attention[0, 0, query, row * cols + (col + 1) % cols] = 1.0
  distance = measures.mean_attention_distance(attention, (rows, cols), patch,
                                              num_prefix_tokens=0)
  expected = patch * ((cols - 1) * 1 + 1 * (cols - 1)) / cols
  np.testing.assert_allclose(distance, [expected])


def test_mean_distance_renormalises_over_patch_keys():
  # Half of every query's mass goes to the class token; the rest is uniform
  # over patches, so the renormalised answer is the uniform one.
  rows, cols, patch = 2, 2, 16
  attention = np.full((1, 1, 5, 5), 0.5 / 4)
  attention[..., 0] = 0.5
  distance = measures.mean_attention_distance(attention, (rows, cols), patch,
                                              num_prefix_tokens=1)
  np.testing.assert_allclose(distance,
                             [_brute_force_mean_distance(rows, cols, patch)])


def test_mean_distance_per_layer_stacks_layers():
  eye = np.broadcast_to(np.eye(4), (1, 2, 4, 4))
  uniform = np.full((1, 2, 4, 4), 0.25)
  per_layer = measures.mean_attention_distance_per_layer(
      {1: uniform, 0: eye}, (2, 2), 10, num_prefix_tokens=0)
  assert per_layer.shape == (2, 2)
  np.testing.assert_array_equal(per_layer[0], [0.0, 0.0])
  np.testing.assert_allclose(per_layer[1],
                             [_brute_force_mean_distance(2, 2, 10)] * 2)


# Position embeddings and filters.


def test_orthogonal_position_embeddings_have_identity_similarity():
  rows, cols = 2, 3
  orthogonal, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(8, 8)))
  # Rows of differing lengths: cosine similarity ignores scale.
  patches = orthogonal[:rows * cols] * np.arange(1, rows * cols + 1)[:, None]
  cls = np.ones((1, 8))
  pos_embedding = np.concatenate([cls, patches])[None]
  similarity = measures.position_embedding_similarity(
      pos_embedding, (rows, cols), num_prefix_tokens=1)
  assert similarity.shape == (rows, cols, rows, cols)
  np.testing.assert_allclose(
      similarity.reshape(rows * cols, rows * cols), np.eye(rows * cols),
      atol=1e-12)


def test_filter_components_are_orthonormal_and_match_numpy_svd():
  rng = np.random.default_rng(4)
  kernel = rng.normal(size=(2, 2, 3, 20))
  components, ratio = measures.embedding_filter_components(kernel, 5)
  assert components.shape == (5, 2, 2, 3)
  assert ratio.shape == (5,)
  flat = components.reshape(5, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(5), atol=1e-12)

  filters = kernel.reshape(12, 20).T
  centred = filters - filters.mean(axis=0)
  _, s, vt = np.linalg.svd(centred)
  # Same directions up to the sign SVD leaves free.
  np.testing.assert_allclose(np.abs(np.sum(flat * vt[:5], axis=1)), 1.0,
                             rtol=1e-12)
  np.testing.assert_allclose(ratio, s[:5]**2 / np.sum(s**2), rtol=1e-12)
  assert np.all(np.diff(ratio) <= 0)


def test_filter_components_reject_too_many():
  with pytest.raises(ValueError, match='num_components'):
    measures.embedding_filter_components(np.zeros((2, 2, 3, 4)), 5)


# End to end on a tiny random ViT.


@pytest.mark.slow
@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_tiny_vit_end_to_end(classifier):
  model = models.create_model('Ti/16', num_classes=10, num_layers=2,
                              hidden_size=32, mlp_dim=64, num_heads=2,
                              classifier=classifier)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32))
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3),
                              minval=-1.0, maxval=1.0)
  _, inter = models.apply_with_intermediates(model, params, images,
                                             attention_layers=range(2))
  has_class_token = classifier == 'token'
  tokens = 4 + int(has_class_token)
  attention = inter['attention_weights']
  assert sorted(attention) == [0, 1]
  assert attention[0].shape == (3, 2, tokens, tokens)

  rollout = measures.attention_rollout(attention,
                                       has_class_token=has_class_token)
  assert rollout.matrix_BNN.shape == (3, tokens, tokens)
  np.testing.assert_allclose(rollout.matrix_BNN.sum(axis=-1), 1.0, rtol=1e-5)
  assert np.all(rollout.matrix_BNN >= 0)
  assert rollout.mean_query_map((2, 2)).shape == (3, 2, 2)
  if has_class_token:
    assert rollout.class_token_map((2, 2)).shape == (3, 2, 2)
  else:
    with pytest.raises(ValueError):
      rollout.class_token_map((2, 2))

  distances = measures.mean_attention_distance_per_layer(
      attention, (2, 2), models.effective_patch_pixels('Ti/16'),
      num_prefix_tokens=int(has_class_token))
  assert distances.shape == (2, 2)
  # Between 0 and the largest distance on a 2x2 grid of 16 px patches.
  assert np.all((distances >= 0) & (distances <= 16 * 2**0.5))

  similarity = measures.position_embedding_similarity(
      params['Transformer']['posembed_input']['pos_embedding'], (2, 2),
      num_prefix_tokens=int(has_class_token))
  assert similarity.shape == (2, 2, 2, 2)
  np.testing.assert_allclose(np.diagonal(similarity.reshape(4, 4)), 1.0,
                             rtol=1e-5)

  components, ratio = measures.embedding_filter_components(
      params['embedding']['kernel'], 28)
  assert components.shape == (28, 16, 16, 3)
  assert ratio.shape == (28,)


# --- Figures: readable at a glance ------------------------------------------

def _figures(monkeypatch):
  """The figures the plot functions would save, in order."""
  from vit_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  saved = []
  monkeypatch.setattr(plots, '_save', lambda fig, path: saved.append(fig))
  return plots, saved


def _text_sizes(fig):
  """Font sizes of every tick label, axis label, title, legend text and
  colour-bar label of `fig`."""
  sizes = []
  for axis in fig.axes:
    labels = [*axis.get_xticklabels(), *axis.get_yticklabels(),
              axis.xaxis.label, axis.yaxis.label, axis.title]
    legend = axis.get_legend()
    if legend is not None:
      labels += legend.get_texts()
    sizes += [label.get_fontsize() for label in labels if label.get_text()]
  return sizes


def test_figures_have_labelled_colour_bars_and_no_tiny_text(monkeypatch):
  plots, saved = _figures(monkeypatch)
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, -0.8, (16, 16, 3))  # A dark image.
  attention_map = rng.uniform(0.01, 0.02, (4, 4))  # A diffuse map.
  plots.plot_rollout(image, attention_map, 'rollout', 'unused.png')
  plots.plot_attention_distance(rng.uniform(0, 16, (3, 4)), 16, 'distance',
                                'unused.png')
  plots.plot_position_similarity(rng.uniform(-1, 1, (3, 3, 3, 3)),
                                 'similarity', 'unused.png')
  plots.plot_filter_components(rng.normal(size=(4, 2, 2, 3)),
                               np.full(4, 0.25), 'filters', 'unused.png')
  assert len(saved) == 4
  for fig in saved:
    sizes = _text_sizes(fig)
    assert sizes and min(sizes) >= plots.SMALL_FONT, sizes
  rollout, _, similarity, _ = saved
  # Each colour bar (the axes a colorbar draws into) says what it shows.
  for fig, label in ((rollout, 'attention (fraction of its maximum)'),
                     (similarity, 'cosine similarity')):
    bars = [axis for axis in fig.axes if hasattr(axis, '_colorbar')]
    assert [bar.get_ylabel() for bar in bars] == [label]
  # The image x map panel is normalised: its brightest pixel is white.
  weighted = rollout.axes[1].get_images()[0].get_array()
  assert float(np.max(weighted)) == pytest.approx(1.0)
