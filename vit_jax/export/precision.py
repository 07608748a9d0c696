"""The precisions a served file can be written in (`--precision`).

  PRECISIONS             'float32' (the default, exact to 1e-4), 'float16'
                         and 'int8' (dynamic-range: int8 weights, activations
                         quantised per batch at run time)
  check(precision, supported, file)   ValueError for one a writer lacks
  REDUCED_TOLERANCE      how far a reduced file's logits may be from JAX's
                         float32 ones on the export's random check batches

Every writer takes `precision`; one that cannot write a precision raises
ValueError naming it and its file. The files keep their uint8 input and
float32 logits at every precision.
"""

from typing import Sequence

PRECISIONS = ('float32', 'float16', 'int8')
# Largest relative difference (max |file - JAX| / max |JAX|) accepted for a
# reduced file on the export's check batches (random images): float16
# rounds every weight and activation to 11 bits, int8 the weights to 8.
# What they cost in top-1 agreement on a real test set is measured by
# `benchmarks.exported --agreement_split` (docs/deploy.md).
REDUCED_TOLERANCE = {'float16': 2e-2, 'int8': 0.25}


def check(precision: str, supported: Sequence[str], file: str) -> None:
  """Raises ValueError unless `precision` is one of `supported`.

  Args:
    precision: the requested precision.
    supported: those the writer of `file` can write.
    file: the file's name, for the message.
  """
  if precision not in PRECISIONS:
    raise ValueError(f'unknown precision {precision!r}: give one of '
                     f'{", ".join(PRECISIONS)}')
  if precision not in supported:
    raise ValueError(f'{file} cannot be written in {precision}: give '
                     f'--precision={" or ".join(supported)}')
