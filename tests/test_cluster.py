"""Experts partitioned over replicas along the routing graph, and the cluster on the
simulator. Partition tests use hand-built models (no weights) and the generated tiny synth
shape; they need no torch beyond building that model."""

from __future__ import annotations

from pathlib import Path

import pytest

from coserve.cluster.partition import (
    BALANCE_TOLERANCE,
    Partition,
    partition_experts,
    repartition,
)
from coserve.cluster.routing import OwnerFirst, ReplicaView, UniformRandom, replica_routing
from coserve.repository import CoEModel, ExpertSpec, Stage
from coserve.repository.routing import Router
from plan_fixtures import hand_made_plan

MB = 1_000_000


def _model(first: dict[str, float], next_table: dict[str, dict[str, list[str]]],
           sizes: dict[str, int] | None = None) -> CoEModel:
    """A model whose preliminary experts have usage `first`; each `next` entry routes its
    labels to subsequent experts with equal label probability. Nothing is read from disk."""
    subsequent = sorted({t for table in next_table.values() for ts in table.values() for t in ts})
    names = sorted(first) + subsequent
    label_probs = {p: {lab: 1 / len(table) for lab in table} for p, table in next_table.items()}
    usage = dict(first)
    for child in subsequent:
        usage[child] = sum(first.get(p, 0.0) * label_probs[p][lab]
                           for p, table in next_table.items()
                           for lab, ts in table.items() if child in ts)
    sizes = sizes or {}
    experts = {e: ExpertSpec(e, "arch", Path(f"/nowhere/{e}.safetensors"),
                             Stage.SUBSEQUENT if e in subsequent else Stage.PRELIMINARY,
                             sizes.get(e, 10 * MB), sizes.get(e, 10 * MB)) for e in names}
    router = Router("t", {p: [p] for p in first}, next_table, names)
    return CoEModel(name="hand", root=Path("/nowhere"), architectures={}, experts=experts,
                    router=router, usage=usage, label_probs=label_probs)


def _two_families() -> CoEModel:
    """a and b route to det-ab, c and d to det-cd: two families that should not mix."""
    return _model({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25},
                  {"a": {"pass": ["det-ab"], "fail": []}, "b": {"pass": ["det-ab"], "fail": []},
                   "c": {"pass": ["det-cd"], "fail": []}, "d": {"pass": ["det-cd"], "fail": []}})


def _bytes_share(model: CoEModel, part: Partition, replica: int) -> float:
    owned = sum(model.experts[e].num_bytes for e in part.experts_of(replica))
    return owned / model.total_expert_bytes * part.num_replicas


def test_a_preliminary_expert_lives_with_its_subsequent_expert():
    model = _model({"a": 0.5, "b": 0.5}, {"a": {"pass": ["det-a"]}, "b": {"pass": ["det-b"]}})
    part = partition_experts(model, 2)
    assert part.owner["a"] == part.owner["det-a"] != part.owner["b"] == part.owner["det-b"]
    assert part.experts_of(0) | part.experts_of(1) == frozenset(model.experts)
    assert part.replica_for(["b"]) == part.owner["b"]


def test_a_shared_subsequent_expert_goes_where_most_parent_traffic_is():
    model = _model({"hot": 0.6, "cold": 0.2, "x": 0.2},
                   {"hot": {"pass": ["det"]}, "cold": {"pass": ["det"]}})
    part = partition_experts(model, 2)
    assert part.owner["det"] == part.owner["hot"]


def test_families_stay_together_and_balance():
    model = _two_families()
    part = partition_experts(model, 2)
    assert part.owner["a"] == part.owner["b"] == part.owner["det-ab"]
    assert part.owner["c"] == part.owner["d"] == part.owner["det-cd"]
    assert part.owner["a"] != part.owner["c"]


def test_one_replica_owns_everything_and_the_result_is_deterministic():
    model = _two_families()
    assert set(partition_experts(model, 1).owner.values()) == {0}
    assert partition_experts(model, 3) == partition_experts(model, 3)


