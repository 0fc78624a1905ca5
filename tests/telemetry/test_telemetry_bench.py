"""``elaria bench telemetry`` runs and reports every figure it promises (no speed assertions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from elaria.bench import telemetry as bench


def test_the_quick_benchmark_reports_every_figure() -> None:
    report = asyncio.run(bench.run(quick=True))
    for key in ("events_per_s", "ledger_records_per_s", "log_record_us", "loguru_null_sink_us"):
        assert report[key] > 0, key
    assert report["events_dropped"] == report["ledger_dropped"] == 0
    rounds = report["round"]
    assert rounds["mode"] == "runtime"  # the real Runtime, not the simulated fallback
    assert rounds["rounds_on"] == rounds["rounds_off"] > 0
    assert rounds["overhead_ratio"] > 0
    assert list(Path("logs").iterdir()) == []  # its files are cleaned up
    assert [p.name for p in Path().iterdir()] == ["logs"]  # and nothing else was left behind
