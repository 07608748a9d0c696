"""Weights: the files a model is built from (a run's train state is a
checkpoint, `vit_jax.training.checkpoints`).

  pretrained     load / save / load_for_fine_tuning: any source -> a model
  npz            the released `.npz` container
  sidecar        what our own `.npz` files say about their model
  zoo            the released Google files by name, fetched and cached
  timm_hub       timm / Hugging Face hub directories and ids
  timm_recipe    a timm config -> the architecture it names
  timm_layout    timm's ViT keys -> our parameter tree
"""
