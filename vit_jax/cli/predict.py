r"""Classifies images with a checkpoint: our export, a released `.npz`, a
timm checkpoint or a released name (see `vit_jax.weights.pretrained.load`).

  .venv/bin/python -m vit_jax.cli.predict --checkpoint=runs/default/model.npz \
      [--image_size=384] [--top_k=5] [--labels=FILE|imagenet2012] \
      [--output=predictions.json|.csv] [--logits_out=logits.npy] IMAGE...

Each IMAGE is a file, a folder (its .jpg, .jpeg and .png files, sorted by
name; not its subfolders) or a glob ('photos/*.jpg', 'data/**/*.png': quote
it, or the shell expands it first). Images are read and classified
--batch_size at a time, so a large folder never sits in memory whole.
--output writes, per image, its path and its top-k classes (index, name
when known) with their probabilities: a JSON list of
{"path", "top_k": [{"class", "label", "probability"}]}, or a CSV with one
row per image and rank (path,rank,class,label,probability).

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
import csv
import glob
import io
import json
from typing import Any, Dict, Iterator, List, Optional, Sequence

from absl import app
from absl import flags
from etils import epath
import jax
import numpy as np

from vit_jax import atomic
from vit_jax import extras
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
  flags.DEFINE_integer('batch_size', 32, 'Images read and classified at '
                       'a time.', flag_values=flag_values)
  flags.DEFINE_string(
      'output', None, 'Write each image\'s top-k classes and probabilities '
      'here: FILE.json or FILE.csv.', flag_values=flag_values)


# What a folder given as IMAGE contributes (compared in lower case).
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Of the probabilities --output writes (1e-6: finer than any decision).
PROBABILITY_DECIMALS = 6
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


def expand_images(arguments: Sequence[str]) -> List[str]:
  """The image files the IMAGE arguments name, in order.

  A file is taken as it is; a folder gives its IMAGE_SUFFIXES files, sorted
  by name (not those of its subfolders); anything else with glob characters
  is a pattern (`**` crosses folders) giving its matching files, sorted.
  Checked before the checkpoint loads, so a wrong path does not wait for
  the weights.

  Raises:
    FileNotFoundError: a path does not exist.
    ValueError: a folder holds no image, or a pattern matches no file.
  """
  images = []
  for argument in arguments:
    path = epath.Path(argument)
    if path.is_dir():
      found = sorted(str(child) for child in path.iterdir()
                     if child.suffix.lower() in IMAGE_SUFFIXES and
                     child.is_file())
      if not found:
        raise ValueError(
            f'IMAGE folder {argument!r} holds no {"/".join(IMAGE_SUFFIXES)} '
            'file (subfolders are not read: give a glob such as '
            f'{argument.rstrip("/")}/**/*.jpg)')
    elif path.exists():
      found = [argument]
    elif glob.has_magic(argument):
      found = sorted(match for match in glob.glob(argument, recursive=True)
                     if not epath.Path(match).is_dir())
      if not found:
        raise ValueError(f'IMAGE pattern {argument!r} matches no file')
    else:
      raise FileNotFoundError(f'image file {argument!r} does not exist; '
                              'check the IMAGE arguments')
    images += found
  return images


def check_output(output: Optional[str]) -> None:
  """Raises ValueError when --output names neither a .json nor a .csv."""
  if output is not None and epath.Path(output).suffix.lower() not in (
      '.json', '.csv'):
    raise ValueError(f'--output={output}: give a file ending in .json or '
                     '.csv')


def read_labels(spec: Optional[str], num_classes: int) -> Optional[List[str]]:
  """Class names from a file or the 'imagenet2012' shortcut, or None."""
  if spec is None:
    return None
  if spec == 'imagenet2012':
    # Heavy: only when asked for.
    tfds = extras.require('tensorflow_datasets', '--labels=imagenet2012')
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


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities of one image's logits (float64)."""
  shifted = np.exp(np.asarray(logits, np.float64) - logits.max())
  return shifted / shifted.sum()


def top_classes(logits: np.ndarray, k: int,
          labels: Optional[Sequence[str]]) -> List[Dict[str, Any]]:
  """The k most probable classes of one image, most probable first.

  Returns:
    One dict per class: 'class' (index), 'label' (its name, or None) and
    'probability'.
  """
  probabilities = softmax(logits)
  return [{'class': int(index),
           'label': labels[index] if labels else None,
           'probability': float(probabilities[index])}
          for index in np.argsort(-logits, kind='stable')[:k]]


