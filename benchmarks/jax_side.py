"""Our side of `benchmarks.benchmark`: the jitted step, its FLOPs and memory.

`build_step` builds one inference or training step of a ViT on a mesh,
compiles it and reads XLA's cost and memory analyses of the compiled
program; `matmul_step` is the large matmul whose rate is the peak the step
is compared with. The timm side is `timm_side`; timing both is
`protocol`.

`train` steps are forward, backward and an SGD momentum update (as timm's
step in timm_side), jitted with the parameters and optimizer state
donated. FLOPs come from XLA's cost analysis of the compiled step (forward
+ backward for training). Under the token head our last block computes the
class token alone (see vit_blocks.EncoderBlock); timm's computes every
token, so `every_token_flops` is the FLOPs of our step computing every token
too.
"""

import functools
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import models
from vit_jax import sharding
from vit_jax.training import run_spec
from vit_jax.training import setup as setup_lib

# What one step does, and its matmul operand dtypes (params stay float32).
MODES = ('inference', 'train')
DTYPES = ('float32', 'bfloat16')

# Side of the square matmul that measures the peak: 2 * 4096^3 is 137 GFLOP,
# about 0.3-0.7 s on two cores, large enough to reach the library's best.
PEAK_MATMUL_SIZE = 4096

# The training step's update, as in timm's step (timm_side).
_OPTIMIZER = optax.sgd(learning_rate=1e-3, momentum=0.9)

Step = Callable[[], None]


def matmul_step(dtype: Any, size: int = PEAK_MATMUL_SIZE):
  """A large square matmul to time against the model: (step, flops).

  Bfloat16 operands accumulate in float32 as the model's matmuls do. Its
  fastest run is the `matmul_peak_tflops` of the results: the best the
  matrix units manage under the conditions the model ran in.

  Args:
    dtype: operand dtype.
    size: the side of the square matrices.

  Returns:
    A callable that runs one matmul to completion, and its FLOPs.
  """
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda a, b: jnp.dot(a, b,
                                        preferred_element_type=jnp.float32))
  return lambda: matmul(a, b).block_until_ready(), 2.0 * size**3


