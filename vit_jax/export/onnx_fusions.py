"""Rewrites of a jax2onnx graph into the operators ONNX Runtime runs fastest.

  fuse(model)    the ModelProto with the rewrites below applied in place

jax2onnx converts primitive by primitive, and ONNX Runtime's graph
optimiser recognises few of the results (its optimised-model dump and
profiler, ViT-B/16 at batch 8, show it; docs/deploy.md has the figures):

  * Every dense layer is an `Einsum` (`dot_general` on more than two axes),
    which ONNX Runtime's CPU provider runs about 1.4x slower than `MatMul`:
    86% of the time went there. A product of an activation with a weight
    becomes a `MatMul` with the weight reshaped to 2-D (a `Reshape` of the
    activation before when several axes are contracted, and of the result
    after when the weight has several output axes); a product of two
    activations with one contracted and one free axis on each side becomes
    `Transpose`s around a batched `MatMul`.
  * flax's LayerNorm (mean and mean of squares, reduced over the last axis)
    becomes ONNX's `LayerNormalization` (opset 17), which the runtime also
    fuses with the residual sum before it.
  * `jax.nn.softmax` (max subtracted, exponent, sum, division) becomes
    `Softmax` on its last axis.
  * `jax.nn.gelu`'s tanh form multiplies by 0.5 where ONNX Runtime's
    FastGelu fusion expects it (a reordering of two products).

Each rewrite checks the whole pattern (operators, reduced axes, constants)
and leaves anything else as it was; the replaced operators are dropped once
nothing reads them. The results agree with the graph before to float32
rounding (the tests compare the files with JAX).
"""

import itertools
from typing import List, Optional, Sequence

import numpy as np

# Wrappers that only broadcast or alias a value (jax2onnx's broadcast_in_dim
# is a Reshape and an Expand; stop_gradient an Identity).
_BROADCASTS = ('Reshape', 'Expand', 'Identity')


class _Graph:
  """Lookups over a GraphProto: producers, constants and ranks by name."""

  def __init__(self, graph):
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
    self.graph = graph
    self.producer = {out: node for node in graph.node for out in node.output}
    self.constants = {t.name: t for t in graph.initializer}
    self._to_array = numpy_helper.to_array
    self.ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in itertools.chain(graph.value_info, graph.input,
                                    graph.output)
        if info.type.tensor_type.HasField('shape')}
    self._names = itertools.count()

  def constant(self, name: str) -> Optional[np.ndarray]:
    tensor = self.constants.get(name)
    return None if tensor is None else self._to_array(tensor)

  def node(self, name: str, op_type: Optional[str] = None):
    """The node computing `name` (of `op_type` if given), or None."""
    node = self.producer.get(name)
    if node is None or (op_type and node.op_type != op_type):
      return None
    return node

  def unbroadcast(self, name: str) -> str:
    """`name` with the Reshape/Expand/Identity wrappers around it peeled."""
    node = self.node(name)
    while node is not None and node.op_type in _BROADCASTS:
      name = node.input[0]
      node = self.node(name)
    return name

  def fresh(self, hint: str) -> str:
    return f'fused_{hint}_{next(self._names)}'

  def add_constant(self, hint: str, value: np.ndarray) -> str:
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
    name = self.fresh(hint)
    self.graph.initializer.append(numpy_helper.from_array(value, name))
    self.constants[name] = self.graph.initializer[-1]
    return name


def fuse(model):
  """Applies the module's rewrites to the ModelProto `model` in place.

  Returns:
    `model`.
  """
  graph = _Graph(model.graph)
  replacements = {}  # Index of a node -> the nodes that replace it.
  for index, node in enumerate(model.graph.node):
    rewrite = _REWRITES.get(node.op_type)
    nodes = rewrite(graph, node) if rewrite else None
    if nodes is not None:
      replacements[index] = nodes
  kept = []
  for index, node in enumerate(model.graph.node):
    kept.extend(replacements.get(index, [node]))
  del model.graph.node[:]
  model.graph.node.extend(_live(kept, model.graph))
  _drop_unused_constants(model.graph)
  return model


