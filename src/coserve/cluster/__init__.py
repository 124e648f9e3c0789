"""Beyond one machine: experts partitioned over replicas along the routing graph
(`coserve.cluster.partition`, pure Python), and the cluster on the simulator
(`coserve.cluster.simulate`). Names here are imported lazily."""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "Partition": "coserve.cluster.partition",
    "partition_experts": "coserve.cluster.partition",
    "repartition": "coserve.cluster.partition",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.cluster", _EXPORTS)
