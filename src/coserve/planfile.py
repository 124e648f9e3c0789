"""The plan file: what `coserve profile` measured on one machine for one repository, and
what `coserve plan` recommends. JSON, documented in docs/plan.md; `Plan.load` checks
every field and names the key that is wrong.

Pure Python (no torch): the engine, the simulator and the planner all read it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coserve.errors import PlanError
from coserve.plan import ArchCost, CostModel
from coserve.types import STORAGE_TO_HOST, LoadPath

PLAN_FORMAT = "coserve-plan"
PLAN_VERSION = 1
# Loads are profiled per processor kind: the storage read every load starts with, and
# the copy to any CUDA device.
STORAGE_PATH = str(STORAGE_TO_HOST)
HOST_TO_DEVICE_PATH = str(LoadPath.to_executor("cuda:0").kind)
# Bounds on a plan file's values, so a hostile or corrupt one is a PlanError, not a crash.
MAX_DEPTH = 16  # nested objects/lists; a plan needs 5
MAX_NUMBER = 1e18  # bytes, seconds, counts: anything larger is corrupt
MAX_COUNT_DIGITS = 6  # batch sizes and executor counts as keys
# A plan profiled while the 1-minute load average was above this share of the cores is
# flagged: other work slowed what it measured.
BUSY_LOAD_SHARE = 0.5


@dataclass(frozen=True)
class ArchProfile:
    """One architecture on one processor kind: the measured curve and its linear fit."""

    cost: ArchCost  # k_s, b_s (fitted over 1..max_batch), max_batch, item_bytes
    latency_s: Mapping[int, float]  # batch size -> median latency measured
    fit_rmse_s: float  # root-mean-square error of the fit over 1..max_batch
    fit_max_rel_error: float  # worst |fit - measured| / measured over 1..max_batch
    footprint_bytes: int  # weight bytes of one expert of this architecture
    # executors of this processor kind running at once -> how much slower each batch is
    # (shared cores, memory bandwidth, the GIL); measured, 1.0 for one executor
    slowdown: Mapping[int, float] = field(default_factory=lambda: {1: 1.0})

    def cost_with(self, num_executors: int) -> ArchCost:
        """The latency model when `num_executors` of this kind run at once (beyond the
        most measured, the largest measured slowdown): the measured curve between its
        points, the fit's K beyond them."""
        return self.curve_cost().scaled(self.slowdown_for(num_executors))

    def curve_cost(self) -> ArchCost:
        """The fit with the measured curve attached, as one executor alone runs it."""
        return replace(self.cost, curve=tuple(sorted(self.latency_s.items())))

    def slowdown_for(self, num_executors: int) -> float:
        known = [n for n in self.slowdown if n <= num_executors]
        return self.slowdown[max(known)] if known else 1.0


@dataclass(frozen=True)
class LoadProfile:
    """One tier path: a load of b bytes takes fixed_s + b / bytes_per_s."""

    bytes_per_s: float
    fixed_s: float
    samples: int  # loads measured


@dataclass(frozen=True)
class PoolRecommendation:
    """One device's pool in a recommendation over several devices."""

    device: str  # 'cpu' or 'cuda:N'
    num_executors: int
    memory_bytes: int  # the device's memory for experts plus activations
    budget_bytes: int  # expert weights, all its executors together
    activation_bytes: int  # per executor


@dataclass(frozen=True)
class Recommendation:
    """The planner's choice for one memory size: executors and the memory split. Over
    several devices, `pools` holds each one's split (the totals are their sums, the
    activation bytes the first pool's); on one device it is empty."""

    executors: str  # as `--executors` takes it, e.g. "cpu:1"
    memory_bytes: int  # what the split divides: expert weights plus activations
    budget_bytes: int  # expert weights, all executors together
    activation_bytes: int  # per executor
    storage: str  # the storage profile the prediction assumed
    predicted_items_per_s: float  # simulated throughput (requests per second)
    confirmed_items_per_s: float | None = None  # measured on the engine, when confirmed
    pools: tuple[PoolRecommendation, ...] = ()


