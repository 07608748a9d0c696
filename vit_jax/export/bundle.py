"""All the serving files of a model written together, checked, or none.

  export(loaded, out)     OUT/saved_model, OUT/model.onnx, OUT/model.tflite
                          (and OUT/labels.txt when the checkpoint names its
                          classes), each run in its runtime and compared
                          with JAX before the directory is moved into place
  check_out(out)          refuses an `out` that export cannot create
  check_files(dir, loaded)  the comparison, file by file
"""

import errno
import os
import secrets
import shutil
from typing import Callable, Dict, List, Optional

import numpy as np

from vit_jax.export import precision as precision_lib
from vit_jax.export import serving
from vit_jax.export import to_onnx
from vit_jax.export import to_saved_model
from vit_jax.export import to_tflite
from vit_jax.weights import pretrained

LABELS = 'labels.txt'
# Each file's runner and the largest relative difference from JAX it may
# have, in the order the files are written and checked.
FORMATS = (to_saved_model, to_tflite, to_onnx)
RUNTIMES = {fmt.FILE: fmt.run for fmt in FORMATS}
TOLERANCE = {fmt.FILE: fmt.TOLERANCE for fmt in FORMATS}
# The files that `precision` applies to; the SavedModel stays float32 (it
# is the TFLite converter's source and TF Serving's full-precision file).
REDUCIBLE = (to_tflite.FILE, to_onnx.FILE)
# Images in the batch each file is checked on.
CHECK_BATCH = 2


class ExportMismatchError(ValueError):
  """A written file computes other logits than JAX (a converter's fault)."""


def check_out(out: str) -> None:
  """Raises ValueError when `export` could not create the directory `out`:
  it exists and is not an empty directory, or its nearest existing parent
  is not a writable directory."""
  path = os.path.abspath(out)
  if os.path.isdir(path) and os.listdir(path):
    raise ValueError(f'{out} exists and is not empty: give a new directory '
                     'to export into')
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f'{out} exists and is not a directory: give a new '
                     'directory to export into')
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'cannot create {out}: {parent} is not a directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f'cannot create {out}: {parent} is not writable')


def export(loaded: pretrained.LoadedModel, out: str, *,
           precision: str = 'float32',
           before_commit: Optional[Callable[[], None]] = None
           ) -> Dict[str, float]:
  """Writes the serving files of `loaded` into the new directory `out`.

  They are written into a temporary directory beside `out`, checked in
  their runtimes, and only then renamed to `out`: a failed or interrupted
  export (any exception, KeyboardInterrupt and
  `preemption.Interrupted` included) leaves nothing behind.

  Args:
    loaded: the model (`pretrained.load`); the files resize their input to
      its native resolution.
    out: the directory to create (it may exist if empty).
    precision: the ONNX and TFLite files' weights and computation: 'float32'
      (the default), 'float16' or 'int8' (dynamic-range); the SavedModel is
      float32. A reduced file is checked against `tolerance`.
    before_commit: called once the files are written and checked, before
      they are renamed to `out`; an exception from it abandons them (the
      export program re-raises a stop signal a library swallowed).

  Returns:
    File name -> largest relative difference of its logits from JAX's on
    the check batches.

  Raises:
    ValueError: the model has no head, `out` cannot be created
      (`check_out`), or a writer cannot write `precision`;
      ExportMismatchError: a file is beyond `TOLERANCE`.
    OSError: a file cannot be written (a full disk); the message names it,
      `out` and the fix.
    ImportError: an optional converter or runtime is not installed.
  """
  if not loaded.model.num_classes:
    raise ValueError('the checkpoint has no head: it gives features, not '
                     'classes, and export writes classifiers')
  precision_lib.check(precision, precision_lib.PRECISIONS, out)
  check_out(out)
  loaded = serving.for_serving(loaded)
  path = os.path.abspath(out)
  parent = os.path.dirname(path)
  # A name of our own, not mkdtemp's: the directory is removed on any exit,
  # a signal's between its creation and the assignment included.
  work = os.path.join(
      parent, f'.{os.path.basename(path)}.{secrets.token_hex(6)}.partial')
  try:
    try:
      os.makedirs(parent, exist_ok=True)
      os.mkdir(work, 0o700)
      errors = _write_and_check(loaded, work, precision)
      if before_commit is not None:
        before_commit()
    except OSError as e:
      raise _write_error(e, work, out) from e
    _move_into_place(work, path, out)
  except BaseException:
    shutil.rmtree(work, ignore_errors=True)
    raise
  return errors


