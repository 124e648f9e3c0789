"""Step handoff: a replica runs only the steps of the experts it owns, its Result names
the steps it left (`handoffs`), a continuation (`Request.start`) runs them where their
expert lives, and `HandoffJoin` stitches the parts into the request's one Result. Real
engines on the synth shape (fan-out, three stages), the coupled cluster simulator, and
the per-level partition."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from coserve.cli import main
from coserve.cluster.handoff import HandoffJoin
from coserve.cluster.partition import (
    HANDOFF_REACH,
    _Graph,
    _levels,
    default_weight,
    partition_experts,
    partition_steps,
    wants_handoff,
    whole_request_reach,
)
from coserve.config import EngineConfig
from coserve.engine.engine import Engine
from coserve.errors import ConfigError, RequestError
from coserve.executors.spec import parse_executors
from coserve.repository import open_repository
from coserve.trace import read_trace
from coserve.types import FailureKind, Request, Result, Step
from coserve.zoo.synth import build_synth
from plan_fixtures import hand_made_plan

WAIT_S = 60.0


@pytest.fixture(scope="module")
def synth_tiny(tmp_path_factory):
    root, trace = build_synth(tmp_path_factory.mktemp("handoff") / "synth", "tiny")
    return open_repository(root), read_trace(trace)


def _part(request_id: str, ok: bool, steps: tuple[Step, ...], **kwargs) -> Result:
    return Result(request_id=request_id, ok=ok, steps=steps, submitted_s=0.0,
                  completed_s=0.0, **kwargs)


def _step(expert: str) -> Step:
    return Step(expert=expert, label="next", detail={}, executor=0, batch_size=1,
                queued_s=0.0, exec_s=0.0)


def test_the_join_sends_each_handoff_on_and_answers_once_every_part_is_back():
    now = [10.0]
    join = HandoffJoin(lambda: now[0], latency_target_s=5.0)
    first = join.begin(Request("r1", {"kind": "k00"}, None))
    assert first.request_id == "r1" and first.start is None
    with pytest.raises(ValueError, match="in flight"):
        join.begin(Request("r1", {}, None))
    now[0] = 11.0
    parts, done = join.part_done(_part("r1", True, (_step("a"),), handoffs=("b", "c")))
    assert done is None and [p.start for p in parts] == [("b",), ("c",)]
    assert len({p.request_id for p in parts} | {"r1"}) == 3  # ids unique while out
    assert all(p.latency_target_s == pytest.approx(4.0) for p in parts)  # what is left of 5 s
    now[0] = 12.0
    assert join.part_done(_part(parts[0].request_id, True, (_step("b"),))) == ([], None)
    now[0] = 13.0
    failed = _part(parts[1].request_id, False, (), error="boom",
                   error_kind=FailureKind.EXPERT_FAILED, failed_expert="c")
    more, done = join.part_done(failed)
    assert more == [] and done is not None and len(join) == 0
    assert (done.request_id, done.ok, done.error, done.failed_expert) == ("r1", False, "boom", "c")
    assert done.path == ("a", "b") and done.handoffs == ()
    # Times on the join's clock: the replicas' clocks need not agree with it.
    assert (done.submitted_s, done.completed_s) == (10.0, 13.0)


def test_a_continuation_must_start_at_known_experts(synth_tiny):
    model, requests = synth_tiny
    fields = requests[0].fields
    assert model.router.entry(fields) == model.router.first(fields)
    assert model.router.entry(fields, ("s3-00",)) == ("s3-00",)
    with pytest.raises(RequestError, match="unknown expert"):
        model.router.entry(fields, ("s9-99",))
    with pytest.raises(RequestError, match="non-empty list"):
        model.router.entry(fields, "s3-00")
    with Engine(model, EngineConfig(measure_costs=False)) as engine, \
            pytest.raises(ConfigError, match="unknown"):
        engine.set_owned({"nope"})


def test_two_engines_handing_steps_to_each_other_answer_as_one_engine(synth_tiny):
    """The same labels on every expert of every request (labels come from inference),
    each engine running only what it owns, and steps really handed off."""
    model, requests = synth_tiny
    requests = requests[:40]
    config = EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False)
    with Engine(model, config) as whole:
        expected = {r.request_id: whole.infer_sync(r, WAIT_S) for r in requests}
    partition = partition_steps(model, 2)
    engines = [Engine(model, config), Engine(model, config)]
    join = HandoffJoin(time.monotonic, config.latency_target_s)
    num_handoffs = 0
    try:
        for i, engine in enumerate(engines):
            engine.set_owned(partition.experts_of(i))
            engine.start()
        for request in requests:
            out = [join.begin(request)]
            while out:
                part = out.pop()
                start = model.router.entry(part.fields, part.start)
                replica = partition.owner[start[0]]
                result = engines[replica].infer_sync(part, WAIT_S)
                assert {s.expert for s in result.steps} <= partition.experts_of(replica)
                assert not set(result.handoffs) & partition.experts_of(replica)
                more, done = join.part_done(result)
                num_handoffs += len(more)
                out += more
            assert done is not None and done.ok, done
            want = expected[request.request_id]
            assert Counter(done.path) == Counter(want.path)
            assert {(s.expert, s.label) for s in done.steps} == {(s.expert, s.label) for s in want.steps}
    finally:
        for engine in engines:
            engine.close()
    assert num_handoffs >= len(requests) // 2  # most requests crossed replicas


def test_partition_steps_spreads_every_level_and_is_deterministic(synth_tiny):
    model, _ = synth_tiny
    graph = _Graph(model, model.usage, default_weight(model, model.usage))
    levels = _levels(graph)
    assert Counter(levels.values()) == {0: 9, 1: 9, 2: 9}  # the three stages
    for n in (2, 3):
        part = partition_steps(model, n)
        assert part.owner == partition_steps(model, n).owner
        assert set(part.owner) == set(model.experts)
        for level in range(3):
            members = [e for e in model.experts if levels[e] == level]
            total = sum(model.experts[e].num_bytes for e in members)
            biggest = max(model.experts[e].num_bytes for e in members)
            for r in range(n):
                held = sum(model.experts[e].num_bytes for e in members if part.owner[e] == r)
                assert held <= total / n * 1.1 + biggest, (n, level, r)


def test_cluster_simulate_hands_steps_off_and_one_replica_is_one_machine(synth_tiny, tmp_path,
                                                                        capsys):
    model, _ = synth_tiny
    plan = hand_made_plan(model).save(tmp_path / "plan.json")
    trace = model.root / "trace.jsonl"
    argv = ["cluster", "simulate", str(model.root), str(trace), "--plan", str(plan),
            "--routing", "partitioned", "--budget-fraction", "0.3", "--storage", "sata-530",
            "--executors", "cpu:2", "--backlog"]
    out_on, out_off = tmp_path / "on.json", tmp_path / "off.json"
    assert main([*argv, "--replicas", "1,2,4", "--handoff", "on", "--json", str(out_on)]) == 0
    assert main([*argv, "--replicas", "1", "--handoff", "off", "--json", str(out_off)]) == 0
    on = json.loads(out_on.read_text())
    rows = on["rows"]
    assert on["handoff"] == "on" and [r["replicas"] for r in rows] == [1, 2, 4]
    assert [r["handoff"] for r in rows] == [False, True, True]
    assert all(r["num_failed"] == 0 and r["num_requests"] == 360 for r in rows)
    assert rows[0]["num_handoffs"] == 0 and all(r["num_handoffs"] > 100 for r in rows[1:])
    # One replica owns everything: the coupled run is the plain simulator's, exactly.
    single = json.loads(out_off.read_text())["rows"][0]
    assert {k: rows[0][k] for k in ("throughput_rps", "num_switches", "bytes_read")} == \
        {k: single[k] for k in ("throughput_rps", "num_switches", "bytes_read")}
    capsys.readouterr()
    assert main([*argv, "--handoff", "on", "--hop-s", "-1"]) == 2
    assert "--hop-s must be >= 0" in capsys.readouterr().err


def test_auto_hands_off_where_whole_requests_would_reach_the_model_several_times(
        synth_tiny, tiny_zoo):
    synth_model, _ = synth_tiny
    board = open_repository(tiny_zoo[0])
    # Synth: each first-stage expert leads to most later experts, so whole requests on 2
    # replicas reach the model's bytes well over once; the tiny board's families do not.
    assert whole_request_reach(synth_model, partition_experts(synth_model, 2)) >= HANDOFF_REACH
    assert whole_request_reach(board, partition_experts(board, 2)) < HANDOFF_REACH
    assert wants_handoff("auto", synth_model, 2) and not wants_handoff("auto", board, 2)
    assert not wants_handoff("auto", synth_model, 1)  # one replica owns everything
    assert wants_handoff("on", board, 2) and not wants_handoff("off", synth_model, 2)
    with pytest.raises(ValueError, match="handoff must be one of"):
        wants_handoff("sometimes", board, 2)


def test_with_handoff_the_rebalancer_re_homes_and_repartitions_expert_by_expert(synth_tiny):
    from coserve.cluster.partition import StepPlacement, step_loads
    from coserve.cluster.rebalance import ChangeReason, RebalanceConfig, Rebalancer

    model, _ = synth_tiny
    start = partition_steps(model, 3)
    config = RebalanceConfig(window_s=10.0, min_requests=100, check_interval_s=0.0)
    rebalancer = Rebalancer(model, start, config, placement=StepPlacement())
    # A replica down: only its experts move, to the replicas that are up; back: all return.
    down = rebalancer.set_down({1}, now_s=1.0)
    assert down is not None and down.reason is ChangeReason.REPLICA_DOWN
    assert not down.partition.experts_of(1)
    assert down.num_moved == len(start.experts_of(1))
    assert all(down.partition.owner[e] == r for e, r in start.owner.items() if r != 1)
    back = rebalancer.set_down(set(), now_s=2.0)
    assert back is not None and rebalancer.partition == start
    # Every request starting at replica 0's first-stage experts: replica 0 is the busiest
    # by the per-expert loads; the repartition evens that out, keeping most experts.
    mine = sorted(e for e in start.experts_of(0) if e.startswith("s1-"))
    for i in range(300):
        rebalancer.observe([mine[i % len(mine)]], 3.0 + i * 1e-3)
    change = rebalancer.check(4.0)
    assert change is not None and change.reason is ChangeReason.USAGE
    assert change.imbalance_after < change.imbalance_before
    assert 0 < change.num_moved < len(model.experts) // 2
    usage = rebalancer.usage(4.0)
    assert max(step_loads(model, change.partition, usage)) < max(step_loads(model, start, usage))


def test_a_forgotten_request_leaves_nothing_behind_and_its_late_parts_are_dropped():
    join = HandoffJoin(lambda: 0.0, latency_target_s=5.0)
    join.begin(Request("r1", {}, None))
    parts, _ = join.part_done(_part("r1", True, (_step("a"),), handoffs=("b",)))
    join.forget("r1")  # e.g. running its continuation failed: answered as an error
    assert len(join) == 0
    assert join.part_done(_part(parts[0].request_id, True, (_step("b"),))) == ([], None)
    join.begin(Request("r1", {}, None))  # the id may be used again


def test_the_usage_prior_does_not_depend_on_the_hash_seed(synth_tiny):
    """A cluster run reads the repository's prior; it was summed over a set, so its last
    bits (and with them a coupled run's ties) changed with PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    model, _ = synth_tiny
    code = ("import sys; from coserve.repository import open_repository; "
            "print(repr(sorted(open_repository(sys.argv[1]).usage.items())))")
    outs = {subprocess.run([sys.executable, "-c", code, str(model.root)], check=True,
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("0", "5", "11")}
    assert len(outs) == 1 and "s3-" in outs.pop()
