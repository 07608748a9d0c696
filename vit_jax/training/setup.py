"""A run's model, optimizer, mesh and jitted steps, and its first state.

`make_setup(spec, num_classes)` builds everything the loop needs once:
the model, its optimizer, the device mesh and the train step and state
initialiser jitted with explicit shardings; `initial_state` restores the
newest intact checkpoint or initialises (from pretrained weights when the
run fine-tunes).
"""

import dataclasses
import functools
from typing import Callable, Optional, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import models
from vit_jax import sharding
from vit_jax.training import mixing
from vit_jax.training import optim
from vit_jax.training import run_spec
from vit_jax.training import steps
from vit_jax.weights import pretrained

RunSpec = run_spec.RunSpec


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the loop needs, built once.

  Attributes:
    model: the module being trained.
    mesh: the (data, model) device mesh.
    state_shardings: a TrainState whose leaves are the NamedShardings of the
      state's arrays.
    train_step: jitted (state, global batch) -> (state, metrics); the state
      is donated.
    init_state: jitted (rng) -> state, created already sharded.
  Both functions are `sharding.MeshBound`: they also `.lower` and
  `.eval_shape`.
  """
  model: nn.Module
  mesh: jax.sharding.Mesh
  state_shardings: steps.TrainState
  train_step: Callable[[steps.TrainState, steps.Batch],
                       Tuple[steps.TrainState, steps.Metrics]]
  init_state: Callable[[jax.Array], steps.TrainState]


def make_setup(spec: RunSpec, num_classes: int, devices=None) -> Setup:
  """Model, optimizer, mesh and the jitted steps with explicit shardings.

  `devices` defaults to all devices of all processes.
  """
  model = run_spec.build_model(spec, num_classes)
  optimizer = optim.make_optimizer(
      spec.optim, no_weight_decay=models.family_of(model).no_weight_decay)
  mesh = spec.mesh.make_mesh(devices)
  size = spec.data.image_size
  images = jnp.zeros((1, size, size, 3))
  step = spec.step

  def init_state(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    params = model.init(params_rng, images, train=False)['params']
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=optimizer.init(params),
        ema_params=params if step.ema_decay else {}, rng=dropout_rng)

  state_shapes = jax.eval_shape(init_state, jax.random.PRNGKey(0))
  state_shardings = spec.mesh.tree_shardings(state_shapes, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(
      functools.partial(
          steps.train_step, model=model, optimizer=optimizer,
          learning_rate=optim.learning_rate_schedule(spec.optim),
          loss=step.loss, label_smoothing=step.label_smoothing,
          grad_accum_steps=step.grad_accum_steps, ema_decay=step.ema_decay,
          mix_batch=mixing.make_mix_fn(spec.mix, num_classes)),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0)
  init = jax.jit(init_state, out_shardings=state_shardings)
  bind = lambda jitted: sharding.MeshBound(jitted, mesh)
  return Setup(model, mesh, state_shardings, bind(train_step), bind(init))


def initial_state(spec: RunSpec, setup: Setup, checkpointer):
  """Restores the newest intact checkpoint, or initialises (from a released
  .npz when `spec.pretrained_path` is set)."""
  abstract = sharding.abstract_arrays(
      setup.init_state.eval_shape(jax.random.PRNGKey(0)),
      setup.state_shardings)
  restored = checkpointer.restore_intact(abstract)
  if restored is not None:
    state, step = restored
    logging.info('Resuming from step %d', step)
    return state
  state = setup.init_state(jax.random.PRNGKey(spec.seed))
  if spec.pretrained_path:
    state = _load_pretrained(spec, setup, state)
  return state


def preprocessing(pretrained_path: Optional[str],
                  model: nn.Module) -> models.Preprocessing:
  """The pixel normalisation to train and evaluate with: the one the
  weights of `pretrained_path` expect when fine-tuning from them (their
  sidecar's or hub config's), else the model family's."""
  if pretrained_path:
    return pretrained.load_preprocessing(pretrained_path, model)
  return models.family_of(model).preprocessing


def _load_pretrained(spec: RunSpec, setup: Setup, state):
  size = spec.data.image_size
  params = pretrained.load_for_fine_tuning(
      spec.pretrained_path, setup.model, jax.device_get(state.params),
      image_size=(size, size), method=spec.posemb_resize)
  params = jax.device_put(params, setup.state_shardings.params)
  logging.info('Loaded %s for fine-tuning', spec.pretrained_path)
  return state.replace(params=params,
                       ema_params=params if spec.step.ema_decay else {})
