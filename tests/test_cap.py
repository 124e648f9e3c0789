"""The CAP report: memory per tier, bytes moved, cost from the price table, S-MBU, and
the table and plots in the bench report."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from coserve.bench.cap import PriceTable, add_cap, cap_row, memory_tiers, stored_bytes
from coserve.bench.report import write_reports
from coserve.bench.runner import BenchRun
from coserve.config import EngineConfig
from coserve.executors.budgets import DevicePool
from coserve.executors.spec import parse_executors

GB = 10**9


def _model():
    variant = SimpleNamespace(file_bytes=GB // 4)
    experts = {f"e{i}": SimpleNamespace(file_bytes=GB, num_bytes=GB, variants={"int8": variant})
               for i in range(4)}
    return SimpleNamespace(experts=experts, total_expert_bytes=4 * GB, usage={})


def _row(precision="fp32", bytes_read=2 * GB, wall_s=10.0):
    return {"policy": f"coserve @ {precision}", "arrivals": "backlog", "precision": precision,
            "wall_s": wall_s, "num_completed": 1000, "bytes_read": bytes_read,
            "bytes_loaded_by_path": {"storage->cpu": bytes_read}, "accuracy": 0.98,
            "throughput_rps": 100.0, "latency_p99_s": 3.0}


def test_stored_bytes_per_precision():
    model = _model()
    assert stored_bytes(model, "fp32") == 4 * GB
    assert stored_bytes(model, "int8") == GB
    assert stored_bytes(model, "auto") == 5 * GB  # auto may read any stored precision
    assert stored_bytes(model, "fp16") == 0


def test_memory_tiers_count_each_device_pool_and_the_host_cache():
    pools = [DevicePool("cpu", (0,), GB, 100), DevicePool("cuda:0", (1, 2), 2 * GB, 50),
             DevicePool("cuda:1", (3,), None, 10)]  # unlimited: every expert
    tiers = memory_tiers(pools, host_cache_bytes=7, stored=GB, all_expert_bytes=4 * GB)
    assert tiers == {"storage": GB, "host": GB + 100 + 7, "gpu": 2 * GB + 100 + 4 * GB + 10}


def test_cost_and_bandwidth_follow_the_price_table():
    prices = PriceTable(ram_gb_hour=3.6, gpu_gb_hour=0.0, storage_gb_hour=0.0, cpu_core_hour=0.0)
    tiers = {"storage": 4 * GB, "host": GB, "gpu": 0}
    c = cap_row(_row(wall_s=10.0), tiers, num_cores=2, storage_bytes_per_s=0.5 * GB,
                prices=prices)
    # 1 GB of RAM at $3.6/GB-hour for 10 s = $0.01, over 1,000 images
    assert c["cost_per_1k_images_usd"] == pytest.approx(0.01)
    assert c["bytes_moved"] == 2 * GB
    assert c["s_mbu"] == pytest.approx(0.4)  # 0.2 GB/s needed of 0.5 GB/s


def test_bench_report_has_the_cap_table_and_plots(tmp_path: Path):
    run = BenchRun(metadata={"model": "m", "trace": "t", "num_requests": 1000, "num_experts": 4,
                             "total_expert_bytes": 4 * GB, "budget_bytes": GB,
                             "budget_fraction": 0.25, "storage": "sata-530",
                             "storage_paced_bytes_per_s": 530e6,
                             "raw_storage_bytes_per_s": 2e9, "executors": ["cpux1t"],
                             "cpu_cores": 2, "torch": "x", "date": "d"},
                   rows=[_row("fp32"), _row("int8", bytes_read=GB // 2, wall_s=8.0)])
    for row in run.rows:
        row.update(num_switches=10, latency_p50_s=1.0, deadline_misses=0,
                   utilisation_per_executor=[0.9])
    add_cap(run, _model(), EngineConfig(budget_fraction=0.25, executors=parse_executors("cpu:1")),
            num_cores=1)
    int8 = run.rows[1]["cap"]
    assert int8["memory_bytes"]["storage"] == GB
    assert int8["cost_per_1k_images_usd"] < run.rows[0]["cap"]["cost_per_1k_images_usd"]
    written = write_reports(run, tmp_path / "run.json", tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Cost, accuracy, performance (CAP)" in report
    assert "| coserve @ int8 | backlog | 1000 |" in report
    assert {p.name for p in written} >= {"cap.png", "bandwidth.png"}
    assert all(p.stat().st_size > 0 for p in written)
