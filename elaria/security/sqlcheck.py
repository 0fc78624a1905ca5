"""Text-level SQL rules, decided by SQLite's own tokenization: ``check_sql``.

One statement (boundaries cross-checked with ``sqlite3.complete_statement``); no string or blob
literals (values are bound parameters; numbers, ``NULL``, ``TRUE``/``FALSE`` are fine); an allowed
leading keyword; no ``sqlite_*`` system tables, ``pragma_*`` functions or ``load_extension``.
:class:`~elaria.security.sql.SafeSQLite` runs these before SQLite sees the statement, and its
authorizer enforces the same again while preparing it; :func:`check_sql` alone serves SQL bound
for another process (an MCP server's query tool), where no authorizer of ours runs. Pure
functions, any thread.
"""

from __future__ import annotations

import sqlite3

from elaria.security.sqltokens import SqlSyntaxError, Token, significant, tokenize
from elaria.security.violations import refuse

__all__ = ["SYSTEM_TABLES", "WRITE_STATEMENTS", "check_sql", "checked_tokens"]

SYSTEM_TABLES = frozenset(
    {
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
        "sqlite_sequence",
        "sqlite_stat1",
        "sqlite_stat2",
        "sqlite_stat3",
        "sqlite_stat4",
    }
)
_READ_STATEMENTS = frozenset({"SELECT", "WITH", "VALUES"})
WRITE_STATEMENTS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_STATEMENT_RULES = {
    "ATTACH": ("sql.attach", "ATTACH is not allowed; query the tables of this database"),
    "DETACH": ("sql.attach", "DETACH is not allowed"),
    "VACUUM": ("sql.vacuum", "VACUUM (and VACUUM INTO) is not allowed"),
    "PRAGMA": ("sql.pragma", "PRAGMA is not allowed; use the describe_table tool for schemas"),
    **{
        k: ("sql.ddl", f"{k} is not allowed: the schema cannot be changed")
        for k in ("CREATE", "DROP", "ALTER", "REINDEX", "ANALYZE")
    },
    **dict.fromkeys(
        ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"),
        ("sql.transaction", "transaction control is not allowed: each statement commits alone"),
    ),
}


def check_sql(sql: str, *, read_only: bool = True) -> str:
    """Return ``sql`` unchanged if it passes the text-level rules; else refuse it (``sql.*``)."""
    if not isinstance(sql, str):
        raise refuse("sql.type", "the SQL must be a string", value=sql)
    checked_tokens(sql, read_only=read_only)
    return sql


def checked_tokens(sql: str, *, read_only: bool) -> list[Token]:
    """The tokens of ``sql`` after every text-level rule passed."""
    try:
        tokens = tokenize(sql)
    except SqlSyntaxError as exc:
        raise refuse("sql.syntax", f"the SQL cannot be read: {exc}", value=sql) from None
    sig = significant(tokens)
    if not sig:
        raise refuse("sql.empty", "the SQL is empty; send one statement", severity="low")
    # The statement's kind and the names it touches first: they give the model the real reason.
    _check_keyword(sig[0], sql, read_only)
    for tok in sig:
        _check_name(tok, sql)
    semicolons = [i for i, tok in enumerate(sig) if tok.kind == "semicolon"]
    if semicolons and semicolons[0] != len(sig) - 1:
        raise refuse(
            "sql.multiple_statements",
            "only one SQL statement per call is allowed; send the statements one at a time",
            value=sql,
            severity="high",
        )
    for tok in sig:
        if tok.kind in ("string", "blob"):
            raise refuse(
                "sql.literal",
                f"the SQL contains the literal {tok.text[:60]} : put values in the parameters "
                "and write ? (or :name) in the SQL instead",
                value=sql,
            )
    # SQLite's own tokenizer must agree about where the statement ends.
    end = sig[semicolons[0]].start + 1 if semicolons else None
    agrees = sqlite3.complete_statement(sql[:end]) if end else not sqlite3.complete_statement(sql)
    if not agrees:
        raise refuse("sql.syntax", "the SQL statement boundaries are ambiguous", value=sql)
    return tokens


def _check_keyword(first: Token, sql: str, read_only: bool) -> None:
    keyword = first.upper if first.kind == "word" else first.text
    if keyword in _READ_STATEMENTS:
        return
    if keyword in WRITE_STATEMENTS:
        if not read_only:
            return
        raise refuse(
            "sql.read_only",
            f"{keyword} is not allowed: this database is read-only; use SELECT",
            value=sql,
        )
    rule, message = _STATEMENT_RULES.get(
        keyword, ("sql.statement", f"statement {keyword!r} is not allowed")
    )
    allowed = "SELECT" if read_only else "SELECT, INSERT, UPDATE, DELETE or REPLACE"
    raise refuse(rule, f"{message}. Allowed: one {allowed}", value=sql, severity="high")


def _check_name(tok: Token, sql: str) -> None:
    if tok.kind not in ("word", "ident"):
        return
    lowered = tok.name.lower()
    if lowered in SYSTEM_TABLES:
        raise refuse(
            "sql.system_table",
            f"{tok.name} is not available; use the list_tables and describe_table tools",
            value=sql,
            severity="high",
        )
    if lowered.startswith("pragma_"):
        raise refuse("sql.pragma", f"{tok.name} (a PRAGMA function) is not allowed", value=sql)
    if lowered == "load_extension":
        raise refuse(
            "sql.load_extension", "load_extension() is not allowed", value=sql, severity="high"
        )
