"""Confidence cascades: `routing.cascade` sends an unsure answer of a cheap expert to a
bigger one (LOW_CONFIDENCE). The format's validation, the router, the usage prior, the
routing graph expert management reads, the engine on real tensors and the simulator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from coserve import Engine, EngineConfig, parse_executors
from coserve.engine.costs import default_costs
from coserve.errors import RepositoryError, RequestError
from coserve.repository import open_repository, write_repository
from coserve.simulator import simulate
from coserve.types import LOW_CONFIDENCE, Request

CLS = {"factory": "repo_fixtures:SoftmaxNet", "args": {"num_classes": 2},
       "input_shape": [3, 8, 8], "labels": ["pass", "defect"]}
DET = {"factory": "repo_fixtures:SoftmaxNet", "args": {"num_classes": 3, "width": 2},
       "input_shape": [3, 8, 8], "labels": ["ok", "shifted", "reversed"]}


def _expert(name: str, architecture: str, stage: str) -> dict[str, str]:
    return {"name": name, "architecture": architecture,
            "weights": f"weights/{name}.safetensors", "stage": stage}


def cascade_spec(threshold: float = 0.9) -> dict[str, Any]:
    """R and C start at one cheap classifier (lite); an unsure answer goes to the
    component's own classifier; U has its own classifier and no cascade."""
    return copy.deepcopy({
        "name": "cascade",
        "architectures": {"cls": CLS, "det": DET},
        "experts": [
            _expert("lite", "cls", "preliminary"),
            _expert("cls-U", "cls", "preliminary"),
            _expert("cls-R", "cls", "subsequent"),
            _expert("cls-C", "cls", "subsequent"),
            _expert("det-a", "det", "subsequent"),
        ],
        "routing": {
            "first": {"field": "component_type",
                      "map": {"R": "lite", "C": "lite", "U": "cls-U"}},
            "next": {"lite": {"pass": "det-a", "defect": "end"},
                     "cls-R": {"pass": "det-a", "defect": "end"},
                     "cls-C": {"pass": "det-a", "defect": "end"},
                     "cls-U": {"pass": "det-a", "defect": "end"}},
            "cascade": {"lite": {"threshold": threshold,
                                 "escalate": {"R": "cls-R", "C": "cls-C"}}},
        },
        "usage_prior": {
            "field": "component_type",
            "counts": {"R": 60, "C": 20, "U": 20},
            "label_probs": {"lite": {"pass": 0.6, "defect": 0.1, LOW_CONFIDENCE: 0.3},
                            "cls-R": {"pass": 0.9, "defect": 0.1},
                            "cls-C": {"pass": 0.9, "defect": 0.1},
                            "cls-U": {"pass": 0.9, "defect": 0.1}},
        },
    })


