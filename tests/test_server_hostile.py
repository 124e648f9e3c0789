"""The HTTP server under hostile input, against a real server on loopback (the tiny CoE):
work is admitted before it is done (an image's size is checked from its header before
it is decoded, bodies are read under a deadline before any slot is taken), memory is
bounded (the memory-bomb batch), every client mistake is a 4xx that says what to fix
and leaves no traceback in the log, error texts name no file of the server's, the Host
header is checked, /metrics can need a token and a scrape does not sort latencies."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from coserve import Engine, open_repository, read_trace
from coserve.server import ServerConfig
from test_server import (
    WAIT_S,
    b64,
    engine_config,
    image_bytes,
    metric,
    running_server,
    tensor_body,
    wait_until,
)

METRICS_TOKEN = "scrape-me"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
READ_TIMEOUT_S = 1.5
NUM_SLOW_UPLOADS = 80  # more than the server has slots (64)
NUM_BOMB_IMAGES = 64  # the memory-bomb batch: ~4.2 MB of JSON, 13 GB decoded
MAX_RSS_GROWTH_BYTES = 1 << 30


# -- the server: loopback, no token (so the Host check is on), a metrics token ------------
@pytest.fixture(scope="module")
def guarded(tiny_zoo, tmp_path_factory):
    """cls-U's weight file is gone after the repository was opened; 64 slots."""
    root = tmp_path_factory.mktemp("guarded") / "repo"
    shutil.copytree(tiny_zoo[0], root)
    model = open_repository(root)
    (root / "weights" / "cls-U.safetensors").unlink()
    engine = Engine(model, engine_config(quarantine_after=0))
    config = ServerConfig(port=0, max_inflight=64, read_timeout_s=READ_TIMEOUT_S,
                          metrics_token=METRICS_TOKEN, max_loop_lag_s=None)
    with running_server(engine, config) as base_url:
        yield base_url, engine, root


@pytest.fixture(scope="module")
def by_type(tiny_zoo):
    """One trace request per component type."""
    first: dict = {}
    for r in read_trace(tiny_zoo[1]):
        first.setdefault(r.fields["component_type"], r)
    return first


@pytest.fixture
def client(guarded):
    with httpx.Client(base_url=guarded[0], timeout=WAIT_S) as c:
        yield c


def scrape(client: httpx.Client, name: str, **labels: str) -> float:
    client.headers.update(METRICS_AUTH)
    try:
        return metric(client, name, **labels)
    finally:
        del client.headers["Authorization"]


def blank_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def png_body(data: bytes, component: str = "R") -> dict:
    return {"fields": {"component_type": component}, "image": {"base64_png": b64(data)}}


