"""vit_jax.cli._host_memory: freed blocks are reused, not faulted in again."""

import platform
import subprocess
import sys

import pytest

# Allocates and touches a 256 MB block in one thread, frees it, then does
# the same in a second thread (as XLA:CPU's workers do across steps), and
# prints the page faults of the second allocation.
_PROGRAM = """
import ctypes, resource, sys, threading
from vit_jax.cli import _host_memory
if sys.argv[1] == 'keep':
  assert _host_memory.keep_freed_memory()
  assert _host_memory.keeps_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)

def touch_block():
  size = 2**28
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)

first = threading.Thread(target=touch_block)
first.start(); first.join()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = threading.Thread(target=touch_block)
second.start(); second.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _kernel_uses_huge_pages_everywhere():
  """THP mode 'always': fresh mappings fault 2 MiB at a time anyway."""
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      return '[always]' in f.read()
  except OSError:
    return False


def _faults_of_second_allocation(mode):
  return int(subprocess.run([sys.executable, '-c', _PROGRAM, mode],
                            capture_output=True, text=True,
                            check=True).stdout)


@pytest.mark.skipif(
    not (sys.platform.startswith('linux')
         and platform.libc_ver()[0] == 'glibc'),
    reason='mallopt settings are glibc-specific')
def test_a_freed_block_is_reused_without_page_faults():
  if not _kernel_uses_huge_pages_everywhere():
    # 256 MB in 4 KiB pages is 65,536 faults when glibc maps it afresh.
    assert _faults_of_second_allocation('default') > 30_000
  assert _faults_of_second_allocation('keep') < 1_000