@dataclass(frozen=True)
class Plan:
    repository: str  # the repository's name
    processors: Mapping[str, Mapping[str, ArchProfile]]  # 'cpu'/'cuda' -> arch -> profile
    threads: Mapping[str, int]  # processor kind -> intra-op threads while profiling
    loads: Mapping[str, LoadProfile]  # tier path -> its load model
    usage: Mapping[str, float]  # expert -> P(a request uses it)
    label_probs: Mapping[str, Mapping[str, float]]  # expert -> label -> P(label)
    usage_source: str  # "rules" or "sample of N requests"
    machine: Mapping[str, Any] = field(default_factory=dict)
    recommended: Recommendation | None = None
    # executors in the engine -> executor seconds per task besides executing (routing the
    # output, queueing what follows), measured on the engine with a routed sample
    task_overhead_s: Mapping[int, float] = field(default_factory=dict)
    submit_s: float = 0.0  # seconds to accept and queue one request, measured likewise

    # -- what the engine and the simulator use -------------------------------------------
    def cost_model(
        self,
        model: Any,
        storage_pace_bytes_per_s: float | None = None,
        executors_per_kind: Mapping[str, int] | None = None,
    ) -> CostModel:
        """The cost model for `model` (a CoEModel) when `executors_per_kind` (e.g.
        {'cpu': 2}; default one of each) run at once. Storage reads run at the profiled
        raw speed, or at the pace of a slower storage profile. PlanError if the plan was
        made for other architectures."""
        counts = executors_per_kind or {}
        # Handling measured with the most executors not above this layout's.
        measured = max((n for n in self.task_overhead_s if n <= max(1, sum(counts.values()))),
                       default=None)
        self.check_covers(model)
        storage = self.loads[STORAGE_PATH]
        bps = storage.bytes_per_s
        if storage_pace_bytes_per_s:
            bps = min(bps, storage_pace_bytes_per_s)
        h2d = self.loads.get(HOST_TO_DEVICE_PATH)
        arch_costs = {(arch, kind): p.cost_with(counts.get(kind, 1))
                      for kind, archs in self.processors.items() for arch, p in archs.items()}
        extra = {"host_to_device_bytes_per_s": h2d.bytes_per_s} if h2d else {}
        return CostModel(
            arch_of={e.name: e.architecture for e in model.experts.values()},
            expert_bytes={e.name: e.num_bytes for e in model.experts.values()},
            arch_costs=arch_costs,
            storage_bytes_per_s=bps,
            storage_fixed_s=storage.fixed_s,
            task_overhead_s=self.task_overhead_s[measured] if measured else 0.0,
            submit_s=self.submit_s,
            source=f"plan (profiled {self.machine.get('profiled_at', 'earlier')})",
            **extra,
        )

    def check_covers(self, model: Any) -> None:
        for kind, archs in self.processors.items():
            missing = set(model.architectures) - set(archs)
            if missing:
                raise PlanError(f"the plan has no {kind} profile for architectures "
                                f"{sorted(missing)} of repository {model.name!r}: profile "
                                f"this repository again (coserve profile)")
        unknown = set(self.usage) - set(model.experts)
        if unknown:
            raise PlanError(f"the plan's usage names experts {sorted(unknown)[:5]} that "
                            f"repository {model.name!r} lacks: it was made for another "
                            f"repository; profile this one (coserve profile)")

    def machine_differences(self, cpu_count: int | None, cuda: Sequence[str]) -> list[str]:
        """How this machine differs from the one profiled (a plan is per machine)."""
        notes = []
        profiled_cpus = self.machine.get("cpu_count")
        if profiled_cpus is not None and profiled_cpus != cpu_count:
            notes.append(f"the plan was profiled on {profiled_cpus} cores, this machine has {cpu_count}")
        load = self.machine.get("load_average_1m")
        if load is not None and profiled_cpus and load > BUSY_LOAD_SHARE * profiled_cpus:
            notes.append(f"the plan was profiled while the machine was busy (load average "
                         f"{load:.1f} on {profiled_cpus} cores): its costs read high")
        profiled_cuda = list(self.machine.get("cuda", []))
        if profiled_cuda != list(cuda):
            notes.append(f"the plan was profiled with GPUs {profiled_cuda or 'none'}, this machine "
                         f"has {list(cuda) or 'none'}")
        return notes

    def with_recommendation(self, rec: Recommendation | None) -> Plan:
        return replace(self, recommended=rec)

    # -- the file ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "repository": self.repository,
            "machine": dict(self.machine),
            "threads": dict(self.threads),
            "processors": {
                kind: {arch: _profile_json(p) for arch, p in archs.items()}
                for kind, archs in self.processors.items()
            },
            "loads": {path: {"bytes_per_s": lp.bytes_per_s, "fixed_s": lp.fixed_s,
                             "samples": lp.samples} for path, lp in self.loads.items()},
            "usage": {"source": self.usage_source, "experts": dict(self.usage),
                      "label_probs": {e: dict(p) for e, p in self.label_probs.items()}},
            "task_overhead_s": {str(n): s for n, s in sorted(self.task_overhead_s.items())},
            "submit_s": self.submit_s,
            "recommended": None if self.recommended is None else _recommendation_json(self.recommended),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)  # never a half-written plan
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        except FileNotFoundError:
            raise PlanError(f"plan file {path} does not exist: make one with "
                            f"`coserve profile REPO --out {path}`") from None
        except RecursionError:
            raise PlanError(f"plan file {path} is nested too deeply to read: make it again "
                            f"with `coserve profile`") from None
        except (OSError, ValueError) as exc:  # JSONDecodeError, NaN, too many digits
            raise PlanError(f"plan file {path} is not readable JSON ({str(exc)[:200]}): make it "
                            f"again with `coserve profile`") from None
        return cls.from_json(doc, source=str(path))

    @classmethod
    def from_json(cls, doc: Any, source: str = "plan") -> Plan:
        r = _Reader(source)
        r.mapping(doc, "")
        r.check_depth(doc)
        if doc.get("format") != PLAN_FORMAT:
            r.fail("format", f"is {doc.get('format')!r}, not {PLAN_FORMAT!r}: this is not a coserve plan")
        if doc.get("version") != PLAN_VERSION:
            r.fail("version", f"is {doc.get('version')!r}; this coserve reads version "
                              f"{PLAN_VERSION}: profile again with this version")
        processors = {
            kind: {arch: _read_profile(r, p, f"processors.{kind}.{arch}")
                   for arch, p in r.mapping(archs, f"processors.{kind}").items()}
            for kind, archs in r.mapping(r.key(doc, "processors"), "processors").items()
        }
        if not processors:
            r.fail("processors", "is empty: profile at least the CPU")
        bad = sorted(set(processors) - {"cpu", "cuda"})
        if bad:
            r.fail("processors", f"names {bad}; processor kinds are 'cpu' and 'cuda'")
        loads = {path: LoadProfile(r.positive(lp, "bytes_per_s", f"loads.{path}"),
                                   r.non_negative(lp, "fixed_s", f"loads.{path}"),
                                   int(r.non_negative(lp, "samples", f"loads.{path}")))
                 for path, lp in r.mapping(r.key(doc, "loads"), "loads").items()}
        if STORAGE_PATH not in loads:
            r.fail("loads", f"has no {STORAGE_PATH!r} entry: every load starts with a storage read")
        usage_doc = r.mapping(r.key(doc, "usage"), "usage")
        usage = {e: _probability(r, p, f"usage.experts.{e}")
                 for e, p in r.mapping(r.key(usage_doc, "experts", "usage"), "usage.experts").items()}
        label_probs = {
            e: {label: _probability(r, p, f"usage.label_probs.{e}.{label}")
                for label, p in r.mapping(probs, f"usage.label_probs.{e}").items()}
            for e, probs in r.mapping(usage_doc.get("label_probs", {}), "usage.label_probs").items()
        }
        threads = {k: int(r.positive(doc["threads"], k, "threads"))
                   for k in r.mapping(doc.get("threads", {}), "threads")}
        return cls(
            repository=r.text(doc, "repository", ""),
            processors=processors,
            threads=threads,
            loads=loads,
            usage=usage,
            label_probs=label_probs,
            usage_source=r.text({"source": "unknown", **usage_doc}, "source", "usage"),
            machine=_read_machine(r, doc.get("machine", {})),
            recommended=_read_recommendation(r, doc.get("recommended")),
            task_overhead_s=_read_per_count(r, doc.get("task_overhead_s", {}), "task_overhead_s",
                                            r.non_negative),
            submit_s=r.non_negative(doc, "submit_s", "") if "submit_s" in doc else 0.0,
        )


