#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent, safe to rerun):
#  - a virtualenv in .venv with centerloss_jax (editable), its trainer, test and
#    docs extras, at the exact versions of constraints.txt;
#  - the offline Fashion-MNIST of the Debian package dataset-fashion-mnist
#    (IDX files under /usr/share/datasets/fashion-mnist), used by the default
#    experiment. Skipped with a message where apt-get cannot run.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
# A .venv without pip is one whose creation was cut short: made again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test,docs]'

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup.sh: install Fashion-MNIST for the default experiment with" \
         "'sudo apt-get install dataset-fashion-mnist' (tests do not need it)." >&2
  fi
fi