def kib(field: str) -> int:
    """A field of /proc/self/status (VmHWM, VmRSS), in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) << 10


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if the server logged an error or a traceback for client input."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


# -- admission before work ----------------------------------------------------------------
def test_the_memory_bomb_batch_is_refused_from_headers_in_bounded_memory(client, guarded,
                                                                        no_tracebacks):
    """64 blank 4096x4096 PNGs for an expert taking [3, 32, 32]: decoded first, 13 GB."""
    bomb = json.dumps({"items": [png_body(blank_png(4096, 4096))] * NUM_BOMB_IMAGES}).encode()
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
    rss_before = kib("VmRSS")
    response = client.post("/v1/inspect/batch", content=bomb,
                           headers={"content-type": "application/json"})
    growth = kib("VmHWM") - rss_before
    assert response.status_code == 422, response.text[:500]
    message = response.json()["error"]["message"]
    assert "items[0]" in message and "[3, 32, 32]" in message and "4096" in message
    assert growth < MAX_RSS_GROWTH_BYTES, f"RSS grew {growth >> 20} MiB"
    assert scrape(client, "coserve_requests_in_flight") == 0


def test_a_decompression_bomb_png_is_a_4xx_naming_the_pixel_limit(client, no_tracebacks):
    """15000x15000: Pillow refuses it on open (DecompressionBombError), 218 KB of file."""
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, format="PNG")
    response = client.post("/v1/inspect", json=png_body(buf.getvalue()))
    assert response.status_code == 422, response.text
    assert "16777216" in response.json()["error"]["message"]
    multipart = client.post("/v1/inspect", files={"image": ("bomb.png", buf.getvalue(), "image/png")},
                            data={"fields": json.dumps({"component_type": "R"})})
    assert multipart.status_code == 422 and "crops" in multipart.json()["error"]["message"]


def _slow_upload(address: tuple[str, int]) -> socket.socket:
    """A POST that declares 1,000 bytes of body and sends 10, then waits."""
    conn = socket.create_connection(address, timeout=WAIT_S)
    conn.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"fields\":")
    return conn


def test_slow_uploads_hold_no_slot_and_are_cut_off_with_408(client, guarded, by_type,
                                                            no_tracebacks):
    """80 slow uploads against 64 slots: a normal client is served at once, /readyz
    says ready, and each slow upload gets 408 after the read timeout."""
    address = (client.base_url.host, client.base_url.port)
    slow = [_slow_upload(address) for _ in range(NUM_SLOW_UPLOADS)]
    try:
        assert client.get("/readyz").status_code == 200
        t0 = time.monotonic()
        served = client.post("/v1/inspect", json=tensor_body(by_type["R"].input, "R"))
        assert served.status_code == 200, served.text
        assert time.monotonic() - t0 < 2.0
        assert client.get("/readyz").status_code == 200
        answers = [conn.recv(4096).decode() for conn in slow]  # each within the deadline
    finally:
        for conn in slow:
            conn.close()
    assert all(a.startswith("HTTP/1.1 408") for a in answers), answers[0]
    assert "--read-timeout-s" in answers[0]
    assert scrape(client, "coserve_requests_in_flight") == 0


def test_a_client_leaving_mid_upload_is_no_error(client, guarded, by_type, no_tracebacks):
    """No 500, nothing logged, no slot kept: counted as a client mistake."""

    def answered(outcome: str) -> float:
        return scrape(client, "coserve_requests_total", endpoint="inspect", outcome=outcome)

    invalid, failed = answered("invalid"), answered("failed")
    address = (client.base_url.host, client.base_url.port)
    for _ in range(3):
        _slow_upload(address).close()
    wait_until(lambda: answered("invalid") + answered("failed") >= invalid + failed + 3,
               "the server to see the disconnects")
    assert answered("failed") == failed
    assert scrape(client, "coserve_requests_in_flight") == 0
    assert client.post("/v1/inspect", json=tensor_body(by_type["R"].input, "R")).status_code == 200


def test_hostile_fields_are_4xx_in_multipart_and_json(client, by_type, no_tracebacks):
    png = image_bytes(by_type["R"].input, "PNG")
    deep = "[" * 100_000 + "]" * 100_000
    huge = "1" + "0" * 5000
    for text in (deep, huge, '{"component_type": ' + deep + "}", '{"component_type": ' + huge + "}"):
        response = client.post("/v1/inspect", files={"image": ("r.png", png, "image/png")},
                               data={"fields": text})
        assert response.status_code == 400, response.text[:300]
        assert "'fields' part is not valid JSON" in response.json()["error"]["message"]
    for value in (deep, huge):
        body = '{"fields": {"component_type": ' + value + '}, "image": {"base64_png": "AA=="}}'
        response = client.post("/v1/inspect", content=body,
                               headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text[:300]
        assert "not valid JSON" in response.json()["error"]["message"]


def test_error_texts_name_no_file_of_the_server(client, guarded, by_type):
    _, _, root = guarded
    response = client.post("/v1/inspect", json=tensor_body(by_type["U"].input, "U"))
    assert response.status_code == 500 and response.json()["error"]["expert"] == "cls-U"
    experts = client.get("/v1/experts").json()["experts"]
    last_error = next(e for e in experts if e["name"] == "cls-U")["last_error"]
    for text in (response.text, last_error):
        assert str(root) not in text and "/weights/" not in text, text
    assert "cls-U.safetensors" in response.json()["error"]["message"]


def test_only_loopback_host_headers_on_a_token_less_loopback_server(client, guarded):
    for host in ("127.0.0.1", "localhost:8000", "[::1]:1234", "LOCALHOST"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        response = client.get("/healthz", headers={"Host": host})
        assert response.status_code == 400, host
        error = response.json()["error"]
        assert error["type"] == "invalid_host" and "--allowed-hosts" in error["message"]


def test_host_allowlist_follows_the_config():
    assert ServerConfig().host_allowlist == ("127.0.0.1", "localhost", "[::1]")
    assert ServerConfig(token="t").host_allowlist is None
    assert ServerConfig(host="0.0.0.0").host_allowlist is None
    assert ServerConfig(allowed_hosts=("*",)).host_allowlist is None
    assert ServerConfig(token="t", allowed_hosts=("Example.com",)).host_allowlist == ("example.com",)


# -- observability --------------------------------------------------------------------------
def test_metrics_need_their_token_and_a_scrape_does_not_sort(client, guarded, by_type):
    _, engine, _ = guarded
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    calls: list[dict] = []
    stats = engine.stats

    def counting_stats(**kw):
        calls.append(kw)
        return stats(**kw)

    engine.stats = counting_stats  # with latencies, the snapshot sorts the latency window
    try:
        for _ in range(2):
            assert client.post("/v1/inspect", json=tensor_body(by_type["Q"].input, "Q")).status_code == 200
        for _ in range(20):
            assert client.get("/metrics", headers=METRICS_AUTH).status_code == 200
    finally:
        del engine.stats
    assert len(calls) <= 1  # the background refresh, at most once in 5 s
    assert all(kw.get("latencies") is False for kw in calls)  # and it sorts nothing
    assert scrape(client, "coserve_engine_requests_total", outcome="completed") >= 2
    assert scrape(client, "coserve_engine_latency_seconds_count") >= 2


# -- the pieces alone -------------------------------------------------------------------------
def test_the_decode_budget_per_request_and_per_server():
    from coserve.server.errors import BodyTooLargeError, OverloadedError
    from coserve.server.limits import DecodeBudget

    refused: list[None] = []
    budget = DecodeBudget(max_request_bytes=100, max_server_bytes=150, retry_after_s=1,
                          on_refused=lambda: refused.append(None))
    first = budget.reservation()
    first.add(80, "items[0]")
    with pytest.raises(BodyTooLargeError, match="per request; send fewer or smaller"):
        first.add(30, "items[1] (64x64 pixels)")
    second = budget.reservation()
    with pytest.raises(OverloadedError, match="retry after 1 s"):
        second.add(80, "items[0]")
    assert budget.num_bytes == 80 and len(refused) == 1  # the per-request 413 is not a refusal
    first.close()
    second.add(80, "items[0]")
    second.close()
    assert budget.num_bytes == 0


def test_uvicorn_gets_the_connection_limit(tiny_zoo):
    from coserve.server.run import make_server

    engine = Engine(open_repository(tiny_zoo[0]), engine_config())
    server = make_server(engine, ServerConfig(max_connections=77, keep_alive_s=3))
    assert server.config.limit_concurrency == 77 and server.config.timeout_keep_alive == 3


def test_images_are_opened_with_the_png_and_jpeg_parsers_only():
    from coserve.server.errors import UnsupportedMediaTypeError
    from coserve.server.images import EncodedImage, open_image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="BMP")
    with pytest.raises(UnsupportedMediaTypeError, match="a BMP image; send PNG or JPEG"):
        open_image(EncodedImage(buf.getvalue(), "image"))
    png = blank_png(8, 8)
    with pytest.raises(UnsupportedMediaTypeError, match="a PNG image; send JPEG"):
        open_image(EncodedImage(png, "image", expect="jpeg"))
    assert open_image(EncodedImage(png, "image", expect="png")).shape == (3, 8, 8)
