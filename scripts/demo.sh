#!/usr/bin/env bash
# Set up (scripts/setup.sh), build the tiny CoE into the cache and compare the policies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/coserve demo "$@"
