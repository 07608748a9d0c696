"""The command-line programs; the library (the rest of `vit_jax`) never
imports them.

  python -m vit_jax.main            train, fine-tune, evaluate (configs/*.py)
  python -m vit_jax.cli.predict     classify images with any checkpoint
  python -m vit_jax.cli.visualize   attention rollout, distances, embeddings
  python -m vit_jax.cli.fewshot     few-shot linear evaluation of a checkpoint
  python -m vit_jax.cli.export      SavedModel, ONNX and TFLite files to serve
                                    (also `python -m vit_jax.export`)
  python -m vit_jax.cli.weights     list or fetch released checkpoints by name

`vit-jax PROGRAM` (the console script; `python -m vit_jax.cli PROGRAM`
without it) runs each as `python -m` does: train, predict, visualize,
fewshot, export, weights (`vit_jax.cli.console`).

The modules whose names start with `_` are the programs' shared helpers
(flags and errors, process set-up, the host allocator). The speed and
memory tools are not installed: they live in the repository-root
`benchmarks/` package (`python -m benchmarks.benchmark`,
`python -m benchmarks.memory_report`, from the repository root).

Each program defines its flags in `define_flags()` (called only when it runs,
so tests can import several) and runs in `main(argv)`; process set-up (the
host allocator, hiding GPUs from TensorFlow) happens there too, never on
import (`vit_jax.cli._process`).
"""
