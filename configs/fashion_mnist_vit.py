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
warm-up steps and cosine decay, decoupled weight decay 0.05, batch 128 over
two XLA:CPU devices (`cpu_devices`), float32 on CPUs without bf16
instructions (`dtype='auto'`).

Measured runs (the command above, whole-command wall time):
  2026-12-01, 2-core AMD EPYC with AVX2 only, quiet machine, 6,500 steps
  (13.9 epochs), 560-760 images/s in the loop:
    test top-1 0.8942 after 22.6 min (1,299 s to the last evaluation);
    0.788 / 0.829 / 0.868 / 0.892 at steps 1,300 / 2,600 / 3,900 / 5,200.
The target of the recipe issue, 93.0% within 30 minutes, is not reached.
What limits it is speed: published small ViTs reach 92.3-93.5% on
Fashion-MNIST after 100-200 epochs on a GPU, and at about 650 images/s two
CPU cores give 30 minutes about 1.1M images, 19 epochs. The accuracy was
still rising by 0.2-2.5 points per 1,300 steps when the schedule ended.
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
  config.cpu_devices = 2
  config.eval_batch_size = 1000
  config.total_steps = 6_500
  config.optimizer = 'adam'
  config.lr = 2e-3
  config.warmup_steps = 300
  config.decay_type = 'cosine'
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1

  config.log_every = 200
  config.eval_every = 1300
  config.checkpoint_every = 1300
  return common.lock(config)
