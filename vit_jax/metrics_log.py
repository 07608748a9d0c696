"""Where metrics go: TensorBoard (clu writers) and `workdir/metrics.jsonl`.

metrics.jsonl has one JSON object per write, always with 'step' and
'elapsed_s' (wall seconds since the run started in this process, set-up,
data preparation and compilation included); evaluation records carry
`top1_accuracy`, `top5_accuracy`, `loss` and `num_examples` (prefixed `ema_`
for the averaged params). Only process 0 writes.
"""

import json
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
from clu import metric_writers
from etils import epath
import jax
import numpy as np


class MetricsLog:
  """Writes scalar records to TensorBoard event files and metrics.jsonl."""

  def __init__(self, workdir, start_time: Optional[float] = None):
    """`start_time` (time.time()) is the zero of 'elapsed_s'; default now."""
    self._start_time = time.time() if start_time is None else start_time
    self._is_writer = jax.process_index() == 0
    self._writer = metric_writers.create_default_writer(
        workdir, just_logging=not self._is_writer, asynchronous=False)
    self.jsonl_path = epath.Path(workdir) / 'metrics.jsonl'

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._writer.write_scalars(step, scalars)
    if self._is_writer:
      elapsed = round(time.time() - self._start_time, 2)
      with self.jsonl_path.open('a') as f:
        f.write(json.dumps({'step': int(step), 'elapsed_s': elapsed,
                            **scalars}) + '\n')

  def drop_after(self, step: int) -> None:
    """Forgets records past `step`: a resumed run repeats those steps.

    The file is replaced atomically (a new file, then a rename), so a crash
    here leaves the old one whole.
    """
    if not (self._is_writer and self.jsonl_path.exists()):
      return
    kept = [line for line, record in read_records(self.jsonl_path)
            if record['step'] <= step]
    temporary = self.jsonl_path.with_name(self.jsonl_path.name + '.tmp')
    temporary.write_text(''.join(line + '\n' for line in kept))
    temporary.replace(self.jsonl_path)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_records(path) -> List[Tuple[str, Dict[str, Any]]]:
  """(line, record) of every record in a metrics.jsonl.

  A torn last line (a process killed in the middle of writing it) is
  dropped with a warning: that record was never complete. Any other line
  that is not a record is damage this code did not make.

  Raises:
    ValueError: a line before the last is not a JSON record with a 'step'.
  """
  lines = [line for line in epath.Path(path).read_text().splitlines() if line]
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      record = json.loads(line)
      step = record['step'] if isinstance(record, dict) else None
    except (json.JSONDecodeError, KeyError):
      step = None
    if step is not None:
      records.append((line, record))
    elif number == len(lines):
      logging.warning('%s: dropped its torn last line %d (%r); the run that '
                      'wrote it stopped while writing it', path, number,
                      line[:80])
    else:
      raise ValueError(
          f'{path} line {number} is not a metrics record ({line[:80]!r}); '
          'delete that line (or the file) to resume')
  return records


def evaluation_record(sums: Dict[str, float], prefix: str = '') -> Dict:
  """Accuracy and mean loss from summed eval_step outputs."""
  count = sums['count']
  return {
      f'{prefix}top1_accuracy': sums['top1_correct'] / count,
      f'{prefix}top5_accuracy': sums['top5_correct'] / count,
      f'{prefix}loss': sums['loss_sum'] / count,
      f'{prefix}num_examples': count,
  }
