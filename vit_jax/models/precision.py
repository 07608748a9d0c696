"""Which matmul operand dtype runs fastest where the model runs.

`config.model.dtype = 'auto'` chooses bfloat16 operands (with float32
accumulation, see `vit_jax.models.layers`) on TPUs and GPUs, and on CPUs that
multiply bf16 natively (x86 AVX512_BF16 or AMX, Arm's BF16 extension);
float32 on every other CPU. Without those instructions XLA:CPU converts each
bf16 operand to float32 before multiplying, so bf16 only adds work. Measured
on an AVX2-only AMD EPYC (2 cores, 2026-12-01): the default config's training
step took 60-63 ms of CPU time in float32 against 73-86 ms in bf16, and
ViT-B/16 inference ran at 4.16 images/s in float32 against 2.82 in bf16;
on a Zen 4 CPU with AVX512_BF16 bf16 ran 1.8-1.9x faster than float32.
"""

from typing import Optional

import jax

AUTO = 'auto'
DTYPES = (AUTO, 'float32', 'bfloat16')

# /proc/cpuinfo flags of instructions that multiply bf16 operands natively.
_BF16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16', 'bf16'})
_CPUINFO = '/proc/cpuinfo'


def cpu_multiplies_bf16(cpuinfo_path: str = _CPUINFO) -> bool:
  """Whether the CPU has bf16 multiply instructions, from its Linux flags
  (x86 'flags', Arm 'Features'); False where they cannot be read."""
  try:
    with open(cpuinfo_path) as f:
      lines = f.read().splitlines()
  except OSError:
    return False
  for line in lines:
    key, _, value = line.partition(':')
    if key.strip() in ('flags', 'Features'):
      return bool(_BF16_CPU_FLAGS & set(value.split()))
  return False


def resolve_dtype(name: str, backend: Optional[str] = None,
                  cpuinfo_path: str = _CPUINFO) -> str:
  """The matmul operand dtype `name` stands for on `backend`.

  Args:
    name: one of DTYPES; 'float32' and 'bfloat16' are returned as they are.
    backend: 'cpu', 'gpu', 'tpu', ...; None asks JAX for its default.
    cpuinfo_path: where the CPU flags are read on the CPU backend.

  Raises:
    ValueError: `name` is not one of DTYPES.
  """
  if name not in DTYPES:
    raise ValueError(f'unknown dtype {name!r}: choose one of {DTYPES}')
  if name != AUTO:
    return name
  backend = backend or jax.default_backend()
  if backend != 'cpu' or cpu_multiplies_bf16(cpuinfo_path):
    return 'bfloat16'
  return 'float32'
