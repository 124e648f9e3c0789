"""Supervision and graceful degradation on real experts that misbehave on demand
(`fault_fixtures`): executors survive whatever an expert raises, a stuck batch times out
and its executor is retired until it returns, routing again fails only the task that
broke, a drain has a deadline, a bad input fails alone, out-of-memory halves the batch,
and every accepted request is answered exactly once."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable

import pytest

from coserve import Engine, EngineConfig, parse_executors
from coserve.errors import ConfigError, EngineClosedError
from coserve.loader.expert_loader import ExpertLoader
from coserve.manager.manager import is_out_of_memory
from coserve.tracker import RequestTracker
from coserve.types import FailureKind
from fault_fixtures import (
    BEHAVIOUR,
    CALLS,
    fail_on_marker,
    faulty_model,
    hang_until,
    oom_above,
    raise_always,
    raise_doom,
    request,
)

WAIT_S = 3.0  # no test waits longer for anything


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return faulty_model(tmp_path_factory.mktemp("faulty"))


@pytest.fixture(autouse=True)
def fresh_behaviour():
    BEHAVIOUR.clear()
    CALLS.clear()
    yield
    BEHAVIOUR.clear()


def config(executors="cpu:1", **kw):
    kw.setdefault("batch_deadline_s", 0.3)
    return EngineConfig(executors=parse_executors(executors), measure_costs=False, **kw)


def wait_until(condition: Callable[[], object]) -> None:
    """For a thread the test released to get back: bounded, never a fixed sleep."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def answered_once(engine: Engine) -> bool:
    stats = engine.stats()
    return stats.num_requests == stats.num_completed + stats.num_failed


# -- supervision ---------------------------------------------------------------------------
def test_an_expert_raising_a_base_exception_fails_only_its_batch(model):
    BEHAVIOUR["a"] = raise_doom
    with Engine(model, config()) as engine:
        failed = engine.infer_sync(request("r1", "a"), timeout_s=WAIT_S)
        served = engine.infer_sync(request("r2", "b"), timeout_s=WAIT_S)  # the executor lives
        assert engine.health() == []
    assert failed.error_kind is FailureKind.EXPERT_FAILED
    assert "Doom" in failed.error and "'a'" in failed.error
    assert served.ok


def test_a_hung_forward_times_out_and_with_every_executor_stuck_requests_fail_fast(model):
    release = threading.Event()
    BEHAVIOUR["a"] = hang_until(release)
    with Engine(model, config()) as engine:
        try:
            hung = engine.infer_sync(request("r1", "a"), timeout_s=WAIT_S)
            problems = engine.health()
            refused = engine.infer_sync(request("r2", "b"), timeout_s=WAIT_S)
            stuck = engine.stats()
        finally:
            release.set()
        wait_until(lambda: engine.health() == [])  # it came back: it takes work again
        after = engine.infer_sync(request("r3", "b"), timeout_s=WAIT_S)
        assert answered_once(engine) and engine.stats().num_unhealthy_executors == 0
    assert hung.error_kind is FailureKind.TIMED_OUT
    assert "'a'" in hung.error and "0.3 s" in hung.error
    assert len(problems) == 1 and "executor 0 (cpu) stuck" in problems[0] and "'a'" in problems[0]
    assert refused.error_kind is FailureKind.EXECUTOR_STUCK and "every executor" in refused.error
    assert stuck.num_batch_timeouts == 1 and stuck.num_unhealthy_executors == 1
    assert after.ok and after.path == ("b",)


def test_a_stuck_executor_is_retired_and_the_others_serve_everything_else(model):
    release = threading.Event()
    BEHAVIOUR["a"] = hang_until(release)
    with Engine(model, config("cpu:2")) as engine:
        try:
            hung = engine.submit(request("h", "a"))
            # Queued at once, some of these may wait behind the hung batch: they move.
            futures = [engine.submit(request(f"b{i}", "b")) for i in range(12)]
            served = [f.result(WAIT_S) for f in futures]
            timed_out = hung.result(WAIT_S)
            problems = engine.health()
        finally:
            release.set()
        wait_until(lambda: engine.health() == [])
        assert answered_once(engine)
    assert all(r.ok for r in served)
    assert timed_out.error_kind is FailureKind.TIMED_OUT
    assert len(problems) == 1 and "stuck" in problems[0]


def test_a_hung_storage_read_times_out_too(model, monkeypatch):
    release = threading.Event()
    read = ExpertLoader.read

    def slow_read(self, expert):
        if expert == "a":
            release.wait(WAIT_S * 3)
        return read(self, expert)

    one_expert = model.experts["a"].num_bytes
    cfg = config(budget_bytes=one_expert)  # only one expert resident: `a` must be read
    with Engine(model, cfg, usage={"a": 0.1, "b": 0.8, "det": 0.1}) as engine:
        monkeypatch.setattr(ExpertLoader, "read", slow_read)
        try:
            hung = engine.infer_sync(request("r1", "a"), timeout_s=WAIT_S)
            problems = engine.health()
        finally:
            release.set()
        wait_until(lambda: engine.health() == [])
        after = engine.infer_sync(request("r2", "a"), timeout_s=WAIT_S)
    assert hung.error_kind is FailureKind.TIMED_OUT and "loading expert 'a'" in hung.error
    assert "loading expert 'a'" in problems[0]
    assert after.ok


