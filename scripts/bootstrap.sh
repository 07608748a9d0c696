#!/usr/bin/env bash
# Sets up everything vit_jax needs on a fresh machine, and nothing twice:
#   * Debian's dataset-fashion-mnist (the real data of the default run), when
#     apt is available and the data is missing;
#   * .venv with the exact versions of requirements.lock, plus this package.
# Re-running is cheap: the venv is rebuilt only when the lock file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -d "$FASHION_MNIST_DIR" ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing Debian's dataset-fashion-mnist" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  }
fi
[ -d "$FASHION_MNIST_DIR" ] || echo "bootstrap: warning: $FASHION_MNIST_DIR" \
  "is missing (apt-get install dataset-fashion-mnist); the default run needs it" >&2

# Quiet pip, minus notes about extra index locations some machines configure.
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "Location .* is ignored" || true; }
}

PYTHON=${PYTHON:-python3}
STAMP=.venv/.requirements.lock.sha256
WANT=$(sha256sum requirements.lock setup.py | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "bootstrap: creating .venv from requirements.lock" >&2
  rm -rf .venv
  "$PYTHON" -m venv .venv
  pip_install -r requirements.lock
  pip_install --no-deps --no-build-isolation -e .
  echo "$WANT" > "$STAMP"
fi
