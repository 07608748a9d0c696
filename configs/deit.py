r"""DeiT: ViT-Ti/S/B trained on ImageNet-1k alone, "Training data-efficient
image transformers & distillation through attention" (Touvron et al. 2021),
without the distillation.

  .venv/bin/python -m vit_jax.main --config=configs/deit.py:S \
      --workdir=runs/deit_s --config.data_dir=gs://YOUR_BUCKET/tfds

`arg` is the size: Ti | S | B. The paper's Table 1 (300 epochs, no
distillation): Ti 72.2%, S 79.9%, B 81.8% ImageNet top-1.

The recipe (the paper's Table 9): 300 epochs, batch 1024, AdamW with lr
5e-4 x batch / 512 = 1e-3 and weight decay 0.05 (PyTorch's AdamW convention,
the one this repository uses), 5 warm-up epochs then cosine decay, label
smoothing 0.1, stochastic depth 0.1, RandAugment magnitude 9, Mixup 0.8 and
CutMix 1.0 (one of the two per batch, switch probability 0.5), random
erasing 0.25, Inception crop + flip at 224 px, class-token pooling.

Differences from the paper: its RandAugment is timm's (`rand-m9-mstd0.5`:
magnitude drawn around 9 with std 0.5, its own op list); this repository's
is AugReg's op set at a fixed magnitude 9 (vit_jax/data/randaugment.py). Repeated
augmentation (each image three times per batch) and the minimum learning
rate 1e-5 are not implemented; inputs are scaled to [-1, 1] as for every
model trained here instead of ImageNet mean/std (irrelevant from scratch).

Runtime: 1,251 steps per epoch; the paper trains DeiT-B in 53 hours on 8
V100s. Not runnable on a CPU; the tests run one step on generated data.

Runs: no full run is logged here; the expected figures are the paper's
(docs/experiments.md#paper-recipes).
"""

from configs import common

IMAGENET_TRAIN_EXAMPLES = 1_281_167
BATCH_SIZE = 1024
EPOCHS = 300
WARMUP_EPOCHS = 5
MODELS = {'Ti': 'ViT-Ti_16', 'S': 'ViT-S_16', 'B': 'ViT-B_16'}


def get_config(arg='S'):
  """`arg`: the model size, a key of MODELS."""
  if arg not in MODELS:
    raise ValueError(f'unknown DeiT size {arg!r}; expected one of '
                     f'{list(MODELS)}')
  steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // BATCH_SIZE
  config = common.get_config()
  config.model_name = MODELS[arg]
  config.model.classifier = 'token'
  config.model.drop_path_rate = 0.1
  config.model.dtype = 'bfloat16'

  common.imagenet_from_scratch(config)
  config.randaug_layers = 2
  config.randaug_magnitude = 9
  config.random_erasing = 0.25
  config.mixup_alpha = 0.8
  config.cutmix_alpha = 1.0
  config.mix_switch_prob = 0.5
  config.label_smoothing = 0.1

  config.batch_size = BATCH_SIZE
  config.eval_batch_size = 1024
  config.total_steps = EPOCHS * steps_per_epoch
  config.optimizer = 'adam'
  config.adam_b1, config.adam_b2 = 0.9, 0.999
  config.lr = 5e-4 * BATCH_SIZE / 512
  config.warmup_steps = WARMUP_EPOCHS * steps_per_epoch
  config.decay_type = 'cosine'
  config.weight_decay = 0.05
  config.grad_clip_norm = 0.0  # DeiT does not clip.
  config.loss = 'softmax_xent'

  config.log_every = 100
  config.eval_every = 5_000
  config.checkpoint_every = 2_000
  return common.lock(config)
