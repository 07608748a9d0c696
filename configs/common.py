"""Every configuration key, its default and what it means.

Other config files start from `get_config()` and change values; the result is
locked, so a misspelt key (in a file or as `--config.<key>=...`) is an error,
not a silently ignored setting.

Weight decay convention: `config.weight_decay` is decoupled and scaled by the
current learning rate, exactly as `optax.adamw` and PyTorch's AdamW do: every
step subtracts `lr_t * weight_decay * param`. The paper's Table 3 values (0.1
for JFT, 0.03 for ImageNet-21k) are quoted in this convention and are used
unchanged. big_vision's `wd` is multiplied by the schedule's *multiplier*
instead (0..1), so its equivalent is `weight_decay * peak lr` (0.1 * 1e-3 ->
1e-4).
"""

import ml_collections

from vit_jax import models


def get_config():
  """The defaults: a small ViT on the real Fashion-MNIST, CPU friendly."""
  config = ml_collections.ConfigDict()

  # --- Model ---------------------------------------------------------------
  config.model_name = 'ViT-Ti_16'  # A registered variant (vit_jax.models) or its short form.
  config.model = models.model_config(config.model_name)  # The family's own keys, documented in its `default_config` (vit_jax/models/vit_family.py, mixer_family.py); `set_model` switches family.

  # --- Data ----------------------------------------------------------------
  config.dataset = 'fashion_mnist_local'  # TFDS name (or 'imagefolder').
  config.data_dir = ml_collections.FieldReference(None, str)  # TFDS data_dir, or the image-folder root.
  config.train_split = 'train'  # TFDS split for training (slicing allowed: 'train[:90%]').
  config.eval_split = 'test'  # TFDS split for evaluation.
  config.num_classes = ml_collections.FieldReference(None, int)  # None: read from the dataset info.
  config.label_map = ml_collections.FieldReference(None, str)  # Label derived from other features: a key of vit_jax.data.label_maps.LABEL_MAPS.
  config.image_size = 224  # Train and eval resolution (square).
  config.train_augment = 'inception_crop'  # inception_crop | resize (no random crop) | pad_crop (small images).
  config.random_flip = True  # Horizontal flip at training.
  config.crop_padding = 0  # Pixels padded (black) on each side by train_augment='pad_crop' before its random crop.
  config.randaug_layers = 0  # RandAugment ops per training image (AugReg: 2); 0 disables.
  config.randaug_magnitude = 10.0  # RandAugment magnitude, 0..10 scale, > 10 extrapolates (AugReg: 10, 15, 20).
  config.random_erasing = 0.0  # Probability of erasing a random rectangle with noise after normalisation (DeiT: 0.25).
  config.shuffle_buffer = 50_000  # Examples in the tf.data shuffle buffer.
  config.cache = 'auto'  # auto (cache sets under ~1 GB) | true | false.
  config.prefetch = 2  # Batches prefetched by tf.data.

  # --- Batch and steps ------------------------------------------------------
  config.batch_size = 512  # Global batch size (all processes, all micro-batches).
  config.eval_batch_size = 512  # Global eval batch size.
  config.grad_accum_steps = 1  # Micro-batches per step, accumulated inside the jitted step.
  config.total_steps = 10_000  # Training steps.
  config.seed = 0  # Init, dropout and data-order seed.

  # --- Optimiser and schedule ------------------------------------------------
  config.optimizer = 'sgd'  # sgd (momentum) | adam (decoupled weight decay).
  config.lr = 0.03  # Peak learning rate.
  config.warmup_steps = 500  # Linear warm-up steps (first update already non-zero).
  config.decay_type = 'cosine'  # cosine | linear | constant, after warm-up.
  config.end_lr = 0.0  # Final learning rate of linear decay.
  config.momentum = 0.9  # SGD momentum.
  config.momentum_dtype = 'float32'  # SGD momentum buffer dtype: float32 | bfloat16.
  config.adam_b1 = 0.9  # Adam beta1.
  config.adam_b2 = 0.999  # Adam beta2.
  config.weight_decay = 0.0  # Decoupled, scaled by the current lr as in AdamW (see docstring).
  config.weight_decay_mask = 'kernels'  # kernels (ndim >= 2: no biases, norms, pos-emb, cls) | all.
  config.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
  config.loss = 'softmax_xent'  # softmax_xent | sigmoid_xent.
  config.label_smoothing = 0.0  # Softmax label smoothing.
  # Batch-level mixing (vit_jax.training.mixing); alpha 0 turns a method off.
  config.mixup_alpha = 0.0  # Mixup lam ~ Beta(alpha, alpha) (AugReg's "p").
  config.cutmix_alpha = 0.0  # CutMix lam ~ Beta(alpha, alpha) (DeiT: 1.0).
  config.mix_prob = 1.0  # Chance that a batch is mixed.
  config.mix_switch_prob = 0.5  # Both on: chance of CutMix instead of Mixup.
  config.ema_decay = 0.0  # Polyak/EMA decay of params (paper: 0.9999); 0 disables.

  # --- Initialisation from a checkpoint --------------------------------------
  config.pretrained_path = ml_collections.FieldReference(None, str)  # Released-layout .npz to fine-tune from.
  config.posemb_resize = 'bilinear_aligned'  # bilinear_aligned (original code) | bilinear | bicubic | bilinear_antialias | bicubic_antialias (see vit_jax.models.posemb).

  # --- Periodic actions --------------------------------------------------------
  config.log_every = 50  # Steps between progress lines and train metrics.
  config.eval_every = 1000  # Steps between evaluations (and at the end).
  config.checkpoint_every = 1000  # Steps between orbax checkpoints (and at the end).
  config.keep_checkpoints = 3  # Checkpoints kept in the workdir.
  config.export_npz = True  # Export final params as released-layout model.npz.

  # --- More evaluations (vit_jax/evaluators/) ---------------------------------
  config.extra_evals = ()  # Eval sets run with every evaluation: imagenet2012_real (real_*) | imagenet_v2 (v2_*).
  config.extra_evals_data_dir = ml_collections.FieldReference(None, str)  # Their TFDS data_dir; None: config.data_dir.
  config.fewshot_every = 0  # Steps between few-shot linear evaluations of the params (and at the end); 0 disables.
  config.fewshot_dataset = 'fashion_mnist_local'  # TFDS name or 'imagefolder' of the few-shot evaluation.
  config.fewshot_data_dir = ml_collections.FieldReference(None, str)  # Its data_dir; None: config.data_dir.
  config.fewshot_train_split = 'train[:10000]'  # Pool the shots and the l2-validation examples are drawn from.
  config.fewshot_test_split = 'test'  # Held-out examples the linear classifiers are scored on.
  config.fewshot_shots = (1, 5, 10, 25)  # Examples per class; logged as fewshot_{k}shot_top1.
  config.fewshot_seeds = (0,)  # One sample of shots per seed; the logged top-1 is the mean.
  config.fewshot_val_per_class = 10  # Pool examples per class (besides the shots) that choose l2.

  # --- Devices -------------------------------------------------------------------
  config.cpu_devices = 1  # On the CPU backend: XLA:CPU devices the batch is split over (python -m vit_jax.main only).
  config.mesh_model_axis = 1  # Devices on the 'model' axis; the rest form 'data'.
  config.fsdp = False  # Shard params, optimizer state and EMA over the 'data' axis.
  config.sharding_rules = ()  # ((path regex, PartitionSpec tuple), ...) tried first; see vit_jax/sharding.py.

  return config


def imagenet_from_scratch(config):
  """The data settings the ImageNet-1k recipes share: TFDS imagenet2012,
  train on 'train', evaluate on 'validation', Inception crop + flip at
  224 px."""
  config.update(dataset='imagenet2012', train_split='train',
                eval_split='validation', image_size=224,
                train_augment='inception_crop', random_flip=True)


def set_model(config, model_name: str):
  """Sets `config.model_name` and starts `config.model` afresh from that
  model's family section (e.g. `set_model(config, 'Mixer-B_16')`): another
  family's keys would be an error. Call it before changing model keys."""
  section = models.model_config(model_name)
  if config.is_locked:
    section.lock()
  config.model_name = model_name
  config.model = section
  return config


def lock(config):
  """Locks the key set so unknown keys (typos) fail loudly."""
  config.lock()
  return config
