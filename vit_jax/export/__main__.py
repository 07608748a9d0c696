"""`python -m vit_jax.export --checkpoint=FILE --out=DIR`: the export
program, `vit_jax.cli.export`, under the package's own name."""

from vit_jax.cli import _process

# Before TensorFlow is imported: keep its banner out of the output.
_process.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.cli import _flags as cli_flags
from vit_jax.cli import export
# pylint: enable=g-import-not-at-top,wrong-import-position

export.define_flags()
cli_flags.run(export.main)
