"""coserve: serve Collaboration-of-Experts models on machines whose memory cannot hold
all the experts.

    from coserve import open_repository, Engine, EngineConfig, Request
    model = open_repository("path/to/repo")
    with Engine(model, EngineConfig(policy="coserve", budget_fraction=0.3)) as engine:
        result = engine.infer_sync(Request("r1", {"component_type": "R"}, image))

Names are imported lazily so that the pure policy modules (scheduler, manager) can be
used without importing torch.
"""

from __future__ import annotations

from coserve._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "open_repository": "coserve.repository",
    "CoEModel": "coserve.repository",
    "Engine": "coserve.engine.engine",
    "EngineConfig": "coserve.config",
    "ExecutorSpec": "coserve.executors.spec",
    "parse_executors": "coserve.executors.spec",
    "Request": "coserve.types",
    "Result": "coserve.types",
    "Step": "coserve.types",
    "EngineStats": "coserve.stats",
    "read_trace": "coserve.trace",
    "write_trace": "coserve.trace",
    "POLICY_NAMES": "coserve.policies",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("coserve", _EXPORTS)
