"""The timm (PyTorch) side of `benchmarks.benchmark --compare=timm`.

Imported only for that comparison, so the package never needs torch. The
model is timm's own `VisionTransformer` configured like ours: same patch,
width, depth, heads, MLP ratio and head; tanh-GELU and LayerNorm epsilon 1e-6
so both do the same work. Bfloat16 runs under `torch.autocast`, which (like
our `dtype=bfloat16`) keeps float32 master weights and feeds bf16 operands to
the matmuls. Training is forward + cross-entropy + backward + SGD momentum
in eager mode, timm's usual training loop.
"""

import enum
import functools
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, Dict

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class _InterpolationMode(enum.Enum):
  """Stands in for torchvision's enum, which timm's data module reads."""
  NEAREST = 'nearest'
  NEAREST_EXACT = 'nearest-exact'
  BILINEAR = 'bilinear'
  BICUBIC = 'bicubic'
  BOX = 'box'
  HAMMING = 'hamming'
  LANCZOS = 'lanczos'


class _AbsentMeta(type):

  def __getattr__(cls, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return cls


class _Absent(metaclass=_AbsentMeta):
  """Any torchvision class or function: importable, unusable."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    raise ImportError('torchvision is not installed; the benchmark stubbed '
                      'it only so that timm imports')


class _AbsentModule(types.ModuleType):

  def __getattr__(self, name):
    if name == 'InterpolationMode':
      return _InterpolationMode
    if name.startswith('__'):
      raise AttributeError(name)
    return _Absent


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Imports `torchvision.*` modules as empty placeholders.

  timm imports torchvision at import time for its data pipeline and a few
  norm layers, none of which a ViT forward or backward pass touches. The
  torchvision wheels on PyPI are CUDA builds that do not load next to a CPU
  torch, so without this the benchmark could not use timm's model code.
  """

  def find_spec(self, name, path, target=None):
    del path, target
    # Lower-case names only: module paths, never class names such as
    # `InterpolationMode` that `from m import X` probes as submodules.
    if name.split('.')[0] == 'torchvision' and name.islower():
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    return _AbsentModule(spec.name)

  def exec_module(self, module):
    pass


def import_timm_vision_transformer():
  """timm's VisionTransformer class, stubbing torchvision if it won't load."""
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except
    # Not installed, or a CUDA build whose ops fail to register: drop
    # whatever half-imported and use placeholders.
    for name in [m for m in sys.modules if m.split('.')[0] == 'torchvision']:
      del sys.modules[name]
    sys.meta_path.append(_TorchvisionStub())
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top
  return vision_transformer.VisionTransformer


def versions() -> Dict[str, str]:
  import timm  # pylint: disable=g-import-not-at-top
  return {'torch_version': torch.__version__, 'timm_version': timm.__version__}


def create_model(variant: Any, image_size: int, num_classes: int,
                 classifier: str = 'token') -> nn.Module:
  """timm's ViT with the architecture of `variant` (a models.Variant)."""
  if variant.resnet_units is not None:
    raise ValueError('the timm comparison covers pure ViTs, not hybrids')
  vision_transformer_cls = import_timm_vision_transformer()
  return vision_transformer_cls(
      img_size=image_size, patch_size=variant.patch_size,
      embed_dim=variant.hidden_size, depth=variant.num_layers,
      num_heads=variant.num_heads,
      mlp_ratio=variant.mlp_dim / variant.hidden_size,
      num_classes=num_classes,
      global_pool='token' if classifier == 'token' else 'avg',
      class_token=classifier == 'token',
      act_layer=functools.partial(nn.GELU, approximate='tanh'),
      norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))


class TimmStep:
  """One inference or training step of timm's ViT, ready to be timed."""

  def __init__(self, variant: Any, *, image_size: int, num_classes: int,
               mode: str, dtype: str, images_nhwc: np.ndarray,
               labels: np.ndarray):
    torch.manual_seed(0)
    self._model = create_model(variant, image_size, num_classes)
    self._images = torch.from_numpy(
        np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2), np.float32))
    self._labels = torch.from_numpy(labels.astype(np.int64))
    self._bf16 = dtype == 'bfloat16'
    self._mode = mode
    if mode == 'train':
      self._model.train()
      self._optimizer = torch.optim.SGD(self._model.parameters(), lr=1e-3,
                                        momentum=0.9)
    else:
      self._model.eval()

  def info(self) -> Dict[str, Any]:
    return {
        'params': sum(p.numel() for p in self._model.parameters()),
        'torch_threads': torch.get_num_threads(),
        **versions(),
    }

  def _autocast(self):
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=self._bf16)

  def step(self) -> None:
    """Runs one step to completion (PyTorch CPU ops are synchronous)."""
    if self._mode == 'inference':
      with torch.inference_mode(), self._autocast():
        self._model(self._images)
      return
    with self._autocast():
      logits = self._model(self._images)
    loss = F.cross_entropy(logits.float(), self._labels)
    loss.backward()
    self._optimizer.step()
    self._optimizer.zero_grad(set_to_none=True)
