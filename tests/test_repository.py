"""Model repositories: coe.yaml parsing and validation, routing, usage probabilities.

Every repository here is built in tmp_path from `repo_fixtures:TinyNet`, so the whole file
runs in about a second. Run with tests/ on sys.path (`pythonpath = ["tests"]`).
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from coserve.errors import ConfigError, RepositoryError, RequestError
from coserve.repository import (
    CoEModel,
    Router,
    Stage,
    blend_usage,
    open_repository,
    usage_from_mix,
    usage_from_sample,
    write_repository,
)

CLS = {"factory": "repo_fixtures:TinyNet", "args": {"num_classes": 2},
       "input_shape": [3, 8, 8], "labels": ["pass", "defect"]}
DET = {"factory": "repo_fixtures:TinyNet", "args": {"num_classes": 3, "width": 2},
       "input_shape": [3, 8, 8], "labels": ["ok", "shifted", "reversed"]}


def _expert(name: str, architecture: str, stage: str) -> dict[str, str]:
    return {"name": name, "architecture": architecture,
            "weights": f"weights/{name}.safetensors", "stage": stage}


def base_spec() -> dict[str, Any]:
    """Three component types; U fans out to two classifiers; two shared detectors."""
    return copy.deepcopy({
        "name": "tiny-pcb",
        "architectures": {"cls": CLS, "det": DET},
        "experts": [
            _expert("cls-R", "cls", "preliminary"),
            _expert("cls-C", "cls", "preliminary"),
            _expert("cls-U", "cls", "preliminary"),
            _expert("cls-U2", "cls", "preliminary"),
            _expert("det-a", "det", "subsequent"),
            _expert("det-b", "det", "subsequent"),
        ],
        "routing": {
            "first": {"field": "component_type",
                      "map": {"R": "cls-R", "C": "cls-C", "U": ["cls-U", "cls-U2"]}},
            "next": {
                "cls-R": {"pass": "det-a", "defect": "end"},
                "cls-C": {"pass": "det-a"},
                "cls-U": {"pass": "det-b"},
                "cls-U2": {"pass": ["det-a", "det-b"]},
            },
        },
        "usage_prior": {
            "field": "component_type",
            "counts": {"R": 120, "C": 80, "U": 0},
            "label_probs": {"cls-R": {"pass": 0.9, "defect": 0.1}},
        },
    })


def save_weights(root: Path, spec: dict[str, Any]) -> None:
    torch.manual_seed(0)
    from repo_fixtures import TinyNet

    for expert in spec["experts"]:
        arch = spec["architectures"][expert["architecture"]]
        path = root / expert["weights"]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(TinyNet(**arch["args"]).state_dict(), str(path))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A valid repository; tests break it by rewriting coe.yaml or a weight file."""
    spec = base_spec()
    save_weights(tmp_path, spec)
    write_repository(tmp_path, spec)
    return tmp_path


def rewrite(repo: Path, spec: dict[str, Any]) -> None:
    write_repository(repo, spec)


def open_fails(path: Path, *fragments: str) -> str:
    """The RepositoryError message; asserts it names every fragment and carries a fix."""
    with pytest.raises(RepositoryError) as info:
        open_repository(path, trust_code=True)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "fix:" in message, message
    return message


# -- a valid repository ---------------------------------------------------------------------
def test_opens_a_valid_repository(repo: Path) -> None:
    model = open_repository(repo, trust_code=True)
    assert isinstance(model, CoEModel)
    assert model.name == "tiny-pcb"
    assert model.root == repo.absolute()
    assert list(model.experts) == ["cls-R", "cls-C", "cls-U", "cls-U2", "det-a", "det-b"]
    assert model.warnings == ()
    cls_r = model.experts["cls-R"]
    assert cls_r.stage is Stage.PRELIMINARY and model.experts["det-a"].stage is Stage.SUBSEQUENT
    assert cls_r.weights_path == repo / "weights" / "cls-R.safetensors"
    assert cls_r.weights_path.is_absolute()
    assert cls_r.file_bytes == cls_r.weights_path.stat().st_size
    from repo_fixtures import TinyNet

    tensors = TinyNet(num_classes=2).state_dict().values()
    assert cls_r.num_bytes == sum(t.numel() * t.element_size() for t in tensors)
    assert model.total_expert_bytes == sum(e.num_bytes for e in model.experts.values())
    arch = model.architectures["det"]
    assert arch.input_shape == (3, 8, 8) and arch.labels == ("ok", "shifted", "reversed")
    assert dict(arch.args) == {"num_classes": 3, "width": 2}


