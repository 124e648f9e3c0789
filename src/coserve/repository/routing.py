"""The routing rules at run time: which expert a request starts at, and where an expert's
output label sends it next. Validation of the rules lives in graph.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from coserve.errors import RequestError
from coserve.repository._common import listed
from coserve.types import LOW_CONFIDENCE

# f(expert, label, fields) -> the experts to run next; an empty list ends the request.
RouteCallable = Callable[[str, str, dict[str, Any]], Sequence[str]]



@dataclass(frozen=True)
class CascadeRule:
    """`routing.cascade[expert]`: when the expert's top score is below `threshold`, the
    request goes to `escalate` (the same experts for every request), or to
    `by_value[v]`, `v` the request's routing.first.field value, instead of the route of
    the decoded label."""

    threshold: float
    escalate: tuple[str, ...] = ()
    by_value: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def targets(self, fields: Mapping[str, Any], field_name: str) -> tuple[str, ...]:
        """The experts a low-confidence answer escalates to; RequestError when the rule
        is keyed by value and has none for this request's."""
        if not self.by_value:
            return self.escalate
        value = _field_key(fields.get(field_name))
        targets = self.by_value.get(value) if value is not None else None
        if targets is None:
            raise RequestError(f"routing.cascade has no escalation for {field_name} "
                               f"{fields.get(field_name)!r}; known: {listed(self.by_value)}")
        return targets

    @property
    def all_targets(self) -> frozenset[str]:
        """Every expert the rule can escalate to (the routing graph's cascade edges)."""
        return frozenset(self.escalate).union(*self.by_value.values())

    def is_unsure(self, scores: Any) -> bool:
        """Whether decoded `scores` (the output's softmax scores) fall below the threshold."""
        if not isinstance(scores, list | tuple) or not scores:
            raise RequestError("a cascade expert's output must carry its `scores` (a "
                               "classifier's softmax); this one has none")
        top = max(scores)
        if not 0 <= top <= 1 or min(scores) < 0:
            raise RequestError(f"a cascade expert's `scores` must be probabilities (a "
                               f"softmax), got {list(scores)[:8]}")
        return top < self.threshold


