r"""The offline default: a small ViT trained from scratch on real Fashion-MNIST.

  bash scripts/run_default.sh
  # = python -m vit_jax.main --config=configs/default.py --workdir=runs/default

Data: Debian's dataset-fashion-mnist (60,000 train / 10,000 test, 28x28 grey),
read through TFDS (`vit_jax/datasets/fashion_mnist_local.py`) and tf.data like
any other dataset. Model: 4x4 patches on the 28x28 image (49 patches + class
token), width 96, 3 heads, MLP 192, 4 layers (0.3M parameters); bf16 matmuls
with float32 accumulation and float32 params. Adam, batch 128, 4,000 steps
(8.5 epochs), no augmentation: at this budget the model underfits, so flips
only slow it down.
Expected on a 2-core CPU: about 10 minutes, test top-1 >= 0.90 (see README).
"""

from configs import common


def get_config():
  config = common.get_config()
  config.model_name = 'ViT-Ti_16'
  config.model.patch_size = 4
  config.model.hidden_size = 96
  config.model.mlp_dim = 192
  config.model.num_heads = 3
  config.model.num_layers = 4
  config.model.dtype = 'bfloat16'

  config.dataset = 'fashion_mnist_local'
  config.image_size = 28
  config.train_augment = 'resize'
  config.random_flip = False

  config.batch_size = 128
  config.eval_batch_size = 1000
  config.total_steps = 4000
  config.optimizer = 'adam'
  config.lr = 2e-3
  config.warmup_steps = 200
  config.decay_type = 'cosine'
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0

  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  return common.lock(config)