def test_model_is_read_only(repo: Path) -> None:
    model = open_repository(repo, trust_code=True)
    with pytest.raises(TypeError):
        model.experts["x"] = model.experts["cls-R"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        model.name = "other"  # type: ignore[misc]


def test_opens_by_the_coe_yaml_path(repo: Path) -> None:
    assert open_repository(str(repo / "coe.yaml"), trust_code=True).root == repo.absolute()


def test_build_gives_an_eval_module_that_takes_the_weights(repo: Path) -> None:
    model = open_repository(repo, trust_code=True)
    module = model.architectures["cls"].build()
    assert not module.training
    from safetensors.torch import load_file

    module.load_state_dict(load_file(model.experts["cls-R"].weights_path))
    assert module(torch.zeros(1, *model.architectures["cls"].input_shape)).shape == (1, 2)
    skeleton = model.architectures["cls"].build(device="meta")
    assert all(p.is_meta for p in skeleton.parameters())


def test_predecessors_and_successors_follow_the_next_table(repo: Path) -> None:
    model = open_repository(repo, trust_code=True)
    assert model.predecessors("det-a") == {"cls-R", "cls-C", "cls-U2"}
    assert model.predecessors("det-b") == {"cls-U", "cls-U2"}
    assert model.predecessors("cls-R") == frozenset()
    assert model.router.successors("cls-U2") == {"det-a", "det-b"}
    assert model.router.successors("det-a") == frozenset()


# -- coe.yaml itself -----------------------------------------------------------------------
def test_missing_coe_yaml(tmp_path: Path) -> None:
    open_fails(tmp_path, str(tmp_path / "coe.yaml"), "does not exist", "docs/repository.md")


def test_coe_yaml_that_is_not_yaml(repo: Path) -> None:
    (repo / "coe.yaml").write_text("name: x\nexperts: [a, b\n")
    open_fails(repo, str(repo / "coe.yaml"), "not valid YAML", "line")


def test_coe_yaml_that_is_not_a_mapping(repo: Path) -> None:
    (repo / "coe.yaml").write_text("- just\n- a list\n")
    open_fails(repo, str(repo / "coe.yaml"), "not a mapping")


@pytest.mark.parametrize(
    ("break_spec", "fragments"),
    [
        (lambda s: s.update(expert=[]), ["unknown key", "'expert'", "architectures, experts"]),
        (lambda s: s.pop("routing"), ["missing key", "routing"]),
        (lambda s: s.update(experts={"cls-R": {}}), ["experts", "not a non-empty list"]),
        (lambda s: s["architectures"]["cls"].update(input_shape=[3, -8, 8]),
         ["architecture 'cls'", "input_shape", "positive integers"]),
        (lambda s: s["architectures"]["cls"].update(labels=[True, False]),
         ["architecture 'cls' labels", "boolean", "quote it"]),
        (lambda s: s["architectures"]["cls"].update(factory="TinyNet"),
         ["architecture 'cls'", "not an import path", "package.module:callable"]),
        (lambda s: s["experts"][0].update(stage="first"),
         ["expert 'cls-R'", "stage 'first'", "preliminary, subsequent"]),
        (lambda s: s["experts"][0].pop("weights"), ["experts[0]", "missing key", "weights"]),
        (lambda s: s["experts"][1].update(name="end"), ["expert 'end'", "reserved"]),
        (lambda s: s["routing"]["first"].update(map=["R"]), ["routing.first.map", "not a mapping"]),
        (lambda s: s["routing"]["next"]["cls-R"].update(defect=["end", "det-a"]),
         ["routing.next['cls-R']['defect']", "mixes 'end'"]),
        (lambda s: s["usage_prior"]["counts"].update(R="many"),
         ["usage_prior.counts['R']", "not a finite number"]),
        (lambda s: s["usage_prior"].update(experts={"cls-R": 1.0}),
         ["usage_prior", "both counts and experts"]),
        (lambda s: s["usage_prior"].update(field="package"),
         ["usage_prior.field", "'package'", "component_type"]),
    ],
    ids=["unknown-key", "missing-section", "experts-not-list", "bad-input-shape",
         "boolean-labels", "factory-not-a-path", "bad-stage", "expert-missing-key",
         "reserved-name", "map-not-mapping", "end-mixed", "count-not-number",
         "counts-and-experts", "usage-field-differs"],
)
def test_wrong_shapes_and_types_of_fields(
    repo: Path, break_spec: Any, fragments: list[str]
) -> None:
    spec = base_spec()
    break_spec(spec)
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), *fragments)


