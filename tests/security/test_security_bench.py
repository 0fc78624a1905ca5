"""``elaria bench security`` runs and reports every figure it promises (no speed assertions)."""

from __future__ import annotations

from elaria.bench import security as bench


def test_the_quick_benchmark_reports_every_figure() -> None:
    report = bench.run(quick=True)
    assert set(report["ops_per_s"]) == {
        "path_resolve",
        "check_keys",
        "redact",
        "sql_plain",
        "sql_safe",
    }
    assert all(rate > 0 for rate in report["ops_per_s"].values())
    assert report["document_nodes"] >= bench.DOCUMENT_NODES
    assert report["sql_overhead_ratio"] > 0


def test_the_document_has_the_promised_size() -> None:
    document, nodes = bench.build_document(10_000)

    def count(value: object) -> int:
        if isinstance(value, dict):
            return 1 + sum(count(v) for v in value.values())
        if isinstance(value, list):
            return 1 + sum(count(v) for v in value)
        return 1

    assert count(document) == nodes >= 10_000
