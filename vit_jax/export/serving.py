"""What every served file computes: uint8 images in, float32 logits out.

  for_serving(loaded)          the model in float32 with einsum attention
  serving_function(loaded)     serve(params, pixels) as a JAX function
  reference_logits(loaded, images)  predict's logits for the same images
  relative_error(actual, expected)  how the exports are compared with JAX

A file takes uint8 images (B, H, W, 3) of any size. It first resizes them
to the model's resolution as predict does (`preprocess.resize`: TF's
bilinear resize, half-pixel centres, no antialiasing; the identity at that
resolution), in float32, and then runs `serve` on the result. The resize is
written in each format's own operator (TF's ResizeBilinear, which the TFLite
converter turns into its builtin; ONNX's Resize), not traced from JAX:
`jax.image.resize` needs the input size when it is traced, and the files
take any.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.weights import pretrained

# The files' input and output names, and the signature of the TF ones.
INPUT = 'images'
OUTPUT = 'logits'
SIGNATURE = 'serving_default'


def for_serving(loaded: pretrained.LoadedModel) -> pretrained.LoadedModel:
  """`loaded` with its model in float32 and with the einsum attention."""
  updates = {}
  if hasattr(loaded.model, 'dtype'):
    updates['dtype'] = jnp.float32
  if hasattr(loaded.model, 'attention'):
    updates['attention'] = 'einsum'
  return dataclasses.replace(loaded, model=loaded.model.clone(**updates))


def serving_function(loaded: pretrained.LoadedModel
                     ) -> Callable[[Any, Any], jax.Array]:
  """`serve(params, pixels)`: pixels (B, S, S, 3) with values in [0, 255]
  (uint8, or float32 as the resize gives them) at the model's resolution S,
  to float32 logits, normalised as the checkpoint expects. `loaded` should
  be `for_serving`'s.

  The model is written for one image and vectorised over the batch with
  `jax.vmap` (one batched computation, no loop): traced with a symbolic
  batch, indexing such as the class token's `x[:, 0]` would be a dynamic
  gather, which the TFLite converter cannot lower; under `vmap` it is a
  static slice."""
  model = loaded.model
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)

  def one(params, image_HWC):
    # The operations of preprocess.scale_pixels, in the same order.
    pixels_HWC = (image_HWC.astype(jnp.float32) - mean) / std
    return model.apply({'params': params}, pixels_HWC[None], train=False)[0]

  def serve(params, images_BHWC):
    return jax.vmap(one, in_axes=(None, 0))(params, images_BHWC)
  return serve


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|."""
  scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
  return float(np.max(np.abs(actual - expected))) / scale


def reference_logits(loaded: pretrained.LoadedModel,
                     images: np.ndarray) -> np.ndarray:
  """predict's logits for uint8 `images` (B, H, W, 3): its resize
  (`preprocess.resize`, when H, W is not the model's size) and
  normalisation, then `pretrained.predict_logits`, in full float32
  precision (no TF32 or bf16 passes on an accelerator)."""
  size = loaded.image_size
  pixels = images.astype(np.float32)
  if images.shape[1:3] != (size, size):
    # TensorFlow only here: the export extra has it, the core need not.
    from vit_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    pixels = np.stack([preprocess.resize(image, size).numpy()
                       for image in images])
  mean = np.asarray(loaded.preprocessing.mean, np.float32)
  std = np.asarray(loaded.preprocessing.std, np.float32)
  pixels = (pixels - mean) / std
  with jax.default_matmul_precision('highest'):
    return pretrained.predict_logits(loaded.model, loaded.params, pixels)
