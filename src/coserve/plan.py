"""The cost model the scheduler predicts with: per architecture x processor latency
(K*n + B), maximum useful batch, activation bytes per item, and load bandwidth per tier
path. The offline profiler (`coserve profile`) measures these into a plan file (see
`coserve.planfile`); without one the engine measures a quick version at start-up or
uses the defaults below, and says which (`CostModel.source`).

Pure Python (no torch) so that the policies, the engine and the simulator share it.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coserve.errors import ConfigError

# Conservative defaults for a modern x86 core, used only when nothing was measured.
DEFAULT_K_S = 0.004
DEFAULT_B_S = 0.002
DEFAULT_MAX_BATCH = 16
DEFAULT_ITEM_BYTES = 8 << 20
DEFAULT_STORAGE_BYTES_PER_S = 500e6
DEFAULT_HOST_TO_DEVICE_BYTES_PER_S = 10e9


@dataclass(frozen=True)
class ArchCost:
    """Latency model of one architecture on one processor: a batch of n takes k_s*n + b_s,
    or, when a measured curve is given, the curve between its points (real curves are
    not straight: oneDNN picks other kernels at some sizes), extended by k_s beyond."""

    k_s: float
    b_s: float
    max_batch: int
    item_bytes: int
    curve: tuple[tuple[int, float], ...] = ()  # (batch size, seconds), ascending sizes

    def __post_init__(self) -> None:
        if self.k_s <= 0 or self.b_s < 0:
            raise ConfigError(f"ArchCost needs k_s > 0 and b_s >= 0, got {self.k_s}, {self.b_s}")
        if self.max_batch < 1:
            raise ConfigError(f"ArchCost.max_batch must be >= 1, got {self.max_batch}")

    def exec_s(self, num_items: int) -> float:
        if not self.curve:
            return self.k_s * num_items + self.b_s
        i = bisect.bisect_left(self.curve, (num_items, -math.inf))
        if i < len(self.curve) and self.curve[i][0] == num_items:
            return self.curve[i][1]
        if i == 0:  # below the first measured size: scale it down by K
            n0, s0 = self.curve[0]
            return max(s0 - self.k_s * (n0 - num_items), self.k_s)
        if i == len(self.curve):
            n1, s1 = self.curve[-1]
            return s1 + self.k_s * (num_items - n1)
        (n0, s0), (n1, s1) = self.curve[i - 1], self.curve[i]
        return s0 + (s1 - s0) * (num_items - n0) / (n1 - n0)

    def scaled(self, factor: float) -> ArchCost:
        """Every time multiplied by `factor` (e.g. a slowdown)."""
        return ArchCost(self.k_s * factor, self.b_s * factor, self.max_batch, self.item_bytes,
                        tuple((n, s * factor) for n, s in self.curve))


@dataclass(frozen=True)
class CostModel:
    """Costs keyed by (architecture, processor kind). `processor` is 'cpu' or 'cuda:N';
    all CUDA devices share the 'cuda' entry."""

    arch_of: Mapping[str, str]  # expert -> architecture
    expert_bytes: Mapping[str, int]  # expert -> resident bytes
    arch_costs: Mapping[tuple[str, str], ArchCost]
    storage_bytes_per_s: float = DEFAULT_STORAGE_BYTES_PER_S
    host_to_device_bytes_per_s: float = DEFAULT_HOST_TO_DEVICE_BYTES_PER_S
    source: str = "defaults"
    storage_fixed_s: float = 0.0  # per-load cost besides the bytes (set-up, header parse)
    task_overhead_s: float = 0.0  # executor time per task besides executing (route, queue)
    submit_s: float = 0.0  # time to accept and queue one request (validate, route, assign)
    _fallback: ArchCost = field(
        default=ArchCost(DEFAULT_K_S, DEFAULT_B_S, DEFAULT_MAX_BATCH, DEFAULT_ITEM_BYTES),
        repr=False,
    )
    # (expert, processor) -> ArchCost: selection looks every queued group up on every
    # take, and the two-level lookup was a third of the scheduler's time.
    _arch_cache: dict[tuple[str, str], ArchCost] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def arch_cost(self, expert: str, processor: str) -> ArchCost:
        cached = self._arch_cache.get((expert, processor))
        if cached is None:
            key = (self.arch_of[expert], processor_kind(processor))
            cached = self._arch_cache[expert, processor] = self.arch_costs.get(key, self._fallback)
        return cached

    def exec_s(self, expert: str, processor: str, num_items: int) -> float:
        return self.arch_cost(expert, processor).exec_s(num_items)

    def per_item_s(self, expert: str, processor: str) -> float:
        return self.arch_cost(expert, processor).k_s

    def load_s(self, expert: str, processor: str, from_host: bool) -> float:
        """Switch latency of bringing `expert` into an executor on `processor`."""
        num_bytes = self.expert_bytes[expert]
        if processor_kind(processor) == "cpu":
            # On the CPU the host pool is the executing tier: the switch is the storage read.
            return self.storage_read_s(expert)
        to_device_s = num_bytes / self.host_to_device_bytes_per_s
        return to_device_s if from_host else to_device_s + self.storage_read_s(expert)

    def storage_read_s(self, expert: str) -> float:
        """Storage -> host: one read of the expert's weights."""
        return self.storage_fixed_s + self.expert_bytes[expert] / self.storage_bytes_per_s


@functools.cache
def processor_kind(processor: str) -> str:
    return processor.split(":", 1)[0]


def executors_per_kind(processors: Sequence[str]) -> dict[str, int]:
    """How many executors of each processor kind run at once: ['cpu', 'cpu'] -> {'cpu': 2}."""
    counts: dict[str, int] = {}
    for p in processors:
        counts[processor_kind(p)] = counts.get(processor_kind(p), 0) + 1
    return counts