def write(root: Path, spec: dict[str, Any]) -> Path:
    torch.manual_seed(0)
    from repo_fixtures import TinyNet

    for expert in spec["experts"]:
        path = root / expert["weights"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            args = spec["architectures"][expert["architecture"]]["args"]
            save_file(TinyNet(**args).state_dict(), str(path))
    write_repository(root, spec)
    return root


def open_fails(root: Path, spec: dict[str, Any], *fragments: str) -> None:
    write(root, spec)
    with pytest.raises(RepositoryError) as info:
        open_repository(root, trust_code=True)
    for fragment in (*fragments, "fix:"):
        assert fragment in str(info.value), str(info.value)


def requests(num: int, types: str = "RCU") -> list[Request]:
    gen = torch.Generator().manual_seed(1)
    return [Request(f"r{i:03d}", {"component_type": types[i % len(types)]},
                    torch.rand(3, 8, 8, generator=gen), 0.001 * i) for i in range(num)]


# -- the router ----------------------------------------------------------------------------
def test_router_escalates_by_the_request_value(tmp_path: Path) -> None:
    router = open_repository(write(tmp_path, cascade_spec()), trust_code=True).router
    sure, unsure = {"scores": [0.95, 0.05]}, {"scores": [0.6, 0.4]}
    assert router.decide("lite", "pass", sure) == "pass"
    assert router.decide("lite", "pass", unsure) == LOW_CONFIDENCE
    assert router.decide("cls-R", "pass", unsure) == "pass"  # no rule: the label routes
    assert router.next("lite", LOW_CONFIDENCE, {"component_type": "R"}) == ("cls-R",)
    assert router.next("lite", LOW_CONFIDENCE, {"component_type": "C"}) == ("cls-C",)
    assert router.next("lite", "pass", {"component_type": "R"}) == ("det-a",)
    with pytest.raises(RequestError, match="no escalation for component_type 'U'"):
        router.next("lite", LOW_CONFIDENCE, {"component_type": "U"})
    with pytest.raises(RequestError, match="must carry its `scores`"):
        router.decide("lite", "pass", {"boxes": []})
    with pytest.raises(RequestError, match="must be probabilities"):
        router.decide("lite", "pass", {"scores": [3.2, -1.0]})


def test_cascade_edges_are_in_the_routing_graph(tmp_path: Path) -> None:
    model = open_repository(write(tmp_path, cascade_spec()), trust_code=True)
    assert model.router.successors("lite") == {"det-a", "cls-R", "cls-C"}
    # Stage-1 eviction reads predecessors: cls-R is reachable while lite is present.
    assert model.predecessors("cls-R") == {"lite"}
    assert {"cls-R", "cls-C"} <= model.subsequent_experts


def test_a_plain_escalation_sends_every_request_to_the_same_experts(tmp_path: Path) -> None:
    spec = cascade_spec()
    spec["routing"]["cascade"]["lite"]["escalate"] = ["cls-R", "cls-C"]
    router = open_repository(write(tmp_path, spec), trust_code=True).router
    assert router.next("lite", LOW_CONFIDENCE, {"component_type": "C"}) == ("cls-R", "cls-C")


# -- usage ---------------------------------------------------------------------------------
def test_prior_usage_follows_the_escalation_of_each_value(tmp_path: Path) -> None:
    model = open_repository(write(tmp_path, cascade_spec()), trust_code=True)
    usage = model.usage
    assert usage["lite"] == pytest.approx(0.8)
    # Only R's requests escalate to cls-R: P(R) * P(low confidence | lite).
    assert usage["cls-R"] == pytest.approx(0.6 * 0.3)
    assert usage["cls-C"] == pytest.approx(0.2 * 0.3)
    # det-a: lite's passes, plus the escalated ones' passes, plus U's.
    assert usage["det-a"] == pytest.approx(0.8 * 0.6 + 0.8 * 0.3 * 0.9 + 0.2 * 0.9)


def test_default_label_probs_of_a_cascade_expert_include_low_confidence(tmp_path: Path) -> None:
    spec = cascade_spec()
    del spec["usage_prior"]["label_probs"]["lite"]
    model = open_repository(write(tmp_path, spec), trust_code=True)
    assert model.label_probs["lite"] == pytest.approx(
        {"pass": 1 / 3, "defect": 1 / 3, LOW_CONFIDENCE: 1 / 3})
    assert LOW_CONFIDENCE not in model.label_probs["cls-U"]


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "fragments"), [
    (lambda c: c.update({"nobody": c.pop("lite")}), ("routing.cascade['nobody']", "unknown expert")),
    (lambda c: c["lite"].update(threshold=1.5), ("threshold", "outside (0, 1]")),
    (lambda c: c["lite"].update(threshold=0), ("threshold", "outside (0, 1]")),
    (lambda c: c["lite"].pop("threshold"), ("missing key(s) threshold",)),
    (lambda c: c["lite"].update(escalate="end"), ("escalates to 'end'",)),
    (lambda c: c["lite"].update(escalate={"R": "cls-R"}), ("no entry for 'C'",)),
    (lambda c: c["lite"]["escalate"].update(X="cls-R"), ("keyed by 'X'",)),
    (lambda c: c["lite"]["escalate"].update(R="cls-U"), ("'cls-U'", "is preliminary")),
    (lambda c: c["lite"]["escalate"].update(R="cls-Z"), ("unknown expert 'cls-Z'",)),
    (lambda c: c["lite"].update(escalate={}), ("is empty",)),
])
def test_bad_cascade_rules_are_refused(tmp_path: Path, change: Any, fragments: tuple[str, ...]) -> None:
    spec = cascade_spec()
    change(spec["routing"]["cascade"])
    open_fails(tmp_path, spec, *fragments)


def test_low_confidence_is_a_label_only_of_cascade_experts(tmp_path: Path) -> None:
    spec = cascade_spec()
    spec["usage_prior"]["label_probs"]["cls-U"] = {"pass": 0.5, LOW_CONFIDENCE: 0.5}
    open_fails(tmp_path, spec, "label_probs['cls-U']", f"no label {LOW_CONFIDENCE!r}")


def test_an_escalation_cycle_is_refused(tmp_path: Path) -> None:
    spec = cascade_spec()
    spec["routing"]["cascade"]["cls-R"] = {"threshold": 0.9, "escalate": "cls-C"}
    spec["routing"]["cascade"]["cls-C"] = {"threshold": 0.9, "escalate": "cls-R"}
    open_fails(tmp_path, spec, "cycle")


# -- engine and simulator ------------------------------------------------------------------
def _run(root: Path, batch: list[Request]) -> list[Any]:
    config = EngineConfig(executors=parse_executors("cpu:1"), storage="none")
    with Engine(open_repository(root, trust_code=True), config) as engine:
        return engine.run_trace(batch, realtime=False)


@pytest.mark.parametrize("threshold", [0.5, 0.55, 1.0])
def test_the_engine_escalates_exactly_the_unsure_answers(tmp_path: Path, threshold: float) -> None:
    root = write(tmp_path, cascade_spec(threshold))
    results = _run(root, requests(30))
    assert all(r.ok for r in results)
    escalated = 0
    for result in results:
        first = result.steps[0]
        kind = result.fields["component_type"]
        if kind == "U":
            assert first.expert == "cls-U" and first.label != LOW_CONFIDENCE
            continue
        assert first.expert == "lite"
        unsure = max(first.detail["scores"]) < threshold
        assert (first.label == LOW_CONFIDENCE) == unsure
        if unsure:
            escalated += 1
            assert result.steps[1].expert == f"cls-{kind}"
    # Two labels: the top score is >= 0.5, so 0.5 never escalates and 1.0 always does.
    assert escalated == {0.5: 0, 1.0: 20}.get(threshold, escalated)


