"""SQLite tools: ``list_tables``, ``describe_table``, ``sql_query`` (read-only).

The model's SQL goes through :class:`~elaria.security.SafeSQLite` in read-only mode: one
``SELECT``, values as parameters, only the database's own tables, a time budget. The schema tools
never take SQL from the model at all. The database is opened on first use (it may not exist
until the notes store creates it) and then kept; the connection is thread-safe.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from elaria.security import SafeSQLite
from python_tools._common import LazyDatabase, json_safe, tool_error

__all__ = ["DEFAULT_QUERY_ROWS", "MAX_QUERY_ROWS", "DatabaseTools"]

#: Rows sql_query returns unless asked; enough to answer, small enough to read.
DEFAULT_QUERY_ROWS = 100
#: The most rows one sql_query call returns, whatever it asks.
MAX_QUERY_ROWS = 1_000

Scalar = str | int | float | bool | None


class DatabaseTools(LazyDatabase):
    """The SQLite tools over the database at ``path``."""

    def _open(self, tool: str) -> SafeSQLite:
        def opener() -> SafeSQLite:
            if not self.path.is_file():
                raise tool_error(
                    tool,
                    f"there is no database yet ({self.path.name} does not exist)",
                    "Add a note with add_note to create it, or answer without SQL.",
                )
            return SafeSQLite(self.path, allowed_tables=None, read_only=True)

        return self._connection(opener)

    def list_tables(self) -> dict[str, Any]:
        """List the tables of the SQLite database, with their column names."""
        if not self.path.is_file():
            return {"database": self.path.name, "tables": []}
        db = self._open("list_tables")
        tables = [
            {"name": name, "columns": [c["name"] for c in db.columns(name)]} for name in db.tables()
        ]
        return {"database": self.path.name, "tables": tables}

    def describe_table(self, table: str) -> dict[str, Any]:
        """Describe one table of the SQLite database: its columns, types and keys.

        Args:
            table: Table name, as listed by list_tables.
        """
        db = self._open("describe_table")
        if table not in db.tables():
            raise tool_error(
                "describe_table",
                f"there is no table named {table!r}",
                f"Available tables: {', '.join(db.tables()) or 'none'}.",
            )
        return {"table": table, "columns": db.columns(table)}

    def sql_query(
        self,
        sql: str,
        params: list[Scalar] | dict[str, Scalar] | None = None,
        max_rows: int = DEFAULT_QUERY_ROWS,
    ) -> dict[str, Any]:
        """Run one read-only SQL SELECT. Put every value in params, never quoted in the SQL.

        Write ? in the SQL for each value and list the values in params, in order
        (for example sql="SELECT * FROM notes WHERE title = ?", params=["Groceries"]).

        Args:
            sql: One SELECT statement (WITH and UNION are fine) without quoted text values.
            params: The values for the ? placeholders, in order (or an object for :name ones).
            max_rows: Return at most this many rows (up to 1000).
        """
        db = self._open("sql_query")
        limit = max(1, min(max_rows, MAX_QUERY_ROWS))
        try:
            rows, truncated = db.query(sql, params if params is not None else [], limit=limit)
        except sqlite3.Error as exc:
            raise tool_error(
                "sql_query",
                f"SQLite said: {exc}",
                "Check table and column names with list_tables and describe_table.",
            ) from exc
        result: dict[str, Any] = {
            "columns": list(rows[0]) if rows else [],
            "rows": [{k: json_safe(v) for k, v in row.items()} for row in rows],
            "row_count": len(rows),
        }
        if truncated:
            result["truncated"] = True
            result["hint"] = f"Only the first {limit} rows are shown; add a LIMIT or a WHERE."
        return result
