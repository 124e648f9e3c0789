"""The server over an engine whose experts misbehave on demand (`fault_fixtures`): every
failure kind has an HTTP status, a stuck executor makes /readyz 503 until it comes back,
a bad input in a batch fails alone (422), and SIGTERM's drain answers a request held by a
hung expert within the drain deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from coserve import Engine, EngineConfig, parse_executors
from coserve.server import ServerConfig, create_app
from coserve.server.errors import FAILURE_STATUS
from coserve.types import FailureKind
from fault_fixtures import BEHAVIOUR, MARKER, fail_on_marker, faulty_model, hang_until

WAIT_S = 5.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return faulty_model(tmp_path_factory.mktemp("faulty"))


@pytest.fixture(autouse=True)
def fresh_behaviour():
    BEHAVIOUR.clear()
    yield
    BEHAVIOUR.clear()


def client_for(model, server: ServerConfig | None = None, **engine) -> TestClient:
    config = EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False, **engine)
    server = server or ServerConfig(allowed_hosts=("*",))  # TestClient's Host: testserver
    return TestClient(create_app(Engine(model, config), server))


def item(kind: str, marked: bool = False) -> dict:
    data = [0.0] * (3 * 8 * 8)
    if marked:
        data[0] = MARKER
    return {"fields": {"kind": kind}, "image": {"tensor": {"shape": [3, 8, 8], "data": data}}}


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_every_failure_kind_has_an_http_status():
    assert set(FAILURE_STATUS) == set(FailureKind)
    assert FAILURE_STATUS[FailureKind.INVALID_INPUT] == 422  # the client's input
    assert FAILURE_STATUS[FailureKind.TIMED_OUT] == 504


def test_a_stuck_executor_answers_504_and_makes_readyz_503_until_it_returns(model):
    release = threading.Event()
    BEHAVIOUR["b"] = hang_until(release)
    with client_for(model, batch_deadline_s=0.3) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        answer = client.post("/v1/inspect", json=item("b"))
        assert answer.status_code == 504, answer.text
        assert answer.json()["result"]["error_kind"] == "timed_out"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "stuck" in ready.json()["error"]["message"]
        assert "coserve_engine_problems 1.0" in client.get("/metrics").text
        release.set()
        BEHAVIOUR.clear()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/v1/inspect", json=item("b")).status_code == 200


def test_a_bad_input_in_a_batch_fails_alone(model):
    BEHAVIOUR["b"] = fail_on_marker
    with client_for(model) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        body = {"items": [item("b"), item("b", marked=True), item("b")]}
        answer = client.post("/v1/inspect/batch", json=body)
        assert answer.status_code == 200, answer.text
        statuses = [r["status"] for r in answer.json()["results"]]
        assert statuses == [200, 422, 200]
        assert answer.json()["results"][1]["error_kind"] == "invalid_input"
        assert not client.get("/v1/experts").json()["experts"][1]["quarantined"]


def test_the_drain_answers_a_request_held_by_a_hung_expert_within_its_deadline(model):
    release = threading.Event()
    BEHAVIOUR["b"] = hang_until(release)
    server = ServerConfig(allowed_hosts=("*",), drain_timeout_s=0.3)
    with client_for(model, server, batch_deadline_s=None) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        answers: list = []
        sender = threading.Thread(target=lambda: answers.append(
            client.post("/v1/inspect", json=item("b"))))
        sender.start()
        wait_until(lambda: client.app.state.service.admission.num_inflight == 1)
        t0 = time.monotonic()
        client.app.state.service.begin_drain().join(WAIT_S)
        sender.join(WAIT_S)
        assert time.monotonic() - t0 < 2.0
        assert answers and answers[0].status_code == 503, answers
        assert answers[0].json()["result"]["error_kind"] == "shut_down"
        assert client.app.state.service.admission.num_inflight == 0
        assert client.get("/readyz").status_code == 503  # draining
        release.set()
