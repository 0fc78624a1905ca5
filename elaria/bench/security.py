"""``elaria bench security``: what the validators cost per call.

Measured in one process, in interleaved batches (so machine noise hits every side alike), median
of the batches:

* ``path_resolve`` — :meth:`PathGuard.resolve` of a nested relative path (realpath, every
  downstream reading, containment);
* ``check_keys`` and ``redact`` — one pass over the same JSON document of
  :data:`DOCUMENT_NODES` nodes (dicts, lists, strings, numbers, some embedded JSON and URLs);
* ``sql`` — a parameterised ``SELECT`` by primary key through :class:`SafeSQLite` beside the
  same statement on a plain ``sqlite3`` connection to the same file: the guard's overhead is
  ``plain_ops_per_s / safe_ops_per_s``.

Files live in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elaria.security import PathGuard, SafeSQLite, check_keys, redact

#: Size of the document check_keys and redact walk (the issue's figure).
DOCUMENT_NODES = 10_000
#: Rows in the benchmark table; lookups go by primary key, spread over all of them.
TABLE_ROWS = 1_000
BATCHES_FULL = 9
BATCHES_QUICK = 3
#: Wall time per batch; long enough to swamp timer overhead, short enough to interleave often.
BATCH_SECONDS_FULL = 0.25
BATCH_SECONDS_QUICK = 0.05


def run(quick: bool) -> dict[str, Any]:
    batches = BATCHES_QUICK if quick else BATCHES_FULL
    seconds = BATCH_SECONDS_QUICK if quick else BATCH_SECONDS_FULL
    with tempfile.TemporaryDirectory(prefix="elaria-bench-security-") as tmp:
        root = Path(tmp)
        workspace = root / "workspace"
        (workspace / "projects" / "alpha" / "docs").mkdir(parents=True)
        (workspace / "projects" / "alpha" / "docs" / "readme.md").write_text("x")
        guard = PathGuard([workspace])
        document, nodes = build_document(DOCUMENT_NODES)
        db_path = root / "bench.db"
        _make_table(db_path)
        plain = sqlite3.connect(db_path, check_same_thread=False)
        safe = SafeSQLite(db_path, allowed_tables=["users"])
        counter = iter(range(10**12))
        select = "SELECT id, name, email FROM users WHERE id = ?"

        def plain_select() -> None:
            cursor = plain.execute(select, (next(counter) % TABLE_ROWS + 1,))
            names = [c[0] for c in cursor.description]
            [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        def safe_select() -> None:
            safe.execute(select, (next(counter) % TABLE_ROWS + 1,))

        cases: dict[str, Callable[[], object]] = {
            "path_resolve": lambda: guard.resolve("projects/alpha/docs/readme.md"),
            "check_keys": lambda: check_keys(document),
            "redact": lambda: redact(document),
            "sql_plain": plain_select,
            "sql_safe": safe_select,
        }
        try:
            rates = _interleaved(cases, batches, seconds)
        finally:
            safe.close()
            plain.close()
    return {
        "quick": quick,
        "batches": batches,
        "ops_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "document_nodes": nodes,
        "nodes_per_s": {
            "check_keys": round(rates["check_keys"] * nodes),
            "redact": round(rates["redact"] * nodes),
        },
        "sql_overhead_ratio": round(rates["sql_plain"] / rates["sql_safe"], 2),
        "microseconds_per_op": {name: round(1e6 / rate, 2) for name, rate in rates.items()},
    }


def build_document(target: int) -> tuple[Any, int]:
    """A JSON-like document of about ``target`` nodes, shaped like tool arguments and logs."""
    records: list[Any] = []
    nodes = 2  # the outer object and its list
    i = 0
    while nodes < target:
        record = {
            "id": i,
            "name": f"user {i}",
            "tags": ["alpha", "beta"],
            "meta": {
                "url": f"https://example.com/items/{i}?page=2",
                "payload": '{"kind": "note", "size": 3}',
                "created": "2026-01-01T00:00:00Z",
            },
        }
        records.append(record)
        nodes += 10  # the record, id, name, tags and its 2 items, meta and its 3 values
        i += 1
    return {"records": records}, nodes


def _make_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
            conn.executemany(
                "INSERT INTO users (id, name, email) VALUES (?, ?, ?)",
                [(i, f"user {i}", f"user{i}@example.com") for i in range(1, TABLE_ROWS + 1)],
            )
    finally:
        conn.close()


def _interleaved(
    cases: dict[str, Callable[[], object]], batches: int, seconds: float
) -> dict[str, float]:
    for fn in cases.values():  # warm up caches and statement caches
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(batches):
        for name, fn in cases.items():
            samples[name].append(_rate(fn, seconds))
    return {name: statistics.median(values) for name, values in samples.items()}


def _rate(fn: Callable[[], object], seconds: float) -> float:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        fn()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)
