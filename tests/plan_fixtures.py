"""A hand-made plan for tests that need one without profiling (cluster simulate)."""

from __future__ import annotations

from coserve.planfile import Plan
from coserve.repository import CoEModel


def hand_made_plan(model: CoEModel) -> Plan:
    """A hand-made plan covering `model`'s architectures: no profiling in the test."""
    from coserve.plan import ArchCost
    from coserve.planfile import ArchProfile, LoadProfile, Plan

    profiles = {arch: ArchProfile(ArchCost(0.002, 0.001, 16, 1 << 16), {1: 0.003, 2: 0.005},
                                  1e-4, 0.03, 1_000_000) for arch in model.architectures}
    return Plan(repository=model.name, processors={"cpu": profiles}, threads={"cpu": 1},
                loads={"storage->host": LoadProfile(1.2e9, 0.002, 6)}, usage=dict(model.usage),
                label_probs={e: dict(p) for e, p in model.label_probs.items()},
                usage_source="rules", machine={"cpu_count": 2})
