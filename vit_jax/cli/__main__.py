"""`python -m vit_jax.cli PROGRAM ...`: the `vit-jax` command without its
console script (`vit_jax.cli.console`)."""

from vit_jax.cli import console

console.main()
