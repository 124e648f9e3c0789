"""The bounded pool where request bodies are parsed and images decoded: CPU work on
untrusted bytes, kept off the event loop (which must keep reading requests, answering
probes and refusing load) and bounded to a few threads (so a flood of large bodies
queues here, holding its decode budget, instead of taking every core from the engine)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class WorkerPool:
    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self._executor = ThreadPoolExecutor(num_workers, thread_name_prefix="coserve-decode")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in the pool; its exception is raised here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
