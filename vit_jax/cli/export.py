r"""Writes a checkpoint out for serving: TF SavedModel, ONNX and TFLite;
or, with --format=timm, as a timm hub directory.

  .venv/bin/python -m vit_jax.export --checkpoint=runs/default/model.npz \
      --out=exported [--model=NAME] [--image_size=N] \
      [--precision=float32|float16|int8] [--format=timm]

(`python -m vit_jax.cli.export` is the same program, which
vit_jax/export/__main__.py runs under the library's name.)

--checkpoint is any source predict takes (our `.npz` with its sidecar, a
released `.npz` or name, a timm directory or hf-hub: id); --out is a new
(or empty) directory, which gets `saved_model/`, `model.onnx`,
`model.tflite` and, when the checkpoint names its classes, `labels.txt`.
Each file takes uint8 images (B, H, W, 3) of any size, resizes them to the
model's resolution (the checkpoint's own, or --image_size) as predict does,
and returns the float32 logits predict computes for them
(`vit_jax.export`). --precision=float16 or int8 writes model.onnx and
model.tflite with float16 or int8 (dynamic-range) weights, checked against
a looser tolerance (docs/deploy.md has their measured agreement). The files are checked in
their runtimes before they are moved into place; a failed export leaves
nothing behind, and so does one stopped by SIGTERM or Ctrl-C, which ends
in one line with status 143 or 130.

--format=timm writes config.json and model.safetensors instead
(`vit_jax.weights.save_timm`): `timm.create_model('local-dir:OUT')` loads
them and computes the same outputs; a model timm cannot express is refused
in one line naming the feature.
"""

import sys
from typing import Dict, List, Optional

from vit_jax.cli import _process

if __name__ == '__main__':
  # Before TensorFlow is imported: keep its banner out of the output.
  _process.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from vit_jax.cli import _flags as cli_flags
from vit_jax import export
from vit_jax import extras
from vit_jax.training import preemption
from vit_jax.weights import pretrained
from vit_jax.weights import to_timm
# pylint: enable=g-import-not-at-top,wrong-import-position


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags; only when run as a program."""
  cli_flags.define_model_flags(flag_values)
  cli_flags.definer(flag_values)(
      flags.DEFINE_string, 'out', None,
      'Directory to create (or an empty one) for saved_model/, model.onnx '
      'and model.tflite.')
  cli_flags.definer(flag_values)(
      flags.DEFINE_enum, 'precision', 'float32',
      'Weights and computation of model.onnx and model.tflite: float32, '
      'float16, or int8 (dynamic range: int8 weights). saved_model/ stays '
      'float32.', enum_values=export.PRECISIONS)
  cli_flags.definer(flag_values)(
      flags.DEFINE_enum, 'format', 'serving',
      "serving: SavedModel, ONNX and TFLite; timm: a timm hub directory "
      "(config.json + model.safetensors) for timm.create_model('local-dir:"
      "OUT').", enum_values=['serving', 'timm'])


def run(checkpoint: str, out: str, model_name: Optional[str] = None, *,
        image_size: Optional[int] = None, precision: str = 'float32',
        output_format: str = 'serving',
        **model_overrides) -> Dict[str, float]:
  """Exports `checkpoint` into `out` and prints what was written.

  Returns:
    File name -> largest relative difference from JAX's logits on the
    check batch (`export.export`); {} for output_format 'timm'.

  Raises:
    ValueError / FileNotFoundError: `out` cannot be created, or the
      checkpoint is missing, unreadable or does not fit the arguments.
    extras.MissingExtraError: a converter or runtime is not installed.
  """
  if image_size is not None and image_size < 1:
    raise ValueError(f'--image_size={image_size} must be a positive integer '
                     "(pixels); leave it unset for the checkpoint's own")
  if output_format == 'timm' and precision != 'float32':
    raise ValueError(f'--format=timm writes float32 weights: drop '
                     f'--precision={precision}')
  export.check_out(out)  # Before the weights load.
  loaded = pretrained.load(checkpoint, model_name, image_size=image_size,
                           **model_overrides)
  if output_format == 'timm':
    return _write_timm(loaded, out)
  try:
    # A stop signal whose exception a library swallowed still stops it.
    errors = export.export(loaded, out, precision=precision,
                           before_commit=preemption.raise_if_stopped)
  except ImportError as e:
    if not extras.is_optional(e.name):
      raise
    raise extras.MissingExtraError(extras.missing_message(e.name, 'export'),
                                   name=e.name) from e
  size = loaded.image_size
  written = [f'{export.SAVED_MODEL}/', export.ONNX, export.TFLITE]
  if loaded.class_names:
    written.append(export.LABELS)
  reduced = '' if precision == 'float32' else (
      f' ({export.ONNX} and {export.TFLITE} in {precision})')
  print(f'wrote {out}: {", ".join(written)}{reduced}')
  print(f'  input {export.INPUT!r}: uint8 (B, H, W, 3), any size, resized '
        f'to {size} x {size} inside; output {export.OUTPUT!r}: float32 '
        f'(B, {loaded.model.num_classes})')
  print('  largest relative difference from JAX on random batches: ' +
        ', '.join(f'{name} {error:.1e}' for name, error in errors.items()))
  return errors


def _write_timm(loaded: pretrained.LoadedModel, out: str) -> Dict[str, float]:
  """`loaded` as a timm hub directory `out` (`to_timm.save_timm`)."""
  config = to_timm.save_timm(
      loaded.params, loaded.model, out, image_size=loaded.image_size,
      preprocessing=loaded.preprocessing, class_names=loaded.class_names)
  print(f'wrote {out}: config.json, model.safetensors (timm architecture '
        f'{config["architecture"]}, model_args {config["model_args"]})')
  print(f"  load it with timm.create_model('local-dir:{out}', "
        'pretrained=True)')
  return {}


def main(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS):
  """Runs `run` on the parsed flags; user errors exit with status 1, a
  stop signal with 128 + its number."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Before the first TensorFlow operation: the GPUs' memory is JAX's.
  _process.hide_gpus_from_tensorflow()

  def checked_run():
    cli_flags.check_required(flag_values, 'checkpoint', 'out')
    run(flag_values.checkpoint, flag_values.out, flag_values.model,
        image_size=flag_values.image_size, precision=flag_values.precision,
        output_format=flag_values.format,
        **cli_flags.architecture_overrides(flag_values))
  try:
    with preemption.raise_on_stop_signals():
      cli_flags.exit_on_user_error(checked_run)
  except preemption.Interrupted as e:
    print(f'error: export interrupted by {e.signal_name}; nothing was '
          'written', file=sys.stderr)
    sys.exit(e.exit_status)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
