"""coserve replicas on Ray Serve. Pure parts (replica choice, retries, load estimate)
without Ray; then one local Ray per module with two replicas of the tiny CoE behind the
ingress on loopback: answers match the engine's, each request goes to the replica that
owns its first expert, and a replica killed with requests in flight loses none of them
(retried on the other), readiness and the metrics say so, and the replica comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coserve.cluster.partition import HANDOFF_SPILL_MARGIN_S
from coserve.errors import EngineClosedError
from coserve.server.replicas.config import ReplicaSetup, replica_name
from coserve.server.replicas.deployment import replica_prior
from coserve.server.replicas.routing import (
    Loads,
    NoReplicaError,
    call_with_retries,
    is_replica_failure,
)
from coserve.server.replicas.stats import summed_stats
from coserve.stats import StatsRecorder
from coserve.types import LoadPath, Result

POLL_S = 0.02
WAIT_S = 60.0
SLOW_TYPE = "R"  # its classifier is server_fixtures.SlowResNet: requests stay in flight


# -- pure: which replica, and retries ---------------------------------------------------------
class RayActorError(Exception):  # the name is what counts: no Ray needed
    pass


class ActorDiedError(RayActorError):
    pass


def test_replica_failures_are_told_from_request_failures():
    assert is_replica_failure(ActorDiedError("gone"))
    assert is_replica_failure(EngineClosedError("draining"))
    assert not is_replica_failure(ValueError("a bug"))


def run(coro):
    return asyncio.run(coro)


def test_a_failed_replica_is_retried_on_the_next_then_503():
    failures: list[int] = []

    async def call(replica: int) -> str:
        if replica == 0:
            raise ActorDiedError("killed")
        return f"answer from {replica}"

    order = iter([0, 1])
    value, replica, attempts = run(call_with_retries(call, lambda tried: next(order), 3,
                                                     lambda r, exc: failures.append(r)))
    assert (value, replica, attempts, failures) == ("answer from 1", 1, 2, [0])

    async def always_dead(replica: int) -> str:
        raise ActorDiedError("killed")

    with pytest.raises(NoReplicaError, match="after 2 attempt"):
        run(call_with_retries(always_dead, lambda tried: len(tried), 2, lambda r, exc: None))

    async def bug(replica: int) -> str:
        raise ValueError("not the replica's fault")

    with pytest.raises(ValueError):  # never retried
        run(call_with_retries(bug, lambda tried: 0, 5, lambda r, exc: failures.append(r)))
    assert failures == [0]


def test_loads_count_calls_in_flight_in_seconds_of_work():
    loads = Loads(2)
    k = loads.sent(1)
    assert loads.seconds()[0] == 0 and loads.seconds()[1] > 0
    loads.done(1, round_trip_s=1.0, num_in_flight=k)
    assert loads.seconds() == [0, 0] and loads.request_work_s > 0.05


def test_serve_run_arguments_make_the_setup():
    from coserve.server.replicas.run import setup_from_args

    setup = setup_from_args({"repo": "/data/repo", "replicas": "4", "routing": "random",
                             "repartition": "0", "budget_fraction": "0.3"})
    assert (setup.num_replicas, setup.routing, setup.rebalance.follow_usage) == (4, "random", False)
    assert setup.engine_config.budget_fraction == 0.3
    assert setup_from_args({"repo": "r"}).rebalance.follow_usage
    with pytest.raises(Exception, match="unknown replica routing"):
        setup_from_args({"repo": "r", "routing": "round-robin"})
    tuned = setup_from_args({"repo": "r", "spill_margin_s": "0.2", "repartition_window_s": "30",
                             "repartition_min_requests": "100", "repartition_check_s": "1",
                             "repartition_max_imbalance": "1.5"})
    assert tuned.spill_margin_s == 0.2
    assert (tuned.rebalance.window_s, tuned.rebalance.min_requests, tuned.rebalance.check_interval_s,
            tuned.rebalance.max_imbalance) == (30.0, 100, 1.0, 1.5)
    with pytest.raises(Exception, match="min_requests"):
        setup_from_args({"repo": "r", "repartition_min_requests": "0"})
    handed = setup_from_args({"repo": "r", "handoff": "1"})
    assert handed.handoff and handed.spill_margin_s == HANDOFF_SPILL_MARGIN_S
    assert not setup_from_args({"repo": "r"}).handoff
    with pytest.raises(Exception, match="handoff needs the partitioned routing"):
        setup_from_args({"repo": "r", "handoff": "1", "routing": "random"})


def test_serve_options_make_the_replica_routing_and_repartition_settings():
    from coserve.cli import build_parser
    from coserve.cli.serve import rebalance_config

    args = build_parser().parse_args(
        ["serve", "repo", "--replicas", "2", "--spill-margin-s", "0.25", "--repartition", "off",
         "--repartition-window-s", "20", "--repartition-check-s", "2"])
    config = rebalance_config(args)
    assert args.spill_margin_s == 0.25
    assert (config.follow_usage, config.window_s, config.check_interval_s) == (False, 20.0, 2.0)
    defaults = rebalance_config(build_parser().parse_args(["serve", "repo"]))
    assert defaults == type(config)()
    with pytest.raises(Exception, match="spill_margin_s"):
        ReplicaSetup(Path("x"), 2, spill_margin_s=-1.0)


def test_serve_handoff_auto_follows_the_shape_and_on_needs_partitioned(tiny_zoo, tmp_path):
    from coserve.cli import build_parser
    from coserve.cli.serve import resolved_handoff, spill_margin
    from coserve.zoo.synth import build_synth

    synth_root, _ = build_synth(tmp_path / "synth", "tiny")
    parse = build_parser().parse_args
    assert resolved_handoff(parse(["serve", str(synth_root), "--replicas", "2"]), None)
    assert not resolved_handoff(parse(["serve", str(tiny_zoo[0]), "--replicas", "2"]), None)
    assert not resolved_handoff(parse(["serve", str(synth_root), "--replicas", "2",
                                       "--handoff", "off"]), None)
    with pytest.raises(Exception, match="needs --replica-routing partitioned"):
        resolved_handoff(parse(["serve", str(synth_root), "--replicas", "2", "--handoff", "on",
                                "--replica-routing", "random"]), None)
    assert spill_margin(None, True) == HANDOFF_SPILL_MARGIN_S and spill_margin(0.3, True) == 0.3


def test_each_replica_favours_its_own_experts_and_setup_is_checked():
    usage = replica_prior({"a": 0.5, "b": 0.5}, {"a": 0, "b": 1}, 0)
    assert usage["a"] == 0.5 and 0 < usage["b"] < 0.5
    with pytest.raises(Exception, match="num_replicas"):
        ReplicaSetup(Path("x"), 0)
    assert ReplicaSetup(Path("x"), 2).attempts == 3


def engine_stats(num_switches: int, num_executors: int = 1, bytes_each: int = 100):
    recorder = StatsRecorder(num_executors)
    recorder.reset(0.0)
    for _ in range(num_switches):
        recorder.switch(0, LoadPath.to_executor("cpu"), bytes_each, 0.01)
        recorder.pool_lookup(hit=False)
    recorder.batch(0, 2, 0.1)
    return recorder.snapshot(1.0, bytes_read=num_switches * bytes_each, latencies=False,
                             policy="coserve", budget_bytes=1000, total_expert_bytes=5000,
                             storage="none", cost_source="test")


def test_replica_stats_are_summed_counters_and_joined_executors():
    total = summed_stats([engine_stats(2), engine_stats(3, num_executors=2)], retired=[engine_stats(4)])
    assert total.num_switches == 9 and total.bytes_read == 900
    assert sum(total.switches_by_path.values()) == 9
    assert total.num_batches == 3 and total.budget_bytes == 2000
    assert len(total.busy_s_per_executor) == 3  # the current engines' executors only
    assert summed_stats([]) is None


class FakeCall:
    def __init__(self, fn: Callable) -> None:
        self.remote = fn


class FakeAnswer:
    def __init__(self, value, dead: bool) -> None:
        self._value, self._dead = value, dead

    def result(self, timeout_s: float):
        if self._dead:
            raise ActorDiedError("killed")
        return self._value


class FakeReplica:
    """A replica handle without Ray: status answers at once, infer records the request."""

    def __init__(self, index: int, model) -> None:
        from coserve.server.replicas.deployment import ReplicaStatus

        self.requests: list[str] = []
        self.dead = False  # status raises, infer never answers (a SIGKILLed actor's calls)
        self._status = ReplicaStatus(
            index=index, running=True, problems=(), executor_specs=("cpu",), queue_depths=(0,),
            pool_bytes=(0,), pool_budgets=(None,), resident=(frozenset(),),
            in_host_cache=frozenset(), usage=dict(model.usage), queued=frozenset(), quarantine={},
            stats=engine_stats(index), incarnation="one")
        self.status = FakeCall(lambda: self)
        self.infer = FakeCall(self._infer)
        self.adopted: list[dict[str, int]] = []  # the partitions the ingress sent it
        self.adopt_partition = FakeCall(self._adopt)

    def result(self, timeout_s: float):
        if self.dead:
            raise ActorDiedError("killed")
        return self._status

    def _adopt(self, owner: dict[str, int]) -> FakeAnswer:
        if not self.dead:
            self.adopted.append(dict(owner))
        return FakeAnswer(None, self.dead)

    async def _infer(self, request) -> Result:
        self.requests.append(request.request_id)
        if self.dead:
            await asyncio.Event().wait()  # until cancelled
        return Result(request_id=request.request_id, ok=True, steps=(), submitted_s=0.0, completed_s=0.0)


def test_random_routing_spreads_one_component_type_over_both_replicas(tiny_zoo, by_type):
    from coserve import open_repository
    from coserve.server.replicas.facade import ReplicaSet

    model = open_repository(tiny_zoo[0])
    request = by_type[SLOW_TYPE]
    setup = ReplicaSetup(tiny_zoo[0], 2, routing="random", routing_seed=1)
    fakes = [FakeReplica(i, model) for i in range(2)]
    owner = {e: 0 for e in model.experts}  # partitioned would send every request to 0
    replicas = ReplicaSet(model, setup, owner, fakes).start()

    async def send(num: int) -> None:
        futures = [replicas.submit(request) for _ in range(num)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    try:
        run(send(40))
        assert replicas.stats().num_switches == 1  # replica 0's 0 + replica 1's 1
    finally:
        replicas.close()
    assert len(fakes[0].requests) + len(fakes[1].requests) == 40
    assert min(len(f.requests) for f in fakes) >= 10
    with pytest.raises(Exception, match="unknown replica routing"):
        ReplicaSetup(tiny_zoo[0], 2, routing="round-robin")


def test_the_poll_fails_over_calls_in_flight_to_a_dead_replica(tiny_zoo, by_type):
    from coserve import open_repository
    from coserve.server.replicas.facade import ReplicaSet

    model = open_repository(tiny_zoo[0])
    fakes = [FakeReplica(i, model) for i in range(2)]
    replicas = ReplicaSet(model, ReplicaSetup(tiny_zoo[0], 2), {e: 0 for e in model.experts}, fakes)
    replicas.poll()  # both up; every request goes to replica 0, the owner
    fakes[0].dead = True
    num_requests = 5

    async def send() -> list[Result]:
        futures = [asyncio.wrap_future(replicas.submit(by_type[SLOW_TYPE])) for _ in range(num_requests)]
        while replicas.in_flight.num_waiting(0) < num_requests:
            await asyncio.sleep(0)  # yield until every call reached replica 0
        replicas.poll()  # its status call fails: down, and its calls fail over
        return await asyncio.gather(*futures)

    results = run(send())
    assert all(r.ok for r in results) and len(fakes[1].requests) == num_requests
    assert replicas.num_retries == num_requests and replicas.num_answered == [0, num_requests]
    assert replicas.down_replicas() == {0} and replicas.in_flight.num_waiting(0) == 0


def collected(replicas, name: str, **labels: str) -> float:
    """A sample of the ingress's replica metrics, read as a scrape would."""
    from coserve.server.replicas.metrics import ReplicaCollector

    for family in ReplicaCollector(replicas).collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_a_dead_replica_is_re_homed_and_gets_its_experts_back(tiny_zoo, by_type):
    from coserve import open_repository
    from coserve.cluster.partition import partition_experts
    from coserve.server.replicas.facade import ReplicaSet

    model = open_repository(tiny_zoo[0])
    start = partition_experts(model, 3)
    fakes = [FakeReplica(i, model) for i in range(3)]
    replicas = ReplicaSet(model, ReplicaSetup(tiny_zoo[0], 3), start.owner, fakes, clock=FakeClock())
    replicas.poll()
    assert replicas.partition == start and replicas.health() == []
    lost = start.experts_of(1)
    fakes[1].dead = True
    replicas.poll()  # its status call fails: down, and its experts re-homed to 0 and 2
    assert not replicas.partition.experts_of(1)
    assert replicas.health() == ["replica 1 is down: no status within 2 s (ActorDiedError); "
                                 "its experts are re-homed to the others"]
    assert collected(replicas, "coserve_replicas_alive") == 2
    assert collected(replicas, "coserve_replica_owned_experts", replica="1") == 0
    moved = collected(replicas, "coserve_partition_moves_total", reason="replica_down")
    assert len(lost) <= moved < len(model.experts)
    assert collected(replicas, "coserve_partition_changes_total", reason="replica_down") == 1
    # A request for a type replica 1 owned goes to its new owner, not to a random one.
    component = next(c for c, r in sorted(by_type.items())
                     if start.owner[model.router.first(r.fields)[0]] == 1)
    request = by_type[component]
    new_owner = replicas.partition.owner[model.router.first(request.fields)[0]]
    async def send() -> Result:
        return await asyncio.wrap_future(replicas.submit(request))

    assert run(send()).ok
    assert fakes[new_owner].requests == [request.request_id]
    fakes[1].dead = False
    replicas.poll()  # back: its experts go back to it (its engine's prior favours them)
    assert replicas.partition == start and replicas.health() == []
    assert collected(replicas, "coserve_replicas_alive") == 3
    assert collected(replicas, "coserve_partition_moves_total", reason="replica_back") == moved


