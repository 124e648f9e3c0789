"""`coserve bench --cap`: Cost, Accuracy and Performance side by side (after MoE-CAP),
because a serving system usually wins two by losing the third. Per row:

- memory held, per tier: storage (the expert files at rest that the row may read),
  host RAM (the executing CPU pools' expert budget plus their activation areas, and a
  host cache), GPU (device pools plus activation areas);
- bytes moved: storage reads, plus host -> device copies;
- an operating cost per 1,000 images from PRICE_TABLE: the memory held and the CPU
  cores, for as long as the row took;
- inspection accuracy (against the generator's ground truth), throughput, p99;
- S-MBU-like bandwidth utilisation: the bytes the experts needed per second (what the
  row read from storage, over its wall time) over the storage bandwidth available (the
  paced profile, else the raw O_DIRECT read measured in the same run).

The prices are assumptions written down, not quotes: change PRICE_TABLE (or pass your
own) to price a deployment you know.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coserve.assembly import Assembly
from coserve.config import EngineConfig
from coserve.executors.budgets import DevicePool
from coserve.plan import processor_kind
from coserve.types import FULL_PRECISION, VARIANT_PRECISIONS


@dataclass(frozen=True)
class PriceTable:
    """Prices per hour (USD). Defaults: on-demand cloud list prices of late 2024, divided
    out per unit: general-purpose VM memory ~$0.005 per GB-hour and ~$0.04 per vCPU-hour
    (an m-class instance's price split between its memory and cores), an 80 GB data-centre
    GPU at ~$2.50 per hour (~$0.031 per GB-hour of its memory), SSD block storage at
    ~$0.08 per GB-month (~$0.00011 per GB-hour)."""

    ram_gb_hour: float = 0.005
    gpu_gb_hour: float = 2.50 / 80
    storage_gb_hour: float = 0.08 / 730
    cpu_core_hour: float = 0.04


PRICE_TABLE = PriceTable()


def stored_bytes(model: Any, precision: str) -> int:
    """Bytes at rest a row at `precision` may read: that precision's files (auto: fp32 and
    every variant, since it reads any of them)."""
    experts = list(model.experts.values())
    fp32 = sum(e.file_bytes for e in experts)
    variants = {p: sum(e.variants[p].file_bytes for e in experts if p in e.variants)
                for p in VARIANT_PRECISIONS}
    if precision == "auto":
        return fp32 + sum(variants.values())
    return fp32 if precision == FULL_PRECISION else variants[precision]


def memory_tiers(pools: Sequence[DevicePool], host_cache_bytes: int, stored: int,
                 all_expert_bytes: int) -> dict[str, int]:
    """Bytes held per tier: each device's pool as the engine resolved it (its budget, else
    every expert, plus its executors' activations), the host cache on the host, and the
    bytes at rest in the precision(s) a row reads."""
    held = {"host": host_cache_bytes, "gpu": 0}
    for pool in pools:
        weights = all_expert_bytes if pool.budget_bytes is None else pool.budget_bytes
        tier = "host" if processor_kind(pool.device) == "cpu" else "gpu"
        held[tier] += weights + len(pool.executors) * pool.activation_bytes
    return {"storage": stored, **held}


def cap_row(row: Mapping[str, Any], tiers: Mapping[str, int], num_cores: int,
            storage_bytes_per_s: float, prices: PriceTable = PRICE_TABLE) -> dict[str, Any]:
    """The CAP figures of one bench row."""
    wall_h = row["wall_s"] / 3600
    per_hour = (tiers["host"] / 1e9 * prices.ram_gb_hour + tiers["gpu"] / 1e9 * prices.gpu_gb_hour
                + tiers["storage"] / 1e9 * prices.storage_gb_hour + num_cores * prices.cpu_core_hour)
    num_done = row["num_completed"]
    moved = row["bytes_read"] + sum(b for p, b in row.get("bytes_loaded_by_path", {}).items()
                                    if p.startswith("host->"))
    needed_bytes_per_s = row["bytes_read"] / row["wall_s"] if row["wall_s"] else 0.0
    return {
        "memory_bytes": dict(tiers),
        "bytes_moved": moved,
        "cost_per_1k_images_usd": per_hour * wall_h / num_done * 1000 if num_done else None,
        "accuracy": row.get("accuracy"),
        "throughput_rps": row["throughput_rps"],
        "latency_p99_s": row["latency_p99_s"],
        "needed_bytes_per_s": needed_bytes_per_s,
        "storage_bytes_per_s": storage_bytes_per_s,
        "s_mbu": needed_bytes_per_s / storage_bytes_per_s if storage_bytes_per_s else None,
    }


def add_cap(run: Any, model: Any, config: EngineConfig, num_cores: int,
            prices: PriceTable = PRICE_TABLE) -> None:
    """Every row of `run` gains `cap` (see cap_row); the metadata the price table."""
    m = run.metadata
    bandwidth = m.get("storage_paced_bytes_per_s") or m["raw_storage_bytes_per_s"]
    m["cap_prices_per_hour_usd"] = asdict(prices)
    m["cap_num_cores"] = num_cores
    assembly = Assembly.of(model, config)
    for row in run.rows:
        stored = stored_bytes(model, row.get("precision", config.precision))
        tiers = memory_tiers(assembly.pools, assembly.host_cache_bytes, stored,
                             model.total_expert_bytes)
        row["cap"] = cap_row(row, tiers, num_cores, bandwidth, prices)


CAP_HEADER = ("policy", "arrivals", "storage MB", "RAM MB", "GPU MB", "MB moved",
              "$/1k images", "accuracy", "images/s", "p99 s", "S-MBU")


def cap_table(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    body = []
    for r in rows:
        c = r.get("cap")
        if not c:
            continue
        mem = c["memory_bytes"]
        body.append([
            r["policy"], r.get("arrivals", "-"), f"{mem['storage'] / 1e6:.0f}",
            f"{mem['host'] / 1e6:.0f}", f"{mem['gpu'] / 1e6:.0f}", f"{c['bytes_moved'] / 1e6:.0f}",
            "-" if c["cost_per_1k_images_usd"] is None else f"{c['cost_per_1k_images_usd']:.5f}",
            "-" if c["accuracy"] is None else f"{c['accuracy']:.1%}",
            f"{c['throughput_rps']:.1f}", f"{c['latency_p99_s']:.2f}",
            "-" if c["s_mbu"] is None else f"{c['s_mbu']:.0%}",
        ])
    return body


def cap_markdown(run: Any) -> list[str]:
    body = cap_table(run.rows)
    if not body:
        return []
    prices = run.metadata.get("cap_prices_per_hour_usd", {})
    return ["", "## Cost, accuracy, performance (CAP)", "",
            f"Cost: memory held and {run.metadata.get('cap_num_cores')} CPU cores for the row's "
            f"wall time, at {', '.join(f'{k} ${v:.5g}' for k, v in prices.items())} per hour "
            "(assumed list prices: coserve.bench.cap.PriceTable). S-MBU: bytes read from storage "
            "per second over the storage bandwidth available.", "",
            "| " + " | ".join(CAP_HEADER) + " |", "|" + "---|" * len(CAP_HEADER),
            *("| " + " | ".join(r) + " |" for r in body)]


def cap_plots(run: Any, out_dir: Path) -> list[Path]:
    """cap.png (throughput against accuracy, marker area ~ bytes moved, colour ~ cost)
    and bandwidth.png (S-MBU per row)."""
    rows = [r for r in run.rows if r.get("cap")]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = [r["cap"] for r in rows]
    names = [f"{r['policy']} [{r.get('arrivals', '-')}]" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    largest = max(c["bytes_moved"] for c in caps) or 1
    points = ax.scatter([c["throughput_rps"] for c in caps],
                        [100 * (c["accuracy"] or 0) for c in caps],
                        s=[40 + 400 * c["bytes_moved"] / largest for c in caps],
                        c=[c["cost_per_1k_images_usd"] or 0 for c in caps], cmap="viridis",
                        alpha=0.8)
    for name, c in zip(names, caps, strict=True):
        ax.annotate(name, (c["throughput_rps"], 100 * (c["accuracy"] or 0)), fontsize=7)
    fig.colorbar(points, label="$ per 1,000 images")
    ax.set_xlabel("images/s")
    ax.set_ylabel("inspection accuracy (%)")
    ax.set_title("CAP trade-off (marker area: bytes moved)")
    fig.tight_layout()
    paths = [out_dir / "cap.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(rows)), [100 * (c["s_mbu"] or 0) for c in caps])
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("% of storage bandwidth")
    ax.set_title("S-MBU: bytes the experts needed per second / storage bandwidth")
    fig.tight_layout()
    paths.append(out_dir / "bandwidth.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
