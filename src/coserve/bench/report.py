"""Benchmark outputs: JSON, a markdown report and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coserve.bench.runner import BenchRun
from coserve.policies import BASELINE_POLICY, CEILING_POLICY

COLUMNS = (
    ("policy", "policy", "{}"),
    ("throughput_rps", "images/s", "{:.1f}"),
    ("num_switches", "switches", "{}"),
    ("bytes_read", "MB read", "{:.0f}", 1e-6),
    ("latency_p50_s", "p50 s", "{:.3f}"),
    ("latency_p99_s", "p99 s", "{:.3f}"),
    ("mean_utilisation", "util", "{:.0%}"),
    ("accuracy", "accuracy", "{:.1%}"),
)


def _cell(row: dict[str, Any], col: tuple) -> str:
    key, _, fmt, *scale = col
    value = row.get(key)
    if key == "mean_utilisation":
        util = row.get("utilisation_per_executor") or []
        value = sum(util) / len(util) if util else None
    if value is None:
        return "-"
    return fmt.format(value * scale[0] if scale else value)


def table_rows(rows: Sequence[dict[str, Any]], baseline: str = BASELINE_POLICY) -> tuple[list[str], list[list[str]]]:
    """With a plan, each engine row also shows its simulated twin: images/s and
    switches predicted by the simulator for the same configuration, as sim/engine."""
    base = next((r for r in rows if r["policy"] == baseline), None)
    simulated = any("simulated" in r for r in rows)
    header = [c[1] for c in COLUMNS] + [f"vs {baseline}"]
    header += ["sim images/s", "sim/engine", "sim switches"] if simulated else []
    body = []
    for r in rows:
        ratio = (f"{r['throughput_rps'] / base['throughput_rps']:.2f}x"
                 if base and base["throughput_rps"] else "-")
        body.append([_cell(r, c) for c in COLUMNS] + [ratio] + (_sim_cells(r) if simulated else []))
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
        f"- trace: {m['trace']} ({m['num_requests']} requests, {m['arrivals']})",
        f"- experts: {m['num_experts']}, {m['total_expert_bytes'] / 1e9:.2f} GB in all",
        f"- budget: {_budget(m)}",
        f"- storage profile: {m['storage']}"
        + (f" (reads paced to {m['storage_paced_bytes_per_s'] / 1e6:.0f} MB/s)" if m["storage_paced_bytes_per_s"] else "")
        + f"; raw storage read measured in this run: {m['raw_storage_bytes_per_s'] / 1e6:.0f} MB/s (O_DIRECT)",
        f"- executors: {', '.join(m['executors'])}; {m['cpu_cores']} CPU cores; torch {m['torch']}; {m['date']}",
        *_planned_lines(m),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
    ]
    if run.sweep:
        lines += ["", "## Budget sweep", "", "| policy | budget | images/s | switches |", "|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['budget_fraction']:.0%} | {r['throughput_rps']:.1f} | {r['num_switches']} |"
                  for r in run.sweep]
    return "\n".join(lines) + "\n"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = [r["policy"] for r in run.rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [r["throughput_rps"] for r in run.rows], color="tab:blue")
    axes[0].set_ylabel("images/s")
    axes[0].set_title("Throughput")
    axes[1].bar(names, [r["num_switches"] for r in run.rows], color="tab:orange")
    axes[1].set_ylabel("expert switches")
    axes[1].set_title("Expert switches")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{run.metadata['model']}: {_budget(run.metadata)}, storage {run.metadata['storage']}", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "policies.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    if run.sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for policy in sorted({r["policy"] for r in run.sweep}):
            pts = sorted((r["budget_fraction"], r["throughput_rps"]) for r in run.sweep if r["policy"] == policy)
            ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", label=policy)
        ceiling = next((r for r in run.rows if r["policy"] == CEILING_POLICY), None)
        if ceiling:
            ax.axhline(ceiling["throughput_rps"], color="gray", linestyle="--", label=CEILING_POLICY)
        ax.set_xlabel("memory budget (% of all expert bytes)")
        ax.set_ylabel("images/s")
        ax.set_title("Throughput against memory budget")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "budget_sweep.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


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
    return written