def cost_flops(stage: Any) -> float:
  """FLOPs from XLA's cost analysis of a lowered or compiled step."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def compiled_stats(compiled: Any, num_devices: int) -> Dict[str, float]:
  """FLOPs and memory of one compiled step (all devices together)."""
  memory = compiled.memory_analysis()
  # An SPMD program is the per-device program: scale to the whole step.
  stats = {'flops': cost_flops(compiled) * num_devices}
  if memory is not None:
    # All buffers the step holds at once at worst; XLA's own peak estimate
    # (from its buffer assignment) can be lower, where buffers reuse space.
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    stats['xla_buffers_bytes'] = float(total) * num_devices
    stats['xla_peak_bytes'] = float(
        getattr(memory, 'peak_memory_in_bytes', 0) or total) * num_devices
    stats['xla_temp_bytes'] = float(memory.temp_size_in_bytes) * num_devices
  return stats


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def _jitted_step(model: Any, train: bool, mesh: jax.sharding.Mesh):
  """`jit_step(every_token)`: our jitted step, on (params, images) for
  inference and on ((params, SGD state), images, labels) for training.

  `every_token=True` has the last block compute every token, as timm's does
  (capturing the block outputs turns vit_blocks.Encoder's class-token-only
  block off); it is only lowered, for its FLOPs.
  """
  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)

  def logits_fn(params, images, every_token):
    if not every_token:
      return model.apply({'params': params}, images, train=train)
    logits, _ = model.apply({'params': params}, images, train=train,
                            capture_block_outputs=True,
                            mutable=['intermediates'])
    return logits

  if not train:
    return lambda every_token: jax.jit(
        functools.partial(logits_fn, every_token=every_token),
        in_shardings=(replicated, batch_sharding))

  def train_step(state, images, labels, every_token):
    params, opt_state = state
    loss_fn = lambda params: _cross_entropy(
        logits_fn(params, images, every_token), labels)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = _OPTIMIZER.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return lambda every_token: jax.jit(
      functools.partial(train_step, every_token=every_token),
      donate_argnums=0,
      in_shardings=(replicated, batch_sharding, batch_sharding),
      out_shardings=(replicated, replicated))


def _step_arguments(model: Any, image_size: int, train: bool,
                    mesh: jax.sharding.Mesh, images_np: np.ndarray,
                    labels_np: np.ndarray):
  """(params, the step's arguments) on the mesh: params (and SGD state)
  replicated, the batch split over 'data'."""
  replicated = sharding.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  params = jax.device_put(models.init_params(
      model, jax.random.PRNGKey(0), (image_size, image_size)), replicated)
  images = jax.device_put(jnp.asarray(images_np), batch_sharding)
  if not train:
    return params, (params, images)
  labels = jax.device_put(jnp.asarray(labels_np), batch_sharding)
  state = (params, jax.device_put(_OPTIMIZER.init(params), replicated))
  return params, (state, images, labels)


def build_step(model_name: str, image_size: int, num_classes: int, mode: str,
               dtype: Any, mesh: jax.sharding.Mesh, images_np: np.ndarray,
               labels_np: np.ndarray, overrides: Dict[str, Any],
               attention: str = 'auto'):
  """Builds and compiles one step of our model.

  Args:
    model_name: a released variant name.
    image_size: square input side in pixels.
    num_classes: head size.
    mode: one of MODES.
    dtype: matmul operand dtype.
    mesh: the step's mesh; the batch is split over its 'data' axis.
    images_np: (batch, image_size, image_size, 3) float32 images.
    labels_np: (batch,) int32 labels (read only for training).
    overrides: architecture overrides for `models.create_model`.
    attention: one of vit_sublayers.ATTENTION_IMPLEMENTATIONS.

  Returns:
    (step, info): `step()` runs one step to completion; `info` has 'params',
    'flops' and the XLA memory figures of `compiled_stats`, and
    'every_token_flops'.
  """
  model = models.create_model(model_name, num_classes=num_classes, dtype=dtype,
                              attention=attention, **overrides)
  train = mode == 'train'
  params, args = _step_arguments(model, image_size, train, mesh, images_np,
                                 labels_np)
  jit_step = _jitted_step(model, train, mesh)
  lowered = jit_step(False).lower(*args)
  compiled = lowered.compile()
  info = {'params': models.count_params(params),
          **compiled_stats(compiled, mesh.size)}
  # Our step's FLOPs scaled by what computing every token adds (XLA's cost
  # analysis of the two lowered steps): the work timm's step does.
  info['every_token_flops'] = info['flops'] * (
      cost_flops(jit_step(True).lower(*args)) / cost_flops(lowered))

  if not train:
    return lambda: compiled(*args).block_until_ready(), info
  holder = [args[0]]
  _, images, labels = args

  def step():
    # The state is donated: each step runs on the one before's output.
    holder[0], loss = compiled(holder[0], images, labels)
    loss.block_until_ready()
  return step, info


def build_config_step(spec: run_spec.RunSpec, num_classes: int, mode: str,
                      images_np: np.ndarray, labels_np: np.ndarray):
  """Builds and compiles the training loop's own step for a config's `spec`.

  Training times `train.make_setup(spec, ...).train_step`, the very step
  `vit_jax.main` runs (the config's optimizer, loss, mixing, dtype and
  sharding); inference times the config's model on the eval path.

  Returns:
    (step, info) as `build_step`; 'every_token_flops' equals 'flops' (no
    other framework is compared).
  """
  setup = setup_lib.make_setup(spec, num_classes)
  state = setup.init_state(jax.random.PRNGKey(0))
  batch = sharding.global_batch(
      {'image': images_np, 'label': labels_np}, setup.mesh)
  if mode == 'train':
    compiled = setup.train_step.lower(state, batch).compile()
  else:
    apply = jax.jit(lambda params, images: setup.model.apply(
        {'params': params}, images, train=False))
    compiled = apply.lower(state.params, batch['image']).compile()
  info = {'params': models.count_params(state.params),
          **compiled_stats(compiled, setup.mesh.size)}
  info['every_token_flops'] = info['flops']
  if mode != 'train':
    return (lambda: compiled(state.params, batch['image']).block_until_ready(),
            info)
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], batch)
    metrics['loss'].block_until_ready()
  return step, info
