"""Ray's lifecycle around one peer run: a local Ray (no dashboard, no usage reporting,
no HTTP proxy) unless one runs, the deployment, and shutting down what was started."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from coserve.bench.ray_peer.config import RAY_APP_NAME, RAY_OBJECT_STORE_BYTES, RayPeerConfig
from coserve.bench.ray_peer.replica import ReplicaSetup, deployment_class


def start_ray(num_cpus: int) -> bool:
    """Start a local Ray with no dashboard and no usage reporting; False if one runs."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, object_store_memory=RAY_OBJECT_STORE_BYTES,
             _node_ip_address="127.0.0.1")
    return True


def deploy(setup: ReplicaSetup, ledger: Any, config: RayPeerConfig, num_models: int) -> Any:
    """The experts deployment, running; returns its handle."""
    from ray import serve

    serve.start(proxy_location="Disabled",
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    cls = deployment_class(num_models, config.max_batch_size, config.batch_wait_timeout_s)
    deployment = serve.deployment(
        cls,
        name="experts",
        num_replicas=config.num_replicas,
        # The driver's window is the bound on in-flight work; Ray's default of 5 per
        # replica would add a second, tighter one and cap batches at 5.
        max_ongoing_requests=config.max_inflight,
        ray_actor_options={"num_cpus": config.num_cpus / config.num_replicas},
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    return serve.run(deployment.bind(setup, ledger), name=RAY_APP_NAME, route_prefix=None)


def stop_ray(started_ray: bool) -> None:
    """Shut down the Ray this run started, or else only remove the peer's application."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):  # shutting down must not hide the run's error
        if started_ray:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(RAY_APP_NAME)
