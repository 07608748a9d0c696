r"""The paper's ViT-L/16 pre-training on JFT-300M (Table 3).

  .venv/bin/python -m vit_jax.main --config=configs/vit_l16_jft.py \
      --workdir=runs/l16_jft --config.data_dir=/path/to/tfds/with/jft300m

Adam (0.9, 0.999), batch 4096, lr 4e-4, weight decay 0.1, 10k warm-up steps,
linear decay, 7 epochs (517,822 steps), 224 px, pre_logits of width 1024,
sigmoid cross-entropy with head bias -10, gradient clipping at 1, FSDP.
JFT-300M is not public: without a prepared `jft300m` TFDS dataset in
config.data_dir the run stops at once and says so; point it at another TFDS
dataset with --config.dataset=NAME --config.data_dir=DIR (e.g.
configs/vit_pretrain.py:ViT-L_16,imagenet21k is the public recipe).
Expected (paper, Table 2): ViT-L/16 pre-trained on JFT-300M reaches 87.76%
ImageNet top-1 after fine-tuning; runtime: on the order of a thousand
TPUv3-core-days, not runnable on a CPU.

Runs: no full run is logged here; the expected figures are the paper's
(docs/experiments.md#paper-recipes).
"""

from configs import vit_pretrain


def get_config():
  return vit_pretrain.get_config('ViT-L_16,jft300m')
