"""``SafeSQLite``: one statement the model wrote, enforced by SQLite itself.

Layers, each sufficient for its rules (SECURITY.md, "SQL"):

1. :mod:`~elaria.security.sqltokens` (cross-checked with ``sqlite3.complete_statement``): one
   statement; no string or blob literals (values are bound parameters); the leading keyword;
   placeholders that match the parameters; double-quoted identifiers respelled with backticks so
   ``WHERE name = "alice"`` can never quietly become a string comparison.
2. The connection: ``mode=ro`` when read-only, ``SQLITE_LIMIT_ATTACHED = 0``, autocommit (no
   implicit ``BEGIN``), and an authorizer that **denies by default**: it allows ``SELECT``, column
   reads of allowed tables in ``main``, recursive CTEs, functions other than the dangerous few, and
   (read-write only) ``INSERT``/``UPDATE``/``DELETE`` on allowed tables. ``ATTACH``, ``VACUUM``,
   ``PRAGMA``, DDL, transactions and the ``sqlite_*`` tables are refused while the statement is
   prepared, so a refusal happens before any side effect.
3. A progress handler stops a statement that runs past its time budget.

Thread safety: one connection, used under a lock; any thread may call. Refusals raise
:class:`~elaria.errors.SecurityViolation` (rules ``sql.*``); ordinary SQL errors (a syntax error,
no such column) propagate as ``sqlite3.Error``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from elaria.security.sqlcheck import SYSTEM_TABLES, checked_tokens
from elaria.security.sqltokens import cte_names, respell_double_quotes
from elaria.security.violations import refuse

__all__ = ["SYSTEM_TABLES", "SafeSQLite", "SqlParams"]

SqlParams = Sequence[Any] | Mapping[str, Any]

#: A model's query that runs longer than this is a runaway (a cross join, a recursive CTE).
DEFAULT_TIME_BUDGET_S = 2.0
#: VM instructions between two looks at the clock: cheap, and still a fine-grained stop.
PROGRESS_EVERY_OPS = 1_000
#: Largest string or blob a statement may build (``zeroblob(1e9)`` would exhaust memory).
MAX_VALUE_BYTES = 16 * 1024 * 1024
#: Statements whose text analysis is remembered (models repeat the same few queries), and the
#: longest statement remembered, so the cache stays small whatever the input.
STATEMENT_CACHE_SIZE = 512
CACHED_SQL_CHARS = 2_000
#: Rows one call may return before the model is told to narrow the query.
DEFAULT_MAX_ROWS = 10_000

_DENIED_FUNCTIONS = frozenset(
    {"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "zipfile"}
)
_ALLOWED_PARAM_TYPES = (str, int, float, bytes, type(None))


class SafeSQLite:
    """A guarded connection to the SQLite database at ``path``.

    ``allowed_tables`` names the tables statements may touch; ``None`` allows every table of the
    main schema except the ``sqlite_*`` system tables. The database file must already exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allowed_tables: Iterable[str] | None,
        read_only: bool = True,
        time_budget_s: float = DEFAULT_TIME_BUDGET_S,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.path = Path(path).resolve()
        self.read_only = read_only
        self.time_budget_s = time_budget_s
        self.max_rows = max_rows
        self._allowed = None if allowed_tables is None else {t.lower() for t in allowed_tables}
        if not self.path.is_file():
            raise FileNotFoundError(f"SQLite database {self.path} does not exist")
        uri = f"file:{quote(str(self.path))}?mode={'ro' if read_only else 'rw'}"
        self._conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        self._lock = threading.Lock()
        self._trusted = False
        self._ctes: frozenset[str] = frozenset()
        self._denial: tuple[str, str] | None = None
        self._deadline = 0.0
        self._conn.set_authorizer(self._authorize)
        self._conn.set_progress_handler(self._progress, PROGRESS_EVERY_OPS)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        tables = "all" if self._allowed is None else sorted(self._allowed)
        return f"SafeSQLite({str(self.path)!r}, {mode}, tables={tables})"

    def __enter__(self) -> SafeSQLite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---------------------------------------------------------------- the model's SQL

    def execute(self, sql: str, params: SqlParams = ()) -> list[dict[str, Any]]:
        """Run one guarded statement; rows as dicts. More than ``max_rows`` rows is refused."""
        rows, truncated = self.query(sql, params, limit=self.max_rows)
        if truncated:
            raise refuse(
                "sql.too_many_rows",
                f"the query returns more than {self.max_rows} rows; add a LIMIT or a narrower "
                "WHERE clause",
                value=sql,
                severity="low",
            )
        return rows

    def query(
        self, sql: str, params: SqlParams = (), *, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Like :meth:`execute`, but returns at most ``limit`` rows and whether more existed."""
        statement = (
            _analyse_cached(sql, self.read_only)
            if len(sql) <= CACHED_SQL_CHARS
            else _analyse(sql, self.read_only)
        )
        self._check_params(statement.placeholders, params)
        with self._lock, self._guarded(statement.ctes, sql):
            try:
                cursor = self._conn.execute(statement.prepared, params)
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc, statement, sql) from exc
            columns = _unique_columns(cursor.description)
            fetched = cursor.fetchmany(limit + 1) if columns else []
            cursor.close()
        return [dict(zip(columns, row, strict=True)) for row in fetched[:limit]], (
            len(fetched) > limit
        )

    # ---------------------------------------------------------------- trusted introspection

    def tables(self) -> list[str]:
        """Tables and views of the main schema the model may query, sorted."""
        with self._lock, self._trusting():
            rows = self._conn.execute(
                "SELECT name FROM main.sqlite_schema WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            ).fetchall()
        return [name for (name,) in rows if self.allows_table(name)]

    def columns(self, table: str) -> list[dict[str, Any]]:
        """``name``, ``type``, ``notnull``, ``default``, ``primary_key`` of each column."""
        if not self.allows_table(table):
            raise refuse(
                "sql.table",
                f"table {table!r} is not available; available tables: "
                f"{', '.join(self.tables()) or 'none'}",
                value=table,
                severity="low",
            )
        with self._lock, self._trusting():
            rows = self._conn.execute(
                "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?, 'main')",
                (table,),
            ).fetchall()
        return [
            {"name": n, "type": t, "notnull": bool(nn), "default": d, "primary_key": bool(pk)}
            for n, t, nn, d, pk in rows
        ]

    def allows_table(self, name: str) -> bool:
        lowered = name.lower()
        if lowered in SYSTEM_TABLES or lowered.startswith(("sqlite_", "pragma_")):
            return False
        return self._allowed is None or lowered in self._allowed

    # ---------------------------------------------------------------- checks before SQLite

    def _check_params(self, placeholders: tuple[str, ...], params: SqlParams) -> None:
        named = {p[1:] for p in placeholders if p[0] != "?"}
        if named and any(p[0] == "?" for p in placeholders):
            raise refuse(
                "sql.params", "do not mix ? and :name placeholders in one statement", value=params
            )
        values: Iterable[Any]
        if named:
            if not isinstance(params, Mapping):
                raise refuse(
                    "sql.params",
                    f"the SQL uses named placeholders ({', '.join(sorted(named))}); "
                    "send the parameters as an object",
                    value=params,
                )
            missing = named - set(params)
            if missing:
                raise refuse(
                    "sql.params",
                    f"no value for placeholder(s) {', '.join(sorted(missing))}",
                    value=params,
                )
            values = params.values()
        else:
            if isinstance(params, Mapping | str | bytes):
                raise refuse(
                    "sql.params",
                    "the SQL uses ? placeholders; send the parameters as a list",
                    value=params,
                )
            expected = _positional_count(placeholders)
            if len(params) != expected:
                raise refuse(
                    "sql.params",
                    f"the SQL has {expected} placeholder(s) but {len(params)} parameter(s) "
                    "were given; send exactly one value per ?",
                    value=params,
                )
            values = params
        for value in values:
            if not isinstance(value, _ALLOWED_PARAM_TYPES):
                raise refuse(
                    "sql.params",
                    f"parameter values must be text, numbers, bytes or null, not "
                    f"{type(value).__name__}",
                    value=params,
                )

    # ---------------------------------------------------------------- SQLite's side

    @contextmanager
    def _guarded(self, ctes: frozenset[str], sql: str) -> Iterator[None]:
        self._ctes, self._denial = ctes, None
        self._deadline = time.monotonic() + self.time_budget_s
        try:
            yield
        finally:
            self._ctes = frozenset()

    @contextmanager
    def _trusting(self) -> Iterator[None]:
        # Trusted statements carry string literals, so no model statement (which cannot) ever
        # shares their text, and so their cached prepared form, with them.
        self._trusted = True
        self._deadline = time.monotonic() + self.time_budget_s
        try:
            yield
        finally:
            self._trusted = False

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, _inner: str | None
    ) -> int:
        if self._trusted:
            return sqlite3.SQLITE_OK
        denial = self._judge(action, arg1, arg2, db)
        if denial is None:
            return sqlite3.SQLITE_OK
        self._denial = denial
        return sqlite3.SQLITE_DENY

    def _judge(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None
    ) -> tuple[str, str] | None:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return None
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            if name in _DENIED_FUNCTIONS:
                return "sql.load_extension" if name == "load_extension" else "sql.function", (
                    f"the function {arg2}() is not allowed"
                )
            return None
        table = arg1 or ""
        if action in (sqlite3.SQLITE_READ, *_WRITE_ACTIONS):
            if db not in (None, "main"):
                return "sql.schema", f"schema {db!r} is not allowed; only the main database"
            if action == sqlite3.SQLITE_READ and table.lower() in self._ctes:
                return None
            if not self.allows_table(table):
                rule = "sql.system_table" if table.lower().startswith("sqlite_") else "sql.table"
                return rule, f"table {table!r} is not available"
            if action != sqlite3.SQLITE_READ and self.read_only:
                return "sql.read_only", "this database is read-only; use SELECT"
            return None
        return (
            "sql.denied",
            f"this kind of statement ({_ACTION_NAMES.get(action, action)}) is not allowed",
        )

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def _explain(self, exc: sqlite3.DatabaseError, statement: _Statement, sql: str) -> Exception:
        text = str(exc)
        if self._denial is not None:  # the authorizer refused while SQLite prepared the statement
            rule, message = self._denial
            return refuse(rule, message, value=sql, severity="high")
        if text == "interrupted":
            return refuse(
                "sql.runaway",
                f"the query ran longer than {self.time_budget_s:g} s and was stopped; "
                "add a LIMIT or a narrower WHERE clause",
                value=sql,
            )
        if text.startswith("no such column: "):
            missing = text.removeprefix("no such column: ")
            if missing in statement.double_quoted:
                return refuse(
                    "sql.double_quoted_string",
                    f'"{missing}" names no column; double quotes are for identifiers. For a '
                    "value write ? and send it in the parameters",
                    value=sql,
                )
        return exc


_WRITE_ACTIONS = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
_ACTION_NAMES = {
    value: name.removeprefix("SQLITE_")
    for name, value in vars(sqlite3).items()
    if name.startswith("SQLITE_")
    and isinstance(value, int)
    and not name.startswith(("SQLITE_LIMIT", "SQLITE_OK", "SQLITE_DENY", "SQLITE_IGNORE"))
}


@dataclass(frozen=True, slots=True)
class _Statement:
    """What the text checks learned about one statement; a pure function of its text."""

    prepared: str
    ctes: frozenset[str]
    placeholders: tuple[str, ...]
    double_quoted: frozenset[str]


def _analyse(sql: str, read_only: bool) -> _Statement:
    # Refusals raise, and lru_cache never caches an exception: each one is logged again.
    tokens = checked_tokens(sql, read_only=read_only)
    return _Statement(
        prepared=respell_double_quotes(tokens),
        ctes=frozenset(cte_names(tokens)),
        placeholders=tuple(t.text for t in tokens if t.kind == "param"),
        double_quoted=frozenset(t.name for t in tokens if t.kind == "ident" and t.text[0] == '"'),
    )


_analyse_cached = functools.lru_cache(maxsize=STATEMENT_CACHE_SIZE)(_analyse)


def _positional_count(placeholders: tuple[str, ...]) -> int:
    """How many values SQLite expects: an anonymous ``?`` takes the largest index so far + 1."""
    highest = 0
    for text in placeholders:
        index = int(text[1:]) if len(text) > 1 else highest + 1
        highest = max(highest, index)
    return highest


def _unique_columns(description: Any) -> list[str]:
    if not description:
        return []
    seen: dict[str, int] = {}
    names: list[str] = []
    for column in description:
        name = column[0]
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names
