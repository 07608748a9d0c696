"""Test-wide setup: 8 fake CPU devices and quiet TensorFlow.

The environment must be set before jax or tensorflow is imported anywhere.
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
