"""Beyond one machine: experts partitioned over replicas along the routing graph
(`coserve.cluster.partition`, pure Python), replica routing policies shared by the Ray
Serve ingress and the simulator (`coserve.cluster.routing`), keeping the partition
current on usage shifts and replica deaths (`coserve.cluster.rebalance`), and the
cluster on the simulator (`coserve.cluster.simulate`). Names here are imported lazily."""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "OwnerFirst": "coserve.cluster.routing",
    "Partition": "coserve.cluster.partition",
    "RebalanceConfig": "coserve.cluster.rebalance",
    "Rebalancer": "coserve.cluster.rebalance",
    "ReplicaView": "coserve.cluster.routing",
    "UniformRandom": "coserve.cluster.routing",
    "partition_experts": "coserve.cluster.partition",
    "rehome": "coserve.cluster.partition",
    "repartition": "coserve.cluster.partition",
    "replica_routing": "coserve.cluster.routing",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.cluster", _EXPORTS)
