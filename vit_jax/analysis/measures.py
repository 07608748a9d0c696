"""The paper's model analyses (Dosovitskiy et al. 2021, Section 4.5,
Figures 6-7 and Appendix D) as pure numpy functions.

Inputs are what `vit_jax.models.apply_with_intermediates` and the parameter
tree give: attention weights (B, heads, N, N) per layer, the position
embedding (1, N, D) and the patch-embedding kernel (p, p, 3, D). Tokens are
laid out as the model lays them out: `num_prefix_tokens` prefix tokens (the
class token first when there is one, then any distillation and register
tokens; none for `gap` or `map` models) followed by the patches in row-major
order (rows, then columns).

Everything runs in numpy (jax arrays are converted) at float32 or better, so
the functions work on the host in a notebook whatever device made the inputs.
"""

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

GridShape = Tuple[int, int]
AttentionPerLayer = Union[Sequence[np.ndarray], Mapping[int, np.ndarray]]


def _float_array(x) -> np.ndarray:
  x = np.asarray(x)
  return x.astype(np.promote_types(x.dtype, np.float32), copy=False)


def _check_tokens(num_tokens: int, grid_shape: GridShape,
                  num_prefix_tokens: int, what: str) -> None:
  rows, cols = grid_shape
  if num_tokens != rows * cols + num_prefix_tokens:
    raise ValueError(
        f'{what} has {num_tokens} tokens but a {rows}x{cols} patch grid with '
        f'{num_prefix_tokens} prefix token(s) needs '
        f'{rows * cols + num_prefix_tokens}.')


# ----------------------------------------------------------------------------
# Attention rollout.


def _layers_in_order(attention_weights_per_layer: AttentionPerLayer):
  """Returns the layers' weights first layer first; dicts must hold 0..L-1."""
  if isinstance(attention_weights_per_layer, Mapping):
    layers = sorted(attention_weights_per_layer)
    if layers != list(range(len(layers))):
      # Skipping a layer would silently roll out a different network.
      raise ValueError(
          f'attention rollout needs every layer from 0 on, got layers '
          f'{layers}; capture them with attention_layers=range(num_layers).')
    return [attention_weights_per_layer[layer] for layer in layers]
  return list(attention_weights_per_layer)


