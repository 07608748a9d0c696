"""Speed and memory measurements of vit_jax, run from the repository root
(not part of the installed package).

  python -m benchmarks.benchmark       training / inference speed (vs timm)
  python -m benchmarks.memory_report   per-device memory of a training step
"""
