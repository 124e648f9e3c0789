"""coserve replicas on Ray Serve: `coserve serve REPO --replicas N` (docs/replicas.md).

N replica deployments, each one coserve Engine (own budget, executors, storage) started
from the repository path, and an ingress deployment with `coserve serve`'s HTTP API that
sends each image to the replica owning its first expert (coserve.cluster.partition),
spills by queued work, and retries a request whose replica failed on the next one.

Modules: `config` (the setup; no Ray), `routing` (retries and the queued-work estimate;
pure: the replica choice itself is a `coserve.cluster.routing` policy, and the partition
is kept current by a `coserve.cluster.rebalance.Rebalancer`),
`deployment` (the replica), `facade` (the ingress's Engine-shaped ReplicaSet), `metrics`
(replica metrics), `ingress` (the Serve application), `run` (Ray, deploy, serve, stop).

`serve run coserve.server.replicas:app_builder repo=DIR replicas=N` deploys it on a
running cluster. Names are imported lazily: importing this package imports no Ray.
"""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    "ReplicaSetup": "coserve.server.replicas.config",
    "app_builder": "coserve.server.replicas.run",
    "build_app": "coserve.server.replicas.ingress",
    "deploy": "coserve.server.replicas.run",
    "serve_replicas": "coserve.server.replicas.run",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.server.replicas", _EXPORTS)
