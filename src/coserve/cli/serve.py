"""`coserve serve`: the HTTP inference API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.cli.options import (
    add_engine_options,
    add_plan_option,
    add_policy_option,
    add_trust_option,
    planned_config,
)

if TYPE_CHECKING:
    from coserve.cluster.rebalance import RebalanceConfig
    from coserve.config import EngineConfig
    from coserve.planfile import Plan
    from coserve.server.config import ServerConfig


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from coserve.config import EngineConfig
    from coserve.server.config import TOKEN_ENV, ServerConfig

    # The defaults are the configs' own (a dataclass field's default is its class attribute).
    defaults = ServerConfig

    p = sub.add_parser("serve", help="serve a repository over HTTP (inspection API, metrics)",
                       description="An HTTP inference server: POST /v1/inspect, /v1/inspect/batch, "
                                   "GET /v1/experts, /healthz, /readyz, /metrics, docs at /docs. "
                                   "SIGTERM drains requests in flight, then exits 0.")
    p.add_argument("repo", type=Path)
    p.add_argument("--host", default=defaults.host, help=f"address to bind (default {defaults.host}: this machine only)")
    p.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port}; 0 picks a free one and prints it)")
    p.add_argument("--token", default=None, help=f"bearer token the /v1 endpoints require (default: ${TOKEN_ENV}, else none)")
    add_policy_option(p)
    p.add_argument("--max-inflight", type=int, default=defaults.max_inflight,
                   help=f"images the server holds (decoding or in the engine); beyond it 429 + Retry-After (default {defaults.max_inflight})")
    p.add_argument("--max-batch-items", type=int, default=defaults.max_batch_items,
                   help=f"images per batch request (default {defaults.max_batch_items})")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                   help=f"largest request body; beyond it 413 (default {defaults.max_body_bytes})")
    p.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s,
                   help=f"answer 504 after this long; the engine still finishes the request (default {defaults.request_timeout_s:g})")
    p.add_argument("--max-loop-lag-s", type=float, default=defaults.max_loop_lag_s,
                   help=f"also 429 while the HTTP event loop runs this far behind; 0 never (default {defaults.max_loop_lag_s:g})")
    p.add_argument("--drain-timeout-s", type=float, default=defaults.drain_timeout_s,
                   help=f"on SIGTERM, how long the engine may finish what it holds; then the rest is answered with an error (default {defaults.drain_timeout_s:g})")
    p.add_argument("--read-timeout-s", type=float, default=defaults.read_timeout_s,
                   help=f"a request body must arrive within this long, else 408 (default {defaults.read_timeout_s:g})")
    p.add_argument("--max-request-decode-bytes", type=int, default=defaults.max_request_decode_bytes,
                   help=f"bytes one request may hold while it is read and decoded; beyond it 413 (default {defaults.max_request_decode_bytes})")
    p.add_argument("--max-server-decode-bytes", type=int, default=defaults.max_server_decode_bytes,
                   help=f"the same, all requests together; beyond it 429 + Retry-After (default {defaults.max_server_decode_bytes})")
    p.add_argument("--decode-workers", type=int, default=defaults.num_decode_workers,
                   help=f"threads that parse and decode request bodies (default {defaults.num_decode_workers})")
    p.add_argument("--max-connections", type=int, default=defaults.max_connections,
                   help=f"open connections; beyond it 503 (default {defaults.max_connections})")
    p.add_argument("--allowed-hosts", default=None,
                   help="comma-separated Host names answered (any port), '*' for any (default: "
                        "127.0.0.1,localhost,[::1] when bound to loopback without a token, else any)")
    p.add_argument("--metrics-token", default=None,
                   help="bearer token /metrics requires (default: none, /metrics is open)")
    p.add_argument("--quarantine-after", type=int, default=EngineConfig.quarantine_after,
                   help=f"consecutive failures that quarantine an expert; 0 never (default {EngineConfig.quarantine_after})")
    p.add_argument("--quarantine-probe-s", type=float, default=EngineConfig.quarantine_probe_s,
                   help=f"a quarantined expert is tried again after this long (doubling after each failed try); 0: only an operator lifts a quarantine (default {EngineConfig.quarantine_probe_s:g})")
    _add_replica_options(p)
    add_engine_options(p, backlog=False)
    add_plan_option(p)
    add_trust_option(p)
    p.set_defaults(func=cmd_serve)


def _add_replica_options(p: argparse.ArgumentParser) -> None:
    """`--replicas` and what only it reads: Ray, routing, spilling, repartitioning."""
    p.add_argument("--replicas", type=int, default=0,
                   help="serve with N engine replicas on Ray Serve behind one ingress (same API; docs/replicas.md); 0: one engine in this process (default 0)")
    p.add_argument("--ray-address", default=None,
                   help="with --replicas: join this Ray cluster ('auto': the one `ray start` made here) instead of starting a local Ray")
    from coserve.cluster.routing import ROUTINGS  # pure Python, light

    p.add_argument("--replica-routing", choices=ROUTINGS, default="partitioned",
                   help="with --replicas: send each image to the replica owning its first expert (partitioned), or to a seeded random replica that is up (random: a baseline for comparison only) (default partitioned)")
    from coserve.cluster.partition import HANDOFF_SPILL_MARGIN_S, SPILL_MARGIN_S
    from coserve.cluster.rebalance import CHECK_INTERVAL_S, MAX_IMBALANCE, MIN_REQUESTS, WINDOW_S

    p.add_argument("--handoff", choices=("auto", "on", "off"), default="auto",
                   help="with --replicas, partitioned: on, each replica runs only the steps of the experts it owns and the ingress sends each later step to its expert's replica (for CoEs with fan-out, where every first expert leads to most later ones); off: a replica runs whole requests; auto: on where whole requests would make the replicas reach 1.5 copies of the model's bytes or more (default auto)")
    p.add_argument("--spill-margin-s", type=float, default=None,
                   help=f"with --replicas, partitioned: send an image past its owner once the owner's predicted queue is this much longer than the shortest (default {SPILL_MARGIN_S:g}; {HANDOFF_SPILL_MARGIN_S:g} where steps are handed off)")
    p.add_argument("--repartition", choices=("on", "off"), default="on",
                   help="with --replicas: re-partition the experts when the routed mix shifts (off: keep the deployed partition; a replica that is down is re-homed either way) (default on)")
    p.add_argument("--repartition-window-s", type=float, default=WINDOW_S,
                   help=f"with --replicas: the routed requests the usage is estimated from, in seconds (default {WINDOW_S:g})")
    p.add_argument("--repartition-min-requests", type=int, default=MIN_REQUESTS,
                   help=f"with --replicas: requests in the window before its usage is trusted over the prior (default {MIN_REQUESTS})")
    p.add_argument("--repartition-check-s", type=float, default=CHECK_INTERVAL_S,
                   help=f"with --replicas: how often the usage is checked, in seconds (default {CHECK_INTERVAL_S:g})")
    p.add_argument("--repartition-max-imbalance", type=float, default=MAX_IMBALANCE,
                   help=f"with --replicas: re-partition once the busiest replica's predicted work passes this multiple of the mean (default {MAX_IMBALANCE:g})")


def cmd_serve(args: argparse.Namespace) -> int:
    from coserve.engine.engine import Engine
    from coserve.errors import ConfigError
    from coserve.repository import open_repository
    from coserve.server.config import TOKEN_ENV
    from coserve.server.run import bind, serve

    token = args.token or os.environ.get(TOKEN_ENV) or None
    config = _server_config(args, token)
    engine_config, plan = planned_config(args, args.policy, quarantine_after=args.quarantine_after,
                                         quarantine_probe_s=args.quarantine_probe_s or None)
    if args.replicas:
        return _serve_replicas(args, config, engine_config, plan)
    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    engine = Engine(model, engine_config, plan=plan)  # validates the budget before the port is taken
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                          f"pick another --port or stop what uses it") from None
    host, port = sock.getsockname()[:2]
    if not config.loopback and token is None:
        print(f"warning: listening on {host} without a token; anyone who can reach it may "
              f"use it (set --token or ${TOKEN_ENV})", file=sys.stderr)
    where = f"[{host}]" if ":" in host else host
    print(f"coserve: serving {model.name} on http://{where}:{port} (docs /docs, metrics /metrics; "
          f"/readyz answers 200 once experts are placed)", flush=True)
    serve(engine, config, sock, log_level="info" if args.verbose else "warning")
    print("coserve: drained and stopped", flush=True)
    return 0


def _server_config(args: argparse.Namespace, token: str | None) -> ServerConfig:
    from coserve.server.config import ServerConfig

    return ServerConfig(host=args.host, port=args.port, token=token, max_inflight=args.max_inflight,
                        max_batch_items=args.max_batch_items, max_body_bytes=args.max_body_bytes,
                        request_timeout_s=args.request_timeout_s,
                        max_loop_lag_s=args.max_loop_lag_s or None,
                        read_timeout_s=args.read_timeout_s,
                        drain_timeout_s=args.drain_timeout_s,
                        max_request_decode_bytes=args.max_request_decode_bytes,
                        max_server_decode_bytes=args.max_server_decode_bytes,
                        num_decode_workers=args.decode_workers,
                        max_connections=args.max_connections,
                        allowed_hosts=_hosts(args.allowed_hosts), metrics_token=args.metrics_token)


def _serve_replicas(args: argparse.Namespace, config: ServerConfig, engine_config: EngineConfig,
                    plan: Plan | None) -> int:
    """`--replicas N`: N engines on Ray Serve behind one ingress (docs/replicas.md)."""
    from coserve.errors import ConfigError
    from coserve.server.replicas.config import ReplicaSetup
    from coserve.server.replicas.run import serve_replicas

    if args.replicas < 0:
        raise ConfigError(f"--replicas must be 0 (one engine here) or a positive count, got {args.replicas}")
    # Locally the replicas share this machine's cores; on a cluster each gets one.
    num_cpus = 1.0 if args.ray_address else (os.cpu_count() or 1) / args.replicas
    handoff = resolved_handoff(args, plan)
    setup = ReplicaSetup(args.repo.resolve(), args.replicas, engine_config=engine_config,
                         server_config=config, plan=plan, trust_code=args.trust_repo_code,
                         replica_num_cpus=num_cpus, routing=args.replica_routing,
                         spill_margin_s=spill_margin(args.spill_margin_s, handoff),
                         handoff=handoff, rebalance=rebalance_config(args))
    steps = "each step on its expert's replica" if handoff else "whole requests per replica"
    print(f"coserve: {args.replicas} replicas, {steps} (--handoff {args.handoff})", flush=True)
    serve_replicas(setup, ray_address=args.ray_address)
    print("coserve: Serve shut down", flush=True)
    return 0


def resolved_handoff(args: argparse.Namespace, plan: Plan | None) -> bool:
    """--handoff on/off, or auto's choice for this repository and replica count (only
    with the partitioned routing: random routing runs whole requests)."""
    from coserve.cluster.partition import wants_handoff
    from coserve.cluster.routing import replica_routing
    from coserve.repository import open_repository

    if not replica_routing(args.replica_routing).uses_partition:
        if args.handoff == "on":
            from coserve.errors import ConfigError
            raise ConfigError("--handoff on needs --replica-routing partitioned")
        return False
    if args.handoff != "auto":
        return args.handoff == "on"
    model = open_repository(args.repo, trust_code=args.trust_repo_code)
    return wants_handoff("auto", model, args.replicas, plan.usage if plan is not None else None)


def spill_margin(given: float | None, handoff: bool) -> float:
    """The spill margin given, else the default for the mode."""
    from coserve.cluster.partition import HANDOFF_SPILL_MARGIN_S, SPILL_MARGIN_S

    if given is not None:
        return given
    return HANDOFF_SPILL_MARGIN_S if handoff else SPILL_MARGIN_S


def rebalance_config(args: argparse.Namespace) -> RebalanceConfig:
    """The `--repartition*` options as the ingress's RebalanceConfig (ConfigError for a
    bad value)."""
    from coserve.cluster.rebalance import RebalanceConfig

    return RebalanceConfig(window_s=args.repartition_window_s,
                           min_requests=args.repartition_min_requests,
                           max_imbalance=args.repartition_max_imbalance,
                           check_interval_s=args.repartition_check_s,
                           follow_usage=args.repartition == "on")


def _hosts(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(h.strip() for h in text.split(",") if h.strip())