def test_unknown_architecture(repo: Path) -> None:
    spec = base_spec()
    spec["experts"][4]["architecture"] = "det-big"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "expert 'det-a'", "'det-big' is not defined",
               "cls, det")


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        ("no_such_module_xyz:Net", "does not import"),
        ("repo_fixtures:NoSuchNet", "has no attribute 'NoSuchNet'"),
        ("repo_fixtures:NOT_CALLABLE", "not a callable"),
    ],
    ids=["module-missing", "attribute-missing", "not-callable"],
)
def test_factory_that_does_not_import_or_is_not_callable(
    repo: Path, factory: str, fragment: str
) -> None:
    spec = base_spec()
    spec["architectures"]["det"]["factory"] = factory
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "architecture 'det'", fragment, "PYTHONPATH")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [({"num_classes": 3, "depth": 9}, "TypeError"), ({"num_classes": 0}, "ValueError")],
    ids=["unexpected-arg", "bad-value"],
)
def test_factory_args_rejected(repo: Path, args: dict[str, int], fragment: str) -> None:
    spec = base_spec()
    spec["architectures"]["det"]["args"] = args
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "architecture 'det'", fragment,
               "args to ones the factory accepts")


def test_labels_that_disagree_with_the_module(repo: Path) -> None:
    spec = base_spec()
    spec["architectures"]["det"]["labels"] = ["ok", "bad"]
    rewrite(repo, spec)
    open_fails(repo, "architecture 'det'", "2 names", "decodes 3 labels", "list exactly 3")


def test_duplicate_expert_names(repo: Path) -> None:
    spec = base_spec()
    spec["experts"][1]["name"] = "cls-R"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "expert 'cls-R'", "more than once", "distinct name")


# -- weight files --------------------------------------------------------------------------
def test_missing_weight_file(repo: Path) -> None:
    path = repo / "weights" / "det-b.safetensors"
    path.unlink()
    open_fails(repo, str(path), "expert 'det-b'", "does not exist", "weights path")


def test_truncated_weight_file(repo: Path) -> None:
    path = repo / "weights" / "cls-C.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    open_fails(repo, str(path), "expert 'cls-C'", "truncated", "copy it again")


def test_corrupt_weight_header(repo: Path) -> None:
    path = repo / "weights" / "cls-C.safetensors"
    garbage = b"{not json at all"
    path.write_bytes(struct.pack("<Q", len(garbage)) + garbage)
    open_fails(repo, str(path), "expert 'cls-C'", "header", "safetensors.torch.save_file")


def test_pickle_checkpoint_is_refused_with_a_hint(repo: Path) -> None:
    spec = base_spec()
    spec["experts"][0]["weights"] = "weights/cls-R.pt"
    rewrite(repo, spec)
    from repo_fixtures import TinyNet

    torch.save(TinyNet().state_dict(), repo / "weights" / "cls-R.pt")
    open_fails(repo, "cls-R.pt", "expert 'cls-R'", "pickle", "save_file")


def test_weights_of_another_architecture(repo: Path) -> None:
    path = repo / "weights" / "cls-R.safetensors"
    from repo_fixtures import TinyNet

    state = TinyNet(num_classes=3, width=2).state_dict()  # the detector's shapes
    state.pop("conv.bias")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    message = open_fails(repo, str(path), "expert 'cls-R'", "architecture 'cls'",
                         "missing tensors: conv.bias", "unexpected tensors: extra.weight",
                         "mismatched tensors:", "fc.weight is F32 [3, 2] in the file but "
                         "F32 [2, 4] in the architecture")
    assert "export the weights from a module built by architecture 'cls'" in message


