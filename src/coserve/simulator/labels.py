"""Where the simulator's routing decisions come from: the simulator runs no expert, so
each expert's output label is drawn from P(label | expert) (measured by routing a sample
when the plan was made, else the rules' prior), or replayed from a real run."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterable, Mapping
from typing import Protocol

from coserve.errors import ConfigError
from coserve.types import Request, Result


class LabelSource(Protocol):
    def label(self, request: Request, expert: str) -> str:
        """The label `expert` gives `request`."""
        ...


class SampledLabels:
    """Draws each label from P(label | expert). The draw is seeded by (seed, request,
    expert), so a run is deterministic and does not depend on the order events happen in:
    two policies simulated on one trace see the same paths."""

    def __init__(self, label_probs: Mapping[str, Mapping[str, float]], seed: int = 0) -> None:
        self._seed = seed
        self._tables: dict[str, tuple[list[str], list[float]]] = {}
        for expert, probs in label_probs.items():
            labels = [label for label, p in probs.items() if p > 0]
            if not labels:
                raise ConfigError(f"label probabilities of expert {expert!r} are all zero; "
                                  f"give at least one label a positive probability")
            cumulative = list(itertools.accumulate(probs[label] for label in labels))
            self._tables[expert] = (labels, [c / cumulative[-1] for c in cumulative])

    def label(self, request: Request, expert: str) -> str:
        if expert not in self._tables:
            raise ConfigError(f"no label probabilities for expert {expert!r}: profile the "
                              f"repository again (coserve profile)")
        labels, cumulative = self._tables[expert]
        u = random.Random(f"{self._seed}/{request.request_id}/{expert}").random()
        return labels[min(bisect.bisect_right(cumulative, u), len(labels) - 1)]


class RecordedLabels:
    """The labels a real run gave (its results' steps); anything it did not record comes
    from `fallback`."""

    def __init__(self, results: Iterable[Result], fallback: LabelSource) -> None:
        self._labels = {(r.request_id, s.expert): s.label for r in results for s in r.steps}
        self._fallback = fallback

    def label(self, request: Request, expert: str) -> str:
        recorded = self._labels.get((request.request_id, expert))
        return recorded if recorded is not None else self._fallback.label(request, expert)