def test_routing_again_that_raises_for_one_task_resolves_every_request(model, monkeypatch):
    advance = RequestTracker.advance

    def flaky(self, state, step, following):
        if state.request.request_id == "r2":
            raise RuntimeError("tracker bug")
        return advance(self, state, step, following)

    monkeypatch.setattr(RequestTracker, "advance", flaky)
    with Engine(model, config()) as engine:
        results = engine.run_trace([request(f"r{i}", "a") for i in range(5)], realtime=False)
        assert answered_once(engine)
    assert CALLS["a"] == [5]  # one batch: r2 broke partway through it
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert "tracker bug" in results[2].error
    assert all(r.path == ("a", "det") for r in results if r.ok)


def test_close_with_a_deadline_answers_every_request_still_in_flight(model):
    release = threading.Event()
    BEHAVIOUR["a"] = hang_until(release)
    engine = Engine(model, config(batch_deadline_s=None)).start()
    futures = [engine.submit(request(f"r{i}", "a")) for i in range(3)]
    t0 = time.perf_counter()
    try:
        engine.close(timeout_s=0.3)
        waited_s = time.perf_counter() - t0
        results = [f.result(0) for f in futures]  # answered by the time close returns
    finally:
        release.set()
    assert 0.3 <= waited_s < 2.0
    assert all(r.error_kind is FailureKind.SHUT_DOWN for r in results)
    assert all("shut down before this request finished" in r.error for r in results)
    with pytest.raises(EngineClosedError):
        engine.submit(request("late", "b"))
    assert answered_once(engine)


def test_the_watchdog_takes_over_a_shift_past_its_deadline_and_its_executor_then_drops_it():
    from coserve.engine.supervisor import Supervisor
    from coserve.scheduler.queues import Batch
    from coserve.stats import StatsRecorder

    now, retired, stuck = [0.0], [], []
    stats = StatsRecorder(2)
    s = Supervisor(processors=["cpu", "cuda:0"], deadline_s=1.0, clock=lambda: now[0],
                   stats=stats, retire=lambda i: retired.append(i) or [],
                   reinstate=retired.remove,
                   on_stuck=lambda shift, stuck_s, moved: stuck.append((shift.executor, stuck_s)))
    slow = s.begin(0, Batch(0, "x", (), 0.0))
    busy = s.begin(1, Batch(1, "y", (), 0.0))
    now[0] = 0.9
    s.phase(busy, "running")  # each forward gets the whole deadline
    now[0] = 1.5
    s.check()
    s.check()  # taken over once
    assert stuck == [(0, 1.5)] and retired == [0]
    assert s.problems() == ["executor 0 (cpu) stuck 1.5 s loading expert 'x'"]
    assert stats.snapshot(now[0], 0, **STATIC).num_unhealthy_executors == 1
    assert s.end(busy)  # its executor answers its batch
    assert not s.end(slow)  # the watchdog answered this one: the late outputs are dropped
    assert retired == [] and s.problems() == []
    assert stats.snapshot(now[0], 0, **STATIC).num_batch_timeouts == 1


STATIC = dict(policy="coserve", budget_bytes=None, total_expert_bytes=0, storage="none",
              cost_source="test")


def test_config_checks_the_supervision_times():
    with pytest.raises(ConfigError, match="batch_deadline_s"):
        EngineConfig(batch_deadline_s=0)
    with pytest.raises(ConfigError, match="quarantine_probe_s"):
        EngineConfig(quarantine_probe_s=-1)
    assert EngineConfig(batch_deadline_s=None, quarantine_probe_s=None).batch_deadline_s is None


# -- graceful degradation ------------------------------------------------------------------
def test_a_bad_input_alone_fails_and_the_rest_of_its_batch_succeeds(model):
    BEHAVIOUR["a"] = fail_on_marker
    trace = [request(f"r{i}", "a", marked=i == 5) for i in range(8)]
    with Engine(model, config(quarantine_after=1)) as engine:
        results = engine.run_trace(trace, realtime=False)
        records = engine.quarantine.records()
        stats = engine.stats()
    bad = results[5]
    assert bad.error_kind is FailureKind.INVALID_INPUT and bad.failed_expert == "a"
    assert "r5" in bad.error and "cannot handle a marked input" in bad.error
    assert all(r.ok and r.path == ("a", "det") for i, r in enumerate(results) if i != 5)
    assert "a" not in records  # one input's fault, not the expert's
    # Bisection: 8 -> 4+4 -> the failing 4 into 2+2 -> the failing 2 into 1+1.
    assert CALLS["a"] == [8, 4, 4, 2, 1, 1, 2]
    assert stats.num_batch_splits == 3


