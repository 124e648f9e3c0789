"""Benchmark outputs: JSON, a markdown report and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coserve.bench import ARRIVAL_MEANINGS
from coserve.bench.cap import cap_markdown, cap_plots
from coserve.bench.runner import BenchRun
from coserve.policies import BASELINE_POLICY, CEILING_POLICY

COLUMNS = (
    ("policy", "policy", "{}"),
    ("arrivals", "arrivals", "{}"),
    ("throughput_rps", "images/s", "{:.1f}"),
    ("num_switches", "switches", "{}"),
    ("switches_over_floor", "sw/floor", "{:.2f}"),
    ("bytes_read", "MB read", "{:.0f}", 1e-6),
    ("load_bandwidth_bytes_per_s", "load MB/s", "{:.0f}", 1e-6),
    ("latency_p50_s", "p50 s", "{:.3f}"),
    ("latency_p99_s", "p99 s", "{:.3f}"),
    ("deadline_misses", "late", "{}"),
    ("mean_utilisation", "util", "{:.0%}"),
    ("accuracy", "accuracy", "{:.1%}"),
)
# Shown when a row ran a confidence cascade (routing.cascade): the requests escalated.
ESCALATED = ("escalated", "escalated", "{:.1%}")


def _value(row: dict[str, Any], key: str) -> Any:
    if key == "mean_utilisation":
        util = row.get("utilisation_per_executor") or []
        return sum(util) / len(util) if util else None
    return row.get(key)


def _cell(row: dict[str, Any], col: tuple) -> str:
    key, _, fmt, *scale = col
    value = _value(row, key)
    if value is None:
        return "-"
    if key == "deadline_misses" and row.get("deadline_miss_rate") is not None:
        return f"{value} ({row['deadline_miss_rate']:.0%})"
    return fmt.format(value * scale[0] if scale else value)


def table_rows(rows: Sequence[dict[str, Any]], baseline: str = BASELINE_POLICY) -> tuple[list[str], list[list[str]]]:
    """One line per row, in run order (so grouped by arrival mode); each row's ratio is
    against the baseline in its own arrival mode. With a plan, each engine row also shows
    its simulated twin: images/s and switches predicted by the simulator for the same
    configuration, as sim/engine."""
    bases = {r.get("arrivals"): r for r in rows if r["policy"] == baseline}
    simulated = any("simulated" in r for r in rows)
    columns = COLUMNS + ((ESCALATED,) if any(r.get("escalated") is not None for r in rows) else ())
    header = [c[1] for c in columns] + [f"vs {baseline}"]
    header += ["sim images/s", "sim/engine", "sim switches"] if simulated else []
    body = []
    for r in rows:
        base = bases.get(r.get("arrivals"))
        ratio = (f"{r['throughput_rps'] / base['throughput_rps']:.2f}x"
                 if base and base["throughput_rps"] else "-")
        body.append([_cell(r, c) for c in columns] + [ratio] + (_sim_cells(r) if simulated else []))
    return header, body


def _sim_cells(row: dict[str, Any]) -> list[str]:
    sim = row.get("simulated")
    if not sim:
        return ["-", "-", "-"]
    ratio = sim["throughput_ratio"]
    return [f"{sim['throughput_rps']:.1f}", f"{ratio:.2f}" if ratio else "-", str(sim["num_switches"])]


def markdown(run: BenchRun) -> str:
    m = run.metadata
    header, body = table_rows(run.rows)
    lines = [
        f"# coserve bench: {m['model']}",
        "",
        f"- trace: {m['trace']} ({m['num_requests']} requests)",
        *_arrival_lines(m),
        f"- experts: {m['num_experts']}, {m['total_expert_bytes'] / 1e9:.2f} GB in all",
        f"- budget: {_budget(m)}",
        f"- storage profile: {m['storage']}"
        + (f" (reads paced to {m['storage_paced_bytes_per_s'] / 1e6:.0f} MB/s)" if m["storage_paced_bytes_per_s"] else "")
        + f"; raw storage read measured in this run: {m['raw_storage_bytes_per_s'] / 1e6:.0f} MB/s (O_DIRECT)",
        f"- executors: {', '.join(m['executors'])}; {m['cpu_cores']} CPU cores; torch {m['torch']}; {m['date']}",
        *_planned_lines(m),
        *_floor_lines(m),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
    ]
    if run.sweep:
        lines += ["", "## Budget sweep", "",
                  f"In {m.get('sweep_arrivals', 'backlog')} arrivals only; each budget's "
                  f"switch floor is coserve's initial placement at that budget.", "",
                  "| policy | budget | images/s | switches | floor | sw/floor |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['budget_fraction']:.0%} | {r['throughput_rps']:.1f} "
                  f"| {r['num_switches']} | {r.get('switch_floor', '-')} "
                  f"| {_cell(r, ('switches_over_floor', '', '{:.2f}'))} |" for r in run.sweep]
    lines += cap_markdown(run)
    return "\n".join(lines) + "\n"


def _arrival_lines(m: dict[str, Any]) -> list[str]:
    modes = m.get("arrivals") or []
    lines = [f"- arrivals `{mode}`: {ARRIVAL_MEANINGS.get(mode, mode)}" for mode in modes]
    if "latency_target_s" in m:
        lines.append(f"- late: requests answered after their latency target "
                     f"({m['latency_target_s']:g} s from submission; failed ones included), "
                     f"and their share; a long backlog is mostly late by construction")
    return lines


def _floor_lines(m: dict[str, Any]) -> list[str]:
    if "switch_floor" not in m:
        return []
    return [f"- switch floor: {m['switch_floor']} switches ({m['num_experts_needed']} experts "
            f"needed): {m['switch_floor_definition']}; sw/floor is a row's switches over it "
            f"(other executor layouts place differently, so a row may come in under it)"]


def _planned_lines(m: dict[str, Any]) -> list[str]:
    p = m.get("planned")
    if not p:
        return []
    return [f"- coserve (planned): the planner's choice for the same {p['memory_bytes'] / 1e9:.2f} GB "
            f"(expert budget + the default's activation areas): executors {p['executors']}, experts "
            f"{p['budget_bytes'] / 1e9:.2f} GB, activations {p['activation_bytes'] / 1e6:.0f} MB per "
            f"executor; predicted {p['items_per_s']:.1f} images/s; plan {m.get('plan', '-')}"]


def _budget(m: dict[str, Any]) -> str:
    if m["budget_bytes"] is None:
        return "unlimited"
    return f"{m['budget_bytes'] / 1e9:.2f} GB ({m['budget_fraction']:.0%} of all expert bytes; {CEILING_POLICY} is unlimited)"


def plots(run: BenchRun, out_dir: Path) -> list[Path]:
    """policies.png (throughput, switches and late answers per policy, a bar per arrival
    mode) and, with a sweep, budget_sweep.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _mode_bars(axes[0], run.rows, "throughput_rps", "images/s", "Throughput")
    _mode_bars(axes[1], run.rows, "num_switches", "expert switches", "Expert switches")
    floor = run.metadata.get("switch_floor")
    if floor:
        axes[1].axhline(floor, color="gray", linestyle="--", label="switch floor")
        axes[1].legend(fontsize=8)
    _mode_bars(axes[2], run.rows, "deadline_miss_rate", "share of requests",
               "Answered after the latency target")
    axes[2].set_ylim(0, 1)
    fig.suptitle(f"{run.metadata['model']}: {_budget(run.metadata)}, storage {run.metadata['storage']}", fontsize=9)
    fig.tight_layout()
    paths = [out_dir / "policies.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    if run.sweep:
        paths.append(_sweep_plot(run, out_dir / "budget_sweep.png"))
    return paths


def _mode_bars(ax: Any, rows: Sequence[dict[str, Any]], key: str, ylabel: str, title: str) -> None:
    """One bar per policy and arrival mode, the modes side by side."""
    modes = list(dict.fromkeys(r.get("arrivals", "-") for r in rows))
    names = list(dict.fromkeys(r["policy"] for r in rows))
    width = 0.8 / max(1, len(modes))
    for k, mode in enumerate(modes):
        values = {r["policy"]: r.get(key) or 0 for r in rows if r.get("arrivals", "-") == mode}
        offset = (k - (len(modes) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(names))], [values.get(n, 0) for n in names],
               width, label=f"{mode} arrivals")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def _sweep_plot(run: BenchRun, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy in sorted({r["policy"] for r in run.sweep}):
        pts = sorted((r["budget_fraction"], r["throughput_rps"]) for r in run.sweep if r["policy"] == policy)
        ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", label=policy)
    mode = run.metadata.get("sweep_arrivals", "backlog")
    ceiling = next((r for r in run.rows if r["policy"] == CEILING_POLICY
                    and r.get("arrivals", mode) == mode), None)
    if ceiling:
        ax.axhline(ceiling["throughput_rps"], color="gray", linestyle="--", label=CEILING_POLICY)
    ax.set_xlabel("memory budget (% of all expert bytes)")
    ax.set_ylabel("images/s")
    ax.set_title(f"Throughput against memory budget ({mode} arrivals)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(run: BenchRun, json_path: Path | None, report_dir: Path | None) -> list[Path]:
    written = []
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(run.to_dict(), indent=2))
        written.append(json_path)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "report.md").write_text(markdown(run))
        written.append(report_dir / "report.md")
        written += plots(run, report_dir)
        written += cap_plots(run, report_dir)
    return written
