"""Usage probabilities learned online from what is routed (admitted requests' first
experts, each subsequent expert a task routes to), over a window of requests; never
from the order in which requests finish. No torch, no threads."""

import pytest

from coserve.manager.usage import UsageTracker
from coserve.stats import StatsRecorder
from coserve.tracker import RequestTracker
from coserve.types import Request, Step

PRIOR = {"cls-a": 0.5, "cls-b": 0.5, "det-x": 0.5}


def tracker(usage: UsageTracker) -> RequestTracker:
    t = RequestTracker(clock=lambda: 0.0, stats=StatsRecorder(1), usage=usage,
                       latency_target_s=5.0)
    t.open()
    return t


def step(expert: str) -> Step:
    return Step(expert=expert, label="pass", detail={}, executor=0, batch_size=1,
                queued_s=0.0, exec_s=0.0)


def test_a_backlog_finishing_in_group_order_does_not_skew_usage():
    # 100 requests for each classifier are admitted together; grouping runs cls-a's
    # group first, so all of its requests finish while cls-b's still wait.
    usage = UsageTracker(PRIOR, blend=1.0, min_samples=10)
    t = tracker(usage)
    states = {e: [t.admit(Request(f"{e}-{i}", {}, None), [e], lambda r: None)
                  for i in range(100)] for e in ("cls-a", "cls-b")}
    for state in states["cls-a"]:
        t.advance(state, step("cls-a"), [])
        t.finish_if_done(state)
    learned = usage.usage()
    assert learned["cls-a"] == pytest.approx(0.5) and learned["cls-b"] == pytest.approx(0.5)


def test_a_subsequent_expert_counts_once_per_request_when_a_task_routes_to_it():
    usage = UsageTracker(PRIOR, blend=1.0, min_samples=1)
    t = tracker(usage)
    routed = t.admit(Request("r1", {}, None), ["cls-a"], lambda r: None)
    t.admit(Request("r2", {}, None), ["cls-b"], lambda r: None)
    assert usage.usage()["det-x"] == 0.0  # nothing routed to it yet
    t.advance(routed, step("cls-a"), ["det-x", "det-x"])  # a fan-out to it twice
    assert usage.usage() == {"cls-a": 0.5, "cls-b": 0.5, "det-x": 0.5}
    assert usage.predecessors() == {"det-x": frozenset({"cls-a"})}


def test_a_shift_in_the_mix_is_followed_within_the_window():
    usage = UsageTracker(PRIOR, blend=0.5, min_samples=50, window_requests=200)
    for expert in ["cls-a"] * 500:
        usage.admitted([expert])
    assert usage.usage()["cls-a"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert usage.usage()["cls-b"] == pytest.approx(0.25)
    for expert in ["cls-b"] * 100:
        usage.admitted([expert])
    assert usage.usage()["cls-a"] == pytest.approx(usage.usage()["cls-b"])  # half-way
    for expert in ["cls-b"] * 400:
        usage.admitted([expert])
    assert usage.usage()["cls-b"] == pytest.approx(0.75)
    assert usage.usage()["cls-a"] == pytest.approx(0.25)


def test_a_request_that_left_the_window_no_longer_counts_its_routing():
    usage = UsageTracker(PRIOR, blend=1.0, min_samples=1, window_requests=2)
    old = usage.admitted(["cls-a"])
    usage.admitted(["cls-b"])
    usage.admitted(["cls-b"])  # the window is now the two cls-b requests
    usage.routed(old, "cls-a", ["det-x"])
    learned = usage.usage()
    assert learned["det-x"] == 0.0 and learned["cls-a"] == 0.0 and learned["cls-b"] == 1.0
    assert all(0.0 <= p <= 1.0 for p in learned.values())


def test_the_prior_holds_until_enough_requests_were_admitted():
    usage = UsageTracker(PRIOR, blend=1.0, min_samples=3)
    usage.admitted(["cls-a"])
    usage.admitted(["cls-a"])
    assert usage.usage() == PRIOR
    usage.admitted(["cls-a"])
    assert usage.usage()["cls-a"] == 1.0


def test_the_window_must_hold_a_request():
    with pytest.raises(ValueError, match="window_requests"):
        UsageTracker(PRIOR, blend=0.5, min_samples=1, window_requests=0)
