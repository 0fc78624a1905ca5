"""SafeSQLite: enforced by SQLite (authorizer, limits, tokenizer, progress handler)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation
from elaria.security import SafeSQLite, check_sql


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sql") / "template.db"
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executescript(
                """
                CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, note BLOB);
                CREATE TABLE secrets(token TEXT);
                INSERT INTO users(name) VALUES ('alice'), ('bob');
                INSERT INTO secrets VALUES ('s3cr3t');
                """
            )
    finally:
        conn.close()
    return path


@pytest.fixture
def db_path(tmp_path: Path, template_db: Path) -> Path:
    """A fresh copy of the template (copying is far cheaper than committing anew)."""
    path = tmp_path / "app.db"
    shutil.copyfile(template_db, path)
    return path


@pytest.fixture
def ro(db_path: Path) -> Iterator[SafeSQLite]:
    with SafeSQLite(db_path, allowed_tables=["users"]) as db:
        yield db


@pytest.fixture
def rw(db_path: Path) -> Iterator[SafeSQLite]:
    with SafeSQLite(db_path, allowed_tables=["users"], read_only=False) as db:
        yield db


def _rule(db: SafeSQLite, sql: str, params: Any = ()) -> str:
    with pytest.raises(SecurityViolation) as info:
        db.execute(sql, params)
    return info.value.rule


def _table(db_path: Path, name: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()
    finally:
        conn.close()


def test_parameterised_selects_return_dicts(ro: SafeSQLite) -> None:
    assert ro.execute("SELECT id, name FROM users WHERE name = ?", ["alice"]) == [
        {"id": 1, "name": "alice"}
    ]
    assert ro.execute("SELECT name FROM users WHERE id = :id", {"id": 2}) == [{"name": "bob"}]
    assert ro.execute("select count(*) AS n from users;") == [{"n": 2}]


def test_cte_union_and_values_are_allowed(ro: SafeSQLite) -> None:
    rows = ro.execute(
        "WITH recent AS (SELECT name FROM users WHERE id > ?) "
        "SELECT name FROM recent UNION SELECT name FROM users WHERE id = ?",
        [1, 1],
    )
    assert sorted(r["name"] for r in rows) == ["alice", "bob"]
    assert ro.execute("VALUES (1), (2)") == [{"column1": 1}, {"column1": 2}]
    rows = ro.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
        "SELECT i FROM n"
    )
    assert [r["i"] for r in rows] == [1, 2, 3]


def test_duplicate_column_names_stay_distinct(ro: SafeSQLite) -> None:
    rows = ro.execute("SELECT u.name, v.name FROM users u JOIN users v ON u.id = v.id LIMIT 1")
    assert rows == [{"name": "alice", "name_2": "alice"}]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM users WHERE name = 'alice'",
        "SELECT x'00'",
        "SELECT * FROM users WHERE name = 'it''s'",
    ],
)
def test_string_and_blob_literals_are_refused(ro: SafeSQLite, sql: str) -> None:
    assert _rule(ro, sql) == "sql.literal"


def test_numbers_null_and_booleans_are_fine(ro: SafeSQLite) -> None:
    assert ro.execute("SELECT 1, 2.5, NULL, TRUE, FALSE, -3e2 AS e") == [
        {"1": 1, "2.5": 2.5, "NULL": None, "TRUE": 1, "FALSE": 0, "e": -300.0}
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP TABLE users",
        "SELECT 1;;",
        "SELECT 1 /* a */ ; DELETE FROM users",
    ],
)
def test_more_than_one_statement_is_refused(ro: SafeSQLite, sql: str) -> None:
    assert _rule(ro, sql) == "sql.multiple_statements"


def test_semicolons_in_comments_and_identifiers_do_not_split(ro: SafeSQLite) -> None:
    assert ro.execute("SELECT 1 AS [a;b] -- ; DROP TABLE users") == [{"a;b": 1}]
    assert ro.execute("SELECT 1 AS x /* ; */;") == [{"x": 1}]


def test_attach_is_refused_and_creates_no_file(ro: SafeSQLite, tmp_path: Path) -> None:
    target = tmp_path / "attached.db"
    assert _rule(ro, "ATTACH ? AS other", [str(target)]) == "sql.attach"
    assert _rule(ro, "attach database ? as other", [str(target)]) == "sql.attach"
    assert not target.exists()


def test_vacuum_into_is_refused_and_creates_no_file(
    ro: SafeSQLite, rw: SafeSQLite, tmp_path: Path
) -> None:
    target = tmp_path / "copy.db"
    for db in (ro, rw):
        assert _rule(db, "VACUUM INTO ?", [str(target)]) == "sql.vacuum"
        assert _rule(db, "VACUUM") == "sql.vacuum"
    assert not target.exists()


def test_forbidden_statements_with_literals_report_the_real_reason(
    ro: SafeSQLite, tmp_path: Path
) -> None:
    target = tmp_path / "literal.db"
    assert _rule(ro, f"ATTACH DATABASE '{target}' AS x") == "sql.attach"
    assert _rule(ro, f"VACUUM INTO '{target}'") == "sql.vacuum"
    assert _rule(ro, "PRAGMA table_info('users')") == "sql.pragma"
    assert _rule(ro, "SELECT name FROM sqlite_master WHERE type = 'table'") == "sql.system_table"
    assert not target.exists()


def test_the_connection_itself_refuses_attach(ro: SafeSQLite, tmp_path: Path) -> None:
    """Below the tokenizer: the authorizer and the attach limit refuse on their own."""
    conn = ro._conn  # the guarded connection, reached past the text checks on purpose
    target = tmp_path / "sneaky.db"
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("ATTACH ? AS sneaky", (str(target),))
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("VACUUM INTO ?", (str(target),))
    assert not target.exists()


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("PRAGMA table_info(users)", "sql.pragma"),
        ("pragma writable_schema = 1", "sql.pragma"),
        ("SELECT * FROM pragma_table_info(?)", "sql.pragma"),
        ("SELECT * FROM sqlite_master", "sql.system_table"),
        ("SELECT * FROM sqlite_schema", "sql.system_table"),
        ("SELECT * FROM temp.sqlite_temp_master", "sql.system_table"),
        ("SELECT * FROM sqlite_sequence", "sql.system_table"),
        ('SELECT * FROM "sqlite_master"', "sql.system_table"),
        ("SELECT load_extension(?)", "sql.load_extension"),
        ("CREATE TABLE t(x)", "sql.ddl"),
        ("DROP TABLE users", "sql.ddl"),
        ("ALTER TABLE users ADD COLUMN y", "sql.ddl"),
        ("BEGIN", "sql.transaction"),
        ("COMMIT", "sql.transaction"),
        ("SAVEPOINT a", "sql.transaction"),
        ("DETACH other", "sql.attach"),
        ("EXPLAIN SELECT 1", "sql.statement"),
        ("REINDEX", "sql.ddl"),
    ],
)
def test_forbidden_statements_and_names(ro: SafeSQLite, sql: str, rule: str) -> None:
    params: list[Any] = ["users"] if "?" in sql else []
    assert _rule(ro, sql, params) == rule


def test_tables_outside_the_allowlist_are_refused_by_the_authorizer(
    ro: SafeSQLite,
) -> None:
    assert _rule(ro, "SELECT token FROM secrets") == "sql.table"
    assert _rule(ro, "SELECT name FROM users WHERE name IN (SELECT token FROM secrets)") == (
        "sql.table"
    )
    assert _rule(ro, "WITH s AS (SELECT * FROM secrets) SELECT * FROM s") == "sql.table"


def test_schemas_other_than_main_are_refused(ro: SafeSQLite) -> None:
    assert ro.execute("SELECT name FROM main.users WHERE id = ?", [1]) == [{"name": "alice"}]
    with ro._trusting():  # a temp table shadowing an allowed name, made behind the guard's back
        ro._conn.execute("CREATE TEMP TABLE users(id, name)")
    assert _rule(ro, "SELECT * FROM temp.users") == "sql.schema"


def test_read_only_refuses_writes_and_leaves_tables_unchanged(
    ro: SafeSQLite, db_path: Path
) -> None:
    before = _table(db_path, "users")
    assert _rule(ro, "INSERT INTO users(name) VALUES (?)", ["eve"]) == "sql.read_only"
    assert _rule(ro, "DELETE FROM users") == "sql.read_only"
    assert _rule(ro, "WITH x AS (SELECT 1) DELETE FROM users") == "sql.read_only"
    assert _table(db_path, "users") == before


def test_read_write_allows_dml_on_allowed_tables_only(rw: SafeSQLite, db_path: Path) -> None:
    assert rw.execute("INSERT INTO users(name) VALUES (?) RETURNING id", ["carol"]) == [{"id": 3}]
    assert rw.execute("UPDATE users SET name = ? WHERE id = ?", ["caroline", 3]) == []
    assert rw.execute("REPLACE INTO users(id, name) VALUES (?, ?)", [3, "carol"]) == []
    assert rw.execute("DELETE FROM users WHERE id = ? RETURNING name", [3]) == [{"name": "carol"}]
    assert _rule(rw, "INSERT INTO secrets VALUES (?)", ["x"]) == "sql.table"
    assert _rule(rw, "DELETE FROM secrets") == "sql.table"
    assert _table(db_path, "secrets") == [("s3cr3t",)]


def test_double_quoted_string_quirk_is_refused_not_silently_a_literal(ro: SafeSQLite) -> None:
    # Plain sqlite3 would compare with the string 'alice' and return a row.
    assert _rule(ro, 'SELECT * FROM users WHERE name = "alice"') == "sql.double_quoted_string"
    # A double-quoted identifier that does name something still works.
    assert ro.execute('SELECT "name" AS "Name" FROM "users" WHERE "id" = ?', [1]) == [
        {"Name": "alice"}
    ]


def test_runaway_queries_are_stopped(db_path: Path) -> None:
    with SafeSQLite(db_path, allowed_tables=["users"], time_budget_s=0.05) as db:
        rule = _rule(
            db,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
            "SELECT count(*) FROM n",
        )
        assert rule == "sql.runaway"
        assert db.execute("SELECT count(*) AS n FROM users") == [{"n": 2}]


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT ?, ?", [1]),
        ("SELECT ?", [1, 2]),
        ("SELECT ?", {"a": 1}),
        ("SELECT :a", [1]),
        ("SELECT :a, :b", {"a": 1}),
        ("SELECT :a, ?", {"a": 1}),
        ("SELECT ?", [[1]]),
        ("SELECT ?", [{"a": 1}]),
        ("SELECT ?", "x"),
        ("SELECT ?2", [1]),
    ],
)
def test_parameters_must_match_and_be_plain_values(ro: SafeSQLite, sql: str, params: Any) -> None:
    assert _rule(ro, sql, params) == "sql.params"


def test_a_named_placeholder_may_repeat(ro: SafeSQLite) -> None:
    rows = ro.execute(
        "SELECT name FROM users WHERE name = :n OR :n IS NULL ORDER BY id", {"n": None}
    )
    assert [r["name"] for r in rows] == ["alice", "bob"]


def test_numbered_placeholders_count_like_sqlite(ro: SafeSQLite) -> None:
    assert ro.execute("SELECT ?2 AS b, ?1 AS a", [1, 2]) == [{"b": 2, "a": 1}]
    assert ro.execute("SELECT ?2 AS b, ? AS c", [1, 2, 3]) == [{"b": 2, "c": 3}]


def test_union_inside_a_bound_value_is_just_a_value(ro: SafeSQLite) -> None:
    value = "x' UNION SELECT token FROM secrets --"
    assert ro.execute("SELECT name FROM users WHERE name = ?", [value]) == []


def test_too_many_rows_is_refused_but_query_truncates(db_path: Path) -> None:
    with SafeSQLite(db_path, allowed_tables=["users"], max_rows=1) as db:
        assert _rule(db, "SELECT name FROM users") == "sql.too_many_rows"
        rows, truncated = db.query("SELECT name FROM users ORDER BY id", limit=1)
        assert rows == [{"name": "alice"}]
        assert truncated


def test_syntax_and_unknown_names_are_ordinary_sqlite_errors(ro: SafeSQLite) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        ro.execute("SELECT * FROM nowhere")
    with pytest.raises(sqlite3.OperationalError, match="no such column"):
        ro.execute("SELECT nope FROM users")
    assert _rule(ro, "SELECT 'unterminated") == "sql.syntax"
    assert _rule(ro, "   -- nothing") == "sql.empty"


def test_trusted_introspection(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE VIEW adults AS SELECT * FROM users")
    conn.close()
    with SafeSQLite(db_path, allowed_tables=None) as db:
        assert db.tables() == ["adults", "secrets", "users"]
        cols = db.columns("users")
        assert [c["name"] for c in cols] == ["id", "name", "note"]
        assert cols[0]["primary_key"] is True
        with pytest.raises(SecurityViolation):
            db.columns("sqlite_sequence")
    with SafeSQLite(db_path, allowed_tables=["users"]) as db:
        assert db.tables() == ["users"]
        with pytest.raises(SecurityViolation):
            db.columns("secrets")


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SafeSQLite(tmp_path / "none.db", allowed_tables=None)
    assert not os.path.exists(tmp_path / "none.db")


def test_usable_from_other_threads(ro: SafeSQLite) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(ro.execute, "SELECT name FROM users WHERE id = ?", [i % 2 + 1])
            for i in range(20)
        ]
        names = {f.result()[0]["name"] for f in futures}
    assert names == {"alice", "bob"}


_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=64),
)


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=200
)
@given(value=_VALUES)
def test_property_bound_values_come_back_unchanged(ro: SafeSQLite, value: Any) -> None:
    (row,) = ro.execute("SELECT ? AS v", [value])
    assert row["v"] == value
    assert type(row["v"]) is type(value)


# Each example commits (an fsync): fewer of them, the binding itself is covered above.
@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=25
)
@given(value=_VALUES)
def test_property_bound_values_are_stored_unchanged(rw: SafeSQLite, value: Any) -> None:
    (row,) = rw.execute("INSERT INTO users(note) VALUES (?) RETURNING id", [value])
    (stored,) = rw.execute("SELECT note FROM users WHERE id = ?", [row["id"]])
    assert stored["note"] == value
    assert type(stored["note"]) is type(value)


def test_check_sql_applies_the_text_rules_without_a_database() -> None:
    assert check_sql("SELECT * FROM t WHERE a = ?") == "SELECT * FROM t WHERE a = ?"
    assert check_sql("DELETE FROM t WHERE id = ?", read_only=False)
    for sql, rule in [
        ("SELECT 'x'", "sql.literal"),
        ("SELECT 1; SELECT 2", "sql.multiple_statements"),
        ("ATTACH ? AS x", "sql.attach"),
        ("DELETE FROM t", "sql.read_only"),
        ("SELECT * FROM sqlite_master", "sql.system_table"),
    ]:
        with pytest.raises(SecurityViolation) as info:
            check_sql(sql)
        assert info.value.rule == rule


def test_long_statements_get_the_same_checks(ro: SafeSQLite) -> None:
    long_sum = "SELECT " + " + ".join(["1"] * 1_000) + " AS total"
    assert len(long_sum) > 2_000
    assert ro.execute(long_sum) == [{"total": 1_000}]
    assert _rule(ro, long_sum + " FROM users WHERE name = 'x'") == "sql.literal"
