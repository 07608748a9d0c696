"""`python -m vit_jax.export --checkpoint=FILE --out=DIR`: the export
program, `vit_jax.cli.export`, under the package's own name."""

from vit_jax.cli import _process

# Before TensorFlow is imported: keep its banner out of the output.
_process.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from vit_jax.cli import _flags as cli_flags
from vit_jax.cli import export
# pylint: enable=g-import-not-at-top,wrong-import-position

# --help shows the main module's docstring and key flags: the program's.
__doc__ = export.__doc__  # pylint: disable=redefined-builtin
export.define_flags()
flags.adopt_module_key_flags(export)
cli_flags.run(export.main)