def test_the_ingress_repartitions_when_the_routed_mix_shifts(tiny_zoo, by_type):
    from coserve import open_repository
    from coserve.cluster.partition import partition_experts
    from coserve.cluster.rebalance import RebalanceConfig
    from coserve.server.replicas.facade import ReplicaSet

    model = open_repository(tiny_zoo[0])
    start = partition_experts(model, 2)
    shifted = [c for c, r in sorted(by_type.items())
               if start.owner[model.router.first(r.fields)[0]] == 1][:2]
    assert len(shifted) == 2
    clock = FakeClock()
    setup = ReplicaSetup(tiny_zoo[0], 2, rebalance=RebalanceConfig(
        window_s=60.0, min_requests=20, check_interval_s=10.0))
    fakes = [FakeReplica(i, model) for i in range(2)]
    replicas = ReplicaSet(model, setup, start.owner, fakes, clock=clock).start()
    replicas.close()  # polled by hand below, on the fake clock

    async def send(component: str, num: int) -> None:
        futures = [replicas.submit(by_type[component]) for _ in range(num)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    for component in shifted:  # only replica 1's types: it carries all the load
        run(send(component, 10))
    assert len(fakes[1].requests) == 20 and not fakes[0].requests
    clock.now_s = 10.0
    replicas.poll()
    assert collected(replicas, "coserve_partition_changes_total", reason="usage") == 1
    moved = collected(replicas, "coserve_partition_moves_total", reason="usage")
    assert 1 <= moved < len(model.experts)
    assert collected(replicas, "coserve_partition_imbalance") < 2.0  # it was 2: all on one
    # One of the two types now belongs to replica 0, and its requests go there.
    owners = {replicas.partition.owner[model.router.first(by_type[c].fields)[0]] for c in shifted}
    assert owners == {0, 1}
    for component in shifted:
        run(send(component, 1))
    assert len(fakes[0].requests) == 1 and len(fakes[1].requests) == 21
    # Both replicas were told the new partition (their engines favour what they own now).
    assert [fake.adopted for fake in fakes] == [[dict(replicas.partition.owner)]] * 2
    # A replica that restarts starts from the deployed partition: it is told again.
    fakes[0]._status = replace(fakes[0]._status, incarnation="two")
    replicas.poll()
    assert [len(fake.adopted) for fake in fakes] == [2, 1]


def test_a_replica_adopts_a_new_partition_as_its_engines_prior(tiny_zoo):
    from coserve import open_repository
    from coserve.cluster.partition import FOREIGN_USAGE_SCALE
    from coserve.server.replicas.deployment import EngineReplica

    model = open_repository(tiny_zoo[0])
    experts = sorted(model.experts)
    setup = ReplicaSetup(tiny_zoo[0], 2, engine_config=replace(
        ReplicaSetup(tiny_zoo[0], 2).engine_config, measure_costs=False))
    replica = EngineReplica(setup, 0, dict.fromkeys(experts, 0))
    try:
        assert replica.engine.usage() == pytest.approx(dict(model.usage))  # owns them all
        gave_away = experts[0]
        replica.adopt_partition({e: int(e == gave_away) for e in experts})
        usage = replica.engine.usage()
        assert usage[gave_away] == pytest.approx(model.usage[gave_away] * FOREIGN_USAGE_SCALE)
        assert usage[experts[1]] == pytest.approx(model.usage[experts[1]])
        with pytest.raises(Exception, match="known experts"):
            replica.engine.set_usage_prior({"nobody": 0.5})
        with pytest.raises(Exception, match="probabilities in"):
            replica.engine.set_usage_prior({experts[1]: 1.5})
    finally:
        replica.engine.close()


# -- on a local Ray -----------------------------------------------------------------------------
def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def tensor_body(x, component: str) -> dict:
    return {"fields": {"component_type": component},
            "image": {"tensor": {"shape": list(x.shape), "data": x.flatten().tolist()}}}


@pytest.fixture(scope="module")
def repo(tiny_zoo, tmp_path_factory):
    """The tiny CoE with the slow type's classifier slowed down (same weights)."""
    root = tmp_path_factory.mktemp("replicas") / "repo"
    shutil.copytree(tiny_zoo[0], root)
    spec = yaml.safe_load((root / "coe.yaml").read_text())
    slow = f"cls-{SLOW_TYPE}"
    spec["architectures"]["arch-slow"] = {**spec["architectures"]["cls-tiny"],
                                          "factory": "server_fixtures:SlowResNet"}
    for entry in spec["experts"]:
        if entry["name"] == slow:
            entry["architecture"] = "arch-slow"
    (root / "coe.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="module")
def by_type(tiny_zoo):
    from coserve import read_trace

    first: dict = {}
    for r in read_trace(tiny_zoo[1]):
        first.setdefault(r.fields["component_type"], r)
    return first


@pytest.fixture(scope="module")
def cluster(repo):
    pytest.importorskip("ray")
    from coserve.config import EngineConfig
    from coserve.executors.spec import parse_executors
    from coserve.server.config import ServerConfig
    from coserve.server.replicas.run import deploy, partition_of, ray_running, shutdown

    # The replicas' actors import server_fixtures (the slow expert): tests/ on their path.
    tests_dir = str(Path(__file__).parent)
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, old_path]))
    setup = ReplicaSetup(
        repo, 2, trust_code=True, replica_num_cpus=0.5,
        engine_config=EngineConfig(budget_fraction=0.5, executors=parse_executors("cpu:1"),
                                   measure_costs=False),
        server_config=ServerConfig(port=0, max_loop_lag_s=None, engine_stats_max_age_s=0))
    owner = partition_of(setup)
    try:
        with ray_running(None, num_cpus=2):
            try:
                url = deploy(setup, owner)
                with httpx.Client(base_url=url, timeout=WAIT_S) as client:
                    wait_until(lambda: client.get("/readyz").status_code == 200, "ready")
                    yield client, owner
            finally:
                shutdown()
    finally:
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


