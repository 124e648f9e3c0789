"""Quarantine: the policy object alone (no torch), then in the engine with a weight file
truncated after the repository was opened."""

import shutil

import pytest

from coserve.manager.quarantine import Quarantine


def test_k_consecutive_failures_quarantine_and_a_success_resets_the_run():
    q = Quarantine(3, clock=lambda: 42.0)
    assert q.allows("a")
    assert not q.record_failure("a", "boom 1")
    assert not q.record_failure("a", "boom 2")
    q.record_success("a")  # the run starts again
    assert [q.record_failure("a", f"boom {k}") for k in range(3, 6)] == [False, False, True]
    assert not q.allows("a") and q.allows("b")
    assert not q.record_failure("a", "boom 6")  # True only when it becomes quarantined
    record = q.records()["a"]
    assert (record.quarantined, record.consecutive_failures, record.total_failures) == (True, 4, 6)
    assert record.last_error == "boom 6" and record.quarantined_at_s == 42.0
    assert "'a' is quarantined after 4 consecutive failures (last: boom 6)" in q.reason("a")
    assert q.quarantined() == frozenset({"a"})


def test_release_lets_an_expert_run_again_with_a_fresh_run():
    q = Quarantine(2, clock=lambda: 0.0)
    q.record_failure("a", "x")
    assert q.record_failure("a", "x")
    assert q.release("a") and q.allows("a")
    assert not q.release("a") and not q.release("never-failed")
    assert not q.record_failure("a", "x")  # one failure after release: not yet
    assert q.records()["a"].total_failures == 3


def test_zero_never_quarantines_and_negative_is_refused():
    q = Quarantine(0, clock=lambda: 0.0)
    assert not any(q.record_failure("a", "x") for _ in range(10))
    assert q.allows("a") and q.records()["a"].total_failures == 10
    with pytest.raises(ValueError, match="0 disables"):
        Quarantine(-1, clock=lambda: 0.0)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_a_quarantine_lets_one_probe_through_after_its_wait_and_lifts_on_success():
    clock = FakeClock()
    q = Quarantine(1, clock=clock, probe_s=10.0)
    assert q.record_failure("a", "boom")
    assert not q.allows("a") and not q.may_run("a")
    assert "next in 10 s" in q.reason("a")
    clock.now_s = 10.0
    assert q.allows("a")  # half-open: this task is the probe
    assert not q.allows("a")  # only one
    assert q.may_run("a")  # the probe's batch runs
    q.record_success("a")
    assert not q.quarantined() and q.allows("a") and q.allows("a")
    assert q.records()["a"].consecutive_failures == 0


def test_a_failed_probe_doubles_the_wait_up_to_the_cap():
    from coserve.manager.quarantine import PROBE_BACKOFF_CAP

    clock = FakeClock()
    q = Quarantine(1, clock=clock, probe_s=10.0)
    q.record_failure("a", "boom")
    waits = []
    for _ in range(7):
        at = q.records()["a"].probe_at_s
        clock.now_s = at - 0.5
        assert not q.allows("a")
        clock.now_s = at
        assert q.allows("a")
        assert not q.record_failure("a", "still broken")  # re-armed, not newly quarantined
        waits.append(q.records()["a"].probe_wait_s)
    assert waits == [20.0, 40.0, 80.0, 160.0, 160.0, 160.0, 160.0]
    assert PROBE_BACKOFF_CAP * 10.0 == 160.0
    assert not q.may_run("a") and q.quarantined() == frozenset({"a"})


def test_a_probe_that_reports_nothing_expires_and_release_still_works():
    clock = FakeClock()
    q = Quarantine(2, clock=clock, probe_s=5.0)
    q.record_failure("a", "x")
    q.record_failure("a", "x")
    clock.now_s = 5.0
    assert q.allows("a") and not q.allows("a")
    clock.now_s = 9.9
    assert not q.allows("a")
    clock.now_s = 10.0  # the probe's batch never reported (e.g. out of memory): another
    assert q.allows("a")
    assert q.release("a") and q.allows("a") and q.records()["a"].probe_at_s is None


def test_without_probe_s_a_quarantine_waits_for_an_operator():
    clock = FakeClock()
    q = Quarantine(1, clock=clock)
    q.record_failure("a", "x")
    clock.now_s = 1e9
    assert not q.allows("a") and "until an operator" in q.reason("a")
    with pytest.raises(ValueError, match="probe_s"):
        Quarantine(1, clock=clock, probe_s=0)


def test_engine_quarantines_a_broken_expert_and_then_never_touches_it(tiny_zoo, tmp_path):
    from coserve import Engine, EngineConfig, open_repository, parse_executors, read_trace
    from coserve.errors import ConfigError
    from coserve.types import FailureKind

    root = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], root)
    model = open_repository(root)
    weights = root / "weights" / "cls-U.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated after validation
    request = next(r for r in read_trace(tiny_zoo[1]) if r.fields["component_type"] == "U")
    config = EngineConfig(budget_fraction=0.3, executors=parse_executors("cpu:1"),
                          measure_costs=False, quarantine_after=2)
    with Engine(model, config) as engine:
        failed = [engine.infer_sync(request, timeout_s=60) for _ in range(2)]
        assert all(r.error_kind is FailureKind.EXPERT_FAILED and r.failed_expert == "cls-U"
                   for r in failed)
        read_before = engine.stats().bytes_read
        fast = engine.infer_sync(request, timeout_s=60)
        assert fast.error_kind is FailureKind.EXPERT_QUARANTINED and "cls-U" in fast.error
        assert engine.stats().bytes_read == read_before  # failed fast: nothing was read
        assert fast.to_dict()["error_kind"] == "expert_quarantined"
        assert engine.quarantine.quarantined() == frozenset({"cls-U"})
    with pytest.raises(ConfigError, match="quarantine_after"):
        EngineConfig(quarantine_after=-1)