def test_spill_order_prefers_the_owner_until_it_is_overloaded():
    part = Partition(3, {"a": 1, "b": 0, "c": 2})
    assert part.spill_order(["a"], [0.5, 1.0, 0.0], margin_s=2.0) == [1, 2, 0]
    assert part.spill_order(["a"], [0.5, 9.0, 0.0], margin_s=2.0) == [2, 0, 1]
    with pytest.raises(ValueError, match="loads has 2 entries"):
        part.spill_order(["a"], [0.0, 0.0])
    with pytest.raises(ValueError, match="owned by no replica"):
        Partition(2, {"a": 2})


def test_repartition_keeps_owners_when_usage_barely_moves():
    model = _two_families()
    old = partition_experts(model, 2)
    shifted = dict(model.usage, a=0.27, b=0.23)
    assert repartition(old, model, shifted).owner == old.owner


@pytest.fixture(scope="module")
def synth_tiny(tmp_path_factory):
    from coserve.repository import open_repository
    from coserve.zoo.synth import build_synth

    root, trace = build_synth(tmp_path_factory.mktemp("synth"), "tiny")
    return open_repository(root), trace


@pytest.mark.parametrize("num_replicas", [2, 4, 8])
def test_generated_shape_balances_bytes_and_work(synth_tiny, num_replicas):
    model, _ = synth_tiny
    part = partition_experts(model, num_replicas)
    # Each replica holds about 1/N of the bytes, so a per-replica budget covers its part.
    shares = [_bytes_share(model, part, r) for r in range(num_replicas)]
    assert max(shares) <= 1 + 2 * BALANCE_TOLERANCE, shares
    # A subsequent expert lives with one of its parents, unless that breaks the byte
    # balance (the tiny shape has 27 experts over up to 8 replicas).
    with_parent = [part.owner[e] in {part.owner[p] for p in model.predecessors(e)}
                   for e in model.subsequent_experts]
    assert sum(with_parent) >= 0.75 * len(with_parent)
    assert part == partition_experts(model, num_replicas)


def test_repartition_moves_few_experts_after_a_usage_shift(synth_tiny):
    model, _ = synth_tiny
    old = partition_experts(model, 4)
    hot = sorted(e for e in model.experts if not model.predecessors(e))[:2]
    shifted = {e: u * (3.0 if e in hot else 1.0) for e, u in model.usage.items()}
    new = repartition(old, model, shifted)
    moved = [e for e in model.experts if new.owner[e] != old.owner[e]]
    fresh = partition_experts(model, 4, usage=shifted)
    assert len(moved) <= len(model.experts) // 4
    assert len(moved) <= sum(fresh.owner[e] != old.owner[e] for e in model.experts)


def test_repartition_re_homes_the_experts_of_a_replica_that_is_gone(synth_tiny):
    model, _ = synth_tiny
    old = partition_experts(model, 4)
    new = repartition(old, model, model.usage, num_replicas=3)
    assert set(new.owner.values()) == {0, 1, 2}
    kept = [e for e in model.experts if old.owner[e] < 3]
    assert sum(new.owner[e] == old.owner[e] for e in kept) >= len(kept) * 3 // 4


def test_cluster_simulate_command_writes_rows(synth_tiny, tmp_path, capsys):
    import json

    from coserve.cli import main

    model, trace = synth_tiny
    plan = hand_made_plan(model).save(tmp_path / "plan.json")
    out = tmp_path / "rows.json"
    argv = ["cluster", "simulate", str(model.root), str(trace), "--plan", str(plan),
            "--replicas", "1,2,4", "--routing", "partitioned,random", "--budget-fraction", "0.3",
            "--storage", "sata-530", "--executors", "cpu:2", "--backlog", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["replicas"], r["routing"]) for r in rows] == [
        (1, "partitioned"), (2, "partitioned"), (4, "partitioned"),
        (1, "random"), (2, "random"), (4, "random")]
    for row in rows:
        assert {"throughput_rps", "num_switches", "scaling_efficiency"} <= row.keys()
        assert row["num_failed"] == 0 and row["num_requests"] == 360
    assert rows[0]["scaling_efficiency"] == 1.0
    assert "coserve cluster" in capsys.readouterr().out
    assert main(argv) == 0 and json.loads(out.read_text())["rows"] == rows  # deterministic


