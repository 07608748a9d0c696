r"""A plain ViT-S/16 on ImageNet-1k from scratch: "Better plain ViT baselines
for ImageNet-1k" (Beyer, Zhai and Kolesnikov 2022).

  .venv/bin/python -m vit_jax.main --config=configs/vit_i1k_plain.py:90ep \
      --workdir=runs/s16_i1k_90ep --config.data_dir=gs://YOUR_BUCKET/tfds

`arg` is the length: 90ep | 150ep | 300ep. The paper reports 76.5% top-1
after 90 epochs and about 80% after 300 (ImageNet validation).

What makes it "plain but better" (the paper's Section 2): global average
pooling instead of a class token, fixed 2-D sin-cos position embeddings,
batch 1024 instead of 4096, Inception crop + flip + RandAugment(2, 10) +
Mixup (Beta(0.2, 0.2)), Adam (b2 0.999), lr 1e-3 with 10k warm-up steps and
cosine decay, gradient clipping at norm 1.0. The paper's weight decay is
1e-4 applied without the learning rate (only the schedule's 0..1
multiplier); in this repository's convention (decay scaled by lr_t, as
AdamW: configs/common.py) that is 1e-4 / 1e-3 = 0.1.

Differences: the paper keeps Adam's first moment in bfloat16 and holds out
1% of the training set as minival; this config keeps float32 moments and
evaluates on `validation`.

Runtime: 1,251 steps per epoch; about 7 hours for 90 epochs on a TPUv3-8 in
the paper. Not runnable on a CPU; the tests run one step of it on generated
data. ImageNet must be prepared in TFDS's data_dir (this code never
downloads).

Runs: no full run is logged here; the expected figures are the paper's
(docs/experiments.md#paper-recipes).
"""

from configs import common

IMAGENET_TRAIN_EXAMPLES = 1_281_167
BATCH_SIZE = 1024
EPOCHS = {'90ep': 90, '150ep': 150, '300ep': 300}


def get_config(arg='90ep'):
  """`arg`: the schedule length, one of EPOCHS."""
  if arg not in EPOCHS:
    raise ValueError(f'unknown length {arg!r}; expected one of '
                     f'{sorted(EPOCHS)}')
  config = common.get_config()
  config.model_name = 'ViT-S_16'
  config.model.classifier = 'gap'
  config.model.posemb = 'sincos2d'
  config.model.dtype = 'bfloat16'

  common.imagenet_from_scratch(config)
  config.randaug_layers = 2
  config.randaug_magnitude = 10
  config.mixup_alpha = 0.2

  config.batch_size = BATCH_SIZE
  config.eval_batch_size = 1024
  config.total_steps = EPOCHS[arg] * IMAGENET_TRAIN_EXAMPLES // BATCH_SIZE
  config.optimizer = 'adam'
  config.adam_b1, config.adam_b2 = 0.9, 0.999
  config.lr = 1e-3
  config.warmup_steps = 10_000
  config.decay_type = 'cosine'
  config.weight_decay = 0.1  # = the paper's 1e-4 without lr (docstring).
  config.grad_clip_norm = 1.0
  config.loss = 'softmax_xent'

  config.log_every = 100
  config.eval_every = 5_000
  config.checkpoint_every = 2_000
  return common.lock(config)