def _live(nodes: Sequence, graph) -> List:
  """`nodes` without those whose outputs nothing reads."""
  needed = {output.name for output in graph.output}
  live = []
  for node in reversed(nodes):
    if any(out in needed for out in node.output):
      live.append(node)
      needed.update(name for name in node.input if name)
  return live[::-1]


def _drop_unused_constants(graph) -> None:
  read = {name for node in graph.node for name in node.input}
  kept = [t for t in graph.initializer if t.name in read]
  del graph.initializer[:]
  graph.initializer.extend(kept)
  names = {t.name for t in kept} | {n for node in graph.node
                                    for n in node.output}
  names |= {i.name for i in graph.input}
  infos = [i for i in graph.value_info if i.name in names]
  del graph.value_info[:]
  graph.value_info.extend(infos)


def _is_scalar(graph: _Graph, name: str, value: float, rtol=1e-6) -> bool:
  array = graph.constant(name)
  return (array is not None and array.size == 1 and
          np.allclose(array.ravel()[0], value, rtol=rtol, atol=0))


def _other(node, name: str) -> Optional[str]:
  """The other input of a two-input node one of whose inputs is `name`."""
  if list(node.input).count(name) == 2:
    return name
  if name not in node.input or len(node.input) != 2:
    return None
  return node.input[1] if node.input[0] == name else node.input[0]


def _last_axis_only(graph: _Graph, reduce_node, rank: Optional[int]) -> bool:
  """Whether `reduce_node` reduces the last axis alone, dropping it."""
  axes = graph.constant(reduce_node.input[1]) if len(
      reduce_node.input) > 1 else None
  keepdims = [a.i for a in reduce_node.attribute if a.name == 'keepdims']
  if axes is None or axes.size != 1 or rank is None or keepdims != [0]:
    return False
  return int(axes.ravel()[0]) in (-1, rank - 1)


# Einsum -> MatMul.


def _einsum_as_matmul(graph: _Graph, node) -> Optional[List]:
  """MatMul nodes computing the Einsum `node`, or None (left alone)."""
  equation = next(a.s for a in node.attribute
                  if a.name == 'equation').decode()
  if '.' in equation or equation.count('->') != 1 or len(node.input) != 2:
    return None
  inputs, out = equation.replace(' ', '').split('->')
  if inputs.count(',') != 1:
    return None
  lhs, rhs = inputs.split(',')
  if len(set(lhs)) != len(lhs) or len(set(rhs)) != len(rhs):
    return None  # Diagonals.
  weight = graph.constant(node.input[1])
  if weight is not None and graph.constant(node.input[0]) is None:
    return _times_weight(graph, node, lhs, rhs, out, weight)
  return _batched_product(graph, node, lhs, rhs, out)


def _times_weight(graph, node, lhs, rhs, out, weight) -> Optional[List]:
  """activation (..., C) x weight (C, F) with C and F any number of axes:
  the weight as (prod C, prod F), the activation and result reshaped
  around the MatMul when C or F has several axes."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  contracted = ''.join(label for label in rhs if label in lhs)
  free = rhs[len(contracted):]
  kept = lhs[:len(lhs) - len(contracted)]
  if (not contracted or not free or rhs != contracted + free or
      not lhs.endswith(contracted) or out != kept + free):
    return None
  size_c = int(np.prod(weight.shape[:len(contracted)]))
  matrix = weight.reshape(size_c, -1)
  nodes = []
  activation = node.input[0]
  zeros = [0] * len(kept)  # Reshape's "copy this axis".
  if len(contracted) > 1:
    flat = graph.fresh('lhs')
    nodes.append(helper.make_node('Reshape', [activation, graph.add_constant(
        'shape', np.array(zeros + [size_c], np.int64))], [flat]))
    activation = flat
  product = node.output[0] if len(free) == 1 else graph.fresh('matmul')
  nodes.append(helper.make_node(
      'MatMul', [activation, graph.add_constant('weight', matrix)],
      [product]))
  if len(free) > 1:
    shape = np.array(zeros + list(weight.shape[len(contracted):]), np.int64)
    nodes.append(helper.make_node(
        'Reshape', [product, graph.add_constant('shape', shape)],
        [node.output[0]]))
  return nodes


def _batched_product(graph, node, lhs, rhs, out) -> Optional[List]:
  """Two activations with shared batch axes, one contracted axis and one
  free axis each: Transposes to (batch, free, contracted) and (batch,
  contracted, free), a MatMul, and a Transpose to the Einsum's order."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  batch = [label for label in out if label in lhs and label in rhs]
  contracted = [label for label in lhs if label in rhs and label not in out]
  lhs_free = [label for label in lhs if label not in rhs]
  rhs_free = [label for label in rhs if label not in lhs]
  if (len(contracted) != 1 or len(lhs_free) != 1 or len(rhs_free) != 1 or
      sorted(out) != sorted(batch + lhs_free + rhs_free)):
    return None
  nodes = []

  def transposed(name, labels, order):
    perm = [labels.index(label) for label in order]
    if perm == list(range(len(perm))):
      return name
    result = graph.fresh('transpose')
    nodes.append(helper.make_node('Transpose', [name], [result], perm=perm))
    return result

  left = transposed(node.input[0], lhs, batch + lhs_free + contracted)
  right = transposed(node.input[1], rhs, batch + contracted + rhs_free)
  order = batch + lhs_free + rhs_free
  product = node.output[0] if ''.join(order) == out else graph.fresh(
      'matmul')
  nodes.append(helper.make_node('MatMul', [left, right], [product]))
  if product != node.output[0]:
    nodes.append(helper.make_node(
        'Transpose', [product], [node.output[0]],
        perm=[order.index(label) for label in out]))
  return nodes


