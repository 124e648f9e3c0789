"""A real peer for the benchmark: the same repository and trace served through Ray Serve
model multiplexing, measured in the same run and reported as one `EngineStats` row
(policy "ray-serve").

What Ray gets, and why it is a fair comparison:

- **One deployment**, `num_replicas` replicas. Each replica holds at most N experts in
  Ray's own LRU cache (`@serve.multiplexed(max_num_models_per_replica=N)`), with

      N = max(1, (budget_bytes // num_replicas) // largest expert's bytes)

  Ray's cache counts models, not bytes, so N is the most whole experts that can never
  exceed the replica's share of the byte budget whichever experts it holds. (With
  experts of mixed sizes that is stricter than coserve's byte-packed pools; the row
  reports N, the per-replica share and the worst case, and `budget_exceeded` when even
  N=1 does not fit.)
- **Honest loads**: an expert not in Ray's cache is read with coserve's `Storage.read`
  (O_DIRECT, paced to the same storage profile), parsed with `parse_safetensors` and
  bound with `load_state_dict` into a freshly built module (never pickle): by default a
  skeleton built on "meta" that adopts the read tensors (`assign=True`), so a load
  costs Ray no random initialisation, which coserve does not pay either
  (`build_device="cpu"` gives the plain build-and-copy). With several replicas a paced profile is split evenly between
  them, so together they share one device's bandwidth as coserve's executors do.
- **Batching**: `@serve.batch`, which Ray 2.60 splits per multiplexed model id, so a
  batch runs one expert like coserve's. Forward passes run on one compute thread per
  replica (like one coserve executor; intra-op threads: see `torch_threads`); loads
  run on another thread, so a load overlaps other experts' execution.
- **Warm start like coserve**: coserve starts with its initial placement, so each
  replica loads the top-N experts by `model.usage` in its constructor (least likely
  first, so the most likely is the most recently used); those loads are outside the
  window and are not counted.
- **The driver** replays the trace with the CoE routing (`router.first`, then
  `router.next` on each returned label, fan-out allowed) through
  `handle.options(multiplexed_model_id=expert)`, with at most `max_inflight` requests
  in flight; the window starts after Ray start-up and deployment.

Switches and bytes are counted where they happen: each replica reports every load to a
small ledger actor, and the driver counts the loads made inside the window; the row is
built by coserve's own StatsRecorder.

Modules: `config` (settings, sizing, whether Ray is installed; imports no Ray),
`replica` (the deployment), `driver` (the replay and routing), `lifecycle` (Ray start,
deploy, stop), `stats` (the row), `run` (one run, end to end).
"""

from coserve.bench.ray_peer.config import (
    RAY_PEER_POLICY,
    RayPeerConfig,
    models_per_replica,
    ray_available,
)
from coserve.bench.ray_peer.replica import LoadRecord
from coserve.bench.ray_peer.run import run_ray_peer, run_ray_peer_results

__all__ = [
    "RAY_PEER_POLICY",
    "LoadRecord",
    "RayPeerConfig",
    "models_per_replica",
    "ray_available",
    "run_ray_peer",
    "run_ray_peer_results",
]