def _profile_json(p: ArchProfile) -> dict[str, Any]:
    return {
        "k_s": p.cost.k_s, "b_s": p.cost.b_s, "max_batch": p.cost.max_batch,
        "item_bytes": p.cost.item_bytes, "footprint_bytes": p.footprint_bytes,
        "fit_rmse_s": p.fit_rmse_s, "fit_max_rel_error": p.fit_max_rel_error,
        "latency_s": {str(n): s for n, s in sorted(p.latency_s.items())},
        "slowdown": {str(n): f for n, f in sorted(p.slowdown.items())},
    }


def _read_profile(r: _Reader, doc: Any, where: str) -> ArchProfile:
    r.mapping(doc, where)
    curve = r.mapping(r.key(doc, "latency_s", where), f"{where}.latency_s")
    latency: dict[int, float] = {}
    for n in curve:
        latency[r.count_key(n, f"{where}.latency_s", "batch size")] = r.positive(
            curve, n, f"{where}.latency_s")
    max_batch = int(r.positive(doc, "max_batch", where))
    cost = ArchCost(r.positive(doc, "k_s", where), r.non_negative(doc, "b_s", where),
                    max_batch, int(r.positive(doc, "item_bytes", where)))
    return ArchProfile(cost, latency, r.non_negative(doc, "fit_rmse_s", where),
                       r.non_negative(doc, "fit_max_rel_error", where),
                       int(r.non_negative(doc, "footprint_bytes", where)),
                       _read_per_count(r, doc.get("slowdown", {"1": 1.0}), f"{where}.slowdown",
                                       r.positive))


