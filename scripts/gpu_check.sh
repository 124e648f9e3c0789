#!/usr/bin/env bash
# The GPU check (issue 12): on a fresh machine with CUDA, in about 8 minutes, print
#   1. host -> device bandwidth of coserve's loader against a plain pinned copy_
#      (scripts/h2d_bandwidth.py), and
#   2. a `coserve bench` table on board A with --executors cuda:0:3,cpu:1, a GPU budget
#      of 20% of the expert bytes, the host cache on, for samba, coserve-paper, coserve
#      and all-resident (one backlog, no sweep, no planned row).
# It makes its own venv (torch==2.13.0 from the default index: the CUDA wheel on a GPU
# machine), installs this checkout, and builds the default pcb zoo if it is missing.
#
#   bash scripts/gpu_check.sh [VENV_DIR]        (default VENV_DIR: .venv-gpu)
#
# Environment: GPU_CHECK_LIMIT (requests of board A, default 1000; 0: all 2,500),
# GPU_CHECK_OUT (where the bench JSON goes, default gpu-check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-gpu}
LIMIT=${GPU_CHECK_LIMIT:-1000}
OUT=${GPU_CHECK_OUT:-gpu-check.json}
PY="$VENV/bin/python"
start_s=$SECONDS
step() { echo; echo "== $* ($((SECONDS - start_s)) s in)"; }

step "venv and install"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -e .
"$PY" - <<'EOF'
import sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} device(s)")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this check needs a GPU (and the CUDA wheel of torch)")
for i in range(torch.cuda.device_count()):
    free, total = torch.cuda.mem_get_info(i)
    print(f"cuda:{i} {torch.cuda.get_device_name(i)}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
EOF

step "host -> device bandwidth: loader vs pinned copy_"
timeout 120 "$PY" scripts/h2d_bandwidth.py --repeats 5

step "the default pcb zoo (built only if missing)"
timeout 300 "$VENV/bin/coserve" zoo build pcb

# The GPU budget is 20% of the expert bytes (board A's repository), in bytes.
read -r TOTAL_BYTES GPU_BYTES HOST_BYTES < <("$PY" - <<'EOF'
from coserve.cli.cache import default_pcb_root
from coserve.repository import open_repository
model = open_repository(default_pcb_root("default"))
total = model.total_expert_bytes
print(total, int(0.2 * total), int(0.5 * total))
EOF
)
if [ -z "${GPU_BYTES:-}" ]; then
  echo "could not open the default pcb zoo to size the GPU budget" >&2
  exit 1
fi
echo "expert bytes ${TOTAL_BYTES}; GPU budget ${GPU_BYTES} (20%); host cache ${HOST_BYTES} (50%)"

HELP=$("$VENV/bin/coserve" bench --help)
BUDGET_ARGS=(--budget-fraction 0.2)
if grep -q -- "--gpu-budget-bytes" <<<"$HELP"; then
  BUDGET_ARGS+=(--gpu-budget-bytes "$GPU_BYTES")
else
  echo "note: this coserve has no --gpu-budget-bytes: --budget-fraction 0.2 splits over all executors"
fi
if grep -q -- "--host-cache-bytes" <<<"$HELP"; then
  BUDGET_ARGS+=(--host-cache-bytes "$HOST_BYTES")
else
  echo "note: this coserve has no --host-cache-bytes: the engine's default host cache"
fi
LIMIT_ARGS=()
if [ "$LIMIT" != "0" ]; then
  LIMIT_ARGS=(--limit "$LIMIT")
fi

step "coserve bench, board A, cuda:0:3,cpu:1"
timeout 420 "$VENV/bin/coserve" bench --executors cuda:0:3,cpu:1 "${BUDGET_ARGS[@]}" \
  --policies samba,coserve-paper,coserve,all-resident --sweep '' --arrivals backlog \
  --no-plan "${LIMIT_ARGS[@]}" --json-out "$OUT"

"$PY" - "$OUT" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
m = run["metadata"]
print(f"raw storage {m['raw_storage_bytes_per_s'] / 1e6:.0f} MB/s")
print(f"{'policy':16s} {'img/s':>8s} {'switches':>9s} {'load MB/s':>10s}  "
      f"utilisation per executor / loads by tier path / host arena")
for r in run["rows"]:
    util = " ".join(f"{u:.0%}" for u in r["utilisation_per_executor"])
    arena = r.get("host_arena") or {}
    pinned = f"pinned {arena.get('pinned_bytes', 0) / 1e9:.2f} GB" if arena else "no arena"
    print(f"{r['policy']:16s} {r['throughput_rps']:8.1f} {r['num_switches']:9d} "
          f"{r['load_bandwidth_bytes_per_s'] / 1e6:10.0f}  [{util}] "
          f"{r.get('loads_by_path', {})} {pinned}")
EOF
step "done"
