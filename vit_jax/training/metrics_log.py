"""Where metrics go: TensorBoard (clu writers) and `workdir/metrics.jsonl`.

TensorBoard's tags are grouped by record: `train/loss`, `train/lr`,
`eval/top1_accuracy`, `eval/ema_top1_accuracy`, `fewshot/...` (a key's
`<record>_` prefix is dropped: `train_loss` is `train/loss`). Counts that
are no curve (`num_examples`, `window_steps`) go to metrics.jsonl only.

metrics.jsonl has one JSON object per write, always with 'step', 'record'
(what wrote it: 'train', or an evaluator's record such as 'eval') and
'elapsed_s' (wall seconds the run's processes have worked on it, set-up,
data preparation and compilation included: a resumed run goes on from the
last record of the process before it); evaluation records carry
`top1_accuracy`, `top5_accuracy`, `loss` and `num_examples` (prefixed `ema_`
for the averaged params). Only process 0 writes.
"""

import json
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from absl import logging
from clu import metric_writers
from etils import epath
import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer import record_writer

from vit_jax import atomic


class MetricsLog:
  """Writes scalar records to TensorBoard event files and metrics.jsonl."""

  def __init__(self, workdir, start_time: Optional[float] = None):
    """`start_time` (time.time()): when this process started on the run
    (default now); 'elapsed_s' counts from it, plus the time of the
    processes before it (`drop_after`)."""
    self._start_time = time.time() if start_time is None else start_time
    self._is_writer = jax.process_index() == 0
    self._workdir = epath.Path(workdir)
    # Made at the first write, after `drop_after`'s restart marker: TensorBoard
    # reads a directory's event files in name (creation time) order.
    self._writer = None
    self.jsonl_path = self._workdir / 'metrics.jsonl'
    self._earlier_s = 0.0  # Time the processes before this one worked.

  @property
  def writer(self) -> metric_writers.MetricWriter:
    """TensorBoard's writer on process 0, none elsewhere. The training loop
    logs its own lines: no logging writer repeats them."""
    if self._writer is None:
      self._writer = (metric_writers.SummaryWriter(str(self._workdir))
                      if self._is_writer else metric_writers.MultiWriter([]))
    return self._writer

  def write(self, step: int, scalars: Mapping[str, Any],
            record: str = 'train') -> None:
    """Writes `scalars` of `step` as one `record` line (and to TensorBoard)."""
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self.writer.write_scalars(step, tensorboard_scalars(scalars, record))
    if self._is_writer:
      elapsed = round(time.time() - self._start_time + self._earlier_s, 2)
      with self.jsonl_path.open('a') as f:
        f.write(json.dumps({'step': int(step), 'record': record,
                            'elapsed_s': elapsed, **scalars}) + '\n')

  def drop_after(self, step: int) -> Set[str]:
    """Forgets records past `step`: a resumed run repeats those steps.

    metrics.jsonl is replaced atomically (a new file, then a rename), so a
    crash here leaves the old one whole. TensorBoard's event files are
    append-only: a start marker tells TensorBoard to discard their points
    past `step` (see `_write_start_marker`). 'elapsed_s' goes on from the
    last record of the processes before (dropped ones included: that time
    was spent). Call at the start of every run, before the first write.

    Returns:
      The records already written at `step` (process 0; empty elsewhere):
      what a resumed run need not repeat.
    """
    if not self._is_writer:
      return set()
    done = set()
    if self.jsonl_path.exists():
      records = read_records(self.jsonl_path)
      self._earlier_s = max((record.get('elapsed_s', 0)
                             for _, record in records), default=0.0)
      kept = [line for line, record in records if record['step'] <= step]
      done = {record.get('record') for _, record in records
              if record['step'] == step}
      atomic.write_text(self.jsonl_path,
                        ''.join(line + '\n' for line in kept))
    _write_start_marker(self._workdir, step + 1)
    return done

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


# Keys (or key endings, e.g. `ema_num_examples`) of metrics.jsonl that
# TensorBoard does not plot: counts, not measurements of the run.
_NOT_PLOTTED = ('num_examples', 'window_steps')


def tensorboard_scalars(scalars: Mapping[str, float],
                        record: str) -> Dict[str, float]:
  """`scalars` of a `record` as TensorBoard tags (see the module docstring).

  Args:
    scalars: a record's metrics, keyed as in metrics.jsonl.
    record: what wrote them ('train', 'eval', ...).

  Returns:
    {'<record>/<key without a leading <record>_>': value}, less the keys
    ending in one of `_NOT_PLOTTED`.
  """
  tags = {}
  for key, value in scalars.items():
    if not key.endswith(_NOT_PLOTTED):
      tags[f'{record}/{key.removeprefix(record + "_")}'] = value
  return tags


_EVENT_FILE_PREFIX = 'events.out.tfevents.'


def _write_start_marker(logdir: epath.Path, first_step: int) -> None:
  """Writes an event file holding a `SessionLog.START` at `first_step`.

  TensorBoard takes every START after a log directory's first as a restart
  and discards the points read before it (the files of the runs before this
  one) at `first_step` or later: those steps are trained again. It reads
  event files in name order, whose first field is the creation time in
  seconds: the marker's name sorts after the earlier runs' files and before
  the file this run's writer makes next.
  """
  created = max([int(time.time()) - 1] + _creation_seconds(logdir))
  # After the host, its name goes on with a letter: it sorts after the
  # stopped runs' files of the same second ('<host>.<pid>...'). This run's
  # file must then come from a later second.
  while int(time.time()) <= created:
    time.sleep(0.05)
  path = logdir / (f'{_EVENT_FILE_PREFIX}{created:010d}.'
                   f'{socket.gethostname()}.start-at-{first_step}')
  events = [
      event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'),
      event_pb2.Event(wall_time=time.time(), step=first_step,
                      session_log=event_pb2.SessionLog(
                          status=event_pb2.SessionLog.START)),
  ]
  with path.open('wb') as f:
    writer = record_writer.RecordWriter(f)
    for event in events:
      writer.write(event.SerializeToString())


def _creation_seconds(logdir: epath.Path) -> List[int]:
  """The creation times in the names of the event files in `logdir`."""
  seconds = []
  for path in logdir.glob(_EVENT_FILE_PREFIX + '*'):
    field = path.name[len(_EVENT_FILE_PREFIX):].split('.')[0]
    if field.isdigit():
      seconds.append(int(field))
  return seconds


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
