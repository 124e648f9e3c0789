"""A plan with cuda profiles, written as input (a plan file is JSON: these numbers are
what `coserve profile` would have written on a machine with a GPU), for tests of the
per-device budgets and planning on a machine without one."""

from coserve.plan import ArchCost
from coserve.planfile import HOST_TO_DEVICE_PATH, STORAGE_PATH, ArchProfile, LoadProfile, Plan

# Per item and fixed seconds of one batch; the GPU is ~8x faster per item.
CPU_COST_S = {"k_s": 0.004, "b_s": 0.002}
CUDA_COST_S = {"k_s": 0.0005, "b_s": 0.001}
ITEM_BYTES = 2 << 20


def _profile(k_s: float, b_s: float, footprint_bytes: int, max_batch: int) -> ArchProfile:
    latency = {n: k_s * n + b_s for n in (1, 2, 4, 8, 16, 32) if n <= max_batch}
    return ArchProfile(ArchCost(k_s, b_s, max_batch, ITEM_BYTES), latency, 0.0, 0.0,
                       footprint_bytes, {1: 1.0, 2: 1.1, 3: 1.2})


def plan_with_cuda(model, *, cpu_only: bool = False) -> Plan:
    footprint = {e.architecture: e.num_bytes for e in model.experts.values()}
    processors = {"cpu": {a: _profile(**CPU_COST_S, footprint_bytes=footprint[a], max_batch=16)
                          for a in model.architectures}}
    loads = {STORAGE_PATH: LoadProfile(530e6, 0.002, 8)}
    if not cpu_only:
        processors["cuda"] = {a: _profile(**CUDA_COST_S, footprint_bytes=footprint[a], max_batch=32)
                              for a in model.architectures}
        loads[HOST_TO_DEVICE_PATH] = LoadProfile(20e9, 0.0005, 8)
    return Plan(repository=model.name, processors=processors, threads={"cpu": 1}, loads=loads,
                usage=dict(model.usage), label_probs={e: dict(p) for e, p in model.label_probs.items()},
                usage_source="rules", machine={"cpu_count": 2, "cuda": [] if cpu_only else ["GPU"]})
