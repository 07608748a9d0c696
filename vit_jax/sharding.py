"""Device mesh and shardings: distribution is configuration, not code.

The mesh has two axes, 'data' and 'model'. Batches are split over 'data'.
Every array of the train state (params, optimizer state, EMA) is placed by
the same rule, applied to its path and shape:
  1. the first of `sharding_rules` (regex, PartitionSpec tuple) whose
     regex is found in the path, e.g. ('MlpBlock_0/Dense_0/kernel',
     (None, 'model'));
  2. else, with `fsdp`, its largest dimension divisible by the 'data'
     axis is split over 'data' (FSDP/ZeRO-3: XLA gathers for the matmuls);
  3. else it is replicated.
The model code knows nothing of devices: it names the axes of its
activations ('batch', 'tokens', 'embed', see vit_jax.models.vit_blocks),
and ACTIVATION_RULES map them onto the mesh while a step is traced. Without the
constraint, a scanned encoder with FSDP params lets the partitioner replicate
the activations: every device would compute the whole batch.
`MeshSpec` holds these settings (config.mesh_model_axis, fsdp,
sharding_rules).
"""

import contextlib
import dataclasses
import re
from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS, MODEL_AXIS = 'data', 'model'


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """How a run spreads over devices: the config keys of the same names,
  checked once on construction.

  Attributes:
    mesh_model_axis: devices on the 'model' axis; the rest form 'data'.
    fsdp: split the train state over 'data' (rule 2 of the module
      docstring).
    sharding_rules: ((path regex, PartitionSpec tuple), ...), tried first.
  """
  mesh_model_axis: int = 1
  fsdp: bool = False
  sharding_rules: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()

  def __post_init__(self):
    if self.mesh_model_axis < 1:
      raise ValueError(f'config.mesh_model_axis must be >= 1, got '
                       f'{self.mesh_model_axis}')
    for rule in self.sharding_rules:
      if len(rule) != 2:
        raise ValueError(f'config.sharding_rules has {rule!r}; each rule is '
                         '(path regex, PartitionSpec tuple)')
      try:
        re.compile(rule[0])
      except re.error as e:
        raise ValueError(f'config.sharding_rules has the regex {rule[0]!r}, '
                         f'which does not compile ({e})') from None

  def make_mesh(self, devices=None) -> jax.sharding.Mesh:
    """The (data, model) mesh of `devices` (default: all of all processes)."""
    return make_mesh(self.mesh_model_axis, devices)

  def tree_shardings(self, tree_shapes: Any, mesh) -> Any:
    """NamedShardings of a tree of arrays by this spec's rules."""
    return tree_shardings(tree_shapes, mesh, self.sharding_rules, self.fsdp)


# Logical activation axes -> mesh axes.
ACTIVATION_RULES = (('batch', DATA_AXIS), ('tokens', None), ('embed', None))


@contextlib.contextmanager
def activation_sharding(mesh):
  """Mesh and logical-axis rules in force while a step traces."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(ACTIVATION_RULES):
    yield


class MeshBound:
  """A jitted function whose calls and lowerings run in
  `activation_sharding(mesh)` (jax.set_mesh is refused inside jit)."""

  def __init__(self, jitted, mesh):
    self._jitted, self._mesh = jitted, mesh

  def __call__(self, *args):
    with activation_sharding(self._mesh):
      return self._jitted(*args)

  def lower(self, *args):
    with activation_sharding(self._mesh):
      return self._jitted.lower(*args)

  def eval_shape(self, *args):
    with activation_sharding(self._mesh):
      return self._jitted.eval_shape(*args)


def first_devices(num_devices: Optional[int] = None, *,
                  hint: str = '') -> List[jax.Device]:
  """The first `num_devices` of jax.devices() (all of them for None).

  Args:
    num_devices: how many; None for all.
    hint: appended to the error, e.g. how the caller's user gets more.

  Raises:
    ValueError: there are fewer devices than that.
  """
  devices = jax.devices()
  if num_devices is None:
    return devices
  if num_devices > len(devices):
    raise ValueError(f'{num_devices} devices requested but there are only '
                     f'{len(devices)}{hint}')
  return devices[:num_devices]


def make_mesh(model_axis_size: int = 1, devices=None) -> jax.sharding.Mesh:
  """A (data, model) mesh of `devices` (default: all, of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  num_devices = len(devices)
  if num_devices % model_axis_size:
    raise ValueError(f'mesh_model_axis={model_axis_size} does not divide the '
                     f'{num_devices} devices')
  # Auto axes: the partitioner propagates shardings through the model, and
  # with_sharding_constraint works (Explicit axes would reject it).
  return jax.make_mesh((num_devices // model_axis_size, model_axis_size),
                       (DATA_AXIS, MODEL_AXIS),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def abstract_arrays(shapes: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs that carry their sharding, never allocated.

  What `jit(...).lower` compiles for and what a checkpoint restores into.

  Args:
    shapes: a tree of arrays or ShapeDtypeStructs (e.g. jax.eval_shape's).
    shardings: the matching tree of shardings.

  Returns:
    The tree of jax.ShapeDtypeStruct with `.sharding` set.
  """
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)


def path_string(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _fsdp_spec(shape: Sequence[int], data_size: int) -> P:
  """Splits the largest dimension that the data axis divides."""
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] >= data_size and shape[dim] % data_size == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def spec_for(path: str, shape: Sequence[int], mesh, rules, fsdp: bool) -> P:
  for pattern, spec in rules:
    if re.search(pattern, path):
      if len(spec) > len(shape):
        raise ValueError(f'sharding rule {pattern!r} -> {spec} has more axes '
                         f'than {path} {tuple(shape)}')
      return P(*spec)
  if fsdp and len(shape) and mesh.shape[DATA_AXIS] > 1:
    return _fsdp_spec(shape, mesh.shape[DATA_AXIS])
  return P()


def tree_shardings(tree_shapes: Any, mesh, rules=(), fsdp: bool = False):
  """NamedShardings for every leaf of a tree of arrays/ShapeDtypeStructs."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(
          mesh, spec_for(path_string(path), np.shape(x), mesh, rules, fsdp)),
      tree_shapes)


def global_batch(local_batch, mesh):
  """Host-local numpy batch (this process's rows) -> global sharded arrays.

  The same call serves 1 and N processes: each contributes its rows, in
  process order, to the 'data' axis.
  """
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)
