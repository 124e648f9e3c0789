#!/usr/bin/env bash
# Set up (scripts/setup.sh), build the circuit-board CoE into the cache (--tiny: the
# 12-expert one) and compare the policies, each with a backlog and at the trace's
# arrival offsets (`--arrivals backlog` or `--arrivals trace` for one mode).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/coserve demo "$@"
