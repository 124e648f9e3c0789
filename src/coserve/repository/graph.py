"""Checks of the static routing graph: every name it uses exists, it has no cycle, and
the stages agree with who routes to whom."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from coserve.repository._common import (
    BUILTIN_CALLABLES,
    check_trusted,
    import_callable,
    listed,
    repo_error,
)
from coserve.repository.schema import END, ExpertEntry, RoutingDoc
from coserve.repository.spec import ArchitectureSpec, Stage
from coserve.types import LOW_CONFIDENCE


def check_routing(
    routing: RoutingDoc,
    experts: Mapping[str, ExpertEntry],
    architectures: Mapping[str, ArchitectureSpec],
    file: Path,
    trust_code: bool,
) -> list[str]:
    """RepositoryError for a broken rule, or for a routing callable outside coserve
    without `trust_code`; returns warnings about unreachable experts."""
    _check_first(routing, experts, file)
    _check_next(routing, experts, architectures, file)
    _check_cascade(routing, experts, architectures, file)
    cycle = find_cycle({e: _targets(routing, e) for e in experts})
    if cycle:
        raise repo_error(file, "routing.next", f"has a cycle: {' -> '.join(cycle)}",
                         f"send one of these labels elsewhere or to {END}, so every request ends")
    if routing.callable is not None:
        _check_callable(routing.callable, file, trust_code)
    return _unreachable(routing, experts)


def find_cycle(successors: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None. Iterative: a long chain must not hit the
    recursion limit."""
    done: set[str] = set()
    for start in successors:
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(successors.get(start, ())))]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif node in on_path:
                return path[path.index(node):] + [node]
            elif node not in done:
                path.append(node)
                on_path.add(node)
                stack.append(iter(sorted(successors.get(node, ()))))
    return None


def _targets(routing: RoutingDoc, expert: str) -> set[str]:
    targets = {t for targets in routing.next_table.get(expert, {}).values() for t in targets}
    rule = routing.cascade.get(expert)
    return targets | rule.all_targets if rule is not None else targets


def _check_first(routing: RoutingDoc, experts: Mapping[str, ExpertEntry], file: Path) -> None:
    for value, targets in routing.first_map.items():
        where = f"routing.first.map[{value!r}]"
        for target in targets:
            if target not in experts:
                raise repo_error(file, where, f"names unknown expert {target!r}",
                                 f"use one of {listed(experts)}, or define it under experts")
            if experts[target].stage is Stage.SUBSEQUENT:
                raise repo_error(file, f"expert {target!r}", f"is subsequent but {where} "
                                 "starts requests at it",
                                 "set its stage to preliminary, or start at a preliminary expert")


def _check_next(
    routing: RoutingDoc,
    experts: Mapping[str, ExpertEntry],
    architectures: Mapping[str, ArchitectureSpec],
    file: Path,
) -> None:
    for expert, table in routing.next_table.items():
        if expert not in experts:
            raise repo_error(file, f"routing.next[{expert!r}]", "is for an unknown expert",
                             f"remove the entry, or rename it to one of {listed(experts)}")
        labels = architectures[experts[expert].architecture].labels
        for label, targets in table.items():
            where = f"routing.next[{expert!r}][{label!r}]"
            if label not in labels:
                raise repo_error(file, where, f"expert {expert!r} (architecture "
                                 f"{experts[expert].architecture!r}) has no label {label!r}",
                                 f"use one of its labels: {listed(labels)}")
            for target in targets:
                _check_next_target(target, where, experts, file)


def _check_next_target(
    target: str, where: str, experts: Mapping[str, ExpertEntry], file: Path
) -> None:
    if target not in experts:
        raise repo_error(file, where, f"names unknown expert {target!r}",
                         f"use one of {listed(experts)}, {END}, or define it under experts")
    if experts[target].stage is Stage.PRELIMINARY:
        raise repo_error(file, f"expert {target!r}", f"is preliminary but {where} routes to it",
                         "set its stage to subsequent (preliminary experts are only chosen "
                         "by routing.first)")


def _check_cascade(
    routing: RoutingDoc,
    experts: Mapping[str, ExpertEntry],
    architectures: Mapping[str, ArchitectureSpec],
    file: Path,
) -> None:
    """A cascade expert exists and has no label of the reserved name; its escalations
    name subsequent experts; a rule keyed by value knows every value starting there."""
    for expert, rule in routing.cascade.items():
        where = f"routing.cascade[{expert!r}]"
        if expert not in experts:
            raise repo_error(file, where, "is for an unknown expert",
                             f"remove the entry, or rename it to one of {listed(experts)}")
        if LOW_CONFIDENCE in architectures[experts[expert].architecture].labels:
            raise repo_error(file, where, f"expert {expert!r} has a label named "
                             f"{LOW_CONFIDENCE!r}, the name a cascade gives unsure answers",
                             "rename that label in its architecture")
        for target in sorted(rule.all_targets):
            _check_next_target(target, f"{where}.escalate", experts, file)
        unknown = [v for v in rule.by_value if v not in routing.first_map]
        if unknown:
            raise repo_error(file, f"{where}.escalate", f"is keyed by {listed(map(repr, unknown))}, "
                             f"not values of {routing.field}", "use routing.first.map's keys")
        missing = [v for v, firsts in routing.first_map.items()
                   if expert in firsts and v not in rule.by_value]
        if rule.by_value and missing:
            raise repo_error(file, f"{where}.escalate", f"has no entry for "
                             f"{listed(map(repr, missing))}, which start at {expert!r}",
                             "give every such value its escalation")


def _check_callable(path: str, file: Path, trust_code: bool) -> None:
    check_trusted(path, BUILTIN_CALLABLES, trust_code, file, "routing.callable")
    try:
        import_callable(path)
    except ImportError as exc:
        raise repo_error(file, "routing.callable", str(exc),
                         "make it an importable 'package.module:function' (is its package "
                         "installed or on PYTHONPATH?), or set it to null") from None


def _unreachable(routing: RoutingDoc, experts: Mapping[str, ExpertEntry]) -> list[str]:
    started = {e for targets in routing.first_map.values() for e in targets}
    routed_to = {t for e in experts for t in _targets(routing, e)}
    warnings = []
    for entry in experts.values():
        if entry.stage is Stage.PRELIMINARY and entry.name not in started:
            warnings.append(f"preliminary expert {entry.name!r} is in no routing.first.map "
                            "entry, so no request starts at it")
        elif entry.stage is Stage.SUBSEQUENT and entry.name not in routed_to:
            how = " (the routing callable may still choose it)" if routing.callable else ""
            warnings.append(f"subsequent expert {entry.name!r} is routed to by no "
                            f"routing.next entry{how}")
    return warnings
