"""Usage probabilities: P(a request uses expert e), from the routing rules and the input
mix, from a routed sample, or blended online. Expert management ranks experts by these."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from graphlib import TopologicalSorter
from pathlib import Path

from coserve.errors import ConfigError, RequestError
from coserve.repository._common import listed, repo_error
from coserve.repository.routing import CascadeRule
from coserve.repository.schema import ExpertEntry, RoutingDoc, UsageDoc
from coserve.repository.spec import ArchitectureSpec, CoEModel
from coserve.types import LOW_CONFIDENCE

PROBABILITY_SUM_TOLERANCE = 1e-6  # label_probs of one expert must sum to 1 within this


def usage_from_mix(
    counts: Mapping[str, float],
    first_map: Mapping[str, Sequence[str]],
    next_table: Mapping[str, Mapping[str, Sequence[str]]],
    label_probs: Mapping[str, Mapping[str, float]],
    experts: Iterable[str],
    cascade: Mapping[str, CascadeRule] | None = None,
) -> dict[str, float]:
    """P(a request uses e) for every expert, from the input mix and an acyclic routing.

    A first expert gets the share of requests whose field value maps to it (with fan-out,
    every listed expert gets that share). Then, in topological order,
    P(e) = min(1, sum over parents p of P(p) * P(p's label routes to e)); `label_probs`
    must hold P(label | p) for every expert with a `next` entry. The sum is exact when
    e's parents are used by disjoint requests, and an upper bound (hence the clip) when
    one request can reach e along two paths. A cascade rule adds the route of its
    LOW_CONFIDENCE label; one whose escalation depends on the field value is carried
    per value (the routes of one value's requests are the same) and summed by the mix.
    """
    experts = list(experts)
    cascade = cascade or {}
    if not any(rule.by_value for rule in cascade.values()):
        table = _with_escalation(next_table, cascade, None)
        return _carried(counts, first_map, table, label_probs, experts)
    total = sum(counts.values())
    usage = dict.fromkeys(experts, 0.0)
    for value, count in counts.items():
        if count <= 0:
            continue
        table = _with_escalation(next_table, cascade, value)
        for expert, p in _carried({value: 1.0}, first_map, table, label_probs, experts).items():
            usage[expert] += p * count / total
    return usage


def _with_escalation(
    next_table: Mapping[str, Mapping[str, Sequence[str]]],
    cascade: Mapping[str, CascadeRule],
    value: str | None,
) -> Mapping[str, Mapping[str, Sequence[str]]]:
    """The table with each cascade expert's LOW_CONFIDENCE route (for requests of field
    value `value`; a value-keyed rule without one adds no route)."""
    if not cascade:
        return next_table
    table = {expert: dict(labels) for expert, labels in next_table.items()}
    for expert, rule in cascade.items():
        targets = rule.by_value.get(value, ()) if rule.by_value else rule.escalate
        table.setdefault(expert, {})[LOW_CONFIDENCE] = targets
    return table


def _carried(
    counts: Mapping[str, float],
    first_map: Mapping[str, Sequence[str]],
    next_table: Mapping[str, Mapping[str, Sequence[str]]],
    label_probs: Mapping[str, Mapping[str, float]],
    experts: Sequence[str],
) -> dict[str, float]:
    total = sum(counts.values())
    usage = dict.fromkeys(experts, 0.0)
    for value, count in counts.items():
        for expert in first_map[value]:
            usage[expert] += count / total
    parents: dict[str, set[str]] = {e: set() for e in usage}
    for parent, table in next_table.items():
        for targets in table.values():
            for target in targets:
                parents[target].add(parent)
    for expert in TopologicalSorter(parents).static_order():
        # In name order: a float sum over a set would change in its last bits with the
        # interpreter's hash seed, and so every run that reads this prior.
        routed = sum(usage[p] * _route_prob(next_table[p], label_probs[p], expert)
                     for p in sorted(parents[expert]))
        usage[expert] = min(1.0, usage[expert] + routed)
    return usage


def usage_from_sample(model: CoEModel, routed_paths: Iterable[Sequence[str]]) -> dict[str, float]:
    """The fraction of sampled requests that used each expert. A path lists the experts
    one request ran (a fan-out's branches included); repeats count once."""
    used = dict.fromkeys(model.experts, 0)
    num_requests = 0
    for path in routed_paths:
        if isinstance(path, str):
            raise RequestError(f"a routed path must be a sequence of expert names, got the "
                               f"string {path!r}: wrap it as [{path!r}]")
        num_requests += 1
        for expert in set(path):
            if expert not in used:
                raise RequestError(f"routed path {list(path)} names unknown expert {expert!r}; "
                                   f"known: {listed(model.experts)}")
            used[expert] += 1
    if num_requests == 0:
        raise RequestError("the sample holds no routed paths: route at least one request")
    return {expert: count / num_requests for expert, count in used.items()}


def blend_usage(
    prior: Mapping[str, float], observed: Mapping[str, float], weight: float
) -> dict[str, float]:
    """(1 - weight) * prior + weight * observed, per expert (absent means 0)."""
    if not 0 <= weight <= 1:  # NaN fails this too
        raise ConfigError(f"usage blend weight must be in [0, 1], got {weight}: use 0 to keep "
                          "the prior, 1 to trust only the observed usage")
    experts = list(prior) + [e for e in observed if e not in prior]
    return {e: (1 - weight) * prior.get(e, 0.0) + weight * observed.get(e, 0.0) for e in experts}


def prior_usage(
    doc: UsageDoc,
    routing: RoutingDoc,
    experts: Mapping[str, ExpertEntry],
    architectures: Mapping[str, ArchitectureSpec],
    file: Path,
) -> tuple[dict[str, float], dict[str, Mapping[str, float]], list[str]]:
    """The repository's usage prior, P(label | expert) for every expert (as given, else
    uniform) and any warnings; RepositoryError for bad numbers."""
    label_probs = _label_probs(doc.label_probs, routing, experts, architectures, file)
    if doc.experts is not None:
        warnings = (["usage_prior.label_probs is ignored: usage_prior.experts gives the "
                     "probabilities directly"] if doc.label_probs else [])
        usage, missing = _explicit(doc.experts, experts, file)
        return usage, label_probs, warnings + missing
    # Without a mix, every value of the routing field is taken as equally common.
    counts = dict.fromkeys(routing.first_map, 1.0) if doc.counts is None else doc.counts
    _check_counts(counts, routing, file)
    return usage_from_mix(counts, routing.first_map, routing.next_table, label_probs,
                          experts, routing.cascade), label_probs, []


def _route_prob(
    table: Mapping[str, Sequence[str]], probs: Mapping[str, float], target: str
) -> float:
    return sum(probs.get(label, 0.0) for label, targets in table.items() if target in targets)


def _check_counts(counts: Mapping[str, float], routing: RoutingDoc, file: Path) -> None:
    for value, count in counts.items():
        where = f"usage_prior.counts[{value!r}]"
        if value not in routing.first_map:
            raise repo_error(file, where, f"{routing.field} {value!r} is not in "
                             "routing.first.map", "add it to routing.first.map, or drop the count")
        if count < 0:
            raise repo_error(file, where, f"the count {count:g} is negative",
                             "give how often the value occurs (0 or more)")
    if sum(counts.values()) <= 0:
        raise repo_error(file, "usage_prior.counts", "all counts are zero",
                         "give at least one value a positive count")


def _label_probs(
    given: Mapping[str, Mapping[str, float]],
    routing: RoutingDoc,
    experts: Mapping[str, ExpertEntry],
    architectures: Mapping[str, ArchitectureSpec],
    file: Path,
) -> dict[str, Mapping[str, float]]:
    """P(label | expert) for every expert: as given, else uniform over its labels (a
    cascade expert's include LOW_CONFIDENCE)."""
    def labels_of(name: str) -> tuple[str, ...]:
        labels = architectures[experts[name].architecture].labels
        return (*labels, LOW_CONFIDENCE) if name in routing.cascade else labels

    for expert, probs in given.items():
        if expert not in experts:
            raise repo_error(file, f"usage_prior.label_probs[{expert!r}]", "is for an unknown "
                             "expert", f"remove it, or use one of {listed(experts)}")
        _check_label_probs(expert, probs, labels_of(expert), experts[expert].architecture, file)
    result: dict[str, Mapping[str, float]] = {}
    for name in experts:
        labels = labels_of(name)
        result[name] = given.get(name) or dict.fromkeys(labels, 1 / len(labels))
    return result


def _check_label_probs(
    expert: str, probs: Mapping[str, float], labels: Sequence[str], arch: str, file: Path
) -> None:
    where = f"usage_prior.label_probs[{expert!r}]"
    for label, prob in probs.items():
        if label not in labels:
            raise repo_error(file, where, f"expert {expert!r} (architecture {arch!r}) has "
                             f"no label {label!r}", f"use its labels: {listed(labels)}")
        if not 0 <= prob <= 1:
            raise repo_error(file, f"{where}[{label!r}]", f"probability {prob:g} is outside "
                             "[0, 1]", "give a probability between 0 and 1")
    total = sum(probs.values())
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=PROBABILITY_SUM_TOLERANCE):
        raise repo_error(file, where, f"the probabilities sum to {total:g}, not 1",
                         "make them sum to 1 (labels left out count as 0)")


def _explicit(
    given: Mapping[str, float], experts: Mapping[str, ExpertEntry], file: Path
) -> tuple[dict[str, float], list[str]]:
    for expert, prob in given.items():
        where = f"usage_prior.experts[{expert!r}]"
        if expert not in experts:
            raise repo_error(file, where, "is for an unknown expert",
                             f"remove it, or use one of {listed(experts)}")
        if not 0 <= prob <= 1:
            raise repo_error(file, where, f"probability {prob:g} is outside [0, 1]",
                             "give P(a request uses the expert), between 0 and 1")
    missing = [e for e in experts if e not in given]
    warnings = ([f"usage_prior.experts leaves out {listed(map(repr, missing))}: their usage "
                 "is taken as 0"] if missing else [])
    return {e: given.get(e, 0.0) for e in experts}, warnings
