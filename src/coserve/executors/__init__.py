"""Executors: workers bound to a processor, each with its own queue and model pool."""

from coserve.executors.executor import Executor, build_skeletons

__all__ = ["Executor", "build_skeletons"]
