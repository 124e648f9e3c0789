"""Reading coe.yaml into typed records: every key, type and shape, nothing that needs
another file. Cross-references (architectures, labels, weights) are checked later."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from coserve.repository._common import listed, repo_error
from coserve.repository.routing import CascadeRule
from coserve.repository.spec import ArchitectureSpec, Stage
from coserve.types import VARIANT_PRECISIONS

REPOSITORY_FILE = "coe.yaml"
END = "end"  # the `next` target that finishes a request; so no expert may be named "end"

_TOP_KEYS = ("name", "architectures", "experts", "routing", "usage_prior")
_ARCH_KEYS = ("factory", "args", "input_shape", "labels")
_EXPERT_KEYS = ("name", "architecture", "weights", "stage", "variants")
_EXPERT_REQUIRED = ("name", "architecture", "weights", "stage")
_VARIANT_KEYS = ("weights", "bytes")
_ROUTING_KEYS = ("first", "next", "callable", "cascade")
_CASCADE_KEYS = ("threshold", "escalate")
_FIRST_KEYS = ("field", "map")
_USAGE_KEYS = ("field", "counts", "label_probs", "experts")
_YAML_BOOLEAN_HINT = "YAML reads yes/no/on/off/true/false unquoted as booleans: quote it"


@dataclass(frozen=True)
class VariantEntry:
    """One stored precision of an expert's weights (written by `coserve repo quantize`)."""

    weights: str  # as written, like ExpertEntry.weights
    num_bytes: int  # the file's size when it was written: a stale copy is caught


@dataclass(frozen=True)
class ExpertEntry:
    name: str
    architecture: str
    weights: str  # as written: relative to the repository root, or absolute
    stage: Stage
    variants: Mapping[str, VariantEntry] = field(default_factory=dict)  # precision -> file


@dataclass(frozen=True)
class RoutingDoc:
    field: str
    first_map: Mapping[str, tuple[str, ...]]  # field value -> first experts (fan-out)
    next_table: Mapping[str, Mapping[str, tuple[str, ...]]]  # expert -> label -> experts; () ends
    callable: str | None
    cascade: Mapping[str, CascadeRule] = field(default_factory=dict)  # expert -> its rule


@dataclass(frozen=True)
class UsageDoc:
    counts: Mapping[str, float] | None  # field value -> relative count
    label_probs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    experts: Mapping[str, float] | None = None  # expert -> usage probability, given directly


@dataclass(frozen=True)
class RepositoryDoc:
    name: str
    architectures: Mapping[str, ArchitectureSpec]
    experts: tuple[ExpertEntry, ...]
    routing: RoutingDoc
    usage: UsageDoc


