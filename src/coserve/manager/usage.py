"""Usage probabilities, learned online from what is routed: the prior (from the rules and
the input mix) blended with the share of the last `window_requests` admitted requests
that were routed to each expert (their first experts at admission, each subsequent
expert when a task routes to it).

Learning from routing, not from completion, matters: with grouping, requests finish in
group order, so in a backlog the experts whose groups ran first would look popular and
the ones still waiting would look unused and be evicted first. The window makes a shift
in the input mix show within about `window_requests` arrivals.

The same observations teach which expert routes to which (`predecessors`): a routing
callable's targets are absent from the static graph until they are seen."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping

# About 4 s of the reference arrival rate (one component image every 4 ms): a new
# board's mix is followed within seconds, and 1,000 requests still resolve a 1% expert.
DEFAULT_WINDOW_REQUESTS = 1000


class RoutedRequest:
    """The experts one admitted request has been routed to so far (counted once each)."""

    __slots__ = ("experts", "in_window")

    def __init__(self, experts: set[str]) -> None:
        self.experts = experts
        self.in_window = True  # its experts count until it leaves the window


class UsageTracker:
    def __init__(
        self,
        prior: Mapping[str, float],
        blend: float,
        min_samples: int,
        window_requests: int = DEFAULT_WINDOW_REQUESTS,
    ) -> None:
        """`blend`: the weight of the observed share once `min_samples` requests were
        admitted; `window_requests`: how many of the latest admitted requests count."""
        if window_requests < 1:
            raise ValueError(f"window_requests must be at least 1, got {window_requests}")
        self._prior = dict(prior)
        self._blend = blend
        self._min_samples = min_samples
        self._window: deque[RoutedRequest] = deque()
        self._window_requests = window_requests
        self._counts: Counter[str] = Counter()  # requests in the window routed to e
        self._num_admitted = 0
        self._predecessors: dict[str, frozenset[str]] = {}  # e <- experts seen routing to e
        self._lock = threading.Lock()

    # -- what is routed ------------------------------------------------------------------
    def admitted(self, first: Iterable[str]) -> RoutedRequest:
        """A request was admitted at its first experts; pass the handle to `routed`."""
        request = RoutedRequest(set(first))
        with self._lock:
            self._num_admitted += 1
            self._window.append(request)
            self._counts.update(request.experts)
            if len(self._window) > self._window_requests:
                self._leave(self._window.popleft())
        return request

    def routed(self, request: RoutedRequest, source: str, targets: Iterable[str]) -> None:
        """`request`'s task at `source` routed it on to `targets` (none: a branch ended)."""
        with self._lock:
            for target in targets:
                seen = self._predecessors.get(target, frozenset())
                if source not in seen:  # rare: a new frozenset only for a new edge
                    self._predecessors[target] = seen | {source}
                if target not in request.experts:
                    request.experts.add(target)
                    if request.in_window:
                        self._counts[target] += 1

    def _leave(self, request: RoutedRequest) -> None:
        request.in_window = False
        self._counts.subtract(request.experts)

    def set_prior(self, prior: Mapping[str, float]) -> None:
        """Replace the prior the observed usage is blended with (experts not given keep
        theirs): a replica told that the cluster's partition changed."""
        with self._lock:
            self._prior.update({e: float(p) for e, p in prior.items() if e in self._prior})

    # -- what eviction and placement read ------------------------------------------------
    def usage(self) -> dict[str, float]:
        """P(a request uses e) for every expert of the prior, in [0, 1]."""
        with self._lock:
            if self._num_admitted < self._min_samples or self._blend == 0 or not self._window:
                return dict(self._prior)
            n = len(self._window)
            w = self._blend
            return {
                e: (1 - w) * p + w * self._counts.get(e, 0) / n for e, p in self._prior.items()
            }

    def predecessors(self) -> dict[str, frozenset[str]]:
        """Expert -> the experts observed routing to it (a snapshot)."""
        with self._lock:
            return dict(self._predecessors)