def _read_per_count(r: _Reader, doc: Any, where: str,
                    read: Callable[[dict, str, str], float]) -> dict[int, float]:
    """{"1": x, "2": y} keyed by executor count."""
    values: dict[int, float] = {}
    for n in r.mapping(doc, where):
        values[r.count_key(n, where, "executor count")] = read(doc, n, where)
    return values


def _recommendation_json(rec: Recommendation) -> dict[str, Any]:
    doc = vars(rec).copy()
    doc["pools"] = [vars(p).copy() for p in rec.pools]
    return doc


def _read_pools(r: _Reader, doc: Any) -> tuple[PoolRecommendation, ...]:
    if not isinstance(doc, list):
        r.fail("recommended.pools", f"is {_shown(doc)}; it must be a list of pools")
    pools = []
    for i, p in enumerate(doc):
        where = f"recommended.pools.{i}"
        r.mapping(p, where)
        device = r.text(p, "device", where)
        kind, _, index = device.partition(":")
        if not (device == "cpu" or (kind == "cuda" and index.isascii() and index.isdigit())):
            r.fail(f"{where}.device", f"is {_shown(device)}; a device is 'cpu' or 'cuda:N'")
        pools.append(PoolRecommendation(
            device, int(r.positive(p, "num_executors", where)),
            int(r.positive(p, "memory_bytes", where)), int(r.positive(p, "budget_bytes", where)),
            int(r.positive(p, "activation_bytes", where))))
    return tuple(pools)


