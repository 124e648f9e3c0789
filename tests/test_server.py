"""The HTTP server against real servers on loopback, on the tiny CoE: every endpoint,
bad inputs (the right 4xx, and the server stays healthy), injected faults (only the
affected requests fail; quarantine after K failures), backpressure (429 + Retry-After),
timeouts (504, the engine still finishes), SIGTERM drain (nothing lost, exit 0), and a
bounded fuzz of the API from its own OpenAPI document (no 5xx)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import server_fixtures
from coserve import Engine, EngineConfig, open_repository, parse_executors, read_trace
from coserve.server import ServerConfig
from coserve.server.run import bind, make_server

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL_S = 0.01  # readiness-poll interval, never a synchronising sleep
WAIT_S = 30.0


# -- helpers ------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def is_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def running_server(engine: Engine, config: ServerConfig) -> Iterator[str]:
    """uvicorn in a thread on a free loopback port; yields the base URL once ready."""
    server = make_server(engine, config)
    sock = bind("127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: is_ready(base_url), "the server to be ready")
        yield base_url
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


def engine_config(**kw) -> EngineConfig:
    kw.setdefault("budget_fraction", 0.3)
    return EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False, **kw)


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample's value from /metrics (0.0 when absent)."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def tensor_body(x: torch.Tensor, component: str, **extra) -> dict:
    return {"fields": {"component_type": component},
            "image": {"tensor": {"shape": list(x.shape), "data": x.flatten().tolist()}}, **extra}


def image_bytes(x: torch.Tensor, fmt: str) -> bytes:
    """[3, H, W] -> PNG/JPEG/GIF bytes (values clipped to [0, 1])."""
    rgb = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, 3]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def repo_with(tiny_zoo, tmp_path: Path, factories: dict[str, str]) -> Path:
    """A copy of the tiny CoE in which each named expert gets its own architecture with
    the given factory (same args, shape and labels as the tiny classifier)."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], root)
    spec = yaml.safe_load((root / "coe.yaml").read_text())
    for expert, factory in factories.items():
        arch = f"arch-{expert}"
        spec["architectures"][arch] = {**spec["architectures"]["cls-tiny"], "factory": factory}
        for entry in spec["experts"]:
            if entry["name"] == expert:
                entry["architecture"] = arch
    (root / "coe.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="module")
def requests(tiny_zoo):
    return read_trace(tiny_zoo[1])


@pytest.fixture(scope="module")
def by_type(requests):
    """One trace request per component type."""
    first: dict = {}
    for r in requests:
        first.setdefault(r.fields["component_type"], r)
    return first


# -- a healthy server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def healthy(tiny_zoo):
    engine = Engine(open_repository(tiny_zoo[0]), engine_config())
    # engine_stats_max_age_s=0: the engine's counters are read at every scrape, so a test
    # sees the switches its own requests made.
    config = ServerConfig(port=0, token=TOKEN, max_body_bytes=256 << 10, max_batch_items=8,
                          max_loop_lag_s=None, engine_stats_max_age_s=0)
    with running_server(engine, config) as base_url:
        yield base_url


@pytest.fixture
def client(healthy):
    with httpx.Client(base_url=healthy, headers=AUTH, timeout=WAIT_S) as c:
        yield c


def test_probes_docs_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"ready": True}
    doc = client.get("/openapi.json").json()
    for path in ("/v1/inspect", "/v1/inspect/batch", "/v1/experts", "/healthz", "/readyz", "/metrics"):
        assert path in doc["paths"], path
    body = doc["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "InspectRequest" in doc["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert metric(client, "coserve_ready") == 1.0


def test_inspect_a_raw_tensor_gives_the_engines_answer(client, by_type, tiny_zoo):
    from test_engine_e2e import reference

    request = by_type["R"]
    response = client.post("/v1/inspect", json=tensor_body(request.input, "R", id="mine-1"))
    assert response.status_code == 200, response.text
    out = response.json()
    path, steps = reference(open_repository(tiny_zoo[0]), request)
    assert out["request_id"] == "mine-1" and out["ok"] and out["status"] == 200
    assert out["path"] == path and out["labels"] == [label for label, _ in steps]
    assert out["steps"][0]["detail"]["scores"] == pytest.approx(steps[0][1]["scores"], abs=1e-4)
    assert out["latency_s"] > 0 and out["steps"][0]["exec_s"] > 0


def test_inspect_png_jpeg_and_multipart(client, by_type):
    x = by_type["C"].input
    png, jpeg = image_bytes(x, "PNG"), image_bytes(x, "JPEG")
    answers = [
        client.post("/v1/inspect", json={"fields": {"component_type": "C"},
                                         "image": {"base64_png": b64(png)}}),
        client.post("/v1/inspect", json={"fields": {"component_type": "C"},
                                         "image": {"base64_jpeg": b64(jpeg)}}),
        client.post("/v1/inspect", files={"image": ("c.png", png, "image/png")},
                    data={"fields": json.dumps({"component_type": "C"}), "id": "part-1"}),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["path"][0] == "cls-C"
    assert answers[2].json()["request_id"] == "part-1"
    batch = client.post("/v1/inspect/batch", files=[("images", ("a.png", png, "image/png")),
                                                    ("images", ("b.jpg", jpeg, "image/jpeg"))],
                        data={"fields": json.dumps([{"component_type": "C"}, {"component_type": "D"}])})
    assert batch.status_code == 200, batch.text
    assert [r["path"][0] for r in batch.json()["results"]] == ["cls-C", "cls-D"]


def test_batch_answers_in_order_and_refuses_a_bad_item_by_index(client, by_type):
    items = [tensor_body(by_type[t].input, t, id=f"b{k}") for k, t in enumerate("RDU")]
    response = client.post("/v1/inspect/batch", json={"items": items})
    assert response.status_code == 200, response.text
    out = response.json()
    assert [r["request_id"] for r in out["results"]] == ["b0", "b1", "b2"]
    assert [r["path"][0] for r in out["results"]] == ["cls-R", "cls-D", "cls-U"]
    assert out["num_ok"] == 3 and out["num_failed"] == 0
    items[1]["fields"]["component_type"] = "nope"
    bad = client.post("/v1/inspect/batch", json={"items": items})
    assert bad.status_code == 422 and "items[1]" in bad.json()["error"]["message"]
    png = {"fields": {"component_type": "R"}, "image": {"base64_png": b64(image_bytes(by_type["R"].input, "PNG"))}}
    too_many = client.post("/v1/inspect/batch", json={"items": [png] * 9})
    assert too_many.status_code == 422 and "at most 8" in too_many.json()["error"]["message"]


def test_experts_lists_architecture_residence_and_quarantine(client):
    out = client.get("/v1/experts").json()
    assert out["model"] == "tiny-pcb" and len(out["executors"]) == 1
    experts = {e["name"]: e for e in out["experts"]}
    assert len(experts) == 12
    assert experts["cls-R"]["architecture"] == "cls-tiny" and experts["cls-R"]["stage"] == "preliminary"
    assert experts["det-passive"]["stage"] == "subsequent"
    assert sum(e["usage_probability"] for e in experts.values() if e["stage"] == "preliminary") == pytest.approx(1.0)
    assert any(e["resident_on"] == [0] for e in experts.values())
    assert not any(e["quarantined"] for e in experts.values())
    used = sum(e["num_bytes"] for e in experts.values() if e["resident_on"])
    assert used == out["executors"][0]["pool_used_bytes"] <= out["executors"][0]["pool_budget_bytes"]


def _bad_inputs(x: torch.Tensor) -> list[tuple[str, dict, int, str]]:
    """(what, httpx.post kwargs, status, text the message must hold)."""
    small = torch.rand(3, 8, 8)
    gif = image_bytes(x, "GIF")
    good_fields = {"component_type": "R"}
    return [
        ("malformed JSON", {"content": b'{"fields": ', "headers": {"content-type": "application/json"}},
         400, "not valid JSON"),
        ("JSON that is not an object", {"json": [1, 2]}, 422, "should be an object"),
        ("unsupported media type", {"content": b"hello", "headers": {"content-type": "text/plain"}},
         415, "application/json or multipart/form-data"),
        ("wrong tensor size", {"json": tensor_body(small, "R")}, 422, "shape [3, 32, 32]"),
        ("wrong image size", {"json": {"fields": good_fields,
                                       "image": {"base64_png": b64(image_bytes(small, "PNG"))}}},
         422, "shape [3, 32, 32]"),
        ("GIF sent as PNG", {"json": {"fields": good_fields, "image": {"base64_png": b64(gif)}}},
         415, "GIF"),
        ("GIF file part", {"files": {"image": ("x.gif", gif, "image/gif")},
                           "data": {"fields": json.dumps(good_fields)}}, 415, "image/gif"),
        ("not an image", {"json": {"fields": good_fields, "image": {"base64_png": b64(b"text!")}}},
         415, "not an image"),
        ("bad base64", {"json": {"fields": good_fields, "image": {"base64_png": "%%%"}}},
         422, "base64"),
        ("unknown component type", {"json": tensor_body(x, "Z")}, 422, "known values: R, C, L"),
        ("no routing field", {"json": {**tensor_body(x, "R"), "fields": {}}}, 422, "component_type"),
        ("two images", {"json": {"fields": good_fields, "image": {
            "base64_png": b64(image_bytes(x, "PNG")), "tensor": {"shape": [1], "data": [0.0]}}}},
         422, "exactly one of"),
        ("tensor data too short", {"json": {"fields": good_fields,
                                            "image": {"tensor": {"shape": [3, 32, 32], "data": [0.5]}}}},
         422, "needs 3072"),
        ("multipart without fields", {"files": {"image": ("x.png", image_bytes(x, "PNG"), "image/png")}},
         422, "'fields'"),
    ]


def test_bad_inputs_get_the_right_4xx_and_the_server_stays_healthy(client, healthy, by_type):
    x = by_type["R"].input
    for what, kwargs, status, text in _bad_inputs(x):
        response = client.post("/v1/inspect", **kwargs)
        assert response.status_code == status, (what, response.text)
        assert text in response.json()["error"]["message"], (what, response.text)
    # Over the 256 KiB body limit: declared (Content-Length) and streamed (chunked).
    big = b'{"id": "' + b"x" * 300_000 + b'"}'
    assert client.post("/v1/inspect", content=big, headers={"content-type": "application/json"}).status_code == 413
    streamed = client.post("/v1/inspect", content=iter([big[:150_000], big[150_000:]]),
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "max-body-bytes" in streamed.json()["error"]["message"]
    # Tokens: none, and the wrong one.
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.post(f"{healthy}/v1/inspect", json=tensor_body(x, "R"), headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{healthy}/v1/experts").status_code == 401
    # Still healthy, still serving.
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/inspect", json=tensor_body(x, "R")).status_code == 200
    assert metric(client, "coserve_requests_total", endpoint="inspect", outcome="invalid") >= 14
    assert metric(client, "coserve_requests_total", endpoint="inspect", outcome="unauthorized") >= 3


def test_metrics_read_the_engine(client, by_type):
    for _ in range(2):  # the second finds its experts resident: a pool hit, even run alone
        client.post("/v1/inspect", json=tensor_body(by_type["Q"].input, "Q"))
    assert metric(client, "coserve_requests_total", endpoint="inspect", outcome="ok") >= 1
    assert metric(client, "coserve_request_duration_seconds_count", endpoint="inspect") >= 1
    assert metric(client, "coserve_requests_accepted_total") >= 1
    assert metric(client, "coserve_engine_requests_total", outcome="completed") >= 1
    assert metric(client, "coserve_expert_switches_total", path="storage->cpu") >= 1
    assert metric(client, "coserve_expert_load_bytes_total", path="storage->cpu") > 0
    assert 0 < metric(client, "coserve_pool_hit_ratio") <= 1
    assert metric(client, "coserve_queue_depth", executor="0", processor="cpu") == 0
    assert metric(client, "coserve_requests_in_flight") == 0
    assert metric(client, "coserve_requests_in_flight_limit") == 256
    assert "coserve_deadline_misses_total" in client.get("/metrics").text


def test_metrics_count_deadline_misses(tiny_zoo, by_type):
    """With a latency target no answer can meet, every answer is a deadline miss."""
    engine = Engine(open_repository(tiny_zoo[0]), engine_config(latency_target_s=1e-9))
    config = ServerConfig(port=0, token=TOKEN, max_loop_lag_s=None)
    with running_server(engine, config) as base_url, \
            httpx.Client(base_url=base_url, headers=AUTH, timeout=WAIT_S) as c:
        for component in ("Q", "R"):
            response = c.post("/v1/inspect", json=tensor_body(by_type[component].input, component))
            assert response.status_code == 200
        assert metric(c, "coserve_deadline_misses_total") == 2
        assert metric(c, "coserve_engine_requests_total", outcome="completed") == 2


def test_fuzz_the_api_from_its_openapi_schema(client, healthy):
    """Bounded: 50 generated requests in all; whatever they hold, never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    for path, method, num_cases in (("/v1/inspect", "POST", 25), ("/v1/inspect/batch", "POST", 20),
                                    ("/v1/experts", "GET", 5)):
        @settings(max_examples=num_cases, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema[path][method].as_strategy())
        def run(case) -> None:
            response = case.call(base_url=healthy, headers=AUTH, timeout=WAIT_S)
            assert response.status_code < 500, (case.body, response.text)

        run()
    assert client.get("/readyz").status_code == 200


# -- faults, backpressure, timeouts -------------------------------------------------------
@pytest.fixture(scope="module")
def faulty(tiny_zoo, tmp_path_factory):
    """cls-U's weight file is truncated after the repository was opened, cls-X's forward
    raises, cls-F waits for the test's gate; two requests in flight at most."""
    root = repo_with(tiny_zoo, tmp_path_factory.mktemp("faulty"),
                     {"cls-X": "server_fixtures:RaisingResNet", "cls-F": "server_fixtures:GatedResNet"})
    model = open_repository(root, trust_code=True)
    weights = root / "weights" / "cls-U.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    engine = Engine(model, engine_config(quarantine_after=3))
    config = ServerConfig(port=0, max_inflight=2, retry_after_s=2, max_loop_lag_s=None)
    with running_server(engine, config) as base_url, \
            httpx.Client(base_url=base_url, timeout=WAIT_S) as c:
        yield c


def test_faults_fail_only_their_requests_then_quarantine(faulty, by_type):
    good = tensor_body(by_type["R"].input, "R")
    for component, expert, cause in (("U", "cls-U", "truncated"), ("X", "cls-X", "injected fault")):
        body = tensor_body(by_type[component].input, component)
        for _ in range(3):  # one failed batch each: sequential requests are never batched
            failed = faulty.post("/v1/inspect", json=body)
            assert failed.status_code == 500, failed.text
            error = failed.json()["error"]
            assert error["type"] == "expert_failed" and error["expert"] == expert
            assert cause in error["message"]
            assert faulty.post("/v1/inspect", json=good).status_code == 200  # others unaffected
        quarantined = faulty.post("/v1/inspect", json=body)
        assert quarantined.status_code == 503, quarantined.text
        error = quarantined.json()["error"]
        assert error["type"] == "expert_quarantined" and error["expert"] == expert
        assert "quarantined after 3 consecutive failures" in error["message"]
    experts = {e["name"]: e for e in faulty.get("/v1/experts").json()["experts"]}
    assert {n for n, e in experts.items() if e["quarantined"]} == {"cls-U", "cls-X"}
    assert experts["cls-X"]["total_failures"] == 3 and "injected" in experts["cls-X"]["last_error"]
    assert metric(faulty, "coserve_expert_quarantined", expert="cls-U") == 1
    assert metric(faulty, "coserve_experts_quarantined") == 2
    assert metric(faulty, "coserve_expert_failures_total", expert="cls-X") == 3
    # A batch mixing a quarantined expert with a healthy one: only that item fails.
    mixed = faulty.post("/v1/inspect/batch", json={"items": [good, tensor_body(by_type["X"].input, "X")]})
    assert [r["status"] for r in mixed.json()["results"]] == [200, 503]
    # Releasing lets it run again (it still raises, so it fails, not fast).
    assert faulty.post("/v1/experts/cls-X/release").json() == {"expert": "cls-X", "released": True}
    assert faulty.post("/v1/inspect", json=tensor_body(by_type["X"].input, "X")).status_code == 500
    assert faulty.post("/v1/experts/nope/release").status_code == 404
    assert faulty.get("/readyz").status_code == 200


def test_backpressure_429_and_timeouts_504_while_the_engine_is_held(faulty, by_type):
    server_fixtures.GATE.clear()
    held = tensor_body(by_type["F"].input, "F")
    good = tensor_body(by_type["R"].input, "R")
    with ThreadPoolExecutor(2) as pool:
        try:
            timed = pool.submit(faulty.post, "/v1/inspect", json={**held, "timeout_s": 0.2})
            waiting = pool.submit(faulty.post, "/v1/inspect", json=held)
            wait_until(lambda: metric(faulty, "coserve_requests_in_flight") == 2, "two in flight")
            rejected = faulty.post("/v1/inspect", json=good)
            assert rejected.status_code == 429 and rejected.headers["retry-after"] == "2"
            assert "at most 2" in rejected.json()["error"]["message"]
            timed_out = timed.result(WAIT_S)
            assert timed_out.status_code == 504 and "still finishes" in timed_out.json()["error"]["message"]
            # The timed-out request still holds its slot until the engine finishes it.
            assert faulty.post("/v1/inspect", json=good).status_code == 429
        finally:
            server_fixtures.GATE.set()
        assert waiting.result(WAIT_S).status_code == 200
    wait_until(lambda: metric(faulty, "coserve_requests_in_flight") == 0, "the engine to finish")
    assert faulty.post("/v1/inspect", json=good).status_code == 200
    assert metric(faulty, "coserve_requests_rejected_total", reason="overload") >= 2
    assert metric(faulty, "coserve_requests_total", endpoint="inspect", outcome="timeout") == 1


def test_admission_sheds_when_full_and_when_the_event_loop_lags():
    """The slots and the lag rule alone (the servers above run with no lag rule, so a
    busy test machine cannot make them shed)."""
    from coserve.server.errors import OverloadedError, UnavailableError
    from coserve.server.limits import Admission

    admission = Admission(max_inflight=3, retry_after_s=1, max_loop_lag_s=0.5)
    ticket = admission.enter()
    ticket.reserve(3)
    with pytest.raises(OverloadedError, match="at most 3"):
        admission.enter()
    release = ticket.hand_over()
    ticket.close()  # the two slots not handed over
    assert admission.num_inflight == 1
    release(None)  # the engine finished the handed-over one
    assert admission.num_inflight == 0
    admission.loop_lag.lag_s = 0.8
    with pytest.raises(OverloadedError, match="0.80 s behind"):
        admission.enter()
    admission.loop_lag.lag_s = 0.0
    admission.enter().close()
    admission.stop()
    with pytest.raises(UnavailableError, match="shutting down"):
        admission.enter()
    assert admission.num_inflight == 0


# -- SIGTERM drain --------------------------------------------------------------------------
def test_sigterm_drains_every_accepted_request_and_exits_0(tiny_zoo, tmp_path, by_type):
    root = repo_with(tiny_zoo, tmp_path, {"cls-R": "server_fixtures:SlowResNet"})
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "coserve.cli", "serve", str(root), "--port", "0", "--no-measure",
         "--executors", "cpu:1", "--budget-fraction", "0.3", "--max-loop-lag-s", "0",
         "--trust-repo-code"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving tiny-pcb on http://127.0.0.1:" in line, (line, proc.stderr.read())
        base_url = line.split(" on ")[1].split()[0]
        wait_until(lambda: is_ready(base_url), "the subprocess server to be ready")
        num_requests = 12
        body = tensor_body(by_type["R"].input, "R")
        with httpx.Client(base_url=base_url, timeout=WAIT_S, limits=httpx.Limits(max_connections=16)) as c, \
                ThreadPoolExecutor(num_requests) as pool:
            futures = [pool.submit(c.post, "/v1/inspect", json=body) for _ in range(num_requests)]
            wait_until(lambda: metric(c, "coserve_requests_accepted_total") == num_requests, "all accepted")
            in_flight = metric(c, "coserve_requests_in_flight")
            proc.send_signal(signal.SIGTERM)
            # Intake stops at once: 503 on an open connection, or refused once it closed.
            with contextlib.suppress(httpx.TransportError):
                assert c.post("/v1/inspect", json=body).status_code == 503
            statuses = [f.result(WAIT_S).status_code for f in futures]
        assert in_flight > 0, "the signal must arrive while requests are in flight"
        assert statuses == [200] * num_requests
        assert proc.wait(WAIT_S) == 0
        assert "drained and stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
