#!/usr/bin/env bash
# Sets up everything (scripts/bootstrap.sh) and runs the test suite on 2 CPU
# workers, each with 8 fake CPU devices (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider tests "$@"