def format_top_k(path: str, logits: np.ndarray, k: int,
                 labels: Optional[Sequence[str]]) -> str:
  """One block of text: the image and its k most probable classes."""
  lines = [path]
  for entry in top_classes(logits, k, labels):
    name = f'  {entry["label"]}' if entry['label'] is not None else ''
    lines.append(f'  {entry["probability"]:7.2%}  class '
                 f'{entry["class"]:5d}{name}')
  return '\n'.join(lines)


def predictions_text(rows: Sequence[Dict[str, Any]], output: str) -> str:
  """`rows` ({'path', 'top_k': `top_classes`} per image) as --output's
  JSON or CSV (by `output`'s suffix), probabilities to 6 decimals."""
  rows = [{'path': row['path'],
           'top_k': [{**entry, 'probability': round(entry['probability'],
                                                     PROBABILITY_DECIMALS)}
                     for entry in row['top_k']]} for row in rows]
  if epath.Path(output).suffix.lower() == '.json':
    return json.dumps(rows, indent=1) + '\n'
  text = io.StringIO()
  writer = csv.writer(text, lineterminator='\n')
  writer.writerow(['path', 'rank', 'class', 'label', 'probability'])
  for row in rows:
    for rank, entry in enumerate(row['top_k'], 1):
      label = '' if entry['label'] is None else entry['label']
      writer.writerow([row['path'], rank, entry['class'], label,
                       entry['probability']])
  return text.getvalue()


def _pixel_batches(images: Sequence[str], loaded: pretrained.LoadedModel,
                   batch_size: int) -> Iterator[np.ndarray]:
  """The images, decoded and normalised, batch_size at a time."""
  for start in range(0, len(images), batch_size):
    yield np.stack([image_file.load_image(path, loaded.image_size,
                                          loaded.preprocessing)
                    for path in images[start:start + batch_size]])


def run(checkpoint_path: str, model_name: Optional[str],
        images: Sequence[str], *, image_size: Optional[int] = None,
        top_k: int = 5, labels: Optional[str] = None,
        logits_out: Optional[str] = None, batch_size: int = 32,
        output: Optional[str] = None, **model_overrides) -> np.ndarray:
  """Classifies `images`, prints the top-k and returns the logits.

  Args:
    checkpoint_path: any source `pretrained.load` reads.
    model_name: the variant the file must be; None: the file's own.
    images: files, folders and globs (`expand_images`).
    image_size: the resolution; None: the checkpoint's.
    top_k: classes printed (and written) per image.
    labels: a class-name file or 'imagenet2012'; None: the checkpoint's
      names, if it has any.
    logits_out: a .npy file for the float32 logits (N, classes).
    batch_size: images read and classified at a time.
    output: a .json or .csv file for the top-k (`predictions_text`).
    **model_overrides: architecture overrides (e.g. num_layers=2) for
      `pretrained.load`.

  Returns:
    float32 logits (N, classes), in the order of the expanded images.

  Raises:
    ValueError / FileNotFoundError: an image or the checkpoint is missing or
      unreadable, or does not fit the arguments.
  """
  check_output(output)
  paths = expand_images(images)
  loaded = pretrained.load(checkpoint_path, model_name,
                           image_size=image_size, **model_overrides)
  num_classes = loaded.model.num_classes
  if not num_classes:
    raise ValueError(f'{checkpoint_path} has no head: it gives features, not '
                     'classes')
  label_names = read_labels(labels, num_classes) or loaded.class_names
  k = min(top_k, num_classes)
  apply = jax.jit(lambda p, x: loaded.model.apply({'params': p}, x,
                                                  train=False))
  all_logits, rows = [], []
  for pixels in _pixel_batches(paths, loaded, batch_size):
    logits = np.asarray(apply(loaded.params, pixels), np.float32)
    for path, row in zip(paths[len(rows):], logits):
      print(format_top_k(path, row, k, label_names))
      rows.append({'path': path, 'top_k': top_classes(row, k, label_names)})
    all_logits.append(logits)
  logits = np.concatenate(all_logits)
  if logits_out:
    np.save(logits_out, logits)
  if output:
    atomic.write_text(output, predictions_text(rows, output))
  return logits


def main(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS):
  """Runs `run` on the parsed flags; user errors exit with status 1."""
  images = argv[1:]
  if not images:
    raise app.UsageError('give at least one image file, folder or glob')

  def checked_run():
    cli_flags.check_required(flag_values, 'checkpoint')
    check_positive_flags(flag_values)
    run(flag_values.checkpoint, flag_values.model, images,
        image_size=flag_values.image_size, top_k=flag_values.top_k,
        labels=flag_values.labels, logits_out=flag_values.logits_out,
        batch_size=flag_values.batch_size, output=flag_values.output,
        **cli_flags.architecture_overrides(flag_values))
  cli_flags.exit_on_user_error(checked_run)


if __name__ == '__main__':
  define_flags()
  cli_flags.run(main)
