"""The ingress's replica metrics, read at scrape time from the ReplicaSet (the server's
own metrics, from coserve.server.metrics, are there too: accepted, answered, latency, and
the replicas' engine counters summed, as `coserve serve` exports one engine's). The
per-replica engine counters are as of the last status poll (at most 0.5 s old), not
cached further."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coserve.server.replicas.facade import ReplicaSet


class ReplicaCollector(Collector):
    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        replicas = self._replicas
        down = replicas.down_replicas()
        yield _gauge("coserve_replicas", "Replicas deployed", replicas.num_replicas)
        yield _gauge("coserve_replicas_ready", "Replicas answering (up at the last status poll "
                     "and since)", replicas.num_replicas - len(down))
        yield _gauge("coserve_replicas_alive", "Replicas whose last status call answered",
                     replicas.num_alive)
        yield CounterMetricFamily("coserve_replica_retries", "Calls repeated on another replica "
                                  "after a replica failed (died, restarting, draining)",
                                  value=replicas.num_retries)
        yield CounterMetricFamily("coserve_replica_handoffs", "Steps handed off: sent on to the "
                                  "replica of their expert (--handoff on)",
                                  value=replicas.num_handoffs)
        up = GaugeMetricFamily("coserve_replica_up", "1 while the replica answers", labels=["replica"])
        in_flight = GaugeMetricFamily("coserve_replica_in_flight", "Calls in flight to the replica",
                                      labels=["replica"])
        answered = CounterMetricFamily("coserve_replica_answered", "Calls the replica answered "
                                       "(requests; with handoff, parts of requests)",
                                       labels=["replica"])
        for i in range(replicas.num_replicas):
            up.add_metric([str(i)], float(i not in down))
            in_flight.add_metric([str(i)], replicas.loads.in_flight[i])
            answered.add_metric([str(i)], replicas.num_answered[i])
        yield from (up, in_flight, answered)
        yield from _partition_metrics(replicas)
        yield from _engine_counters(replicas)


def _partition_metrics(replicas: ReplicaSet) -> Iterator[Metric]:
    reasons = ["reason"]
    changes = CounterMetricFamily("coserve_partition_changes", "Changes of the partition "
                                  "requests are routed by: a usage shift, a replica down (its "
                                  "experts re-homed), a replica back", labels=reasons)
    moves = CounterMetricFamily("coserve_partition_moves", "Experts whose owning replica "
                                "changed, by the reason of the change", labels=reasons)
    for reason, num in replicas.num_changes.items():
        changes.add_metric([reason.value], num)
        moves.add_metric([reason.value], replicas.num_moved[reason])
    owned = GaugeMetricFamily("coserve_replica_owned_experts", "Experts the replica owns in the "
                              "partition now (0 while it is down: re-homed)", labels=["replica"])
    partition = replicas.partition
    for i in range(replicas.num_replicas):
        owned.add_metric([str(i)], len(partition.experts_of(i)))
    yield from (changes, moves, owned)
    yield _gauge("coserve_partition_imbalance", "Predicted load of the busiest replica up over "
                 "their mean, under the usage last checked (1 = even)",
                 replicas.rebalancer.imbalance)


def _engine_counters(replicas: ReplicaSet) -> Iterator[Metric]:
    labels = ["replica"]
    requests = CounterMetricFamily("coserve_replica_engine_requests", "Requests the replica's "
                                   "engines finished (restarts included)", labels=labels)
    switches = CounterMetricFamily("coserve_replica_switches", "Expert loads into the replica's "
                                   "executing tiers (restarts included)", labels=labels)
    read = CounterMetricFamily("coserve_replica_storage_read_bytes", "Bytes the replica read "
                               "from storage (restarts included)", labels=labels)
    for i, (num_requests, num_switches, bytes_read) in enumerate(replicas.replica_counters()):
        requests.add_metric([str(i)], num_requests)
        switches.add_metric([str(i)], num_switches)
        read.add_metric([str(i)], bytes_read)
    yield from (requests, switches, read)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
