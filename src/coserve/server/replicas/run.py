"""`coserve serve REPO --replicas N`: a local Ray (or the one at `--ray-address`), the
Serve application deployed with its HTTP proxy on the server's host and port, served
until SIGTERM or Ctrl-C, then Serve shut down (each replica drains its engine)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from coserve.server.replicas.config import APP_NAME, RAY_OBJECT_STORE_BYTES, ReplicaSetup

if TYPE_CHECKING:
    from coserve.cluster.rebalance import RebalanceConfig


def partition_of(setup: ReplicaSetup) -> dict[str, int]:
    """Expert -> owning replica, computed once (in the driver) and sent to every replica."""
    from coserve.cluster.partition import placement_for, task_work
    from coserve.repository import open_repository

    model = open_repository(setup.repo, trust_code=setup.trust_code)
    usage = setup.plan.usage if setup.plan is not None else None
    weight = None  # the partition's default: usage x bytes
    if setup.handoff and setup.plan is not None:  # as `coserve cluster simulate` places
        from coserve.assembly import Assembly

        assembly = Assembly.of(model, setup.engine_config, plan=setup.plan)
        assert assembly.costs is not None  # the plan gives them
        weight = task_work(usage or model.usage, assembly.costs, assembly.processors[0])
    placement = placement_for(setup.handoff)
    return dict(placement.partition(model, setup.num_replicas, usage, weight).owner)


@contextlib.contextmanager
def ray_running(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Join the Ray at `address` ("auto": the local cluster `ray start` made), or start a
    local one (no dashboard, no usage reporting); shut down only what was started."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING,
                 object_store_memory=RAY_OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def deploy(setup: ReplicaSetup, owner: Mapping[str, int] | None = None) -> str:
    """Start Serve's HTTP proxy on the server's host and port, run the application (returns
    once every replica's engine started); its URL."""
    from ray import serve

    from coserve.server.replicas.ingress import build_app

    config = setup.server_config
    port = config.port or free_port(config.host)
    serve.start(http_options={"host": config.host, "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(build_app(setup, owner or partition_of(setup)), name=APP_NAME, route_prefix="/")
    where = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{where}:{port}"


def shutdown() -> None:
    from ray import serve

    with contextlib.suppress(Exception):  # shutting down must not hide the run's error
        serve.shutdown()


def free_port(host: str) -> int:
    """A port free now (Serve's proxy binds it itself, so 0 cannot be passed on)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_replicas(setup: ReplicaSetup, ray_address: str | None = None) -> None:
    """Deploy, print the URL, serve until SIGTERM/SIGINT, shut Serve down."""
    stop = threading.Event()
    with ray_running(ray_address, num_cpus=None):
        # After ray.init, which installs its own SIGTERM handler (it aborts the driver).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            url = deploy(setup)
            print(f"coserve: serving {setup.repo.name} on {url} with {setup.num_replicas} "
                  f"replicas on Ray Serve (docs /docs, metrics /metrics)", flush=True)
            stop.wait()
        finally:
            shutdown()


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run coserve.server.replicas:app_builder repo=DIR replicas=N
    [budget_fraction=F] [executors=cpu:1] [storage=P] [no_measure=1] [trust_repo_code=1]
    [routing=random] [handoff=1] [spill_margin_s=S] [repartition=0] [repartition_window_s=S]
    [repartition_min_requests=N] [repartition_check_s=S] [repartition_max_imbalance=X]`
    (`setup_from_args`)."""
    from coserve.server.replicas.ingress import build_app

    setup = setup_from_args(args)
    return build_app(setup, partition_of(setup))


def setup_from_args(args: dict[str, Any]) -> ReplicaSetup:
    """The setup `serve run`'s key=value arguments describe (repartition=0: keep the
    deployed partition on a usage shift; replicas that are down are re-homed all the
    same)."""
    from pathlib import Path

    from coserve.cluster.partition import HANDOFF_SPILL_MARGIN_S, SPILL_MARGIN_S
    from coserve.config import EngineConfig
    from coserve.executors.spec import parse_executors

    kwargs: dict[str, Any] = {"measure_costs": not _flag(args.get("no_measure"))}
    if "budget_fraction" in args:
        kwargs["budget_fraction"] = float(args["budget_fraction"])
    if "budget_bytes" in args:
        kwargs["budget_bytes"] = int(args["budget_bytes"])
    if "executors" in args:
        kwargs["executors"] = parse_executors(args["executors"])
    if "storage" in args:
        kwargs["storage"] = args["storage"]
    handoff = _flag(args.get("handoff"))
    margin_s = HANDOFF_SPILL_MARGIN_S if handoff else SPILL_MARGIN_S
    return ReplicaSetup(Path(args["repo"]), int(args.get("replicas", 2)),
                        engine_config=EngineConfig(**kwargs),
                        trust_code=_flag(args.get("trust_repo_code")),
                        routing=args.get("routing", "partitioned"), handoff=handoff,
                        spill_margin_s=float(args.get("spill_margin_s", margin_s)),
                        rebalance=_rebalance(args))


def _rebalance(args: dict[str, Any]) -> RebalanceConfig:
    """repartition=0 and the repartition_* keys, as `coserve serve`'s --repartition*."""
    from coserve.cluster.rebalance import RebalanceConfig

    defaults = RebalanceConfig()
    return RebalanceConfig(
        window_s=float(args.get("repartition_window_s", defaults.window_s)),
        min_requests=int(args.get("repartition_min_requests", defaults.min_requests)),
        max_imbalance=float(args.get("repartition_max_imbalance", defaults.max_imbalance)),
        check_interval_s=float(args.get("repartition_check_s", defaults.check_interval_s)),
        follow_usage=_flag(args.get("repartition", "1")))


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes") if value is not None else False
