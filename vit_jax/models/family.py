"""What a model family tells the rest of the library.

A family (ViT with its R+ViT hybrids, MLP-Mixer) owns everything that depends
on its module and its parameter tree: its named variants, its config section
(`config.model`: every key, its default and what it means), how a model is
built from a name, from a config or from a checkpoint's arrays, its released
`.npz` key layout, what it computes along the way (intermediates), its
features (the model without its head) and the pixel normalisation its weights
expect. Training, `pretrained`, the programs and the evaluators only call these
methods, so they never name a family's keys or parameter paths, and a new
family is one module implementing `ModelFamily` plus one
`vit_jax.models.register` line.

Shape letters: B batch, H/W image height/width, C classes, F features.
"""

import abc
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vit_jax.models import precision

Params = Dict[str, Any]
FlatParams = Dict[str, np.ndarray]  # '/'-joined parameter paths -> arrays.


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How uint8 pixels become model input: (x - mean) / std per channel.

  The default, (x - 127.5) / 127.5, maps [0, 255] to [-1, 1]: what the
  released ViT and Mixer weights expect (no ImageNet mean/std).
  """
  mean: Tuple[float, float, float] = (127.5, 127.5, 127.5)
  std: Tuple[float, float, float] = (127.5, 127.5, 127.5)


@dataclasses.dataclass(frozen=True)
class CheckpointFacts:
  """What a parameter tree says about the model that fits it.

  Attributes:
    model_kwargs: attributes of the family's module read off the arrays
      (e.g. num_classes, classifier, representation_size); they override the
      variant's when the model is built.
    expected: the architecture the shapes fix (e.g. hidden_size, patch_size,
      num_layers): a model built without a name takes it as it is, and a
      named model that does not have it does not fit the file (an error).
    native_grid: the (rows, cols) token grid the arrays were trained at, or
      None when the family has no fixed grid.
  """
  model_kwargs: Mapping[str, Any]
  expected: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  native_grid: Optional[Tuple[int, int]] = None


class CheckpointMismatchError(ValueError):
  """The checkpoint's parameters do not fit the model."""


class ForeignLayout(abc.ABC):
  """Another library's parameter layout of a family's models (timm's state
  dict, as timm's `checkpoint_filter_fn` reads ours), mapped to the family's
  tree. A family lists its layouts in `ModelFamily.foreign_layouts`, under
  the name of the weight format whose container holds them
  (`vit_jax.weights.formats`): that format reads the files, asks each
  family's layout of its name whether it `recognises` them, and checks the
  tree `to_params` returns against `ModelFamily.build(model_kwargs)`.

  Attributes:
    describes: which checkpoints it reads, for messages (e.g. "timm's
      VisionTransformer: arrays with patch_embed.proj").
  """
  describes: str

  @abc.abstractmethod
  def recognises(self, config: Mapping[str, Any],
                 arrays: FlatParams) -> bool:
    """Whether a checkpoint is of this family.

    Args:
      config: the description the container holds beside the arrays (timm's
        config.json).
      arrays: the library's keys -> float32 arrays.
    """

  @abc.abstractmethod
  def to_params(self, config: Mapping[str, Any], arrays: FlatParams,
                image_size: Tuple[int, int]) -> Tuple[Params, Dict[str, Any]]:
    """The arrays as the family's tree, and the model they fit.

    Args:
      config: as in `recognises`.
      arrays: as in `recognises`.
      image_size: the native (H, W) the container says the weights are for.

    Returns:
      (params, model_kwargs): the nested float32 tree and the module
      attributes of the model that computes what the library's does
      (num_classes, None without a head; the architecture; every option
      that differs from its default).

    Raises:
      CheckpointMismatchError: an array is missing, left over, or of a
        shape or combination the family does not implement.
    """


class LayoutsInOrder(ForeignLayout):
  """Several layouts of one family in one container (timm's ViT and its
  R+ViT hybrids), listed as one `foreign_layouts` entry: the first that
  recognises a checkpoint maps it.

  Args:
    layouts: asked in this order: one that recognises only some of the
      checkpoints another does (the hybrids' among the ViT's) goes first.
  """

  def __init__(self, *layouts: ForeignLayout):
    self.layouts = layouts
    self.describes = '; '.join(layout.describes for layout in layouts)

  def _first(self, config, arrays) -> Optional[ForeignLayout]:
    return next((layout for layout in self.layouts
                 if layout.recognises(config, arrays)), None)

  def recognises(self, config: Mapping[str, Any],
                 arrays: FlatParams) -> bool:
    return self._first(config, arrays) is not None

  def to_params(self, config: Mapping[str, Any], arrays: FlatParams,
                image_size: Tuple[int, int]) -> Tuple[Params, Dict[str, Any]]:
    layout = self._first(config, arrays)
    if layout is None:
      raise CheckpointMismatchError(
          f'the checkpoint is none of: {self.describes}')
    return layout.to_params(config, arrays, image_size)


