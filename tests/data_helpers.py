"""Generated test inputs: PNG files, image-folder datasets and parameters.

Everything is made with numpy and PIL; `numpy_params` builds a model's
parameters without compiling its init (seconds saved per model on a busy CPU).
"""

import os
from typing import Any, Dict, List, Mapping, Tuple

import flax
import numpy as np
from PIL import Image

from vit_jax import models


def numpy_params(model, image_size: int, seed: int = 0,
                 scale: float = 0.3) -> Dict[str, Any]:
  """Random float32 parameters of the right shapes, made in numpy.

  Every leaf is normal(0, scale), except norm scales, which are 1 + that, so
  activations keep their size through the blocks.
  """
  rng = np.random.default_rng(seed)
  shapes = flax.traverse_util.flatten_dict(
      models.param_shapes(model, (image_size, image_size)))
  params = {
      path: (float(path[-1] == 'scale') + scale * rng.standard_normal(
          shape.shape)).astype(np.float32)
      for path, shape in sorted(shapes.items())}
  return flax.traverse_util.unflatten_dict(params)


def write_png(path, height: int, width: int, seed: int = 0) -> str:
  """Writes a random RGB PNG of (height, width) and returns its path."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return str(path)


def class_image(label: int, num_classes: int, size: int,
                rng: np.random.Generator) -> np.ndarray:
  """A uint8 (size, size, 3) image whose class shows in its colour.

  Each class has its own hue on a noisy background, so a frozen random
  network still separates the classes (and few-shot accuracy is above
  chance) while every image stays distinct.
  """
  hue = 2 * np.pi * label / num_classes
  colour = 127.5 + 100 * np.cos(hue + np.array([0, 2, 4]) * np.pi / 3)
  noise = rng.normal(0, 20, (size, size, 3))
  return np.clip(colour + noise, 0, 255).astype(np.uint8)


def write_image_folder(root, per_class: Mapping[str, int], num_classes: int,
                       size: int, seed: int = 0
                       ) -> Dict[str, List[Tuple[str, int]]]:
  """Writes root/<split>/class_<k>/<i>.png, the `imagefolder` layout.

  Args:
    root: folder to write into.
    per_class: images per class of every split, e.g. {'train': 6}.
    num_classes: classes, named class_0 ... (sorted order = label order for
      fewer than 10 classes).
    size: image side in pixels.
    seed: seeds the noise.

  Returns:
    {split: [(path, label), ...]}.
  """
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in per_class.items():
    written[split] = []
    for label in range(num_classes):
      folder = os.path.join(root, split, f'class_{label}')
      os.makedirs(folder, exist_ok=True)
      for index in range(count):
        path = os.path.join(folder, f'{index}.png')
        Image.fromarray(class_image(label, num_classes, size, rng)).save(path)
        written[split].append((path, label))
  return written