def test_random_routing_is_seeded_and_tiling_keeps_offsets(synth_tiny):
    from coserve.cluster.simulate import route_requests, tile
    from coserve.trace import read_trace

    model, trace = synth_tiny
    requests = read_trace(trace)
    tiled = tile(requests, 3)
    assert len(tiled) == 3 * len(requests) and len({r.request_id for r in tiled}) == len(tiled)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(tiled, tiled[1:], strict=False))
    part = partition_experts(model, 4)
    kwargs = dict(cost=lambda e: 0.01, num_executors=2, backlog=True)
    first, _ = route_requests(model, requests, UniformRandom(seed=1), part, **kwargs)
    again, _ = route_requests(model, requests, UniformRandom(seed=1), part, **kwargs)
    assert first == again and all(first)
    owned, spilled = route_requests(model, requests, OwnerFirst(margin_s=1e9), part, **kwargs)
    assert spilled == 0
    assert all(part.replica_for(model.router.first(r.fields)) == i
               for i, share in enumerate(owned) for r in share)


def test_spill_order_goes_to_the_least_loaded_holder_and_counts_switches():
    part = Partition(3, {"a": 0, "b": 1, "c": 2}, {"a": frozenset({0, 2})})
    assert part.holders_of("a") == {0, 2} and part.experts_held(2) == {"a", "c"}
    assert part.experts_of(2) == {"c"} and part.replica_for(["a"]) == 0
    assert part.spill_order(["a"], [1.0, 0.0, 0.5], margin_s=2.0) == [2, 1, 0]
    # Replica 1 is idle but would have to load a: 3 s of switching keeps a at home.
    assert part.spill_order(["a"], [2.5, 0.0, 2.5], margin_s=1.0, switch_s=[0, 3, 0])[0] == 0
    assert part.spill_order(["a"], [2.5, 0.0, 2.5], margin_s=1.0)[0] == 1
    with pytest.raises(ValueError, match="owned by no replica"):
        Partition(2, {"a": 0}, {"a": frozenset({5})})


def test_a_hot_preliminary_expert_gets_copies_and_each_replica_a_prior():
    from coserve.cluster.partition import replica_traffic, replica_usage

    model = _model({"hot": 0.7, "b": 0.1, "c": 0.1, "d": 0.1},
                   {"hot": {"pass": ["det"]}, "b": {"pass": ["det"]}})
    single = partition_experts(model, 2)
    assert all(len(single.holders_of(e)) == 1 for e in model.experts)
    part = partition_experts(model, 2, max_copies=2)
    assert part.holders_of("hot") == {0, 1}
    traffic = replica_traffic(model, part)
    assert traffic[0]["hot"] == pytest.approx(0.35) == traffic[1]["hot"]
    prior = replica_usage(model, part, part.owner["c"])
    assert prior["c"] > 0.1 and prior[min({"b", "c", "d"} - part.experts_held(part.owner["c"]))] < 0.01
    with pytest.raises(ValueError, match="max_copies"):
        partition_experts(model, 2, max_copies=0)


