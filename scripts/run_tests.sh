#!/usr/bin/env bash
# Sets up everything (scripts/bootstrap.sh) and runs the test suite on 2 CPU
# workers, each with 8 fake CPU devices (tests/conftest.py).
#   bash scripts/run_tests.sh          every test (what CI runs)
#   bash scripts/run_tests.sh --fast   the fast tier for the edit-test loop:
#                                      no test marked slow, every module still
#                                      reached (about 3 minutes on 2 cores)
# Other arguments go to pytest (e.g. -k resize, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
ARGS=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then ARGS+=(-m "not slow"); else ARGS+=("$arg"); fi
done
exec .venv/bin/python -m pytest -n 2 --dist worksteal -q -p no:cacheprovider tests \
  ${ARGS[@]+"${ARGS[@]}"}
