r"""An MLP-Mixer trained from scratch on the real Fashion-MNIST, on CPU cores.

  .venv/bin/python -m vit_jax.main --config=configs/fashion_mnist_mixer.py \
      --workdir=runs/fashion_mnist_mixer [--config.model.tokens_mlp_dim=64]

The Mixer counterpart of `configs/fashion_mnist_vit.py`, with the same data,
optimiser and schedule: 4x4 patches of the 28x28 image make 49 tokens of
width 64, 6 Mixer blocks with token-mixing MLPs of width 32 and
channel-mixing MLPs of width 256 (Tolstikhin et al. 2021 keep the same
ratios: tokens MLP half the width, channels MLP four times), stochastic
depth 0.1 (223,280 parameters). Every `config.model` key is the Mixer
family's (`vit_jax/models/mixer_family.py`).

Reaches 0.9158 test top-1 in 20.7 minutes (the whole command; 1,000-1,690
images/s on 2 CPU cores with bf16 instructions, AMD EPYC, 2026-12-06),
untuned: the first run of this recipe. The run is logged in
docs/experiments.md#mlp-mixer-on-fashion-mnist.
"""

from configs import common


def get_config():
  config = common.set_model(common.get_config(), 'Mixer-S_16')
  config.model.patch_size = 4
  config.model.hidden_size = 64
  config.model.num_layers = 6
  config.model.tokens_mlp_dim = 32
  config.model.channels_mlp_dim = 256
  config.model.drop_path_rate = 0.1
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