def read_document(file: Path) -> dict[str, Any]:
    """The YAML of coe.yaml as a mapping; RepositoryError if missing or not YAML."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise repo_error(
            file, "model repository", f"{REPOSITORY_FILE} does not exist",
            f"point open_repository at a directory that holds {REPOSITORY_FILE} "
            "(the format is in docs/repository.md)",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise repo_error(file, "model repository", f"cannot be read ({exc})",
                         "make it a readable UTF-8 text file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise repo_error(file, "YAML", f"not valid YAML ({problem}{at})",
                         "correct the syntax there") from None
    if not isinstance(raw, dict):
        raise repo_error(file, "top level", f"is a {type(raw).__name__}, not a mapping",
                         f"write a mapping with the keys {listed(_TOP_KEYS)}")
    return raw


def parse_document(raw: Mapping[str, Any], file: Path, default_name: str) -> RepositoryDoc:
    """Typed records from the YAML mapping; RepositoryError naming the key and the fix."""
    _check_keys(raw, _TOP_KEYS, ("architectures", "experts", "routing"), file, "top level")
    architectures = _parse_architectures(raw["architectures"], file)
    experts = _parse_experts(raw["experts"], file)
    routing = _parse_routing(raw["routing"], file)
    usage = _parse_usage(raw.get("usage_prior"), routing.field, file)
    name = _name(raw.get("name", default_name), file, "name")
    return RepositoryDoc(name, architectures, experts, routing, usage)


# -- generic shape checks -----------------------------------------------------------------
def _check_keys(
    value: Any, allowed: tuple[str, ...], required: tuple[str, ...], file: Path, where: str
) -> None:
    _mapping(value, file, where)
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise repo_error(file, where, f"unknown key(s) {listed(map(repr, unknown))}",
                         f"remove or rename them; the keys are {listed(allowed)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise repo_error(file, where, f"missing key(s) {listed(missing)}",
                         "add them (see docs/repository.md)")


def _mapping(value: Any, file: Path, where: str, allow_empty: bool = True) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise repo_error(file, where, f"is a {type(value).__name__}, not a mapping",
                         "write it as `key: value` lines (or {key: value})")
    if not value and not allow_empty:
        raise repo_error(file, where, "is empty", "add at least one entry")
    return value


def _name(value: Any, file: Path, where: str) -> str:
    """A name or label. Integers become strings (component types are often numbers)."""
    if isinstance(value, bool):
        raise repo_error(file, where, f"is the boolean {value}", _YAML_BOOLEAN_HINT)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise repo_error(file, where, f"{value!r} is not a non-empty name",
                         "write a name (a string)")
    return value


def _names(value: Any, file: Path, where: str) -> tuple[str, ...]:
    """One name or a non-empty list of distinct names."""
    if not isinstance(value, list):
        return (_name(value, file, where),)
    if not value:
        raise repo_error(file, where, "is an empty list", f"list at least one name, or write {END}")
    names = tuple(_name(item, file, f"{where}[{i}]") for i, item in enumerate(value))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise repo_error(file, where, f"lists {listed(duplicates)} more than once",
                         "list each name once")
    return names


def _number(value: Any, file: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise repo_error(file, where, f"{value!r} is not a finite number", "write a number")
    return float(value)


def _name_keys(value: Any, file: Path, where: str) -> dict[str, Any]:
    """A mapping whose keys are names, returned with the keys as strings."""
    result: dict[str, Any] = {}
    for key, item in _mapping(value, file, where).items():
        name = _name(key, file, f"{where} key {key!r}")
        if name in result:
            raise repo_error(file, where, f"has the key {name!r} twice (as text and number)",
                             "keep one")
        result[name] = item
    return result


# -- sections -----------------------------------------------------------------------------
def _parse_architectures(value: Any, file: Path) -> Mapping[str, ArchitectureSpec]:
    entries = _name_keys(_mapping(value, file, "architectures", allow_empty=False), file,
                         "architectures")
    return MappingProxyType({name: _parse_architecture(name, spec, file)
                             for name, spec in entries.items()})


def _parse_architecture(name: str, value: Any, file: Path) -> ArchitectureSpec:
    where = f"architecture {name!r}"
    _check_keys(value, _ARCH_KEYS, ("factory", "input_shape", "labels"), file, where)
    factory = value["factory"]
    if not isinstance(factory, str) or ":" not in factory:
        raise repo_error(file, where, f"factory {factory!r} is not an import path",
                         "write `factory: package.module:callable`")
    args = _name_keys(value.get("args") or {}, file, f"{where} args")
    shape = value["input_shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise repo_error(file, where, f"input_shape {shape!r} is not a list of positive integers",
                         "give one item's shape without the batch dimension, e.g. [3, 224, 224]")
    labels = _names(value["labels"], file, f"{where} labels")
    return ArchitectureSpec(name, factory, MappingProxyType(copy.deepcopy(args)), tuple(shape),
                            labels)


def _parse_experts(value: Any, file: Path) -> tuple[ExpertEntry, ...]:
    if not isinstance(value, list) or not value:
        raise repo_error(file, "experts", "is not a non-empty list",
                         "list the experts as `- {name: ..., architecture: ..., weights: ..., "
                         "stage: ...}`")
    entries = tuple(_parse_expert(i, item, file) for i, item in enumerate(value))
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise repo_error(file, f"expert {entry.name!r}", "is defined more than once",
                             "give every expert a distinct name")
        seen.add(entry.name)
    return entries


def _parse_expert(index: int, value: Any, file: Path) -> ExpertEntry:
    where = f"experts[{index}]"
    _check_keys(value, _EXPERT_KEYS, _EXPERT_REQUIRED, file, where)
    name = _name(value["name"], file, f"{where} name")
    where = f"expert {name!r}"
    if name == END:
        raise repo_error(file, where, f"{END!r} is reserved: it ends a request in routing.next",
                         "rename the expert")
    weights = value["weights"]
    if not isinstance(weights, str) or not weights:
        raise repo_error(file, where, f"weights {weights!r} is not a path",
                         "give the safetensors file's path relative to coe.yaml")
    try:
        stage = Stage(value["stage"])
    except ValueError:
        raise repo_error(file, where, f"stage {value['stage']!r} is unknown",
                         f"write one of {listed(s.value for s in Stage)}") from None
    architecture = _name(value["architecture"], file, f"{where} architecture")
    variants = _parse_variants(value.get("variants") or {}, file, where)
    return ExpertEntry(name, architecture, weights, stage, MappingProxyType(variants))


def _parse_variants(value: Any, file: Path, where: str) -> dict[str, VariantEntry]:
    variants: dict[str, VariantEntry] = {}
    for precision, entry in _mapping(value, file, f"{where} variants").items():
        at = f"{where} variants[{precision!r}]"
        if precision not in VARIANT_PRECISIONS:
            raise repo_error(file, at, "is not a stored precision",
                             f"use one of {listed(VARIANT_PRECISIONS)} (fp32 is `weights`)")
        _check_keys(entry, _VARIANT_KEYS, _VARIANT_KEYS, file, at)
        weights, num_bytes = entry["weights"], entry["bytes"]
        if not isinstance(weights, str) or not weights:
            raise repo_error(file, at, f"weights {weights!r} is not a path",
                             "give the variant's safetensors file relative to coe.yaml")
        if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes <= 0:
            raise repo_error(file, at, f"bytes {num_bytes!r} is not a positive integer",
                             "write the file's size, or re-run `coserve repo quantize`")
        variants[precision] = VariantEntry(weights, num_bytes)
    return variants


def _parse_routing(value: Any, file: Path) -> RoutingDoc:
    _check_keys(value, _ROUTING_KEYS, ("first",), file, "routing")
    first = value["first"]
    _check_keys(first, _FIRST_KEYS, _FIRST_KEYS, file, "routing.first")
    first_map = {key: _names(item, file, f"routing.first.map[{key!r}]")
                 for key, item in _name_keys(first["map"], file, "routing.first.map").items()}
    if not first_map:
        raise repo_error(file, "routing.first.map", "is empty",
                         "map each field value to its first expert")
    next_table = {
        expert: MappingProxyType(_parse_next_entry(expert, labels, file))
        for expert, labels in _name_keys(value.get("next") or {}, file, "routing.next").items()
    }
    route_callable = value.get("callable")
    is_path = isinstance(route_callable, str) and ":" in route_callable
    if route_callable is not None and not is_path:
        raise repo_error(file, "routing.callable", f"{route_callable!r} is not an import path",
                         "write `callable: package.module:function`, or null")
    cascade = {expert: _parse_cascade_rule(expert, rule, file)
               for expert, rule in _name_keys(value.get("cascade") or {}, file,
                                              "routing.cascade").items()}
    return RoutingDoc(_name(first["field"], file, "routing.first.field"),
                      MappingProxyType(first_map), MappingProxyType(next_table), route_callable,
                      MappingProxyType(cascade))


def _parse_cascade_rule(expert: str, value: Any, file: Path) -> CascadeRule:
    """`{threshold: T, escalate: EXPERTS | {field value: EXPERTS}}`."""
    where = f"routing.cascade[{expert!r}]"
    _check_keys(value, _CASCADE_KEYS, _CASCADE_KEYS, file, where)
    threshold = _number(value["threshold"], file, f"{where}.threshold")
    if not 0 < threshold <= 1:
        raise repo_error(file, f"{where}.threshold", f"{threshold:g} is outside (0, 1]",
                         "give the top score below which the request escalates, e.g. 0.9")
    escalate = value["escalate"]
    if not isinstance(escalate, dict):
        return CascadeRule(threshold, _escalation(escalate, file, f"{where}.escalate"))
    by_value = {key: _escalation(item, file, f"{where}.escalate[{key!r}]")
                for key, item in _name_keys(_mapping(escalate, file, f"{where}.escalate",
                                                     allow_empty=False), file,
                                            f"{where}.escalate").items()}
    return CascadeRule(threshold, by_value=MappingProxyType(by_value))


def _escalation(value: Any, file: Path, where: str) -> tuple[str, ...]:
    targets = _names(value, file, where)
    if END in targets:
        raise repo_error(file, where, f"escalates to {END!r}",
                         "name the experts an unsure answer goes to (a cascade escalates)")
    return targets


def _parse_next_entry(expert: str, value: Any, file: Path) -> dict[str, tuple[str, ...]]:
    where = f"routing.next[{expert!r}]"
    table: dict[str, tuple[str, ...]] = {}
    for label, target in _name_keys(value, file, where).items():
        targets = _names(target, file, f"{where}[{label!r}]")
        if targets == (END,):
            targets = ()
        elif END in targets:
            raise repo_error(file, f"{where}[{label!r}]", f"mixes {END!r} with experts",
                             f"write either {END} or a list of experts")
        table[label] = targets
    return table


def _parse_usage(value: Any, routing_field: str, file: Path) -> UsageDoc:
    if value is None:
        return UsageDoc(counts=None)
    _check_keys(value, _USAGE_KEYS, (), file, "usage_prior")
    if "field" in value and _name(value["field"], file, "usage_prior.field") != routing_field:
        raise repo_error(file, "usage_prior.field", f"{value['field']!r} differs from "
                         f"routing.first.field {routing_field!r}",
                         f"count the values of {routing_field!r}, or drop usage_prior.field")
    if "counts" in value and "experts" in value:
        raise repo_error(file, "usage_prior", "gives both counts and experts",
                         "keep one: counts (the input mix) or experts (probabilities)")
    counts = _number_map(value["counts"], file, "usage_prior.counts") if "counts" in value else None
    experts = (_number_map(value["experts"], file, "usage_prior.experts")
               if "experts" in value else None)
    label_probs = {
        expert: _number_map(probs, file, f"usage_prior.label_probs[{expert!r}]")
        for expert, probs in _name_keys(value.get("label_probs") or {}, file,
                                        "usage_prior.label_probs").items()
    }
    return UsageDoc(counts, label_probs, experts)


def _number_map(value: Any, file: Path, where: str) -> dict[str, float]:
    return {key: _number(item, file, f"{where}[{key!r}]")
            for key, item in _name_keys(value, file, where).items()}