def test_the_fluid_view_charges_loads_a_pool_lacks_until_it_holds_them():
    from coserve.cluster.simulate import FluidReplicas, reach_probabilities

    model = _two_families()
    part = Partition(2, {"a": 0, "b": 0, "det-ab": 0, "c": 1, "d": 1, "det-cd": 1})
    assert reach_probabilities(model, ["a"]) == {"a": 1.0, "det-ab": 0.5}
    traffic = [{e: 1.0 for e in part.experts_held(r)} for r in range(2)]
    fluid = FluidReplicas(model, part, traffic, lambda e: 1.0, budget_bytes=30 * MB)
    assert fluid.switch_s(["a"]) == [0.0, 1.5]
    fluid.add(1, ["a"], work_s=0.1, switch_s=1.5)
    assert fluid.switch_s(["a"]) == [0.0, 0.5] and fluid.queued_s == [0.0, 1.6]
    fluid.add(1, ["a"], work_s=0.1, switch_s=0.5)  # det-ab's expected visits reach one
    assert fluid.switch_s(["a"]) == [0.0, 0.0]
    fluid.drain(1.0)
    assert fluid.queued_s == [0.0, pytest.approx(1.2)]


def test_overlay_and_rate_scale_raise_the_arrival_rate(synth_tiny):
    from coserve.cluster.simulate import overlay, scale_rate
    from coserve.errors import ConfigError
    from coserve.trace import read_trace

    requests = read_trace(synth_tiny[1])
    doubled = overlay(requests, 2)
    assert len(doubled) == 2 * len(requests) and len({r.request_id for r in doubled}) == len(doubled)
    assert sorted(r.arrival_s for r in doubled) == [r.arrival_s for r in doubled]
    assert max(r.arrival_s for r in doubled) == max(r.arrival_s for r in requests)
    fast = scale_rate(requests, 4.0)
    assert [r.arrival_s * 4 for r in fast] == pytest.approx([r.arrival_s for r in requests])
    with pytest.raises(ConfigError, match="rate scale"):
        scale_rate(requests, 0)


