#!/usr/bin/env bash
# Sets up vit_jax on a fresh machine, and nothing twice; runs nothing else.
#   bash scripts/bootstrap.sh           every tier: the exact versions of
#                                       requirements.lock (what the tests and
#                                       the default run need)
#   bash scripts/bootstrap.sh EXTRAS    the core plus a comma-separated list
#                                       of extras (train, export, notebook,
#                                       test), at the lock's versions; `core`
#                                       for the core alone (docs/install.md)
# It installs Debian's dataset-fashion-mnist (the real data of the default
# run) when the tiers include training, apt is available and the data is
# missing, and builds .venv with this package in it (editable). Re-running is
# cheap: the venv is rebuilt only when the lock, setup.py or the tiers change.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=${1:-all}
case ",$EXTRAS," in
  ,all, | ,core, ) ;;
  *)
    for extra in ${EXTRAS//,/ }; do
      case "$extra" in
        train | export | notebook | test) ;;
        *) echo "error: unknown tier '$extra' in '$EXTRAS'; use a" \
             "comma-separated list of train, export, notebook, test, or" \
             "core or all" >&2
           exit 2 ;;
      esac
    done ;;
esac
# The tiers that train need the default run's data.
case ",$EXTRAS," in
  ,all, | *,train,* | *,notebook,* | *,test,* ) NEEDS_DATA=1 ;;
  *) NEEDS_DATA=0 ;;
esac

FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
if [ "$NEEDS_DATA" = 1 ] && [ ! -d "$FASHION_MNIST_DIR" ] &&
   command -v apt-get >/dev/null; then
  echo "bootstrap: installing Debian's dataset-fashion-mnist" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  }
fi
if [ "$NEEDS_DATA" = 1 ] && [ ! -d "$FASHION_MNIST_DIR" ]; then
  echo "bootstrap: warning: $FASHION_MNIST_DIR is missing (apt-get install" \
    "dataset-fashion-mnist); the default run needs it" >&2
fi

# Quiet pip, minus notes about extra index locations some machines configure.
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v "Location .* is ignored" || true; }
}

PYTHON=${PYTHON:-python3}
STAMP=.venv/.requirements.lock.sha256
WANT=$( (sha256sum requirements.lock setup.py; echo "$EXTRAS") | sha256sum |
  cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "bootstrap: creating .venv (tiers: $EXTRAS) from requirements.lock;" \
    "a few minutes" >&2
  rm -rf .venv
  "$PYTHON" -m venv .venv
  if [ "$EXTRAS" = all ]; then
    pip_install -r requirements.lock
    pip_install --no-deps --no-build-isolation -e .
  else
    SPEC=.
    [ "$EXTRAS" = core ] || SPEC=".[$EXTRAS]"
    pip_install -c requirements.lock -e "$SPEC"
  fi
  echo "$WANT" > "$STAMP"
  echo "bootstrap: .venv is ready; run its programs as" \
    ".venv/bin/python -m vit_jax.cli.predict --help, or" \
    "source .venv/bin/activate first" >&2
fi
