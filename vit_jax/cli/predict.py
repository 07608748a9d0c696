r"""Classifies images with a checkpoint: our export, a released `.npz`, a
timm checkpoint or a released name (see `vit_jax.weights.pretrained.load`).

  python -m vit_jax.cli.predict --checkpoint=runs/default/model.npz \
      [--image_size=384] [--top_k=5] [--labels=FILE|imagenet2012] \
      [--logits_out=logits.npy] IMAGE...

The architecture, class count, native resolution and pixel normalisation
come from the file: from its arrays and, for our exports, from the sidecar
beside them (`model.json`), which also names the classes. --model (e.g.
ViT-B_16) is optional: given, the file must fit that variant, and for a file
trained with `config.model` overrides it takes the same overrides
(--patch_size, --hidden_size, --mlp_dim, --num_heads, --num_layers); without
it they only check the file. --labels overrides the stored class names: a
text file with one class name per line, or `imagenet2012` for the
ImageNet-1k class names shipped with tensorflow-datasets (WordNet synset
IDs, TFDS's label names).
"""

from vit_jax.cli import _process

if __name__ == '__main__':
  # Before TensorFlow is imported: keep its banner out of the output.
  _process.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from typing import List, Optional, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np

from vit_jax.cli import _flags as cli_flags
from vit_jax.data import image_file
from vit_jax.weights import pretrained
# pylint: enable=g-import-not-at-top,wrong-import-position


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags; only when run as a program, so that
  importing several command-line modules in one process does not clash."""
  cli_flags.define_model_flags(flag_values)
  flags.DEFINE_integer('top_k', 5, 'Classes printed per image.',
                       flag_values=flag_values)
  flags.DEFINE_string(
      'labels', None, 'Class-name file (one per line) or "imagenet2012".',
      flag_values=flag_values)
  flags.DEFINE_string(
      'logits_out', None, 'Save float32 logits (N, classes) here (.npy).',
      flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 32, 'Images per forward.',
                       flag_values=flag_values)


# TFDS's own ImageNet-1k label list, in class-index order.
_IMAGENET2012_LABELS = 'datasets/imagenet2012/labels.txt'
# Integer flags that must be >= 1 when set, with what to do instead.
_POSITIVE_FLAGS = {
    'batch_size': 'images per forward pass',
    'image_size': 'pixels, a multiple of the patch size; leave it unset for '
                  "the checkpoint's own resolution",
}


def check_positive_flags(flag_values: flags.FlagValues) -> None:
  """Raises ValueError naming the first `_POSITIVE_FLAGS` flag below 1.

  A batch size or resolution of 0 or less fails deep in the batching or the
  model, with a traceback or a message that names no flag, and only after
  the checkpoint has loaded.
  """
  for name, meaning in _POSITIVE_FLAGS.items():
    value = flag_values[name].value
    if value is not None and value < 1:
      raise ValueError(f'--{name}={value} must be a positive integer '
                       f'({meaning})')


def check_image_paths(paths: Sequence[str]) -> None:
  """Raises for the first IMAGE argument that is not a file.

  Checked before the checkpoint loads, so a wrong path does not wait for the
  weights, and a directory gets a message instead of the traceback of the
  TF error (FailedPreconditionError, 'Is a directory') that reading it
  raises.

  Raises:
    ValueError: a path is a directory.
    FileNotFoundError: a path does not exist.
  """
  for path in paths:
    if epath.Path(path).is_dir():
      raise ValueError(f'IMAGE {path!r} is a directory; predict takes image '
                       f'files, e.g. {path.rstrip("/")}/*.jpg')
    if not epath.Path(path).exists():
      raise FileNotFoundError(f'image file {path!r} does not exist; check '
                              'the IMAGE arguments')


def read_labels(spec: Optional[str], num_classes: int) -> Optional[List[str]]:
  """Class names from a file or the 'imagenet2012' shortcut, or None."""
  if spec is None:
    return None
  if spec == 'imagenet2012':
    import tensorflow_datasets as tfds  # Heavy: only when asked for.
    path = tfds.core.utils.tfds_path() / _IMAGENET2012_LABELS
  else:
    path = epath.Path(spec)
    if not path.exists():
      raise FileNotFoundError(f'labels file {spec} does not exist')
  names = [line.strip() for line in path.read_text().splitlines()
           if line.strip()]
  if len(names) != num_classes:
    raise ValueError(f'{spec} has {len(names)} labels but the checkpoint has '
                     f'{num_classes} classes')
  return names


def format_top_k(path: str, logits: np.ndarray, k: int,
                 labels: Optional[Sequence[str]]) -> str:
  """One block of text: the image and its k most probable classes."""
  shifted = np.exp(logits - logits.max())
  probabilities = shifted / shifted.sum()
  lines = [path]
  for index in np.argsort(-logits)[:k]:
    name = f'  {labels[index]}' if labels else ''
    lines.append(f'  {probabilities[index]:7.2%}  class {index:5d}{name}')
  return '\n'.join(lines)


def run(checkpoint_path: str, model_name: Optional[str],
        images: Sequence[str], *, image_size: Optional[int] = None,
        top_k: int = 5, labels: Optional[str] = None,
        logits_out: Optional[str] = None, batch_size: int = 32,
        **model_overrides) -> np.ndarray:
  """Classifies `images`, prints the top-k and returns the logits.

  `model_name` (None: the file's own architecture) and `model_overrides`
  (e.g. num_layers=2) reach `pretrained.load`. The class names are
  `labels`' when given, else the checkpoint's (its sidecar's), if any.

  Raises:
    ValueError / FileNotFoundError: an image or the checkpoint is missing or
      unreadable, or does not fit the arguments.
  """
  check_image_paths(images)
  loaded = pretrained.load(checkpoint_path, model_name,
                           image_size=image_size, **model_overrides)
  num_classes = loaded.model.num_classes
  if not num_classes:
    raise ValueError(f'{checkpoint_path} has no head: it gives features, not '
                     'classes')
  label_names = read_labels(labels, num_classes) or loaded.class_names
  pixels = np.stack([image_file.load_image(path, loaded.image_size,
                                           loaded.preprocessing)
                     for path in images])
  logits = pretrained.predict_logits(loaded.model, loaded.params, pixels,
                                     batch_size)
  for path, row in zip(images, logits):
    print(format_top_k(path, row, min(top_k, num_classes), label_names))
  if logits_out:
    np.save(logits_out, logits)
  return logits


def main(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS):
  """Runs `run` on the parsed flags; user errors exit with status 1."""
  images = argv[1:]
  if not images:
    raise app.UsageError('give at least one image path')

  def checked_run():
    cli_flags.check_required(flag_values, 'checkpoint')
    check_positive_flags(flag_values)
    run(flag_values.checkpoint, flag_values.model, images,
        image_size=flag_values.image_size, top_k=flag_values.top_k,
        labels=flag_values.labels, logits_out=flag_values.logits_out,
        batch_size=flag_values.batch_size,
        **cli_flags.architecture_overrides(flag_values))
  cli_flags.exit_on_user_error(checked_run)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