# LayerNorm.


def _layer_norm(graph: _Graph, node) -> Optional[List]:
  """`node` = Add(Mul(x - mean, Mul(1 / Sqrt(var + eps), scale)), bias),
  flax's LayerNorm over the last axis, as one LayerNormalization."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  for scaled_name, bias_name in (node.input, node.input[::-1]):
    bias = graph.constant(bias_name)
    scaled = graph.node(scaled_name, 'Mul')
    if bias is None or scaled is None:
      continue
    for centred_name, factor_name in (scaled.input, scaled.input[::-1]):
      centred = graph.node(centred_name, 'Sub')
      factor = graph.node(factor_name, 'Mul')
      if centred is None or factor is None:
        continue
      fused = _layer_norm_parts(graph, centred, factor, bias)
      if fused is not None:
        x, scale, epsilon = fused
        return [helper.make_node(
            'LayerNormalization',
            [x, graph.add_constant('scale', scale),
             graph.add_constant('bias', bias.ravel())],
            [node.output[0]], axis=-1, epsilon=epsilon)]
  return None


def _layer_norm_parts(graph, centred, factor, bias):
  """(x, scale, epsilon) when `centred` is x - mean(x) and `factor` is
  Mul(rsqrt(var(x) + eps), scale), else None."""
  x = centred.input[0]
  rank = graph.ranks.get(x)
  mean = _mean_of(graph, graph.unbroadcast(centred.input[1]), x, 'ReduceSum',
                  rank)
  if mean is None:
    return None
  for rsqrt_name, scale_name in (factor.input, factor.input[::-1]):
    scale = graph.constant(scale_name)
    rsqrt = graph.node(rsqrt_name, 'Div')
    if (scale is None or rsqrt is None or scale.size != bias.size or
        scale.size != scale.shape[-1] or
        not _is_scalar(graph, rsqrt.input[0], 1.0)):
      continue
    root = graph.node(rsqrt.input[1], 'Sqrt')
    plus = root and graph.node(root.input[0], 'Add')
    if plus is None:
      continue
    for variance_name, epsilon_name in (plus.input, plus.input[::-1]):
      epsilon = graph.constant(epsilon_name)
      if (epsilon is not None and epsilon.size == 1 and
          _is_variance(graph, graph.unbroadcast(variance_name), x, mean,
                       rank)):
        return x, scale.ravel(), float(epsilon.ravel()[0])
  return None


def _mean_of(graph, name, x, reduce_op, rank):
  """The node `name` when it is Div(reduce_op(x over the last axis), its
  size), else None."""
  div = graph.node(name, 'Div')
  reduce_node = div and graph.node(div.input[0], reduce_op)
  if (reduce_node is None or reduce_node.input[0] != x or
      not _last_axis_only(graph, reduce_node, rank)):
    return None
  count = graph.constant(div.input[1])
  if count is None or count.size != 1 or count.ravel()[0] < 1:
    return None
  return div


def _is_variance(graph, name, x, mean, rank) -> bool:
  """Whether `name` is Max(0, mean(x^2) - mean(x)^2), flax's variance."""
  clipped = graph.node(name, 'Max')
  if clipped is None:
    return False
  for zero, difference_name in (clipped.input, clipped.input[::-1]):
    difference = graph.node(difference_name, 'Sub')
    if not _is_scalar(graph, zero, 0.0) or difference is None:
      continue
    square = graph.node(difference.input[1], 'Mul')
    if (square is not None and list(square.input) == [mean.output[0]] * 2 and
        _mean_of(graph, difference.input[0], x, 'ReduceSumSquare', rank)):
      return True
  return False


