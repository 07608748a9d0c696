"""Weights: the files a model is built from (a run's train state is a
checkpoint, `vit_jax.training.checkpoints`).

  from vit_jax import weights
  loaded = weights.load('imagenet21k+imagenet2012/ViT-B_16')  # or a path
  mean, std = loaded.preprocessing.mean, loaded.preprocessing.std
  logits = loaded.model.apply({'params': loaded.params},
                              (pixels_BHWC - mean) / std, train=False)
  weights.save_npz(loaded.params, 'model.npz', model=loaded.model)

The modules:
  pretrained     load / save / load_for_fine_tuning: any source -> a model
  formats        the weight formats, and which one a source is
  npz            the released `.npz` container
  sidecar        what our own `.npz` files say about their model
  zoo            the released Google files by name, fetched and cached
  download       a remote .npz copied into the cache, verified
  timm_hub       timm / Hugging Face hub directories and ids
  to_timm        our weights as a timm hub directory (save_timm); the
                 ViT's arrays and options in timm's terms: to_timm_vit,
                 (timm's Eva) to_timm_eva, (R+ViT hybrids) to_timm_hybrid;
                 the MLP-Mixer's: to_timm_mixer; the array layouts they
                 share: to_timm_arrays
  safetensors_file  the `.safetensors` container, read from its header
  arrays         what every format checks of its arrays (float, finite,
                 sizes), and arrays known by their header, read when used
A family's timm key layout is the family's (`vit_jax.models.vit_timm`).
"""

from vit_jax.models import family as _family
from vit_jax.weights import pretrained as _pretrained
from vit_jax.weights import to_timm as _to_timm

CheckpointMismatchError = _family.CheckpointMismatchError
LoadedModel = _pretrained.LoadedModel
load = _pretrained.load
load_for_fine_tuning = _pretrained.load_for_fine_tuning
load_params = _pretrained.load_params
load_preprocessing = _pretrained.load_preprocessing
save_npz = _pretrained.save_npz
save_timm = _to_timm.save_timm
