"""Tables of engine statistics for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from coserve.stats import EngineStats


def print_table(rows: Sequence[EngineStats], baseline: str | None = None) -> None:
    base = next((r for r in rows if r.policy == baseline), None)
    table = Table(title="coserve statistics")
    for col in ("policy", "req/s", "vs " + (baseline or "-"), "switches", "read MB",
                "hit rate", "batch", "p50 s", "p99 s", "util", "load MB/s", "failed"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        ratio = f"{r.throughput_rps / base.throughput_rps:.2f}x" if base and base.throughput_rps else "-"
        table.add_row(
            r.policy, f"{r.throughput_rps:.1f}", ratio, str(r.num_switches),
            f"{r.bytes_read / 1e6:.1f}", f"{r.pool_hit_rate:.0%}", f"{r.mean_batch_size:.1f}",
            f"{r.latency_p50_s:.3f}", f"{r.latency_p99_s:.3f}",
            " ".join(f"{u:.0%}" for u in r.utilisation_per_executor),
            f"{r.load_bandwidth_bytes_per_s / 1e6:.0f}", str(r.num_failed),
        )
    Console(width=140).print(table)
    if rows:
        r = rows[0]
        budget = "unlimited" if r.budget_bytes is None else f"{r.budget_bytes / 1e6:.1f} MB"
        print(f"budget {budget} of {r.total_expert_bytes / 1e6:.1f} MB of experts "
              f"(per row: all-resident is unlimited); storage {r.storage}; costs: {r.cost_source}")