# Softmax.


def _softmax(graph: _Graph, node) -> Optional[List]:
  """`node` = Div(e, sum(e)) with e = Exp(x - max(x)), over the last axis,
  as one Softmax."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  exp = graph.node(node.input[0], 'Exp')
  total = graph.node(graph.unbroadcast(node.input[1]), 'ReduceSum')
  if exp is None or total is None or total.input[0] != exp.output[0]:
    return None
  shifted = graph.node(exp.input[0], 'Sub')
  if shifted is None:
    return None
  x = shifted.input[0]
  rank = graph.ranks.get(x)
  if not _last_axis_only(graph, total, rank):
    return None
  largest = graph.node(graph.unbroadcast(shifted.input[1]))
  if largest is not None and largest.op_type == 'Max':
    # jax.nn.softmax's guard against rows of -inf: max(-inf, ...).
    guarded = [name for name in largest.input
               if not _is_scalar(graph, name, -np.inf)]
    largest = graph.node(guarded[0]) if len(guarded) == 1 else None
  if (largest is None or largest.op_type != 'ReduceMax' or
      largest.input[0] != x or not _last_axis_only(graph, largest, rank)):
    return None
  return [helper.make_node('Softmax', [x], [node.output[0]], axis=-1)]


# GELU.


def _gelu_half_first(graph: _Graph, node) -> Optional[List]:
  """`node` = x * (0.5 * (1 + tanh(...(x^3)...))), jax.nn.gelu's tanh
  form, as (0.5 * x) * (1 + tanh(...)): the order ONNX Runtime's FastGelu
  fusion looks for (it checks the tanh's argument itself)."""
  from onnx import helper  # pylint: disable=g-import-not-at-top
  for x, half_name in (node.input, node.input[::-1]):
    half = graph.node(half_name, 'Mul')
    if half is None:
      continue
    for constant, plus_name in (half.input, half.input[::-1]):
      plus = graph.node(plus_name, 'Add')
      if not _is_scalar(graph, constant, 0.5) or plus is None:
        continue
      tanh = [graph.node(name, 'Tanh') for name in plus.input]
      one = [_is_scalar(graph, name, 1.0) for name in plus.input]
      if not (tanh[0] and one[1] or tanh[1] and one[0]):
        continue
      if not _cubes(graph, x, next(t for t in tanh if t is not None)):
        continue
      halved = graph.fresh('half')
      return [helper.make_node('Mul', [x, constant], [halved]),
              helper.make_node('Mul', [halved, plus_name], [node.output[0]])]
  return None


def _cubes(graph: _Graph, x: str, tanh) -> bool:
  """Whether the argument of `tanh` is c * (x + c' * x^3)."""
  scaled = graph.node(tanh.input[0], 'Mul')
  for name in scaled.input if scaled is not None else ():
    inner = graph.node(name, 'Add')
    if inner is None or x not in inner.input:
      continue
    cubed = graph.node(_other(inner, x), 'Mul')
    for term in cubed.input if cubed is not None else ():
      power = graph.node(term, 'Pow')
      if (power is not None and power.input[0] == x and
          _is_scalar(graph, power.input[1], 3.0)):
        return True
  return False


_REWRITES = {'Einsum': _einsum_as_matmul, 'Add': _layer_norm,
             'Div': _softmax, 'Mul': _gelu_half_first}