RAY_WARNINGS = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")


@pytest.mark.slow
@RAY_WARNINGS
def test_answers_match_the_engine_and_go_to_the_owner(cluster, by_type, repo):
    from coserve import Engine, EngineConfig, open_repository, parse_executors

    client, owner = cluster
    model = open_repository(repo, trust_code=True)
    config = EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False)
    with Engine(model, config) as engine:
        for component, request in sorted(by_type.items()):
            if component == SLOW_TYPE:
                continue
            expected = engine.infer_sync(request, timeout_s=WAIT_S)
            answer = client.post("/v1/inspect", json=tensor_body(request.input, component))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["path"] == list(expected.path)
            assert body["labels"] == [s.label for s in expected.steps]
            # One executor per replica: executor index = replica index.
            first = model.router.first(request.fields)
            assert body["steps"][0]["executor"] == owner[first[0]], (component, body["steps"])
    experts = client.get("/v1/experts").json()
    assert len(experts["executors"]) == 2
    assert client.get("/healthz").status_code == 200
    assert metric(client, "coserve_replicas_ready") == 2


@pytest.mark.slow
@RAY_WARNINGS
def test_a_batch_is_answered_item_by_item(cluster, by_type):
    client, _ = cluster
    items = [{"fields": {"component_type": c}, "image": tensor_body(r.input, c)["image"]}
             for c, r in sorted(by_type.items()) if c != SLOW_TYPE]
    answer = client.post("/v1/inspect/batch", json={"items": items})
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_ok"] == len(items)
    bad = client.post("/v1/inspect", json=tensor_body(by_type["R"].input, "no-such-type"))
    assert bad.status_code == 422 and "no-such-type" in bad.text


