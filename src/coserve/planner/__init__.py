"""The planner: executors per processor and each device's memory split between expert
weights and activations, by a decay-window search evaluated with the simulator.
`coserve.planner.search` is pure Python; names here are imported lazily."""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "Candidate": "coserve.planner.planner",
    "MemoryPlan": "coserve.planner.planner",
    "Planner": "coserve.planner.planner",
    "confirm": "coserve.planner.planner",
    "default_executor_options": "coserve.planner.planner",
    "SearchResult": "coserve.planner.search",
    "decay_window_search": "coserve.planner.search",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.planner", _EXPORTS)