def _write_and_check(loaded: pretrained.LoadedModel, work: str,
                     precision: str) -> Dict[str, float]:
  """Writes the files of `loaded` into `work` in `precision` and checks
  them (`check_files`)."""
  serve = serving.serving_function(loaded)
  saved_model = os.path.join(work, to_saved_model.FILE)
  to_saved_model.write(serve, loaded.params, loaded.image_size, saved_model)
  to_tflite.write(saved_model, os.path.join(work, to_tflite.FILE),
                  precision=precision)
  to_onnx.write_serving(serve, loaded.params, loaded.image_size,
                        os.path.join(work, to_onnx.FILE), precision=precision)
  if loaded.class_names:
    with open(os.path.join(work, LABELS), 'w') as f:
      f.write(''.join(f'{name}\n' for name in loaded.class_names))
  return check_files(work, loaded, precision)


def _write_error(error: OSError, work: str, out: str) -> OSError:
  """`error` (met while writing into `work`) as an OSError whose message
  is one line naming what was being written, where, and the fix."""
  written = 'the files'  # A write() error names no file.
  if error.filename:
    written = os.path.abspath(error.filename)
    if written.startswith(work + os.sep):
      written = os.path.relpath(written, work)
  reason = error.strerror or ' '.join(str(error).split())
  where = os.path.dirname(os.path.abspath(out))
  full = (error.errno in (errno.ENOSPC, errno.EDQUOT)
          or 'No space left on device' in reason)
  fix = (f'free space on the disk of {where} or export to a directory on '
         'another disk' if full else f'check that {where} can be written to')
  explained = OSError(f'cannot write {written} of {out} ({reason}): {fix}; '
                      'nothing was written')
  explained.errno = error.errno  # Not in the message: OSError(errno, ...)
  return explained               # would print "[Errno N]" first.


def check_batches(image_size: int) -> List[np.ndarray]:
  """The random uint8 batches the files are checked on: one at the model's
  `image_size`, one of another (non-square) size that they resize."""
  rng = np.random.default_rng(0)
  other = (image_size * 3 // 4 + 1, image_size + 5)
  return [rng.integers(0, 256, (CHECK_BATCH, *shape, 3), dtype=np.uint8)
          for shape in ((image_size, image_size), other)]


def tolerance(name: str, precision: str = 'float32') -> float:
  """The largest relative difference from JAX the file `name` may have
  when written in `precision`."""
  if name not in REDUCIBLE or precision == 'float32':
    return TOLERANCE[name]
  return precision_lib.REDUCED_TOLERANCE[precision]


def check_files(directory: str, loaded: pretrained.LoadedModel,
                precision: str = 'float32') -> Dict[str, float]:
  """Runs each file of `directory` on the `check_batches` and compares it
  with `serving.reference_logits` (`tolerance`).

  Returns:
    File name -> largest relative error over the batches.

  Raises:
    ExportMismatchError: a file is beyond its `tolerance`.
  """
  errors = dict.fromkeys(RUNTIMES, 0.0)
  for images in check_batches(loaded.image_size):
    expected = serving.reference_logits(loaded, images)
    for name, run in RUNTIMES.items():
      actual = run(os.path.join(directory, name), images)
      if actual.shape != expected.shape:
        raise ExportMismatchError(
            f'{name} gives logits of shape {actual.shape}, JAX '
            f'{expected.shape}: nothing was written')
      error = serving.relative_error(actual, expected)
      allowed = tolerance(name, precision)
      if not error <= allowed:
        raise ExportMismatchError(
            f'{name} differs from JAX by {error:.2g} (relative) on a '
            f'random batch of {images.shape[1]} x {images.shape[2]} images, '
            f'more than the {allowed:g} allowed: nothing was written')
      errors[name] = max(errors[name], error)
  return errors


def _move_into_place(work: str, path: str, out: str) -> None:
  """Renames the finished `work` directory to `path` (an empty directory
  there is replaced), with the permissions a new directory gets."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(work, 0o777 & ~umask)  # mkdtemp's directory is private.
  try:
    if os.path.isdir(path):
      os.rmdir(path)
    os.rename(work, path)
  except OSError as e:
    raise ValueError(f'cannot create {out}: {e}') from e
