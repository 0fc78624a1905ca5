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
    assert report["processes"] == 1


def test_worker_processes_report_raw_times_that_pool_into_one_summary() -> None:
    raws = [agent._run_worker(2, 1) for _ in range(2)]  # real `python -m` worker processes
    phases = [raw["sequential"] for raw in raws]
    summary = agent._summary(phases)
    assert summary["runs"] == 4
    sdk = [t for phase in phases for t in phase["sdk"]]
    runtime = [t for phase in phases for t in phase["runtime"]]
    assert all(t > 0 for t in sdk + runtime)
    assert summary["ratio"] == round(sum(runtime) / sum(sdk), 3)
    assert summary["process_ratios"] == [
        round(sum(phase["runtime"]) / sum(phase["sdk"]), 3) for phase in phases
    ]
    assert 0 <= summary["moved_ms_per_round"] <= summary["deferred_ms_per_round"]
