"""Training a model from a config: `loop.train_and_evaluate(config, workdir)`.

  run_spec       the config, read once into one checked spec per concern
  loop           set-up, restore, the step loop, evaluations, export
  steps          the pure train / eval steps and the TrainState
  optim          optimiser, schedule and weight-decay mask
  mixing         Mixup / CutMix inside the step
  checkpoints    the run's train state (orbax), verified before resume
  workdir        claiming a run's directory, its config and parameter record
  preemption     SIGTERM / SIGINT -> a checkpoint at the current step (or,
                 for an export, an exception that cleans up on its way)
  metrics_log    metrics.jsonl and TensorBoard
"""
