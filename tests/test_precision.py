"""'auto' matmul dtype: bf16 where the hardware multiplies it natively."""

import jax.numpy as jnp
import pytest

from configs import default
from vit_jax import models
from vit_jax.models import precision

_ZEN4_FLAGS = 'fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni'
_AVX2_FLAGS = 'fpu sse2 avx2 fma'


def _cpuinfo(tmp_path, key, flags):
  path = tmp_path / 'cpuinfo'
  path.write_text(f'processor\t: 0\nmodel name\t: X\n{key}\t\t: {flags}\n\n'
                  f'processor\t: 1\n{key}\t\t: {flags}\n')
  return str(path)


@pytest.mark.parametrize('key,flags,multiplies', [
    ('flags', _ZEN4_FLAGS, True),
    ('flags', _AVX2_FLAGS, False),
    ('flags', 'fpu avx512f amx_tile amx_bf16', True),
    ('Features', 'fp asimd bf16 i8mm', True),
    ('Features', 'fp asimd', False),
])
def test_reads_the_bf16_flags(tmp_path, key, flags, multiplies):
  path = _cpuinfo(tmp_path, key, flags)
  assert precision.cpu_multiplies_bf16(path) is multiplies
  expected = 'bfloat16' if multiplies else 'float32'
  assert precision.resolve_dtype('auto', 'cpu', path) == expected


def test_accelerators_and_explicit_dtypes(tmp_path):
  avx2 = _cpuinfo(tmp_path, 'flags', _AVX2_FLAGS)
  assert precision.resolve_dtype('auto', 'gpu', avx2) == 'bfloat16'
  assert precision.resolve_dtype('auto', 'tpu', avx2) == 'bfloat16'
  assert precision.resolve_dtype('bfloat16', 'cpu', avx2) == 'bfloat16'
  assert precision.resolve_dtype('float32', 'gpu', avx2) == 'float32'


def test_unreadable_flags_mean_float32(tmp_path):
  missing = str(tmp_path / 'absent')
  assert not precision.cpu_multiplies_bf16(missing)
  assert precision.resolve_dtype('auto', 'cpu', missing) == 'float32'


def test_unknown_dtype_is_refused():
  with pytest.raises(ValueError, match="unknown dtype 'float16'"):
    precision.resolve_dtype('float16', 'cpu')


def test_a_config_asking_for_auto_builds_the_backends_dtype():
  config = default.get_config()
  assert config.model.dtype == 'auto'
  model = models.create_model_from_config(config, num_classes=10)
  assert model.dtype == jnp.dtype(precision.resolve_dtype('auto'))
