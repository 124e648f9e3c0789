"""Step handoff on Ray Serve (`coserve serve --replicas 2 --handoff on`), on loopback with
a local Ray: the tiny synth CoE (three stages, fan-out), whose every first expert leads to
most later ones. Each replica runs only the steps of the experts it owns; the ingress sends
the rest on and joins the parts. Answers match one engine's, steps are really handed off,
and a replica killed mid-run loses no request."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from coserve.server.replicas.config import ReplicaSetup
from test_replicas import RAY_WARNINGS, WAIT_S, metric, replica_actor, wait_until

pytestmark = [pytest.mark.slow, RAY_WARNINGS]


def body(request) -> dict:
    x = request.input
    return {"fields": dict(request.fields),
            "image": {"tensor": {"shape": list(x.shape), "data": x.flatten().tolist()}}}


@pytest.fixture(scope="module")
def synth_cluster(tmp_path_factory):
    pytest.importorskip("ray")
    from coserve.config import EngineConfig
    from coserve.executors.spec import parse_executors
    from coserve.server.config import ServerConfig
    from coserve.server.replicas.run import deploy, partition_of, ray_running, shutdown
    from coserve.trace import read_trace
    from coserve.zoo.synth import build_synth

    root, trace = build_synth(tmp_path_factory.mktemp("handoff-ray") / "synth", "tiny")
    setup = ReplicaSetup(
        root, 2, replica_num_cpus=0.5, handoff=True,
        engine_config=EngineConfig(budget_fraction=0.5, executors=parse_executors("cpu:1"),
                                   measure_costs=False),
        server_config=ServerConfig(port=0, max_loop_lag_s=None, engine_stats_max_age_s=0))
    owner = partition_of(setup)
    with ray_running(None, num_cpus=2):
        try:
            url = deploy(setup, owner)
            with httpx.Client(base_url=url, timeout=WAIT_S) as client:
                wait_until(lambda: client.get("/readyz").status_code == 200, "ready")
                yield client, owner, root, read_trace(trace)
        finally:
            shutdown()


def test_handed_off_answers_match_one_engine(synth_cluster):
    from coserve import Engine, EngineConfig, open_repository, parse_executors

    client, owner, root, requests = synth_cluster
    model = open_repository(root)
    sent = requests[:24]
    config = EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False)
    with Engine(model, config) as engine:
        expected = [engine.infer_sync(r, timeout_s=WAIT_S) for r in sent]
    crossed = 0
    for request, want in zip(sent, expected, strict=True):
        answer = client.post("/v1/inspect", json=body(request))
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert Counter(got["path"]) == Counter(want.path)
        assert sorted(zip(got["path"], got["labels"], strict=True)) == \
            sorted((s.expert, s.label) for s in want.steps)
        # One executor per replica: a step's executor is the replica that ran it, the owner.
        ran = {step["executor"] for step in got["steps"]}
        assert ran == {owner[e] for e in got["path"]}
        crossed += len(ran) > 1
    assert crossed >= len(sent) // 3
    assert metric(client, "coserve_replica_handoffs_total") >= crossed


def test_a_replica_killed_mid_run_loses_no_handed_off_request(synth_cluster):
    import ray

    client, owner, _, requests = synth_cluster
    sent = requests[24:64]
    victim = 1
    with ThreadPoolExecutor(len(sent)) as pool:
        futures = [pool.submit(client.post, "/v1/inspect", json=body(r)) for r in sent]
        wait_until(lambda: metric(client, "coserve_replica_in_flight", replica=str(victim)) >= 1,
                   "calls in flight on the victim")
        ray.kill(replica_actor(victim), no_restart=True)
        answers = [f.result(WAIT_S) for f in futures]
    assert [a.status_code for a in answers] == [200] * len(sent), [a.text for a in answers]
    assert all(a.json()["path"] for a in answers)
    wait_until(lambda: client.get("/readyz").status_code == 200, "the replica back")
    # Accepted = answered: every image admitted was answered, none is still held.
    assert metric(client, "coserve_requests_accepted_total") >= len(sent)
    assert metric(client, "coserve_requests_in_flight") == 0
