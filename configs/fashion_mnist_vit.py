r"""A pure ViT trained from scratch on the real Fashion-MNIST, on 2 CPU cores.

  python -m vit_jax.main --config=configs/fashion_mnist_vit.py \
      --workdir=runs/fashion_mnist_vit

The model takes its patches straight from the pixels (no ResNet stem): 4x4
patches of the 28x28 image make a 7x7 grid of tokens, width 64, 4 heads,
MLP 128, 6 blocks (0.2M parameters), global average pooling and fixed 2-D
sin-cos position embeddings as in Beyer et al. (2022, "Better plain ViT
baselines for ImageNet-1k"). Training follows the small-image recipes:
random crops of the image padded by 2 pixels and horizontal flips
(`train_augment='pad_crop'`), label smoothing 0.1, Adam at lr 2e-3 with 300
warm-up steps and cosine decay, decoupled weight decay 0.05, batch 128 on
one XLA:CPU device, bf16 matmul operands on CPUs with bf16 instructions and
float32 elsewhere (`dtype='auto'`); 15,000 steps (32 epochs).

Measured runs (the command above, whole-command wall time):
  2026-12-01, 2-core AMD EPYC with AVX2 only, quiet machine, 6,500 steps
  (13.9 epochs), 560-760 images/s in the loop:
    test top-1 0.8942 after 22.6 min (1,299 s to the last evaluation);
    0.788 / 0.829 / 0.868 / 0.892 at steps 1,300 / 2,600 / 3,900 / 5,200.
  2026-12-01, Zen 4 with AVX512_BF16 (bf16 operands), two devices, 6,500
  steps, 1,000-1,500 images/s: 0.8972 after 12.7 min.
  2026-12-01, the same machine, one device, 15,000 steps (this config),
  1,200-1,450 images/s: test top-1 0.9170 after 22.2 min (exit 2 s after
  the last line); 0.828 / 0.870 / 0.895 / 0.913 at steps 3,000 / 6,000 /
  9,000 / 12,000.
The target of the recipe issue, 93.0% within 30 minutes, is not reached.
What limits it is speed: published small ViTs reach 92.3-93.5% on
Fashion-MNIST after 100-200 epochs on a GPU; at about 1,350 images/s two
CPU cores give 30 minutes about 2.4M images, 40 epochs. The accuracy was
still rising (1.7 points over the last 3,000 steps) when the schedule
ended.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.model_name = 'ViT-Ti_16'
  config.model.patch_size = 4
  config.model.hidden_size = 64
  config.model.mlp_dim = 128
  config.model.num_heads = 4
  config.model.num_layers = 6
  config.model.classifier = 'gap'
  config.model.posemb = 'sincos2d'
  config.model.dtype = 'auto'

  config.dataset = 'fashion_mnist_local'
  config.image_size = 28
  config.train_augment = 'pad_crop'
  config.crop_padding = 2
  config.random_flip = True

  config.batch_size = 128
  config.cpu_devices = 1
  config.eval_batch_size = 1000
  config.total_steps = 15_000
  config.optimizer = 'adam'
  config.lr = 2e-3
  config.warmup_steps = 300
  config.decay_type = 'cosine'
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1

  config.log_every = 200
  config.eval_every = 3000
  config.checkpoint_every = 3000
  return common.lock(config)
