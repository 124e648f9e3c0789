"""The offline profiler (`coserve profile`): what one machine needs to plan serving a
repository. Per architecture x processor it measures batch latency on the engine's own
execution path (the max useful batch is where per-item latency plateaus; K and B come
from a linear fit below it) and activation bytes per item; per tier path, the load
latency of real expert files; and usage probabilities from the routing rules or from
routing a sample. The result is a `coserve.planfile.Plan`.

`coserve.profiler.fit` is pure Python; names here are imported lazily so that it stays
usable without torch.
"""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "profile_repository": "coserve.profiler.profile",
    "DEFAULT_BATCH_SIZES": "coserve.profiler.profile",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.profiler", _EXPORTS)
