"""The one translation of an experiment config into what each module needs.

`from_config(config)` builds a `RunSpec`: one frozen spec per concern, each
defined beside the module that consumes it and checked once on construction
(`DataSpec` and its `Augmentation`, `OptimSpec`, `StepSpec`, `MixSpec`,
`MeshSpec`, `EvalSpec` and its `FewshotSpec`). A setting keeps its config
key's name in every spec, so an error names the key to fix. Below the
training loop no module reads the config; `from_config` runs before the
workdir is created, with the checks that span concerns (batch sizes against
devices, the image size against the model's patches). `data_spec(config)`,
`optim_spec(config)` etc. build one spec, for tools that need only it.
"""

import dataclasses
from typing import Any, Optional

import jax
import ml_collections

from vit_jax.data import preprocess
from vit_jax.data import spec as dataspec
from vit_jax import evaluators
from vit_jax.evaluators import imagenet
from vit_jax.evaluators import linear_fewshot
from vit_jax import models
from vit_jax import sharding
from vit_jax.training import mixing
from vit_jax.training import optim
from vit_jax.training import steps


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A training run: the loop's own settings and one spec per concern.

  Attributes:
    model_name: a registered variant (`vit_jax.models`).
    model: the config's model section, frozen (its family's keys).
    seed: init and dropout seed (the data seed is `data.seed`).
    total_steps: training steps.
    log_every: steps between train metrics; 0: only at the last step.
    checkpoint_every: steps between checkpoints; 0: only at the last step.
    keep_checkpoints: checkpoints kept, >= 1.
    pretrained_path: weights to fine-tune from, or None.
    posemb_resize: how their position embedding is resized
      (`vit_jax.models.posemb.METHODS`).
    export_npz: write the final params in the released layout.
    config_json: the config, recorded in the workdir.
    data: `vit_jax.data.spec.DataSpec`.
    optim: `vit_jax.training.optim.OptimSpec`.
    step: `vit_jax.training.steps.StepSpec`.
    mix: `vit_jax.training.mixing.MixSpec`.
    mesh: `vit_jax.sharding.MeshSpec`.
    evals: `vit_jax.evaluators.EvalSpec`.
  """
  model_name: str
  model: Any
  seed: int
  total_steps: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  pretrained_path: Optional[str]
  posemb_resize: str
  export_npz: bool
  config_json: str
  data: dataspec.DataSpec
  optim: optim.OptimSpec
  step: steps.StepSpec
  mix: mixing.MixSpec
  mesh: sharding.MeshSpec
  evals: evaluators.EvalSpec

  def __post_init__(self):
    # total_steps: checked by OptimSpec, whose schedule spans it.
    for key in ('log_every', 'checkpoint_every'):
      if getattr(self, key) < 0:
        raise ValueError(f'config.{key} must be >= 0 (0: only at the last '
                         f'step), got {getattr(self, key)}')
    if self.keep_checkpoints < 1:
      raise ValueError(f'config.keep_checkpoints must be >= 1, got '
                       f'{self.keep_checkpoints}')


def augmentation(config) -> preprocess.Augmentation:
  """The per-example training augmentation of `config`."""
  return preprocess.Augmentation(**_keys(config, preprocess.Augmentation))


def data_spec(config) -> dataspec.DataSpec:
  """What the run reads, and how."""
  return dataspec.DataSpec(
      dataset=config.dataset, data_dir=config.data_dir,
      train_split=config.train_split, eval_split=config.eval_split,
      label_map=config.label_map, num_classes=config.num_classes,
      image_size=config.image_size, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      shuffle_buffer=config.shuffle_buffer, cache=config.cache,
      prefetch=config.prefetch, augmentation=augmentation(config))


def optim_spec(config) -> optim.OptimSpec:
  """The optimiser and its learning-rate schedule."""
  return optim.OptimSpec(**_keys(config, optim.OptimSpec))


def step_spec(config) -> steps.StepSpec:
  """The train step's loss, accumulation and EMA."""
  return steps.StepSpec(**_keys(config, steps.StepSpec))


def mix_spec(config) -> mixing.MixSpec:
  """The batch-level augmentation (Mixup / CutMix)."""
  return mixing.MixSpec(**_keys(config, mixing.MixSpec))


