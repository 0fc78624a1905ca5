"""The SQLite tools (list_tables, describe_table, sql_query) and the notes store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation, ToolExecutionError
from python_tools.database import DatabaseTools
from python_tools.notes import NotesStore

INJECTION = "'; DROP TABLE notes; --"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "notes.db"


@pytest.fixture
def notes(db_path: Path) -> Iterator[NotesStore]:
    store = NotesStore(db_path)
    yield store
    store.close()


@pytest.fixture
def sql(db_path: Path) -> Iterator[DatabaseTools]:
    tools = DatabaseTools(db_path)
    yield tools
    tools.close()


def test_notes_round_trip(notes: NotesStore) -> None:
    added = notes.add_note("Groceries", "milk, eggs", tags=["home", "todo"])
    assert added["id"] == 1
    assert added["tags"] == ["home", "todo"]
    assert added["created_at"] == added["updated_at"]
    notes.add_note("Work", "send the report", tags=["todo"])
    found = notes.find_notes("MILK")
    assert [n["title"] for n in found["notes"]] == ["Groceries"]
    assert [n["title"] for n in notes.find_notes(tag="todo")["notes"]] == ["Work", "Groceries"]
    assert notes.find_notes(tag="tod")["notes"] == []  # tags match exactly, not by substring
    updated = notes.update_note(1, body="milk, eggs, bread", tags=["home"])
    assert updated["body"] == "milk, eggs, bread"
    assert updated["title"] == "Groceries"
    assert updated["tags"] == ["home"]
    assert notes.delete_note(1) == {"deleted": 1}
    assert [n["id"] for n in notes.find_notes()["notes"]] == [2]


def test_an_injection_text_is_stored_and_found_as_text(notes: NotesStore, db_path: Path) -> None:
    note = notes.add_note(INJECTION, INJECTION, tags=["x'); DROP TABLE notes; --"])
    assert note["title"] == INJECTION
    (found,) = notes.find_notes("DROP TABLE")["notes"]
    assert found["body"] == INJECTION
    assert notes.find_notes(tag="x'); DROP TABLE notes; --")["count"] == 1
    notes.update_note(note["id"], title="' OR 1=1 --")
    assert notes.find_notes("' OR 1=1")["notes"][0]["id"] == note["id"]
    conn = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert "notes" in tables


def test_union_in_a_search_is_just_text(notes: NotesStore) -> None:
    notes.add_note("plain", "nothing here")
    assert notes.find_notes("x' UNION SELECT name FROM sqlite_master --")["notes"] == []


def test_notes_errors_tell_the_model_what_to_do(notes: NotesStore) -> None:
    with pytest.raises(ToolExecutionError, match="no note with id 42") as info:
        notes.update_note(42, title="x")
    assert "find_notes" in info.value.to_model_text()
    with pytest.raises(ToolExecutionError, match="no note with id 42"):
        notes.delete_note(42)
    with pytest.raises(ToolExecutionError, match="nothing to change"):
        notes.update_note(1)
    with pytest.raises(ToolExecutionError, match="title is empty"):
        notes.add_note("  ")
    with pytest.raises(ToolExecutionError, match="invalid tag"):
        notes.add_note("t", tags=["a,b"])
    with pytest.raises(ToolExecutionError, match="too many tags"):
        notes.add_note("t", tags=[f"t{i}" for i in range(30)])


def test_find_notes_limit(notes: NotesStore) -> None:
    for i in range(5):
        notes.add_note(f"note {i}")
    assert [n["title"] for n in notes.find_notes(limit=2)["notes"]] == ["note 4", "note 3"]


_TEXT = st.text(max_size=200).filter(lambda t: t.strip() != "")


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=60
)
@given(title=_TEXT, body=st.text(max_size=500))
def test_property_any_text_round_trips(notes: NotesStore, title: str, body: str) -> None:
    note = notes.add_note(title, body)
    (found,) = [n for n in notes.find_notes(limit=100)["notes"] if n["id"] == note["id"]]
    assert (found["title"], found["body"]) == (title, body)


def test_sql_tools_before_any_database(sql: DatabaseTools) -> None:
    assert sql.list_tables() == {"database": "notes.db", "tables": []}
    with pytest.raises(ToolExecutionError, match="no database yet"):
        sql.sql_query("SELECT 1")


def test_sql_tools_over_the_notes_database(notes: NotesStore, sql: DatabaseTools) -> None:
    notes.add_note("Groceries", "milk")
    notes.add_note("Work", INJECTION)
    assert sql.list_tables() == {
        "database": "notes.db",
        "tables": [
            {
                "name": "notes",
                "columns": ["id", "title", "body", "tags", "created_at", "updated_at"],
            }
        ],
    }
    described = sql.describe_table("notes")
    assert described["columns"][0] == {
        "name": "id",
        "type": "INTEGER",
        "notnull": False,
        "default": None,
        "primary_key": True,
    }
    result = sql.sql_query("SELECT id, title FROM notes WHERE body = ?", [INJECTION])
    assert result == {
        "columns": ["id", "title"],
        "rows": [{"id": 2, "title": "Work"}],
        "row_count": 1,
    }
    named = sql.sql_query("SELECT title FROM notes WHERE id = :id", {"id": 1})
    assert named["rows"] == [{"title": "Groceries"}]


def test_sql_query_truncates_and_serialises_bytes(notes: NotesStore, sql: DatabaseTools) -> None:
    for i in range(3):
        notes.add_note(f"n{i}")
    result = sql.sql_query("SELECT title, CAST(title AS BLOB) AS raw FROM notes", max_rows=2)
    assert result["row_count"] == 2
    assert result["truncated"] is True
    assert result["rows"][0]["raw"] == {"base64": "bjA=", "length": 2}


def test_sql_query_refusals(notes: NotesStore, sql: DatabaseTools, tmp_path: Path) -> None:
    notes.add_note("alice", "x")
    cases: list[tuple[str, Any, str]] = [
        ("SELECT * FROM notes WHERE title = 'alice'", None, "sql.literal"),
        ('SELECT * FROM notes WHERE title = "alice"', None, "sql.double_quoted_string"),
        ("DELETE FROM notes", None, "sql.read_only"),
        ("DROP TABLE notes", None, "sql.ddl"),
        ("SELECT 1; DELETE FROM notes", None, "sql.multiple_statements"),
        ("PRAGMA table_info(notes)", None, "sql.pragma"),
        ("SELECT * FROM sqlite_master", None, "sql.system_table"),
        ("SELECT * FROM sqlite_sequence", None, "sql.system_table"),
        ("ATTACH ? AS x", [str(tmp_path / "x.db")], "sql.attach"),
        ("VACUUM INTO ?", [str(tmp_path / "copy.db")], "sql.vacuum"),
    ]
    for query, params, rule in cases:
        with pytest.raises(SecurityViolation) as info:
            sql.sql_query(query, params)
        assert info.value.rule == rule, query
    assert not (tmp_path / "x.db").exists()
    assert not (tmp_path / "copy.db").exists()
    assert notes.find_notes("")["count"] == 1


def test_sql_errors_are_explained(notes: NotesStore, sql: DatabaseTools) -> None:
    notes.add_note("a")
    with pytest.raises(ToolExecutionError, match="no such column") as info:
        sql.sql_query("SELECT nope FROM notes")
    assert "describe_table" in info.value.to_model_text()
    with pytest.raises(ToolExecutionError, match="no table named"):
        sql.describe_table("missing")


def test_only_user_tables_are_visible(db_path: Path, sql: DatabaseTools) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
        conn.execute("INSERT INTO t (v) VALUES ('x')")
    conn.close()
    assert [t["name"] for t in sql.list_tables()["tables"]] == ["t"]  # no sqlite_sequence
