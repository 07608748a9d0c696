"""Training a model from a config: `loop.train_and_evaluate(config, workdir)`.

  run_spec       the config, read once into one checked spec per concern
  run_identity   a resumed run's config: what may change, what is recorded
  loop           checks, restore, the step loop, evaluations, export
  setup          model, optimizer, mesh, jitted steps, the first state
  steps          the pure train / eval steps and the TrainState
  divergence     a non-finite state is never kept
  optim          optimiser, schedule and weight-decay mask
  mixing         Mixup / CutMix inside the step
  checkpoints    the run's train state (orbax), verified before resume
  workdir        claiming a run's directory, its parameter table
  preemption     SIGTERM / SIGINT -> a checkpoint at the current step (or,
                 for an export, an exception that cleans up on its way)
  metrics_log    metrics.jsonl and TensorBoard
  npz_export     the finished run's weights as released-layout .npz
"""
