"""The audit ledger's optional SQLite mirror (``telemetry.ledger_sqlite``), for querying.

Tables ``requests`` (one row per request record, the whole record as JSON in ``record``) and
``runs``. Rows are upserted by id, so a record written twice stays one row. Called from the
ledger writer's worker thread, one batch at a time (a lock makes that explicit); a failure is
the writer's to count and report, the JSONL file is written regardless.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Final

__all__ = ["SqliteLedgerStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, run_id TEXT, started TEXT, finished TEXT, outcome TEXT,
    latency_ms REAL, model_calls INTEGER, final_host TEXT, final_model TEXT, error_class TEXT,
    record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS requests_run ON requests(run_id);
CREATE INDEX IF NOT EXISTS requests_outcome ON requests(outcome);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started TEXT, finished TEXT, outcome TEXT, record TEXT NOT NULL);
"""


class SqliteLedgerStore:
    """The optional query mirror. Used only from the writer's worker thread (one at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._db is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.executescript(_SCHEMA)
                self._db = db

    def write_lines(self, lines: list[bytes]) -> None:
        self.open()
        with self._lock:
            assert self._db is not None
            db = self._db
            db.execute("BEGIN")
            try:
                for line in lines:
                    rec = json.loads(line)
                    if rec.get("record") == "run":
                        db.execute(
                            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                            (
                                rec["run_id"],
                                rec["started"],
                                rec["finished"],
                                rec["outcome"],
                                line.decode(),
                            ),
                        )
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            (
                                rec["request_id"],
                                rec["run_id"],
                                rec["started"],
                                rec["finished"],
                                rec["outcome"],
                                rec["latency_ms"],
                                rec["model_calls"],
                                rec["final_host"],
                                rec["final_model"],
                                rec["error_class"],
                                line.decode(),
                            ),
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