@pytest.mark.slow
@RAY_WARNINGS
def test_a_replica_killed_mid_run_loses_no_request(cluster, by_type, repo):
    import ray

    from coserve import open_repository

    client, owner = cluster
    model = open_repository(repo, trust_code=True)
    victim = owner[model.router.first({"component_type": SLOW_TYPE})[0]]
    num_requests = 8
    body = tensor_body(by_type[SLOW_TYPE].input, SLOW_TYPE)
    readiness: list[tuple[int, str]] = []
    watching = threading.Event()

    def watch() -> None:  # what /readyz said from the kill on, until every answer came
        with httpx.Client(base_url=client.base_url, timeout=WAIT_S) as probe:
            while not watching.is_set():
                answer = probe.get("/readyz")
                readiness.append((answer.status_code, answer.text))

    with ThreadPoolExecutor(num_requests + 1) as pool:
        futures = [pool.submit(client.post, "/v1/inspect", json=body) for _ in range(num_requests)]
        wait_until(lambda: metric(client, "coserve_replica_in_flight", replica=str(victim)) >= 1,
                   "requests in flight on the victim")
        ray.kill(replica_actor(victim), no_restart=True)
        watcher = pool.submit(watch)
        statuses = [f.result(WAIT_S).status_code for f in futures]
        watching.set()
        watcher.result(WAIT_S)
    assert statuses == [200] * num_requests
    assert metric(client, "coserve_replica_retries_total") >= 1
    # Until Serve restarted the replica, readiness said which one was down.
    assert any(code == 503 and f"replica {victim} is down" in text for code, text in readiness)
    wait_until(lambda: client.get("/readyz").status_code == 200, "the replica back")
    assert metric(client, "coserve_replicas_ready") == 2
    after = client.post("/v1/inspect", json=body)
    assert after.status_code == 200


