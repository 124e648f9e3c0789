"""A task: one request's step at one expert. Policies read only `expert`,
`enqueued_s`, `deadline_s` and `deferred_s`; the payload travels with the task to the executor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, eq=False, kw_only=True)
class Task:
    request_id: str
    expert: str
    enqueued_s: float
    payload: Any = None  # the input item, e.g. a tensor [C, H, W]; policies never read it
    deadline_s: float = math.inf  # when its request should be answered (its latency target)
    deferred_s: float = 0.0  # predicted delay this task has suffered from being overtaken
    # The tracker's record of its request, so a late task (a stuck batch that came back)
    # never touches a newer request that reuses the id; policies never read it.
    owner: Any = None