def test_weights_of_another_dtype(repo: Path) -> None:
    path = repo / "weights" / "cls-R.safetensors"
    from repo_fixtures import TinyNet

    save_file(TinyNet().half().state_dict(), str(path))
    open_fails(repo, str(path), "fc.weight is F16 [2, 4] in the file but F32 [2, 4]")


def test_every_bad_weight_file_is_reported_at_once(repo: Path) -> None:
    (repo / "weights" / "cls-R.safetensors").unlink()
    (repo / "weights" / "det-a.safetensors").write_bytes(b"\x01")
    message = open_fails(repo, "2 experts have bad weight files", "cls-R.safetensors",
                         "det-a.safetensors")
    assert "expert 'cls-R'" in message and "expert 'det-a'" in message


# -- routing -------------------------------------------------------------------------------
def test_first_names_an_unknown_expert(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["first"]["map"]["C"] = "cls-Cx"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "routing.first.map['C']", "unknown expert 'cls-Cx'",
               "use one of cls-R")


def test_next_names_an_unknown_expert(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["cls-C"]["pass"] = ["det-a", "det-z"]
    rewrite(repo, spec)
    open_fails(repo, "routing.next['cls-C']['pass']", "unknown expert 'det-z'", "use one of")


def test_next_names_a_label_the_architecture_lacks(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["cls-R"]["passed"] = "det-a"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "expert 'cls-R' (architecture 'cls')",
               "no label 'passed'", "pass, defect")


def test_next_entry_for_an_unknown_expert(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["cls-X"] = {"pass": "det-a"}
    rewrite(repo, spec)
    open_fails(repo, "routing.next['cls-X']", "unknown expert", "remove the entry")


def test_cycle_is_named(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["det-a"] = {"shifted": "det-b"}
    spec["routing"]["next"]["det-b"] = {"ok": "end", "reversed": "det-a"}
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "cycle: det-a -> det-b -> det-a", "end")


def test_self_loop_is_a_cycle(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["det-b"] = {"reversed": "det-b"}
    rewrite(repo, spec)
    open_fails(repo, "cycle: det-b -> det-b")


def test_preliminary_expert_routed_to_by_next(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["cls-R"]["defect"] = "cls-C"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "expert 'cls-C'", "is preliminary",
               "routing.next['cls-R']['defect']", "stage to subsequent")


def test_subsequent_expert_as_first(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["first"]["map"]["D"] = "det-a"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "expert 'det-a'", "is subsequent",
               "routing.first.map['D']", "stage to preliminary")


def test_unreachable_experts_are_warnings(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["next"]["cls-U"] = {"pass": "det-a"}
    spec["routing"]["next"]["cls-U2"] = {"pass": "det-a"}
    del spec["routing"]["first"]["map"]["C"]
    del spec["usage_prior"]["counts"]["C"]
    rewrite(repo, spec)
    model = open_repository(repo, trust_code=True)
    assert len(model.warnings) == 2
    assert "'cls-C'" in model.warnings[0] and "no request starts at it" in model.warnings[0]
    assert "'det-b'" in model.warnings[1] and "routed to by no" in model.warnings[1]
    assert model.usage["det-b"] == 0.0


def test_routing_callable_that_does_not_import(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["callable"] = "repo_fixtures:no_such_rule"
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), "routing.callable", "no_such_rule", "set it to null")


# -- usage prior: bad numbers --------------------------------------------------------------
@pytest.mark.parametrize(
    ("usage_prior", "fragments"),
    [
        ({"counts": {"R": 5, "C": -1}}, ["usage_prior.counts['C']", "negative"]),
        ({"counts": {"R": 0, "C": 0}}, ["usage_prior.counts", "all counts are zero"]),
        ({"counts": {"R": 1, "Q": 2}}, ["usage_prior.counts['Q']", "not in routing.first.map"]),
        ({"label_probs": {"cls-R": {"pass": 0.8, "defect": 0.1}}},
         ["usage_prior.label_probs['cls-R']", "sum to 0.9", "sum to 1"]),
        ({"label_probs": {"cls-R": {"pass": 1.5, "defect": -0.5}}},
         ["usage_prior.label_probs['cls-R']['pass']", "outside [0, 1]"]),
        ({"label_probs": {"cls-R": {"passed": 1.0}}}, ["no label 'passed'", "pass, defect"]),
        ({"label_probs": {"cls-Q": {"pass": 1.0}}}, ["label_probs['cls-Q']", "unknown expert"]),
        ({"experts": {"cls-R": 1.2}}, ["usage_prior.experts['cls-R']", "outside [0, 1]"]),
        ({"experts": {"cls-Q": 0.2}}, ["usage_prior.experts['cls-Q']", "unknown expert"]),
    ],
    ids=["negative-count", "all-zero", "count-for-unknown-value", "probs-not-summing",
         "prob-outside-range", "prob-unknown-label", "probs-unknown-expert",
         "expert-prob-outside-range", "expert-prob-unknown-expert"],
)
def test_bad_probabilities(repo: Path, usage_prior: dict[str, Any], fragments: list[str]) -> None:
    spec = base_spec()
    spec["usage_prior"] = usage_prior
    rewrite(repo, spec)
    open_fails(repo, str(repo / "coe.yaml"), *fragments)


# -- usage prior: values -------------------------------------------------------------------
def test_usage_from_a_skewed_mix_with_label_probs(repo: Path) -> None:
    usage = open_repository(repo, trust_code=True).usage
    assert usage["cls-R"] == pytest.approx(0.6)
    assert usage["cls-C"] == pytest.approx(0.4)
    assert usage["cls-U"] == usage["cls-U2"] == 0.0
    # cls-R passes 90% (label_probs), cls-C 50% (uniform over its two labels).
    assert usage["det-a"] == pytest.approx(0.6 * 0.9 + 0.4 * 0.5)
    assert usage["det-b"] == 0.0
    assert set(usage) == set(open_repository(repo, trust_code=True).experts)


def test_usage_with_fan_out(repo: Path) -> None:
    spec = base_spec()
    spec["usage_prior"] = {"counts": {"R": 1, "U": 3}}
    rewrite(repo, spec)
    usage = open_repository(repo, trust_code=True).usage
    assert usage["cls-U"] == usage["cls-U2"] == pytest.approx(0.75)
    assert usage["det-a"] == pytest.approx(0.25 * 0.5 + 0.75 * 0.5)
    # Both classifiers of a U request can pick det-b: the union bound, not a probability > 1.
    assert usage["det-b"] == pytest.approx(0.75 * 0.5 + 0.75 * 0.5)


def test_usage_sum_is_clipped_to_one() -> None:
    usage = usage_from_mix(
        counts={"U": 1},
        first_map={"U": ("a", "b")},
        next_table={"a": {"pass": ("d",)}, "b": {"pass": ("d",)}},
        label_probs={"a": {"pass": 1.0}, "b": {"pass": 1.0}},
        experts=["a", "b", "d"],
    )
    assert usage == {"a": 1.0, "b": 1.0, "d": 1.0}


def test_usage_without_a_prior_is_uniform_over_field_values(repo: Path) -> None:
    spec = base_spec()
    del spec["usage_prior"]
    rewrite(repo, spec)
    usage = open_repository(repo, trust_code=True).usage
    assert usage["cls-R"] == usage["cls-C"] == usage["cls-U"] == pytest.approx(1 / 3)
    assert usage["det-a"] == pytest.approx((1 / 3) * 0.5 * 3)


def test_usage_given_per_expert(repo: Path) -> None:
    spec = base_spec()
    spec["usage_prior"] = {"experts": {"cls-R": 0.6, "cls-C": 0.4, "det-a": 0.5}}
    rewrite(repo, spec)
    model = open_repository(repo, trust_code=True)
    assert model.usage["cls-R"] == 0.6 and model.usage["det-a"] == 0.5
    assert model.usage["det-b"] == 0.0
    assert len(model.warnings) == 1 and "'det-b'" in model.warnings[0]


def test_usage_from_sample(repo: Path) -> None:
    model = open_repository(repo, trust_code=True)
    usage = usage_from_sample(model, [["cls-R", "det-a"], ["cls-R"], ("cls-U", "cls-U2", "det-b",
                                                                       "det-b"), ["cls-C"]])
    assert usage["cls-R"] == 0.5 and usage["det-b"] == 0.25 and usage["cls-C"] == 0.25
    assert usage["det-a"] == 0.25 and set(usage) == set(model.experts)
    with pytest.raises(RequestError, match="unknown expert 'cls-Q'"):
        usage_from_sample(model, [["cls-Q"]])
    with pytest.raises(RequestError, match="no routed paths"):
        usage_from_sample(model, [])
    with pytest.raises(RequestError, match="wrap it"):
        usage_from_sample(model, ["cls-R"])


def test_blend_usage() -> None:
    blended = blend_usage({"a": 0.8, "b": 0.2}, {"a": 0.4, "c": 1.0}, weight=0.25)
    assert blended == pytest.approx({"a": 0.7, "b": 0.15, "c": 0.25})
    assert blend_usage({"a": 0.8}, {"a": 0.0}, 0.0) == {"a": 0.8}
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            blend_usage({"a": 0.8}, {}, weight)


# -- the router at run time ----------------------------------------------------------------
def test_router_first_and_fan_out(repo: Path) -> None:
    router = open_repository(repo, trust_code=True).router
    assert router.field == "component_type"
    assert router.first({"component_type": "R", "other": 1}) == ("cls-R",)
    assert router.first({"component_type": "U"}) == ("cls-U", "cls-U2")
    assert router.first_values == ("R", "C", "U")


def test_router_first_with_an_unknown_or_missing_value(repo: Path) -> None:
    router = open_repository(repo, trust_code=True).router
    with pytest.raises(RequestError, match="'Q'.*known values: R, C, U"):
        router.first({"component_type": "Q"})
    with pytest.raises(RequestError, match="no field 'component_type'.*R, C, U"):
        router.first({"type": "R"})


def test_router_lists_many_values_truncated() -> None:
    values = {f"T{i}": ("e",) for i in range(300)}
    router = Router("component_type", values, {}, ["e"])
    with pytest.raises(RequestError, match=r"T11, \.\.\. and 288 more") as info:
        router.first({"component_type": "nope"})
    assert "T12" not in str(info.value)


def test_router_numeric_field_values(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["first"]["map"] = {101: "cls-R", "C": "cls-C", "U": ["cls-U", "cls-U2"]}
    spec["usage_prior"]["counts"] = {101: 3, "C": 1}
    rewrite(repo, spec)
    model = open_repository(repo, trust_code=True)
    assert model.router.first({"component_type": 101}) == ("cls-R",)
    assert model.router.first({"component_type": "101"}) == ("cls-R",)
    assert model.usage["cls-R"] == pytest.approx(0.75)
    with pytest.raises(RequestError):
        model.router.first({"component_type": True})


def test_router_next_end_and_fan_out(repo: Path) -> None:
    router = open_repository(repo, trust_code=True).router
    fields = {"component_type": "R"}
    assert router.next("cls-R", "pass", fields) == ("det-a",)
    assert router.next("cls-R", "defect", fields) == ()
    assert router.next("cls-C", "defect", fields) == ()  # not listed: the request ends
    assert router.next("det-a", "ok", fields) == ()  # no entry at all
    assert router.next("cls-U2", "pass", fields) == ("det-a", "det-b")
    with pytest.raises(RequestError, match="unknown expert 'cls-Q'"):
        router.next("cls-Q", "pass", fields)


def test_callable_routing(repo: Path) -> None:
    spec = base_spec()
    spec["routing"]["callable"] = "repo_fixtures:route_by_size"
    rewrite(repo, spec)
    model = open_repository(repo, trust_code=True)
    router = model.router
    assert router.next("cls-R", "pass", {"component_type": "R", "size": "large"}) == ("det-b",)
    assert router.next("cls-R", "pass", {"component_type": "R"}) == ("det-a",)
    assert router.next("cls-R", "defect", {"component_type": "R"}) == ()
    # The static table still describes the graph and the usage prior.
    assert router.successors("cls-R") == {"det-a"}
    assert model.predecessors("det-b") == {"cls-U", "cls-U2"}


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [("repo_fixtures:route_to_unknown", "unknown expert(s) 'no-such-expert'"),
     ("repo_fixtures:route_raises", "RuntimeError: rule table unavailable")],
    ids=["unknown-expert", "raises"],
)
def test_callable_routing_failures_are_request_errors(repo: Path, rule: str, fragment: str) -> None:
    spec = base_spec()
    spec["routing"]["callable"] = rule
    rewrite(repo, spec)
    router = open_repository(repo, trust_code=True).router
    with pytest.raises(RequestError) as info:
        router.next("cls-R", "pass", {"component_type": "R"})
    assert fragment in str(info.value) and "expert 'cls-R'" in str(info.value)


def test_callable_must_return_a_list() -> None:
    router = Router("t", {"R": ("a",)}, {}, ["a", "b"], lambda e, lab, f: "b", "rules:f")
    with pytest.raises(RequestError, match="rules:f.*must return a list"):
        router.next("a", "pass", {})


# -- write_repository ----------------------------------------------------------------------
def test_write_repository_round_trips_plain_yaml(tmp_path: Path) -> None:
    spec = base_spec()
    spec["architectures"]["cls"]["input_shape"] = (3, 8, 8)
    spec["experts"][0]["stage"] = Stage.PRELIMINARY
    spec["experts"][0]["weights"] = Path("weights/cls-R.safetensors")
    save_weights(tmp_path, base_spec())
    file = write_repository(tmp_path / ".", spec)
    assert file == tmp_path / "coe.yaml"
    assert "!!python" not in file.read_text()
    model = open_repository(tmp_path, trust_code=True)
    assert model.architectures["cls"].input_shape == (3, 8, 8)
    json.dumps(dict(model.usage))  # plain floats, ready for a report


# -- the documented example ----------------------------------------------------------------
def test_the_docs_example_opens_with_the_documented_usage(tmp_path: Path) -> None:
    architectures = pytest.importorskip("coserve.architectures")
    import re

    import yaml

    docs = Path(__file__).resolve().parents[1] / "docs" / "repository.md"
    spec = yaml.safe_load(re.search(r"```yaml\n(.*?)```", docs.read_text(), re.S).group(1))
    factories = {"cls-small": architectures.ResNetClassifier,
                 "det-small": architectures.YoloDetector}
    for expert in spec["experts"]:
        arch = spec["architectures"][expert["architecture"]]
        path = tmp_path / expert["weights"]
        path.parent.mkdir(exist_ok=True)
        save_file(factories[expert["architecture"]](**arch["args"]).state_dict(), str(path))
    write_repository(tmp_path, spec)
    model = open_repository(tmp_path)  # coserve's own architectures: no trust needed
    assert model.warnings == ()
    assert model.router.first({"component_type": "U"}) == ("cls-U", "cls-U2")
    assert model.usage["cls-R"] == pytest.approx(120 / 203)
    assert model.usage["det-a"] == pytest.approx(0.9 * 120 / 203 + 0.5 * 80 / 203 + 0.5 * 3 / 203)


# -- a repository is code: only coserve's own code runs without trust --------------------------
def untrusted_fails(path: Path, *fragments: str) -> str:
    """The one-line RepositoryError of opening without trust; it says how to trust."""
    with pytest.raises(RepositoryError) as info:
        open_repository(path)
    message = str(info.value)
    for fragment in (*fragments, "--trust-repo-code", "if you trust"):
        assert fragment in message, message
    assert "\n" not in message, message
    return message


def test_a_factory_outside_coserve_runs_nothing_without_trust(tiny_zoo, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root, spec = builtin_copy(tiny_zoo, tmp_path / "repo")
    spec["architectures"]["det-tiny"].update(factory="subprocess:run",
                                             args={"args": ["touch", str(marker)]})
    rewrite(root, spec)
    untrusted_fails(root, "architecture 'det-tiny' factory", "'subprocess:run'")
    assert not marker.exists()
    # Trusted, it is called as before (and then found not to build a module).
    with pytest.raises(RepositoryError, match="not a torch.nn.Module"):
        open_repository(root, trust_code=True)
    assert marker.exists()


def test_a_test_factory_needs_trust_and_opens_with_it(repo: Path) -> None:
    untrusted_fails(repo, "'repo_fixtures:TinyNet'")
    assert open_repository(repo, trust_code=True).name == "tiny-pcb"


def builtin_copy(tiny_zoo, dest: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the tiny zoo (coserve's own architectures only) and its coe.yaml."""
    import shutil

    import yaml

    shutil.copytree(tiny_zoo[0], dest)
    return dest, yaml.safe_load((dest / "coe.yaml").read_text())


def test_a_routing_callable_outside_coserve_is_not_even_imported_without_trust(
    tiny_zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    marker = mods / "imported"
    (mods / "evil_rules.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def route(expert, label, fields):\n    return []\n")
    monkeypatch.syspath_prepend(str(mods))
    root, spec = builtin_copy(tiny_zoo, tmp_path / "repo")
    spec["routing"]["callable"] = "evil_rules:route"
    rewrite(root, spec)
    untrusted_fails(root, "routing.callable", "'evil_rules:route'")
    assert not marker.exists()
    first = spec["experts"][0]["name"]
    assert open_repository(root, trust_code=True).router.next(first, "pass", {}) == ()
    assert marker.exists()


@pytest.mark.parametrize(
    ("key", "path"),
    [("factory", "coserve.architectures.resnet:nn.Linear"),  # through a module coserve imports
     ("factory", "coserve.cli:main"),  # coserve's, but not an architecture
     ("factory", "coserve.architectures.resnet:ResNetClassifier.__init__"),
     ("callable", "coserve.repository._common:importlib.import_module")],
    ids=["module-attribute", "not-an-architecture", "dunder", "callable-through-module"],
)
def test_paths_into_coserve_that_reach_other_code_need_trust(
    tiny_zoo, tmp_path: Path, key: str, path: str
) -> None:
    root, spec = builtin_copy(tiny_zoo, tmp_path / "repo")
    if key == "factory":
        spec["architectures"]["det-tiny"]["factory"] = path
    else:
        spec["routing"]["callable"] = path
    rewrite(root, spec)
    untrusted_fails(root, repr(path))


def test_weight_paths_leaving_the_repository_need_trust(tiny_zoo, tmp_path: Path) -> None:
    root, spec = builtin_copy(tiny_zoo, tmp_path / "repo")
    entry = spec["experts"][0]
    weights = root / entry["weights"]
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(weights.read_bytes())
    for value in ("../elsewhere.safetensors", "weights/../../elsewhere.safetensors",
                  str(outside)):
        entry["weights"] = value
        rewrite(root, spec)
        with pytest.raises(RepositoryError) as info:
            open_repository(root, trust_code=False)
        message = str(info.value)
        assert f"expert {entry['name']!r}" in message and repr(value) in message, message
        assert "--trust-repo-code" in message and "inside the repository" in message, message
        trusted = open_repository(root, trust_code=True)
        assert trusted.experts[entry["name"]].file_bytes == outside.stat().st_size


def test_symlinked_weights_need_trust(tiny_zoo, tmp_path: Path) -> None:
    root, spec = builtin_copy(tiny_zoo, tmp_path / "repo")
    name = spec["experts"][0]["name"]
    weights = root / spec["experts"][0]["weights"]
    moved = root / "weights" / "moved.safetensors"  # inside the folder, but through a link
    weights.rename(moved)
    weights.symlink_to(moved)
    with pytest.raises(RepositoryError) as info:
        open_repository(root)
    assert f"expert {name!r}" in str(info.value) and "symbolic link" in str(info.value)
    assert "--trust-repo-code" in str(info.value)
    assert open_repository(root, trust_code=True).experts[name].num_bytes > 0


def test_the_tiny_zoo_opens_without_trust(tiny_zoo) -> None:
    assert open_repository(tiny_zoo[0]).experts
