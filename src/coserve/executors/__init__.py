"""Executors: workers bound to a processor, each with its own queue and model pool.
`spec` (which processor, how many threads) is pure Python; `executor` runs torch."""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "Executor": "coserve.executors.executor",
    "build_skeletons": "coserve.executors.executor",
    "ExecutorSpec": "coserve.executors.spec",
    "parse_executors": "coserve.executors.spec",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.executors", _EXPORTS)