@pytest.mark.slow
@RAY_WARNINGS
def test_a_replica_process_sigkilled_fails_over_at_once(cluster, by_type, repo):
    """A SIGKILLed actor process (unlike ray.kill) leaves its calls waiting in Serve until
    the replica restarts: the status poll must fail them over to the other replica."""
    from coserve import open_repository

    client, owner = cluster
    wait_until(lambda: client.get("/readyz").status_code == 200, "both replicas up")
    model = open_repository(repo, trust_code=True)
    victim = owner[model.router.first({"component_type": SLOW_TYPE})[0]]
    num_requests = 8
    body = tensor_body(by_type[SLOW_TYPE].input, SLOW_TYPE)
    retries_before = metric(client, "coserve_replica_retries_total")
    rehomed_before = metric(client, "coserve_partition_changes_total", reason="replica_down")
    back_before = metric(client, "coserve_partition_changes_total", reason="replica_back")

    def timed_post() -> tuple[int, float]:
        sent_s = time.monotonic()
        status = client.post("/v1/inspect", json=body).status_code
        return status, time.monotonic() - sent_s

    with ThreadPoolExecutor(num_requests) as pool:
        futures = [pool.submit(timed_post) for _ in range(num_requests)]
        wait_until(lambda: metric(client, "coserve_replica_in_flight", replica=str(victim)) >= 2,
                   "requests in flight on the victim")
        os.kill(replica_pid(victim), signal.SIGKILL)
        answers = [f.result(WAIT_S) for f in futures]
    assert [status for status, _ in answers] == [200] * num_requests
    assert metric(client, "coserve_replica_retries_total") >= retries_before + 1
    # Failed over by the status poll, not held until Serve restarted the replica.
    assert max(latency_s for _, latency_s in answers) < 5.0, answers
    wait_until(lambda: client.get("/readyz").status_code == 200, "the replica back")
    # If the poll found it dead (no status within 2 s) its experts were re-homed, and given
    # back once it answered; a replica Serve restarts within the status timeout is seen as
    # restarted, not down, and keeps them (which one happened is timing): either way, back
    # up, it owns its experts again and every re-homing was matched by a return.
    owned = sum(1 for r in owner.values() if r == victim)

    def restored() -> bool:  # the poll that saw it back re-partitions right after
        rehomed = metric(client, "coserve_partition_changes_total", reason="replica_down") - rehomed_before
        returned = metric(client, "coserve_partition_changes_total", reason="replica_back") - back_before
        return (rehomed == returned
                and metric(client, "coserve_replica_owned_experts", replica=str(victim)) == owned)

    wait_until(restored, "its experts its own again")
    assert metric(client, "coserve_replicas_alive") == 2


