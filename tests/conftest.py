"""Test-wide setup: 8 fake CPU devices, quiet TensorFlow, the `slow` mark.

The environment must be set before jax or tensorflow is imported anywhere.

Two tiers: `pytest tests` runs everything (CI: .ci/run); the fast tier,
`pytest -m "not slow" tests` (or `bash scripts/run_tests.sh --fast`), leaves
out the tests marked `@pytest.mark.slow` and still reaches every module
(tests/test_fast_tier.py checks that).
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# Tests must never reach for the network (TFDS retries for minutes offline).
os.environ.setdefault('TFDS_DATA_DIR', '/nonexistent-tfds-data-dir')
os.environ.setdefault('NO_GCE_CHECK', 'true')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_platforms', 'cpu')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: an end-to-end run, a program in a subprocess, an '
      'export, the notebook or a big model; left out of the fast tier '
      '(-m "not slow")')
