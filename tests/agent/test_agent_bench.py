"""``elaria bench agent`` runs both sides of the same conversation and reports their ratio."""

from __future__ import annotations

from typing import Any

from elaria.bench import agent


async def test_the_quick_agent_bench_reports_both_sides_and_their_ratio() -> None:
    report: dict[str, Any] = await agent.run(quick=True)
    assert report["rounds_per_run"] == agent.ROUNDS_PER_RUN
    for section in ("sequential", f"concurrent_{agent.CONCURRENT_RUNS}"):
        figures = report[section]
        assert figures["sdk_ms_per_round"] > 0
        assert figures["runtime_ms_per_round"] > 0
        assert figures["ratio"] > 0
        low, high = figures["pair_ratio_quartiles"]
        assert low <= figures["median_pair_ratio"] <= high
        # The runtime's deferred telemetry builds are counted; what ran in SDK batches moved.
        assert 0 <= figures["moved_ms_per_round"] <= figures["deferred_ms_per_round"]
    assert report[f"concurrent_{agent.CONCURRENT_RUNS}"]["deferred_ms_per_round"] > 0
    assert report["sequential"]["runs"] == agent.QUICK_RUNS
    assert report[f"concurrent_{agent.CONCURRENT_RUNS}"]["runs"] == agent.CONCURRENT_RUNS
