#!/usr/bin/env bash
# Create .venv with the pinned CPU build of PyTorch first (so no CUDA wheels are pulled),
# then coserve and its test tools. Idempotent: a second run only checks.
# Elsewhere than these machines, get the CPU wheel with
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,ray]"
