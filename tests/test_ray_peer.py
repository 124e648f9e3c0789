"""The Ray Serve peer on the tiny CoE: every request answered along its rules, failures
counted, model loads counted, the in-flight window respected. One local Ray per module
(start-up, deployment and shutdown take most of the ~25 s)."""

import shutil

import pytest
import torch

from reference_routing import reference

pytest.importorskip("ray")

from coserve import Request, open_repository, read_trace  # noqa: E402
from coserve.bench.ray_peer import (  # noqa: E402
    RAY_PEER_POLICY,
    RayPeerConfig,
    models_per_replica,
    ray_available,
    run_ray_peer_results,
)
from coserve.errors import ConfigError  # noqa: E402

NUM_REQUESTS = 40
MAX_INFLIGHT = 4
BROKEN_EXPERT = "cls-F"  # rarely used, so never preloaded; its requests must fail alone

pytestmark = [
    pytest.mark.slow,
    # Ray 2.60's own pydantic models, on import; nothing coserve can fix.
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`"),
]


@pytest.fixture(scope="module")
def model(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-peer") / "repo"
    shutil.copytree(tiny_zoo[0], root)
    model = open_repository(root)
    # Break one expert after validation: same size, garbage header, so only its load fails.
    weights = model.experts[BROKEN_EXPERT].weights_path
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    return model


@pytest.fixture(scope="module")
def good_requests(model, tiny_zoo):
    broken_type = next(v for v in model.router.first_values
                       if BROKEN_EXPERT in model.router.first({model.router.field: v}))
    usable = [r for r in read_trace(tiny_zoo[1]) if r.fields["component_type"] != broken_type]
    return usable[:NUM_REQUESTS], broken_type


@pytest.fixture(scope="module")
def run(model, good_requests):
    requests, broken_type = good_requests
    image = requests[0].input
    bad = [
        Request("bad-expert-1", {"component_type": broken_type}, image),
        Request("bad-expert-2", {"component_type": broken_type}, image),
        Request("bad-type", {"component_type": "no-such-type"}, image),
        Request("bad-shape", dict(requests[0].fields), torch.zeros(3, 8, 8)),
    ]
    budget = int(0.3 * model.total_expert_bytes)
    config = RayPeerConfig(budget, max_inflight=MAX_INFLIGHT)
    stats, results = run_ray_peer_results(model, [*requests, *bad], config)
    return stats, {r.request_id: r for r in results}


def test_every_good_request_is_answered_and_failures_are_counted(run):
    stats, results = run
    assert stats.policy == RAY_PEER_POLICY
    assert stats.num_requests == NUM_REQUESTS + 4
    assert stats.num_completed == NUM_REQUESTS
    assert stats.num_failed == 4
    assert all(r.ok for rid, r in results.items() if not rid.startswith("bad-"))
    assert BROKEN_EXPERT in results["bad-expert-1"].error
    assert "\n" not in results["bad-expert-1"].error  # one line, not Ray's traceback
    assert "no-such-type" in results["bad-type"].error
    assert "shape" in results["bad-shape"].error
    assert stats.throughput_rps > 0 and stats.latency_p99_s >= stats.latency_p50_s > 0


def test_paths_and_labels_follow_the_rules(model, good_requests, run):
    _, results = run
    requests, _ = good_requests
    for request in requests[:6]:
        result = results[request.request_id]
        path, steps = reference(model, request)
        labels = [label for label, _ in steps]
        assert list(result.path) == path
        assert [s.label for s in result.steps] == labels
        assert all(s.executor == 0 and s.batch_size >= 1 for s in result.steps)


def test_loads_under_the_budget_are_counted_as_switches(model, run):
    stats, _ = run
    largest = max(e.num_bytes for e in model.experts.values())
    assert stats.extra["models_per_replica"] == int(0.3 * model.total_expert_bytes) // largest
    assert stats.extra["models_per_replica"] < len(model.experts)
    assert stats.num_switches >= 1
    assert stats.switches_per_executor == [stats.num_switches]
    file_sizes = {e.file_bytes for e in model.experts.values()}
    assert min(file_sizes) * stats.num_switches <= stats.bytes_read
    assert stats.bytes_read <= max(file_sizes) * stats.num_switches
    assert stats.num_pool_misses == stats.num_switches
    assert len(stats.extra["preloaded_per_replica"]) == stats.extra["models_per_replica"]
    assert "queue_depth_max" in stats.extra["not_measured"]


def test_the_window_bounds_requests_in_flight(run):
    stats, _ = run
    # 44 requests released at once through a window of 4: it fills, and never overflows.
    assert stats.extra["peak_inflight"] == MAX_INFLIGHT


def test_models_per_replica_is_whole_largest_experts_in_each_share():
    assert models_per_replica(100, 1, 30) == 3
    assert models_per_replica(100, 2, 30) == 1
    assert models_per_replica(10, 1, 30) == 1  # at least one, flagged as over budget
    with pytest.raises(ConfigError, match="num_replicas"):
        models_per_replica(100, 0, 30)


def test_bad_settings_say_how_to_fix_them():
    assert ray_available()
    with pytest.raises(ConfigError, match="max_inflight"):
        RayPeerConfig(1000, max_inflight=0)
    with pytest.raises(ConfigError, match="storage profile"):
        RayPeerConfig(1000, storage="floppy")
