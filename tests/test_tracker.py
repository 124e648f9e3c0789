"""The request tracker shared by the engine and the simulator: intake, fan-out counting,
first failure wins, exactly one Result per request. No torch, no threads."""

import pytest

from coserve.errors import EngineClosedError, RequestError
from coserve.manager.usage import UsageTracker
from coserve.stats import StatsRecorder
from coserve.tracker import RequestTracker, rejected
from coserve.types import FailureKind, Request, Step


def tracker():
    clock = iter(range(100)).__next__
    usage = UsageTracker({"a": 0.5, "b": 0.5}, blend=1.0, min_samples=1)
    t = RequestTracker(clock=lambda: float(clock()), stats=StatsRecorder(1), usage=usage,
                       latency_target_s=5.0)
    return t, usage


def step(expert):
    return Step(expert=expert, label="pass", detail={}, executor=0, batch_size=1,
                queued_s=0.0, exec_s=0.0)


def test_intake_is_closed_until_opened_and_after_a_drain():
    t, _ = tracker()
    with pytest.raises(EngineClosedError):
        t.admit(Request("r", {}, None), ["a"], print)
    t.open()
    results = []
    state = t.admit(Request("r", {}, None), ["a"], results.append)
    with pytest.raises(RequestError, match="already in flight"):
        t.admit(Request("r", {}, None), ["a"], results.append)
    t.advance(state, step("a"), [])
    t.finish_if_done(state)
    assert t.close_and_drain() and not t.close_and_drain()
    with pytest.raises(EngineClosedError):
        t.admit(Request("s", {}, None), ["a"], results.append)


def test_fan_out_finishes_once_after_every_branch():
    t, usage = tracker()
    t.open()
    results = []
    state = t.admit(Request("r", {}, None), ["a"], results.append)
    t.advance(state, step("a"), ["b", "b"])  # a routes to two subsequent tasks
    t.finish_if_done(state)
    assert not results
    t.advance(state, step("b"), [])
    t.finish_if_done(state)
    assert not results
    t.advance(state, step("b"), [])
    t.finish_if_done(state)
    t.finish_if_done(state)  # a late second caller finishes nothing
    assert len(results) == 1 and results[0].ok and results[0].path == ("a", "b", "b")
    assert usage.usage() == {"a": 1.0, "b": 1.0}  # learned from the routing


def test_the_first_failure_wins_and_the_request_still_resolves():
    t, _ = tracker()
    t.open()
    results = []
    state = t.admit(Request("r", {"component_type": "R"}, None), ["a", "b"], results.append)
    t.fail(state, "expert 'a' failed", FailureKind.EXPERT_FAILED, "a")
    t.fail(state, "expert 'b' quarantined", FailureKind.EXPERT_QUARANTINED, "b")
    (result,) = results
    assert not result.ok and result.error_kind is FailureKind.EXPERT_FAILED
    assert result.failed_expert == "a" and result.fields == {"component_type": "R"}


def test_a_rejected_request_has_a_result_too():
    result = rejected(Request("r", {"x": 1}, None), "unknown component type", 3.0)
    assert not result.ok and result.error_kind is FailureKind.REJECTED and result.latency_s == 0


def test_abort_answers_a_request_at_once_and_its_late_tasks_change_nothing():
    t, _ = tracker()
    t.open()
    results = []
    state = t.admit(Request("r", {}, None), ["a", "b"], results.append)  # two branches
    t.abort(state, "routing again broke", FailureKind.ROUTING_FAILED, "a")
    assert len(results) == 1 and results[0].error == "routing again broke"
    assert not t.in_flight(state)
    t.advance(state, step("b"), [])  # the other branch ends later: nothing more
    t.finish_if_done(state)
    t.fail(state, "late", FailureKind.TIMED_OUT, "b")
    assert len(results) == 1 and results[0].error_kind is FailureKind.ROUTING_FAILED
    again = t.admit(Request("r", {}, None), ["a"], results.append)  # the id is free again
    assert t.in_flight(again) and not t.in_flight(state)


def test_a_drain_with_a_deadline_then_answers_whatever_is_left():
    t, _ = tracker()
    t.open()
    results = []
    done = t.admit(Request("done", {}, None), ["a"], results.append)
    t.admit(Request("stuck", {}, None), ["a"], results.append)
    t.advance(done, step("a"), [])
    t.finish_if_done(done)
    assert t.close_intake() and not t.close_intake()
    assert not t.drain(timeout_s=0.01)
    assert t.abort_all("the server shut down before this request finished", FailureKind.SHUT_DOWN) == 1
    assert t.drain(timeout_s=0)
    assert [r.request_id for r in results] == ["done", "stuck"]
    assert results[1].error_kind is FailureKind.SHUT_DOWN


def test_a_snapshot_without_latencies_skips_the_window_but_keeps_the_counters():
    from coserve.stats import StatsRecorder

    static = {"policy": "p", "budget_bytes": None, "total_expert_bytes": 0, "storage": "none",
              "cost_source": "default"}
    recorder = StatsRecorder(1)
    recorder.reset(0.0)
    for latency_s in (0.3, 0.1, 0.2):
        recorder.request_submitted()
        recorder.request_done(latency_s, ok=True, now_s=1.0)
    full = recorder.snapshot(1.0, bytes_read=0, **static)
    assert (full.latency_p50_s, full.latency_p99_s) == (0.2, 0.3)
    counters = recorder.snapshot(1.0, bytes_read=0, latencies=False, **static)
    assert counters.latency_p99_s == 0.0
    assert (counters.num_requests, counters.num_completed) == (3, 3)
