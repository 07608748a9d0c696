"""The command-line programs; the library (the rest of `vit_jax`) never
imports them.

  python -m vit_jax.main           train, fine-tune, evaluate (configs/*.py)
  python -m vit_jax.cli.predict    classify images with a `.npz` checkpoint
  python -m vit_jax.cli.visualize  attention rollout, distances, embeddings
  python -m vit_jax.cli.fewshot    few-shot linear evaluation of a checkpoint
  python -m vit_jax.cli.export     SavedModel, ONNX and TFLite files to serve
                                   (also `python -m vit_jax.export`)
  python -m vit_jax.cli.weights  list or fetch released checkpoints by name
  python -m benchmarks.benchmark  training / inference speed (vs timm)
  python -m benchmarks.memory_report  per-device memory of a training step

Each program defines its flags in `define_flags()` (called only when it runs,
so tests can import several) and runs in `main(argv)`; process set-up (the
host allocator, hiding GPUs from TensorFlow) happens there too, never on
import (`vit_jax.cli._process`).
"""