class Router:
    """Routes requests by the repository's rules.

    `first` reads one request field; `next` follows the static `next` table, or asks the
    callable escape hatch when one is configured; `decide` turns a cascade expert's unsure
    answer into LOW_CONFIDENCE, which `next` routes to the rule's escalation.
    `successors`/`predecessors` describe the static table and the cascade edges: that is
    the graph expert management reasons about.
    """

    def __init__(
        self,
        field: str,
        first_map: Mapping[str, Sequence[str]],
        next_table: Mapping[str, Mapping[str, Sequence[str]]],
        experts: Iterable[str],
        route_callable: RouteCallable | None = None,
        callable_name: str = "",
        cascade: Mapping[str, CascadeRule] | None = None,
    ) -> None:
        self._field = field
        self._first = MappingProxyType({value: tuple(e) for value, e in first_map.items()})
        self._next = MappingProxyType({
            expert: MappingProxyType({label: tuple(t) for label, t in labels.items()})
            for expert, labels in next_table.items()
        })
        self._experts = tuple(experts)
        self._known = frozenset(self._experts)
        self._callable = route_callable
        self._callable_name = callable_name or getattr(route_callable, "__qualname__", "callable")
        self._cascade = MappingProxyType(dict(cascade or {}))
        self._successors = {e: frozenset(self._static_targets(e)) for e in self._experts}
        predecessors: dict[str, set[str]] = {e: set() for e in self._experts}
        for expert, targets in self._successors.items():
            for target in targets:
                predecessors[target].add(expert)
        self._predecessors = {e: frozenset(p) for e, p in predecessors.items()}

    @property
    def field(self) -> str:
        """The request field `first` routes on (e.g. "component_type")."""
        return self._field

    @property
    def first_values(self) -> tuple[str, ...]:
        """The field values the model knows, in file order."""
        return tuple(self._first)

    @property
    def next_table(self) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
        """The static table: expert -> label -> experts (empty: the request ends)."""
        return self._next

    @property
    def cascade(self) -> Mapping[str, CascadeRule]:
        """expert -> its cascade rule (experts that escalate when unsure)."""
        return self._cascade

    def decide(self, expert: str, label: str, detail: Mapping[str, Any]) -> str:
        """The routing label of an answer: LOW_CONFIDENCE where `expert` has a cascade
        rule and the answer's scores fall below its threshold, else `label`."""
        rule = self._cascade.get(expert)
        if rule is not None and rule.is_unsure(detail.get("scores")):
            return LOW_CONFIDENCE
        return label

    def first(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        """The preliminary experts a request starts at (several when the rule fans out)."""
        if not isinstance(fields, Mapping):
            raise RequestError(f"request fields must be a mapping holding {self._field!r}, "
                               f"got {type(fields).__name__}")
        if self._field not in fields:
            raise RequestError(f"the request has no field {self._field!r}, which routing "
                               f"reads; known values: {listed(self._first)}")
        value = fields[self._field]
        experts = self._first.get(_field_key(value))
        if experts is None:
            raise RequestError(f"no expert for {self._field} {value!r}: add it to "
                               f"routing.first.map; known values: {listed(self._first)}")
        return experts

    def entry(self, fields: Mapping[str, Any], start: Sequence[str] | None = None) -> tuple[str, ...]:
        """Where a request begins: `start` when it is a continuation (a handed-off step,
        checked against the model's experts), else `first(fields)`."""
        if start is None:
            return self.first(fields)
        if isinstance(start, str) or not start:
            raise RequestError(f"a request's start must be a non-empty list of expert names, "
                               f"got {start!r}")
        unknown = [e for e in start if e not in self._known]
        if unknown:
            raise RequestError(f"cannot start at unknown expert(s) {unknown}; known: "
                               f"{listed(self._experts)}")
        self.first(fields)  # the fields must still route (later steps may read them)
        return tuple(start)

    def next(self, expert: str, label: str, fields: Mapping[str, Any]) -> tuple[str, ...]:
        """The experts `expert`'s output `label` sends the request to; () ends it."""
        if expert not in self._known:
            raise RequestError(f"unknown expert {expert!r}; known: {listed(self._experts)}")
        if label == LOW_CONFIDENCE and expert in self._cascade:
            return self._cascade[expert].targets(fields, self._field)
        if self._callable is None:
            # Labels the table does not list end the request, by the format's definition.
            return self._next.get(expert, {}).get(label, ())
        return self._ask_callable(expert, label, fields)

    def successors(self, expert: str) -> frozenset[str]:
        """Experts that `expert` can route to in the static table."""
        return self._successors[expert]

    def predecessors(self, expert: str) -> frozenset[str]:
        """Experts that can route to `expert` in the static table."""
        return self._predecessors[expert]

    def _static_targets(self, expert: str) -> Iterable[str]:
        for targets in self._next.get(expert, {}).values():
            yield from targets
        if expert in self._cascade:
            yield from self._cascade[expert].all_targets

    def _ask_callable(self, expert: str, label: str, fields: Mapping[str, Any]) -> tuple[str, ...]:
        assert self._callable is not None
        where = f"routing callable {self._callable_name} (expert {expert!r}, label {label!r})"
        try:
            # A copy, so user code cannot change the request it is routing.
            answer = self._callable(expert, label, dict(fields))
        except Exception as exc:  # user code: fail this request, never the executor
            raise RequestError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(answer, str) or not isinstance(answer, list | tuple):
            raise RequestError(f"{where} returned {answer!r}: it must return a list of "
                               "expert names (an empty list ends the request)")
        unknown = [e for e in answer if not isinstance(e, str) or e not in self._known]
        if unknown:
            raise RequestError(f"{where} returned unknown expert(s) {listed(map(repr, unknown))}; "
                               f"known: {listed(self._experts)}")
        # A repeated name would run the same expert twice on one request.
        return tuple(dict.fromkeys(answer))


def _field_key(value: Any) -> str | None:
    # coe.yaml keys are strings, numbers written there become strings, so a request may
    # carry either; a bool is never a component type even though it is an int.
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