def test_the_simulator_escalates_at_the_prior_share(tmp_path: Path) -> None:
    root = write(tmp_path, cascade_spec())
    model = open_repository(root, trust_code=True)
    config = EngineConfig(executors=parse_executors("cpu:1"), storage="none", measure_costs=False)
    batch = requests(900, "RC")
    _, results = simulate(model, batch, config, backlog=True, costs=default_costs(model))
    firsts = [r.steps[0] for r in results]
    share = sum(s.label == LOW_CONFIDENCE for s in firsts) / len(firsts)
    assert share == pytest.approx(0.3, abs=0.05)
    for result in results:
        if result.steps[0].label == LOW_CONFIDENCE:
            assert result.steps[1].expert == f"cls-{result.fields['component_type']}"


def test_replica_traffic_follows_the_escalations(tmp_path: Path) -> None:
    from coserve.cluster.partition import partition_experts, replica_traffic

    spec = cascade_spec()
    # Make cls-U's family as heavy as lite's, so the two roots land on two replicas.
    spec["usage_prior"]["counts"] = {"R": 30, "C": 20, "U": 50}
    model = open_repository(write(tmp_path, spec), trust_code=True)
    partition = partition_experts(model, 2)
    mine, other = partition.owner["lite"], partition.owner["cls-U"]
    assert mine != other
    traffic = replica_traffic(model, partition)
    # The full classifiers are reached only by escalation, from lite's requests: on
    # lite's replica, at its unsure share; nowhere else.
    assert traffic[mine]["cls-R"] == pytest.approx(0.3 * 0.3)
    assert traffic[mine]["cls-C"] == pytest.approx(0.2 * 0.3)
    assert traffic[other].get("cls-R", 0.0) == 0.0


def test_stats_and_bench_rows_report_the_escalated_share(tmp_path: Path) -> None:
    from coserve.bench.report import table_rows

    config = EngineConfig(executors=parse_executors("cpu:1"), storage="none")
    model = open_repository(write(tmp_path, cascade_spec(1.0)), trust_code=True)
    with Engine(model, config) as engine:
        engine.run_trace(requests(10), realtime=False)  # R, C escalate; U does not
        stats = engine.stats()
    assert stats.num_escalated == 7 and stats.escalated_share == pytest.approx(0.7)
    row = {"policy": "coserve", "arrivals": "backlog", "throughput_rps": 1.0,
           "num_switches": 0, "escalated": stats.escalated_share}
    header, body = table_rows([row])
    assert body[0][header.index("escalated")] == "70.0%"
    header, _ = table_rows([{**row, "escalated": None}])
    assert "escalated" not in header


def test_reach_from_a_cascade_expert_spreads_its_unsure_share(tmp_path: Path) -> None:
    from coserve.cluster.partition import reach_probabilities

    model = open_repository(write(tmp_path, cascade_spec()), trust_code=True)
    reach = reach_probabilities(model, ["lite"])
    # R is three times as common as C among lite's requests (60 vs 20).
    assert reach["cls-R"] == pytest.approx(0.3 * 0.75)
    assert reach["cls-C"] == pytest.approx(0.3 * 0.25)
    assert reach["det-a"] == pytest.approx(0.6 + 0.3 * 0.9)


def test_the_server_answers_escalated_steps_and_counts_them(tmp_path: Path) -> None:
    import httpx

    from coserve.server import ServerConfig
    from test_server import AUTH, TOKEN, WAIT_S, metric, running_server, tensor_body

    model = open_repository(write(tmp_path, cascade_spec(1.0)), trust_code=True)
    engine = Engine(model, EngineConfig(executors=parse_executors("cpu:1"), measure_costs=False))
    config = ServerConfig(port=0, token=TOKEN, max_loop_lag_s=None)
    with running_server(engine, config) as base_url, \
            httpx.Client(base_url=base_url, headers=AUTH, timeout=WAIT_S) as client:
        for request in requests(3):  # R and C escalate, U has no cascade
            body = tensor_body(request.input, request.fields["component_type"])
            answer = client.post("/v1/inspect", json=body)
            assert answer.status_code == 200, answer.text
            labels = [step["label"] for step in answer.json()["steps"]]
            assert (labels[0] == LOW_CONFIDENCE) == (request.fields["component_type"] != "U")
        assert metric(client, "coserve_escalated_total") == 2
        listed = {e["name"]: e for e in client.get("/v1/experts").json()["experts"]}
        assert listed["lite"]["cascade_threshold"] == 1.0
        assert listed["lite"]["escalates_to"] == ["cls-C", "cls-R"]
        assert listed["cls-U"]["cascade_threshold"] is None and listed["cls-U"]["escalates_to"] == []
