"""A finished run's weights as released-layout .npz files with sidecars.

`export_npz` writes `model.npz` (and `model_ema.npz` with an EMA) into the
workdir, each with the sidecar that makes it load by itself
(`vit_jax.weights.sidecar`): the model, its resolution, pixel normalisation
and, when the dataset names every output, the class names.
"""

from typing import Dict, Optional, Tuple

from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils

from vit_jax import models
from vit_jax.data import sources
from vit_jax.weights import pretrained


def host_params(params):
  """Full params on every host (gathers shards of other processes)."""
  if all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(params)):
    return jax.device_get(params)
  # tiled=True: global arrays come back whole, not stacked per process.
  return multihost_utils.process_allgather(params, tiled=True)


def class_names(label_map: Optional[str], source, num_classes: int
                ) -> Optional[Tuple[str, ...]]:
  """The dataset's class names when they name every output of the head,
  else None (labels made by `label_map`, a head larger than the dataset's
  class count)."""
  if label_map:
    return None
  names = getattr(source, 'class_names', None)  # An image folder's.
  if names is None and isinstance(source, sources.TfdsSource):
    names = getattr(source.builder.info.features['label'], 'names', None)
  if names is None or len(names) != num_classes:
    return None
  return tuple(names)


def export_npz(state, workdir, ema: bool, *,
               model: Optional[nn.Module] = None,
               image_size: Optional[int] = None,
               normalization: Optional[models.Preprocessing] = None,
               names: Optional[Tuple[str, ...]] = None) -> Dict[str, str]:
  """Writes final params (and EMA params) in the released layout, each with
  a sidecar (`vit_jax.weights.sidecar`) describing `model`, its resolution, pixel
  normalisation and class names when `model` is given."""
  exports = {'model.npz': state.params}
  if ema:
    exports['model_ema.npz'] = state.ema_params
  description = {} if model is None else dict(
      model=model, image_size=image_size, preprocessing=normalization,
      class_names=names)
  paths = {}
  for name, params in exports.items():
    params = host_params(params)
    path = epath.Path(workdir) / name
    if jax.process_index() == 0:
      pretrained.save_npz(params, path, **description)
    paths[name] = str(path)
  return paths