def mesh_spec(config) -> sharding.MeshSpec:
  """The device mesh and the train state's shardings."""
  return sharding.MeshSpec(
      mesh_model_axis=config.mesh_model_axis, fsdp=config.fsdp,
      sharding_rules=tuple(tuple(rule) for rule in config.sharding_rules))


def eval_spec(config) -> evaluators.EvalSpec:
  """The evaluations; the data_dirs left None fall back to config.data_dir."""
  fewshot = linear_fewshot.FewshotSpec(
      fewshot_every=config.fewshot_every,
      fewshot_dataset=config.fewshot_dataset,
      fewshot_data_dir=config.fewshot_data_dir or config.data_dir,
      fewshot_train_split=config.fewshot_train_split,
      fewshot_test_split=config.fewshot_test_split,
      fewshot_shots=tuple(config.fewshot_shots),
      fewshot_seeds=tuple(config.fewshot_seeds),
      fewshot_val_per_class=config.fewshot_val_per_class)
  return evaluators.EvalSpec(
      eval_every=config.eval_every, loss=config.loss,
      ema_decay=config.ema_decay,
      extra_evals=imagenet.extra_eval_names(config.extra_evals),
      extra_evals_data_dir=config.extra_evals_data_dir or config.data_dir,
      fewshot=fewshot)


def _keys(config, spec_class) -> dict:
  """The config's values of the fields of `spec_class` (same names)."""
  return {f.name: config[f.name] for f in dataclasses.fields(spec_class)}


def from_config(config, num_devices: Optional[int] = None) -> RunSpec:
  """The checked specs of `config`, before anything runs.

  Args:
    config: an experiment config (configs/common.py keys).
    num_devices: devices the run spreads over (default: all of all
      processes).

  Returns:
    The RunSpec.

  Raises:
    ValueError: one line naming the config key to fix.
  """
  spec = RunSpec(
      model_name=config.model_name,
      model=ml_collections.FrozenConfigDict(config.model),
      seed=config.seed, total_steps=config.total_steps,
      log_every=config.log_every, checkpoint_every=config.checkpoint_every,
      keep_checkpoints=config.keep_checkpoints,
      pretrained_path=config.pretrained_path,
      posemb_resize=config.posemb_resize, export_npz=config.export_npz,
      config_json=config.to_json_best_effort(indent=2, sort_keys=True),
      data=data_spec(config), optim=optim_spec(config),
      step=step_spec(config), mix=mix_spec(config), mesh=mesh_spec(config),
      evals=eval_spec(config))
  _check_batches(spec, num_devices or jax.device_count())
  _check_image_size(spec)
  return spec


def build_model(spec: RunSpec, num_classes: int):
  """The model of `spec.model_name` with `spec.model`'s settings."""
  # A RunSpec answers `model_name` and `model` as the config does.
  return models.create_model_from_config(spec, num_classes)


def _check_batches(spec: RunSpec, num_devices: int) -> None:
  """Batches that split evenly into micro-batches and over the devices."""
  batch_size = spec.data.batch_size
  accum = spec.step.grad_accum_steps
  if batch_size % accum:
    raise ValueError(f'config.batch_size {batch_size} is not divisible by '
                     f'config.grad_accum_steps {accum}')
  data_devices = num_devices // spec.mesh.mesh_model_axis
  micro_batch = batch_size // accum
  if micro_batch % data_devices:
    raise ValueError(
        f'the micro-batch of {micro_batch} examples (batch_size / '
        f'grad_accum_steps) does not split over {data_devices} data-parallel '
        'devices; choose a multiple')
  if spec.data.eval_batch_size % data_devices:
    raise ValueError(
        f'config.eval_batch_size {spec.data.eval_batch_size} does not split '
        f'over {data_devices} data-parallel devices; choose a multiple')


def _check_image_size(spec: RunSpec) -> None:
  """An image size the patches do not tile would train on a crop only."""
  image_size = spec.data.image_size
  patch_h, patch_w = models.patch_pixels(build_model(spec, num_classes=1))
  if image_size % patch_h or image_size % patch_w:
    raise ValueError(
        f'config.image_size {image_size} is not a multiple of the '
        f'model\'s {patch_h}x{patch_w}-pixel patches (patch size times the '
        'stem\'s stride): the rest of each image would be dropped; choose a '
        'multiple')