def residual_attention(attention_BHNN) -> np.ndarray:
  """One layer's rollout factor: (mean over heads + I), rows renormalised.

  The identity stands for the residual connection around attention. Since
  softmax rows sum to 1 this is 0.5 * A_mean + 0.5 * I; dividing by the
  actual row sum keeps rows stochastic even if the weights were rounded.

  Args:
    attention_BHNN: attention probabilities (B, heads, N, N), queries on
      axis 2, keys on axis 3.

  Returns:
    (B, N, N) row-stochastic matrix.
  """
  attention_BNN = _float_array(attention_BHNN).mean(axis=1)
  with_residual_BNN = attention_BNN + np.eye(attention_BNN.shape[-1],
                                             dtype=attention_BNN.dtype)
  return with_residual_BNN / with_residual_BNN.sum(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Rollout:
  """An attention rollout and how to read maps from it.

  Attributes:
    matrix_BNN: R = Â_L ... Â_2 Â_1 with Â_l the `residual_attention` of
      layer l. Row i tells how much output token i (after the last layer)
      draws from each input token j (before the first layer); rows sum to 1.
    has_class_token: whether token 0 is a class token (classifier `token`).
    prefix_tokens: tokens before the patches (class, distillation and
      register tokens); None means just the class token, if any.
  """
  matrix_BNN: np.ndarray
  has_class_token: bool
  prefix_tokens: Optional[int] = None

  @property
  def num_prefix_tokens(self) -> int:
    if self.prefix_tokens is None:
      return int(self.has_class_token)
    return self.prefix_tokens

  def class_token_map(self, grid_shape: GridShape) -> np.ndarray:
    """The paper's map: the class token's row over patches, (B, rows, cols).

    Not renormalised: the values sum to 1 minus what the class token keeps
    from its own input embedding. Raises ValueError for models without a
    class token (use `mean_query_map`).
    """
    return class_token_map(self.matrix_BNN, grid_shape,
                           has_class_token=self.has_class_token,
                           num_prefix_tokens=self.num_prefix_tokens)

  def mean_query_map(self, grid_shape: GridShape) -> np.ndarray:
    """Rollout averaged over patch queries, over patch keys: (B, rows, cols)."""
    return mean_query_map(self.matrix_BNN, grid_shape,
                          num_prefix_tokens=self.num_prefix_tokens)


def attention_rollout(attention_weights_per_layer: AttentionPerLayer, *,
                      has_class_token: bool,
                      num_prefix_tokens: Optional[int] = None) -> Rollout:
  """Attention rollout (Abnar & Zuidema, 2020) through all layers.

  Each layer's factor is Â_l = normalise_rows(mean_heads(A_l) + I). Token
  mixing composes like the layers do, x_L = Â_L x_{L-1}, so the rollout is
  R = Â_L ... Â_2 Â_1: the first layer's factor is applied first (rightmost).

  Args:
    attention_weights_per_layer: (B, heads, N, N) attention probabilities of
      every layer, first layer first; a list, or the {layer: weights} dict of
      `models.apply_with_intermediates` (which must hold layers 0..L-1).
    has_class_token: True for the `token` classifiers (token 0 is the class
      token), False for `gap` and `map`.
    num_prefix_tokens: all tokens before the patches (a class token, a
      distillation token, registers); None: 1 with a class token, else 0.
      Maps read only patch keys, so registers are never drawn as patches.

  Returns:
    A Rollout holding the (B, N, N) matrix; its `class_token_map` and
    `mean_query_map` give (B, rows, cols) maps over the patch grid.
  """
  layers = _layers_in_order(attention_weights_per_layer)
  if not layers:
    raise ValueError('attention rollout needs at least one layer.')
  rollout_BNN = residual_attention(layers[0])
  for attention_BHNN in layers[1:]:
    rollout_BNN = residual_attention(attention_BHNN) @ rollout_BNN
  return Rollout(rollout_BNN, has_class_token, num_prefix_tokens)


def class_token_map(rollout_BNN, grid_shape: GridShape, *,
                    has_class_token: bool,
                    num_prefix_tokens: int = 1) -> np.ndarray:
  """Row 0 of the rollout over the patch keys, as a (B, rows, cols) grid.

  Args:
    rollout_BNN: a rollout matrix (B, N, N).
    grid_shape: (rows, cols) of the patch grid.
    has_class_token: must be True; a `gap` model has no class token and so
      no class-token map (its representation pools all tokens, which
      `mean_query_map` describes).
    num_prefix_tokens: tokens before the patches, the class token included
      (more with distillation or register tokens).

  Returns:
    (B, rows, cols) attribution of the class token's output to the patches.
  """
  if not has_class_token:
    raise ValueError(
        'the class-token map is undefined for a model without a class token '
        '(classifier "gap"); use mean_query_map, the rollout averaged over '
        'query tokens, which matches gap pooling.')
  rollout_BNN = _float_array(rollout_BNN)
  _check_tokens(rollout_BNN.shape[-1], grid_shape, num_prefix_tokens,
                'the rollout')
  return rollout_BNN[:, 0, num_prefix_tokens:].reshape(-1, *grid_shape)


def mean_query_map(rollout_BNN, grid_shape: GridShape, *,
                   num_prefix_tokens: int) -> np.ndarray:
  """The rollout averaged over patch queries, over patch keys: (B, rows, cols).

  For a `gap` model (no prefix tokens) this is exactly how the pooled
  representation, the mean over all output tokens, draws on the input
  patches. Prefix tokens are dropped from queries and keys.

  Args:
    rollout_BNN: a rollout matrix (B, N, N).
    grid_shape: (rows, cols) of the patch grid.
    num_prefix_tokens: tokens before the patches (0 for `gap`).

  Returns:
    (B, rows, cols) map.
  """
  rollout_BNN = _float_array(rollout_BNN)
  _check_tokens(rollout_BNN.shape[-1], grid_shape, num_prefix_tokens,
                'the rollout')
  p = num_prefix_tokens
  return rollout_BNN[:, p:, p:].mean(axis=1).reshape(-1, *grid_shape)


# ----------------------------------------------------------------------------
# Mean attention distance.


def patch_distances(grid_shape: GridShape,
                    patch_size_pixels: Union[int, Sequence[int]]) -> np.ndarray:
  """Euclidean pixel distances between patch centres: (P, P), P = rows*cols.

  Patches are numbered row-major as the model flattens them. Centres are
  one patch apart, so a distance is the patch-index offset times the patch
  size in pixels (height and width scaled separately for non-square patches).
  """
  rows, cols = grid_shape
  patch_h, patch_w = np.broadcast_to(patch_size_pixels, (2,))
  row_P, col_P = np.divmod(np.arange(rows * cols), cols)
  dy_PP = (row_P[:, None] - row_P[None, :]) * float(patch_h)
  dx_PP = (col_P[:, None] - col_P[None, :]) * float(patch_w)
  return np.sqrt(dy_PP**2 + dx_PP**2)


def mean_attention_distance(attention_BHNN, grid_shape: GridShape,
                            patch_size_pixels: Union[int, Sequence[int]], *,
                            num_prefix_tokens: int) -> np.ndarray:
  """The paper's "attention distance" of every head of one layer.

  For each query patch, the attention-weighted mean of the pixel distances
  to the key patches, then averaged over query patches and images. Prefix
  tokens (the class token) are dropped as queries and as keys, and each
  query's weights are renormalised to sum to 1 over the patch keys, so the
  result is a mean over patches even where a head attends to the class token.

  Args:
    attention_BHNN: attention probabilities (B, heads, N, N) of one layer.
    grid_shape: (rows, cols) of the patch grid.
    patch_size_pixels: input pixels per patch side, an int or (h, w); for a
      hybrid the effective size (`models.effective_patch_pixels`).
    num_prefix_tokens: tokens before the patches (0 for `gap`).

  Returns:
    (heads,) mean distances in pixels.
  """
  attention_BHNN = _float_array(attention_BHNN)
  _check_tokens(attention_BHNN.shape[-1], grid_shape, num_prefix_tokens,
                'the attention')
  p = num_prefix_tokens
  patches_BHPP = attention_BHNN[..., p:, p:]
  mass_BHP1 = patches_BHPP.sum(axis=-1, keepdims=True)
  # A query that put all its mass on the class token has no patch average;
  # it contributes 0 rather than NaN.
  patches_BHPP = patches_BHPP / np.maximum(mass_BHP1, np.finfo(
      patches_BHPP.dtype).tiny)
  distances_PP = patch_distances(grid_shape, patch_size_pixels)
  per_query_BHP = np.einsum('bhqk,qk->bhq', patches_BHPP, distances_PP)
  return per_query_BHP.mean(axis=(0, 2))


def mean_attention_distance_per_layer(
    attention_weights_per_layer: AttentionPerLayer, grid_shape: GridShape,
    patch_size_pixels: Union[int, Sequence[int]], *,
    num_prefix_tokens: int) -> np.ndarray:
  """`mean_attention_distance` of every layer given: (layers, heads).

  Rows follow the list order, or the sorted layer numbers of a dict.
  """
  if isinstance(attention_weights_per_layer, Mapping):
    layers = [attention_weights_per_layer[layer]
              for layer in sorted(attention_weights_per_layer)]
  else:
    layers = list(attention_weights_per_layer)
  return np.stack([
      mean_attention_distance(attention_BHNN, grid_shape, patch_size_pixels,
                              num_prefix_tokens=num_prefix_tokens)
      for attention_BHNN in layers])


# ----------------------------------------------------------------------------
# Position embeddings and patch-embedding filters.


def position_embedding_similarity(pos_embedding, grid_shape: GridShape, *,
                                  num_prefix_tokens: int) -> np.ndarray:
  """Cosine similarity between the patches' position embeddings.

  Args:
    pos_embedding: (1, N, D) or (N, D), N = num_prefix_tokens + rows * cols
      (the `Transformer/posembed_input/pos_embedding` parameter).
    grid_shape: (rows, cols) of the patch grid.
    num_prefix_tokens: leading embeddings to drop (1 for the class token).

  Returns:
    (rows, cols, rows, cols): [r, c] is the similarity map of patch (r, c)
    with every patch, the paper's grid of grids.
  """
  pos_embedding = _float_array(pos_embedding)
  pos_ND = pos_embedding.reshape(pos_embedding.shape[-2:])
  _check_tokens(pos_ND.shape[0], grid_shape, num_prefix_tokens,
                'the position embedding')
  patches_PD = pos_ND[num_prefix_tokens:]
  norms_P1 = np.linalg.norm(patches_PD, axis=-1, keepdims=True)
  unit_PD = patches_PD / np.maximum(norms_P1, np.finfo(patches_PD.dtype).tiny)
  return (unit_PD @ unit_PD.T).reshape(*grid_shape, *grid_shape)


def embedding_filter_components(
    embedding_kernel, num_components: int = 28
) -> Tuple[np.ndarray, np.ndarray]:
  """Principal components of the patch-embedding filters.

  The kernel (p, p, C, D) holds D filters; each is one sample of dimension
  p*p*C (flattened row-major, so components reshape back to (p, p, C)).
  The samples are centred over the D filters and decomposed by SVD.
  Components have unit norm; SVD leaves each one's sign arbitrary, so it is
  fixed to make the largest-magnitude entry positive.

  Args:
    embedding_kernel: the `embedding/kernel` parameter, (p, p, 3, D) for
      RGB input.
    num_components: how many leading components to return (the paper shows
      28).

  Returns:
    (components (num_components, p, p, C), explained variance ratio
    (num_components,): each component's share of the total variance).
  """
  kernel = _float_array(embedding_kernel)
  *filter_shape, num_filters = kernel.shape
  filters_DF = kernel.reshape(-1, num_filters).T
  max_components = min(filters_DF.shape)
  if not 0 < num_components <= max_components:
    raise ValueError(
        f'num_components must be in [1, {max_components}] for {num_filters} '
        f'filters of dimension {filters_DF.shape[1]}, got {num_components}.')
  centred_DF = filters_DF - filters_DF.mean(axis=0, keepdims=True)
  _, singular_values, components_KF = np.linalg.svd(centred_DF,
                                                    full_matrices=False)
  variance = singular_values**2
  ratio = variance / variance.sum()
  components_KF = components_KF[:num_components]
  peak_K = np.argmax(np.abs(components_KF), axis=-1)
  signs_K1 = np.sign(components_KF[np.arange(num_components), peak_K])[:, None]
  components_KF = components_KF * signs_K1
  return (components_KF.reshape(num_components, *filter_shape),
          ratio[:num_components])
