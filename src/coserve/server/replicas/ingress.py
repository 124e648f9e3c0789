"""The Serve application: N replica deployments ("replica-0" ... : one Serve replica
each, so the ingress can address the replica that owns an expert, which Serve's own
request router cannot) and one ingress deployment running `coserve serve`'s FastAPI app
over a ReplicaSet. `build_app` returns the bound application for `serve.run`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coserve.server.replicas.config import INGRESS_NAME, ReplicaSetup, replica_name
from coserve.server.replicas.deployment import EngineReplica

# Calls a replica holds at once: its engine queues and batches them itself, so Serve's
# default of 5 would cap its batches; the ingress's own admission bounds the total.
REPLICA_MAX_ONGOING = 4096
LOGGING = {"log_level": "WARNING", "enable_access_log": False}


def build_ingress_app(setup: ReplicaSetup, owner: Mapping[str, int], handles: Sequence[Any]) -> Any:
    """`coserve serve`'s app over the replicas (in the ingress's actor)."""
    from coserve.repository import open_repository
    from coserve.server.app import create_app
    from coserve.server.replicas.facade import ReplicaSet
    from coserve.server.replicas.metrics import ReplicaCollector

    model = open_repository(setup.repo, trust_code=setup.trust_code)
    replicas = ReplicaSet(model, setup, owner, handles)
    app = create_app(replicas, setup.server_config)  # type: ignore[arg-type]  # Engine-shaped
    app.state.metrics.registry.register(ReplicaCollector(replicas))
    app.state.replicas = replicas
    return app


class Ingress:
    """The ingress deployment's class: its ASGI app is built in the actor, after Serve
    resolved the replica handles."""

    def __init__(self, setup: ReplicaSetup, owner: Mapping[str, int], handles: Sequence[Any]) -> None:
        self._app = build_ingress_app(setup, owner, handles)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


def build_app(setup: ReplicaSetup, owner: Mapping[str, int]) -> Any:
    """The bound Serve application: the replicas, and the ingress holding their handles."""
    from ray import serve

    replicas = [
        serve.deployment(EngineReplica, name=replica_name(i), num_replicas=1,
                         max_ongoing_requests=REPLICA_MAX_ONGOING, logging_config=LOGGING,
                         graceful_shutdown_timeout_s=setup.server_config.drain_timeout_s + 5,
                         ray_actor_options={"num_cpus": setup.replica_num_cpus})
        .bind(setup, i, dict(owner))
        for i in range(setup.num_replicas)
    ]
    ingress = serve.deployment(serve.ingress()(Ingress), name=INGRESS_NAME, num_replicas=1,
                               max_ongoing_requests=setup.server_config.max_connections,
                               logging_config=LOGGING, ray_actor_options={"num_cpus": 0})
    return ingress.bind(setup, dict(owner), replicas)
