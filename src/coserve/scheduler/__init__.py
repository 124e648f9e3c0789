"""The scheduler: assignment of tasks to executor queues, arrangement inside a queue,
and batch splitting. Pure policies; no torch."""

from coserve.scheduler.arrange import ArrangePolicy, FifoArrange, GroupBehindLast, GroupByExpert
from coserve.scheduler.assign import (
    AffinityMinMaxAssign,
    AssignPolicy,
    MinMaxLatencyAssign,
    QueueView,
    RoundRobinAssign,
    ShortestQueueAssign,
    added_latency_s,
)
from coserve.scheduler.split import split_batch
from coserve.scheduler.task import Task

__all__ = [
    "AffinityMinMaxAssign",
    "ArrangePolicy",
    "AssignPolicy",
    "FifoArrange",
    "GroupBehindLast",
    "GroupByExpert",
    "MinMaxLatencyAssign",
    "QueueView",
    "RoundRobinAssign",
    "ShortestQueueAssign",
    "Task",
    "added_latency_s",
    "split_batch",
]
