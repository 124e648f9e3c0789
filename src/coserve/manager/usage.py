"""Usage probabilities, learned online: the prior (from the rules and the input mix)
blended with the share of completed requests that actually used each expert."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping


class UsageTracker:
    def __init__(self, prior: Mapping[str, float], blend: float, min_samples: int) -> None:
        self._prior = dict(prior)
        self._blend = blend
        self._min_samples = min_samples
        self._counts: Counter[str] = Counter()
        self._num_requests = 0
        self._lock = threading.Lock()

    def observe(self, experts_used: Iterable[str]) -> None:
        with self._lock:
            self._num_requests += 1
            self._counts.update(set(experts_used))

    def usage(self) -> dict[str, float]:
        with self._lock:
            if self._num_requests < self._min_samples or self._blend == 0:
                return dict(self._prior)
            n = self._num_requests
            w = self._blend
            return {
                e: (1 - w) * p + w * self._counts.get(e, 0) / n for e, p in self._prior.items()
            }