def test_cluster_simulate_scales_the_load_with_replicas(synth_tiny, tmp_path):
    import json

    from coserve.cli import main

    model, trace = synth_tiny
    plan = hand_made_plan(model).save(tmp_path / "plan.json")
    out = tmp_path / "rows.json"
    argv = ["cluster", "simulate", str(model.root), str(trace), "--plan", str(plan),
            "--replicas", "1,2", "--routing", "partitioned", "--budget-fraction", "0.3",
            "--storage", "sata-530", "--executors", "cpu:2", "--rate-scale", "2",
            "--scale-load", "--replicate", "--spill-switches", "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["rate_scale"] == 2 and doc["scale_load"] and doc["replicate"]
    assert [r["num_requests"] for r in doc["rows"]] == [360, 720]
    assert all(r["num_failed"] == 0 for r in doc["rows"])


# -- replica routing policies (shared by the ingress and the simulator) -------------------
PARTITION = Partition(3, {"a": 0, "b": 1, "c": 2, "a2": 0})


def test_owner_first_goes_to_the_owner_and_puts_down_replicas_last():
    route = OwnerFirst()
    assert route.choose(["b"], ReplicaView(PARTITION, [0, 0, 0])) == 1
    # Its owner is down: the least loaded of the others.
    assert route.choose(["b"], ReplicaView(PARTITION, [0.3, 0, 0.1], down={1})) == 2
    # Its owner is far busier than the margin: spilled to the least loaded.
    assert route.choose(["b"], ReplicaView(PARTITION, [0.3, 9.0, 0.1])) == 2
    # Tried once already: the next in spill order, even if it is the owner that came back.
    assert route.choose(["b"], ReplicaView(PARTITION, [0, 0, 0], tried=[1])) == 0
    # Every replica down: still one (it may have restarted), fewest tries first.
    assert route.choose(["b"], ReplicaView(PARTITION, [0, 0, 0], down={0, 1, 2}, tried=[1])) == 0


def test_uniform_random_picks_replicas_up_and_not_yet_tried():
    route = UniformRandom(seed=0)
    picks = [route.choose(["a"], ReplicaView(PARTITION, [0, 0, 0], down={2})) for _ in range(200)]
    assert set(picks) == {0, 1}
    assert route.choose(["a"], ReplicaView(PARTITION, [0, 0, 0], down={2}, tried=[0])) == 1
    assert route.choose(["a"], ReplicaView(PARTITION, [0, 0, 0], down={0, 1, 2}, tried=[0, 1])) == 2
    again = UniformRandom(seed=0)
    assert [again.choose(["a"], ReplicaView(PARTITION, [0, 0, 0], down={2})) for _ in range(200)] == picks


def test_routings_come_from_one_lookup():
    from coserve.cluster.routing import ROUTINGS
    from coserve.errors import ConfigError

    assert ROUTINGS == ("partitioned", "random")
    assert isinstance(replica_routing("partitioned", margin_s=2.0), OwnerFirst)
    assert replica_routing("partitioned", margin_s=2.0).margin_s == 2.0
    assert replica_routing("partitioned").uses_partition and not replica_routing("random").uses_partition
    with pytest.raises(ConfigError, match="unknown replica routing 'round-robin'.*partitioned, random"):
        replica_routing("round-robin")
    with pytest.raises(ConfigError, match="spill margin"):
        OwnerFirst(-1.0)


# -- keeping the partition current: re-homing and repartitioning (fake clock) ---------------
def _four_families() -> CoEModel:
    """Four equal families of one preliminary expert and its own detector."""
    return _model({p: 0.25 for p in "abcd"}, {p: {"pass": [f"det-{p}"], "fail": []} for p in "abcd"})


def test_rehome_moves_only_the_experts_of_the_replica_that_is_down():
    from coserve.cluster.partition import num_moved, rehome

    model = _four_families()
    target = partition_experts(model, 4)
    lost = target.experts_of(1)
    new = rehome(target, model, model.usage, down={1})
    assert new.num_replicas == 4 and not new.experts_of(1)
    assert {new.owner[e] for e in lost} <= {0, 2, 3}
    # Only the lost replica's experts move: the others keep their owners.
    assert num_moved(target, new) == len(lost) == 2
    assert rehome(target, model, model.usage, down=set()) is target
    with pytest.raises(ValueError, match="every replica is down"):
        rehome(target, model, model.usage, down={0, 1, 2, 3})


def test_replica_loads_and_imbalance_follow_the_usage():
    from coserve.cluster.partition import imbalance, replica_loads

    model = _four_families()
    part = partition_experts(model, 2)
    assert imbalance(replica_loads(model, part)) == pytest.approx(1.0)
    hot = sorted(part.experts_of(0) - {e for e in model.experts if e.startswith("det")})[0]
    shifted = {e: (0.85 if e.endswith(hot) else 0.05) for e in model.experts}
    loads = replica_loads(model, part, shifted)
    assert loads[0] > loads[1] and imbalance(loads) > 1.5
    assert imbalance(loads, replicas=[1]) == 1.0 and imbalance([0.0, 0.0]) == 1.0


def _observe(rebalancer, mix: dict[str, int], start_s: float, step_s: float) -> float:
    """Feed `mix[e]` requests starting at each expert e, interleaved, one per step."""
    now_s = start_s
    pending = dict(mix)
    while any(pending.values()):
        for expert in sorted(pending):
            if pending[expert]:
                pending[expert] -= 1
                now_s += step_s
                rebalancer.observe([expert], now_s)
    return now_s


def test_a_usage_shift_repartitions_moving_few_experts():
    from coserve.cluster.rebalance import ChangeReason, RebalanceConfig, Rebalancer

    model = _model({p: 0.125 for p in "abcdefgh"},
                   {p: {"pass": [f"det-{p}"], "fail": []} for p in "abcdefgh"})
    start = partition_experts(model, 2)
    config = RebalanceConfig(window_s=10.0, min_requests=100, check_interval_s=1.0)
    rebalancer = Rebalancer(model, start, config)
    assert rebalancer.imbalance == pytest.approx(1.0)
    # An even mix: nothing moves.
    now_s = _observe(rebalancer, {p: 20 for p in "abcdefgh"}, 0.0, 0.01)
    assert rebalancer.check(now_s) is None and rebalancer.partition is start
    # Replica 0's preliminary experts get 3x the traffic; the old window expired.
    assert rebalancer.check(30.0) is None and rebalancer.window.num_requests(30.0) == 0
    mine = sorted(e for e in start.experts_of(0) if not e.startswith("det"))
    mix = {p: 60 if p in mine else 20 for p in "abcdefgh"}
    now_s = _observe(rebalancer, mix, 30.0, 0.001)
    assert rebalancer.window.num_requests(now_s) == sum(mix.values())
    assert rebalancer.check(30.5) is None  # within the check interval
    change = rebalancer.check(31.0)
    assert change is not None and change.reason is ChangeReason.USAGE
    assert change.imbalance_before == pytest.approx(1.5)  # 240 of 320 requests on 4 of 8
    assert change.imbalance_after == pytest.approx(1.125)  # 180 of 320: the best one move gives
    # One preliminary expert moved off the busy replica; one detector moved to keep each
    # replica's bytes within the tolerance (9 of 16 equal experts would pass 110%).
    assert change.num_moved == 2 and rebalancer.partition is change.partition
    assert rebalancer.target is change.partition
    moved = [e for e in model.experts if change.partition.owner[e] != start.owner[e]]
    assert [start.owner[e] for e in moved if not e.startswith("det")] == [0]
    # The same mix at the next check: within the threshold now, nothing more moves.
    assert rebalancer.check(32.0) is None and rebalancer.partition is change.partition
    # A cost per visit (here equal for all) is weighed by the current usage, not the prior.
    by_visit = Rebalancer(model, start, config, cost=lambda e: 1.0)
    _observe(by_visit, mix, 30.0, 0.001)
    again = by_visit.check(31.0)
    assert again is not None and again.imbalance_before == pytest.approx(1.5)


def test_a_family_too_heavy_to_balance_moves_nothing():
    from coserve.cluster.rebalance import RebalanceConfig, Rebalancer

    model = _four_families()
    start = partition_experts(model, 2)
    rebalancer = Rebalancer(model, start, RebalanceConfig(min_requests=50, check_interval_s=0))
    now_s = _observe(rebalancer, {"a": 97, "b": 1, "c": 1, "d": 1}, 0.0, 0.01)
    assert rebalancer.check(now_s) is None and rebalancer.partition is start
    assert rebalancer.imbalance > 1.8  # measured and exported, but nothing can fix it
    off = Rebalancer(model, start, RebalanceConfig(min_requests=1, follow_usage=False))
    off.observe(["a"], 0.0)
    assert off.check(1.0) is None


def test_a_replica_down_is_re_homed_and_gets_its_experts_back():
    from coserve.cluster.rebalance import ChangeReason, Rebalancer

    model = _four_families()
    start = partition_experts(model, 4)
    rebalancer = Rebalancer(model, start)
    down = rebalancer.set_down({2}, now_s=1.0)
    assert down is not None and down.reason is ChangeReason.REPLICA_DOWN
    assert down.num_moved == 2 and not rebalancer.partition.experts_of(2)
    assert down.down == {2} and rebalancer.target is start
    assert rebalancer.set_down({2}, now_s=2.0) is None  # nothing new
    assert rebalancer.set_down({0, 1, 2, 3}, now_s=3.0) is None  # nowhere to re-home to
    back = rebalancer.set_down(set(), now_s=4.0)
    assert back is not None and back.reason is ChangeReason.REPLICA_BACK
    assert back.num_moved == 2 and rebalancer.partition == start and back.down == frozenset()


def test_the_rebalance_config_is_checked():
    from coserve.cluster.rebalance import RebalanceConfig
    from coserve.errors import ConfigError

    with pytest.raises(ConfigError, match="max_imbalance must be >= 1"):
        RebalanceConfig(max_imbalance=0.5)
    with pytest.raises(ConfigError, match="min_requests"):
        RebalanceConfig(min_requests=0)
    with pytest.raises(ConfigError, match="window_s must be > 0"):
        RebalanceConfig(window_s=0)