def _read_recommendation(r: _Reader, doc: Any) -> Recommendation | None:
    if doc is None:
        return None
    r.mapping(doc, "recommended")
    confirmed = doc.get("confirmed_items_per_s")
    return Recommendation(
        executors=r.text(doc, "executors", "recommended"),
        memory_bytes=int(r.positive(doc, "memory_bytes", "recommended")),
        budget_bytes=int(r.positive(doc, "budget_bytes", "recommended")),
        activation_bytes=int(r.positive(doc, "activation_bytes", "recommended")),
        storage=r.text({"storage": "none", **doc}, "storage", "recommended"),
        predicted_items_per_s=r.non_negative(doc, "predicted_items_per_s", "recommended"),
        confirmed_items_per_s=None if confirmed is None
        else r.non_negative(doc, "confirmed_items_per_s", "recommended"),
        pools=_read_pools(r, doc.get("pools", [])),
    )


def _read_machine(r: _Reader, doc: Any) -> dict[str, Any]:
    """What machine_differences reads is checked; the rest is kept as notes."""
    machine = r.mapping(doc, "machine")
    cpus = machine.get("cpu_count")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int)
                             or not 0 < cpus < MAX_NUMBER):
        r.fail("machine.cpu_count", f"is {_shown(cpus)}; it must be a positive integer or null")
    load = machine.get("load_average_1m")
    if load is not None and (isinstance(load, bool) or not isinstance(load, int | float)
                             or not 0 <= load < MAX_NUMBER):
        r.fail("machine.load_average_1m", f"is {_shown(load)}; it must be a number >= 0 or null")
    cuda = machine.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(name, str) for name in cuda):
        r.fail("machine.cuda", f"is {_shown(cuda)}; it must be a list of GPU names")
    return machine


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a plan may hold: numbers must be finite")


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < MAX_NUMBER else "a huge integer"
    return text if len(text) <= 80 else text[:77] + "..."


def _probability(r: _Reader, value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        r.fail(where, f"is {value!r}; a probability is a number in [0, 1]")
    return float(value)


class _Reader:
    """Typed access to the JSON with errors that name the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> None:
        key = f"key {where!r}" if where else "the document"
        raise PlanError(f"plan {self.source}: {key} {problem} (make a plan with "
                        f"`coserve profile REPO --out PLAN`; the format is in docs/plan.md)")

    def mapping(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be a JSON object, got {type(value).__name__}")
        return value

    def key(self, doc: dict, key: str, where: str = "") -> Any:
        if key not in doc:
            self.fail(f"{where}.{key}" if where else key, "is missing")
        return doc[key]

    def number(self, doc: dict, key: str, where: str) -> float:
        value = self.key(doc, key, where)
        name = f"{where}.{key}" if where else key
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(name, f"is {_shown(value)}; it must be a finite number")
        if not abs(value) <= MAX_NUMBER:  # NaN too; compared before any int -> float overflow
            self.fail(name, f"is {_shown(value)}; it must be a finite number of at most {MAX_NUMBER:g}")
        return float(value)

    def text(self, doc: dict, key: str, where: str) -> str:
        value = self.key(doc, key, where)
        if not isinstance(value, str):
            self.fail(f"{where}.{key}" if where else key, f"is {_shown(value)}; it must be a string")
        return value

    def count_key(self, n: str, where: str, what: str) -> int:
        """A batch size or executor count written as an object key: "1", "16"."""
        if not (n.isascii() and n.isdigit() and len(n) <= MAX_COUNT_DIGITS and int(n) >= 1):
            self.fail(where, f"has {what} {_shown(n)}; {what}s are integers >= 1")
        return int(n)

    def check_depth(self, doc: Any) -> None:
        """Iteratively: the depth is what is being bounded."""
        stack = [(doc, 0)]
        while stack:
            value, depth = stack.pop()
            if isinstance(value, dict | list):
                if depth >= MAX_DEPTH:
                    self.fail("", f"is nested deeper than {MAX_DEPTH} levels")
                items = value.values() if isinstance(value, dict) else value
                stack.extend((item, depth + 1) for item in items)

    def positive(self, doc: dict, key: str, where: str) -> float:
        value = self.number(doc, key, where)
        if value <= 0:
            self.fail(f"{where}.{key}", f"is {value:g}; it must be > 0")
        return value

    def non_negative(self, doc: dict, key: str, where: str) -> float:
        value = self.number(doc, key, where)
        if value < 0:
            self.fail(f"{where}.{key}", f"is {value:g}; it must be >= 0")
        return value