@pytest.mark.slow
@RAY_WARNINGS
def test_metrics_sum_the_replicas_engine_counters(cluster, by_type):
    client, _ = cluster
    sent = [c for c in sorted(by_type) if c != SLOW_TYPE]
    for component in sent:
        answer = client.post("/v1/inspect", json=tensor_body(by_type[component].input, component))
        assert answer.status_code == 200, answer.text

    def scrape() -> dict[str, float]:
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(client.get("/metrics").text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def summed() -> bool:  # the replicas' counters arrive with their next status poll
        m = scrape()
        return (m.get("coserve_replica_engine_requests_total", 0) >= len(sent)
                and m.get("coserve_expert_switches_total") == m["coserve_replica_switches_total"]
                and m.get("coserve_storage_read_bytes_total")
                == m["coserve_replica_storage_read_bytes_total"])

    wait_until(summed, "the summed engine counters on /metrics")
    m = scrape()
    assert m["coserve_batches_total"] >= 1 and m["coserve_pool_hits_total"] >= 1
    print("switches", m["coserve_replica_switches_total"])


def replica_pid(index: int) -> int:
    """The pid of replica `index`'s actor process (Ray's workers descend from this one)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError):
            if f"ServeReplica:coserve:{replica_name(index)}" in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
    raise AssertionError(f"no actor process for replica {index}")


def replica_actor(index: int):
    import ray

    from coserve.server.replicas.config import replica_name

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"#{replica_name(index)}#" in actor["name"]:
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no actor for replica {index}")


def test_the_spill_margin_reaches_the_ingress_routing(tiny_zoo):
    from coserve import open_repository
    from coserve.server.replicas.facade import ReplicaSet

    model = open_repository(tiny_zoo[0])
    fakes = [FakeReplica(i, model) for i in range(2)]
    replicas = ReplicaSet(model, ReplicaSetup(tiny_zoo[0], 2, spill_margin_s=0.2),
                          {e: 0 for e in model.experts}, fakes)
    assert replicas.routing.margin_s == 0.2