def test_an_expert_failing_on_every_input_is_quarantined_once_per_batch(model):
    BEHAVIOUR["a"] = raise_always
    with Engine(model, config(quarantine_after=2)) as engine:
        batch = engine.run_trace([request(f"r{i}", "a") for i in range(4)], realtime=False)
        after_batch = engine.quarantine.records()["a"].consecutive_failures
        single = engine.infer_sync(request("s", "a"), timeout_s=WAIT_S)
        fast = engine.infer_sync(request("t", "a"), timeout_s=WAIT_S)
    assert all(r.error_kind is FailureKind.EXPERT_FAILED for r in batch) and after_batch == 1
    assert all("this expert is broken" in r.error for r in batch)
    assert len(CALLS["a"]) == 2 * 4 - 1 + 1  # bisected to the end (log2 levels), then `s`
    assert single.error_kind is FailureKind.EXPERT_FAILED
    assert fast.error_kind is FailureKind.EXPERT_QUARANTINED


def test_out_of_memory_halves_the_batch_and_is_not_the_experts_fault(model):
    BEHAVIOUR["a"] = oom_above(2)
    with Engine(model, config(quarantine_after=1)) as engine:
        results = engine.run_trace([request(f"r{i}", "a") for i in range(8)], realtime=False)
        BEHAVIOUR["a"] = oom_above(0)
        single = engine.infer_sync(request("s", "a"), timeout_s=WAIT_S)
        records = engine.quarantine.records()
        stats = engine.stats()
    assert all(r.ok for r in results)
    assert CALLS["a"] == [8, 4, 2, 2, 4, 2, 2, 1]
    assert single.error_kind is FailureKind.OUT_OF_MEMORY and "out of memory" in single.error
    assert "a" not in records
    assert stats.num_oom_splits == 3


LOAD_OOMS = [MemoryError(), OSError(errno.ENOMEM, "Cannot allocate memory"),  # mmap/alloc
             RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                          "allocate memory: you tried to allocate 1073741824 bytes")]


def test_what_counts_as_out_of_memory():
    assert all(is_out_of_memory(exc) for exc in LOAD_OOMS)
    assert not is_out_of_memory(OSError(errno.ENOENT, "No such file or directory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("oom", LOAD_OOMS, ids=lambda e: type(e).__name__)
def test_out_of_memory_while_loading_fails_clearly_and_leaves_the_pool_consistent(
        model, monkeypatch, oom):
    read = ExpertLoader.read

    def oom_read(self, expert):
        if expert == "a":
            raise oom
        return read(self, expert)

    one_expert = model.experts["a"].num_bytes
    cfg = config(budget_bytes=one_expert, quarantine_after=1)
    with Engine(model, cfg, usage={"a": 0.1, "b": 0.8, "det": 0.1}) as engine:
        monkeypatch.setattr(ExpertLoader, "read", oom_read)
        failed = engine.infer_sync(request("r1", "a"), timeout_s=WAIT_S)
        resident = engine.resident()[0]
        records = engine.quarantine.records()
        monkeypatch.setattr(ExpertLoader, "read", read)
        after = engine.infer_sync(request("r2", "b"), timeout_s=WAIT_S)
        loaded = engine.infer_sync(request("r3", "a"), timeout_s=WAIT_S)
    assert failed.error_kind is FailureKind.OUT_OF_MEMORY
    assert "out of memory loading expert 'a'" in failed.error
    assert "a" not in resident and "a" not in records
    assert after.ok and loaded.ok


def test_a_quarantined_expert_is_probed_again_and_lifted_when_it_works(model):
    now = [0.0]
    BEHAVIOUR["a"] = raise_always
    cfg = config(quarantine_after=1, quarantine_probe_s=10.0, batch_deadline_s=None)
    with Engine(model, cfg, clock=lambda: now[0]) as engine:
        broken = engine.infer_sync(request("r0", "a"), timeout_s=WAIT_S)
        fast = engine.infer_sync(request("r1", "a"), timeout_s=WAIT_S)
        now[0] = 10.0  # the probe is due; the expert still fails: the backoff doubles
        probe_failed = engine.infer_sync(request("r2", "a"), timeout_s=WAIT_S)
        now[0] = 29.0
        still = engine.infer_sync(request("r3", "a"), timeout_s=WAIT_S)
        del BEHAVIOUR["a"]  # fixed
        now[0] = 30.0
        probe_ok = engine.infer_sync(request("r4", "a"), timeout_s=WAIT_S)
        after = engine.infer_sync(request("r5", "a"), timeout_s=WAIT_S)
        quarantined = engine.quarantine.quarantined()
    assert broken.error_kind is FailureKind.EXPERT_FAILED
    assert fast.error_kind is still.error_kind is FailureKind.EXPERT_QUARANTINED
    assert probe_failed.error_kind is FailureKind.EXPERT_FAILED
    assert probe_ok.ok and after.ok and not quarantined
