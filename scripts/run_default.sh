#!/usr/bin/env bash
# Sets up everything (scripts/bootstrap.sh) and trains the default config: a
# small ViT from scratch on the real Fashion-MNIST (about 7 minutes on 2 CPU
# cores; in an existing workdir it resumes). Extra arguments go to
# vit_jax.main, e.g. --config.total_steps=100.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m vit_jax.main --config=configs/default.py \
  --workdir="${WORKDIR:-runs/default}" "$@"