class ModelFamily(abc.ABC):
  """One family of models; see the module docstring.

  Attributes:
    name: short name, e.g. 'vit'.
    module_type: the flax module class the family builds (models are mapped
      back to their family by it).
    preprocessing: the pixel normalisation of its weights.
    head_names: top-level parameter names that are the classifier head: they
      are dropped for features and re-initialised for fine-tuning.
    droppable_for_fine_tuning: top-level parameter names a model to
      fine-tune may lack although the file has them (a representation
      layer): dropped from the file then.
    no_weight_decay: parameter names that are not weights although they have
      ndim >= 2 (a class token, a position embedding): the 'kernels'
      weight-decay mask leaves them out.
    architecture_keys: `config.model` keys that override a variant's
      architecture (None keeps the variant's), all integers.
    variant_keys: every `config.model` key whose None keeps the variant's
      value: the architecture keys and any that is not an integer (a
      hybrid's `resnet_units`). The programs offer them as flags, for
      files trained with overrides (`vit_jax.cli._flags`).
    unstored_fields: module attributes a sidecar leaves out (see
      `stored_kwargs`): how a model is run or trained (dtypes, dropout, the
      attention implementation), not what its weights compute.
    foreign_layouts: other libraries' layouts of the family's weights, by
      the name of the weight format that reads them (e.g. 'timm'); see
      `ForeignLayout`.
  """
  name: str
  module_type: Type[nn.Module]
  preprocessing: Preprocessing = Preprocessing()
  head_names: Tuple[str, ...] = ('head',)
  droppable_for_fine_tuning: Tuple[str, ...] = ()
  no_weight_decay: Tuple[str, ...] = ()
  architecture_keys: Tuple[str, ...] = ()
  unstored_fields: Tuple[str, ...] = ('dtype', 'param_dtype')
  foreign_layouts: Mapping[str, ForeignLayout] = {}

  @property
  def variant_keys(self) -> Tuple[str, ...]:
    return self.architecture_keys

  # --- Names and building ----------------------------------------------------

  @property
  @abc.abstractmethod
  def variants(self) -> Mapping[str, Any]:
    """Released name -> architecture of every named variant."""

  def canonical_name(self, name: str) -> Optional[str]:
    """The released name `name` stands for, or None if not this family's."""
    return name if name in self.variants else None

  @abc.abstractmethod
  def create(self, name: str, num_classes: Optional[int],
             **overrides: Any) -> nn.Module:
    """Builds variant `name` (canonical) with a `num_classes` head (0/None:
    features), any module attribute overridden by `overrides`."""

  @abc.abstractmethod
  def default_config(self) -> ml_collections.ConfigDict:
    """The family's `config.model` section: every key, at its default.

    A fresh ConfigDict each call. Each key is a module attribute, a variant
    key (a None FieldReference of its type: None keeps the variant's value)
    or 'dtype' ('auto' allowed); `create_from_config` takes nothing else.
    """

  def check_config(self, model_config) -> None:
    """Raises ValueError, in one line, naming the keys of a `config.model`
    section that are not this family's (a misspelt key, or another
    family's left by changing `config.model_name` alone)."""
    own = sorted(self.default_config().keys())
    foreign = sorted(set(model_config.keys()) - set(own))
    if foreign:
      raise ValueError(
          f'config.model has keys the {self.name} family does not have: '
          f'{", ".join(foreign)}; its keys are: {", ".join(own)} (a config '
          'file switches family with configs.common.set_model(config, '
          'MODEL_NAME))')

  def create_from_config(self, name: str, model_config,
                         num_classes: int) -> nn.Module:
    """Builds variant `name` from a config's `model` section (see
    `default_config`): its variant keys that are set and every other key as
    the module attribute of that name; `dtype: 'auto'` becomes the fastest
    operand dtype of the backend (`vit_jax.models.precision`).

    Raises:
      ValueError: a key that is not the family's (`check_config`), or one
        the family declares but its module lacks.
    """
    self.check_config(model_config)
    fields = {field.name for field in dataclasses.fields(self.module_type)}
    overrides = {}
    for key, value in model_config.items():
      if key in self.variant_keys and value is None:
        continue  # The variant's own value.
      if key == 'dtype':
        value = precision.resolve_dtype(value)
      if key not in fields:
        raise ValueError(
            f'the {self.name} family\'s config key {key!r} is no '
            f'{self.module_type.__name__} attribute: fix its '
            '`default_config` or `create_from_config`')
      overrides[key] = value
    return self.create(name, num_classes, **overrides)

  def create_described(self, facts: CheckpointFacts,
                       **overrides: Any) -> nn.Module:
    """Builds the model a checkpoint's arrays describe, without a variant
    name: `facts.expected` is the architecture, `overrides` (which include
    `facts.model_kwargs`) everything else.

    Raises:
      ValueError: the family cannot (no `build`) or the arrays do not say
        the whole architecture (`architecture_keys`); a model name then
        supplies it.
    """
    fields = {**facts.expected, **overrides}
    missing = [key for key in self.architecture_keys if key not in fields]
    if missing:
      raise ValueError(
          f'the checkpoint does not show the {self.name} model\'s '
          f'{", ".join(missing)} (it has no blocks); pass a model name')
    return self.build(fields)

  def build(self, fields: Mapping[str, Any]) -> nn.Module:
    """The family's module with these attributes (architecture included),
    for `create_described`; this default has none to build."""
    del fields
    raise ValueError(f'the {self.name} family cannot build a model from a '
                     'checkpoint alone; pass a model name')

  def stored_kwargs(self, model: nn.Module) -> Dict[str, Any]:
    """The attributes of `model` that define what it computes (all but
    flax's `parent` and `name` and `unstored_fields`): what a sidecar
    stores, so a model built from them and the arrays computes the same."""
    return {field.name: getattr(model, field.name)
            for field in dataclasses.fields(model)
            if field.name not in ('parent', 'name', *self.unstored_fields)}

  def contradicts(self, key: str, from_arrays: Any, stored: Any) -> bool:
    """Whether a stored attribute (a sidecar's, a hub config's) contradicts
    the value `describe` read off the arrays; sequences compare as tuples
    (a JSON file has lists)."""
    del key
    as_tuple = lambda v: tuple(v) if isinstance(v, list) else v
    return as_tuple(from_arrays) != as_tuple(stored)

  @abc.abstractmethod
  def patch_pixels(self, model: nn.Module) -> Tuple[int, int]:
    """Input pixels (h, w) per token: image sides must be multiples."""

  # --- The released checkpoint layout ----------------------------------------

  @abc.abstractmethod
  def recognises(self, flat: FlatParams) -> bool:
    """Whether a flat checkpoint (container prefix stripped) is this
    family's, in any of its released layouts."""

  def from_released(self, flat: FlatParams) -> Params:
    """A released flat checkpoint -> the nested tree of our modules."""
    return flax.traverse_util.unflatten_dict(dict(flat), sep='/')

  def to_released(self, params: Params) -> FlatParams:
    """Our nested tree -> the released flat layout (float32)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params),
                                           sep='/')
    return {key: np.asarray(value, np.float32) for key, value in flat.items()}

  def match_layout(self, params: Params, like: Params) -> Params:
    """`params` arranged as `like` (e.g. stacked for a scanned model)."""
    del like
    return params

  @abc.abstractmethod
  def describe(self, params: Params) -> CheckpointFacts:
    """Reads what the arrays say about their model (see CheckpointFacts);
    raises CheckpointMismatchError for a tree that is not this family's."""

  def adapt_resolution(self, params: Params, model: nn.Module,
                       shapes: Params, image_size: Sequence[int],
                       method: str) -> Params:
    """Checkpoint params resized to run `model` at `image_size` (e.g. a
    resampled position embedding); `shapes` are the model's own."""
    del model, shapes, image_size, method
    return params

  # --- Running -----------------------------------------------------------------

  def apply_with_intermediates(
      self, model: nn.Module, params: Params, images_BHWC,
      attention_layers: Sequence[int] = (), block_outputs: bool = False):
    """Runs the model and returns (outputs, intermediates).

    intermediates has 'pre_logits' (the features before the head, (B, F) for
    pooled models), and for families that have them 'attention_weights'
    {layer: (B, heads, N, N)} for `attention_layers` and 'block_outputs' (a
    list of (B, N, D)) when `block_outputs`. This default reads the
    'features' the module sows and supports no other capture.
    """
    if attention_layers or block_outputs:
      raise ValueError(f'the {self.name} family has no attention weights or '
                       'block outputs to capture')
    outputs, state = model.apply({'params': params}, images_BHWC, train=False,
                                 mutable=['intermediates'])
    return outputs, {'pre_logits': state['intermediates']['features'][0]}

  def without_head(self, model: nn.Module,
                   params: Params) -> Tuple[nn.Module, Params]:
    """The features model (timm's num_classes=0): `model` without its head
    and `params` without the head's arrays. Its output is 'pre_logits'."""
    return (model.clone(num_classes=0),
            {name: value for name, value in params.items()
             if name not in self.head_names})

  def pools_features(self, model: nn.Module) -> bool:
    """Whether `without_head(model)` gives one (B, D) vector per image (what
    few-shot evaluation needs) rather than per-token features."""
    del model
    return True

  # --- What the paper's analyses look at (None: the family has none) -------

  def num_prefix_tokens(self, model: nn.Module) -> int:
    """Tokens before the patch tokens (a class token)."""
    del model
    return 0

  def position_embedding(self, params: Params) -> Optional[np.ndarray]:
    """The learned (1, N, D) position embedding, or None."""
    del params
    return None

  def embedding_filters(self, model: nn.Module,
                        params: Params) -> Optional[np.ndarray]:
    """The (ph, pw, 3, D) patch-embedding kernel acting on RGB pixels, or
    None (no such kernel, or one acting on other features)."""
    del model, params
    return None


def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
