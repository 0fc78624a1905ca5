"""A small notes store in SQLite: ``add_note``, ``find_notes``, ``update_note``, ``delete_note``.

Every statement is built here, from fixed SQL text and bound parameters, and still runs through
:class:`~elaria.security.SafeSQLite` (read-write, the ``notes`` table only): a note whose text
is ``'; DROP TABLE notes; --`` is stored and found again as text. The schema is created on first
use by this module's own trusted connection. Thread-safe: SafeSQLite serialises its connection.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from elaria.security import SafeSQLite
from python_tools._common import LazyDatabase, timestamp, tool_error

__all__ = ["MAX_FIND_RESULTS", "NotesStore"]

#: The most notes one find_notes call returns.
MAX_FIND_RESULTS = 100
#: Tags are short labels; the separator cannot appear inside one.
MAX_TAGS = 20
MAX_TAG_CHARS = 40

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    body TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT ',',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""
_COLUMNS = "id, title, body, tags, created_at, updated_at"


class NotesStore(LazyDatabase):
    """Notes kept in the ``notes`` table of the SQLite database at ``path``."""

    def _store(self) -> SafeSQLite:
        return self._connection(self._create)

    def _create(self) -> SafeSQLite:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.execute(_SCHEMA)
        finally:
            conn.close()
        return SafeSQLite(self.path, allowed_tables=["notes"], read_only=False)

    def add_note(self, title: str, body: str = "", tags: list[str] | None = None) -> dict[str, Any]:
        """Save a new note.

        Args:
            title: A short title.
            body: The note's text.
            tags: Labels to find the note by later (no commas).
        """
        if not title.strip():
            raise tool_error("add_note", "the title is empty", "Give the note a short title.")
        now = timestamp()
        (row,) = self._store().execute(
            f"INSERT INTO notes (title, body, tags, created_at, updated_at) "
            f"VALUES (?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
            [title, body, _pack_tags("add_note", tags), now, now],
        )
        return _note(row)

    def find_notes(self, text: str = "", tag: str | None = None, limit: int = 20) -> dict[str, Any]:
        """Find notes whose title or body contains some text, optionally with a tag. Newest first.

        Args:
            text: Text to look for in titles and bodies (case-insensitive); empty matches all.
            tag: Only notes with this tag.
            limit: Return at most this many notes (up to 100).
        """
        sql = f"SELECT {_COLUMNS} FROM notes WHERE (instr(lower(title), lower(?)) > 0 "
        sql += "OR instr(lower(body), lower(?)) > 0)"
        params: list[Any] = [text, text]
        if tag is not None:
            sql += " AND instr(tags, ?) > 0"
            params.append(f",{_check_tag('find_notes', tag)},")
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(1, min(limit, MAX_FIND_RESULTS)))
        rows = self._store().execute(sql, params)
        return {"notes": [_note(r) for r in rows], "count": len(rows)}

    def update_note(
        self,
        note_id: int,
        title: str | None = None,
        body: str | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Change a note's title, body or tags; what is omitted stays as it is.

        Args:
            note_id: The note's id, as add_note or find_notes returned it.
            title: New title.
            body: New text (replaces the old text).
            tags: New list of tags (replaces the old ones).
        """
        changes: list[tuple[str, Any]] = []
        if title is not None:
            if not title.strip():
                raise tool_error("update_note", "the title is empty", "Give a short title.")
            changes.append(("title", title))
        if body is not None:
            changes.append(("body", body))
        if tags is not None:
            changes.append(("tags", _pack_tags("update_note", tags)))
        if not changes:
            raise tool_error("update_note", "nothing to change", "Give a new title, body or tags.")
        changes.append(("updated_at", timestamp()))
        # Column names come from the fixed list above, never from the model.
        assignments = ", ".join(f"{column} = ?" for column, _ in changes)
        rows = self._store().execute(
            f"UPDATE notes SET {assignments} WHERE id = ? RETURNING {_COLUMNS}",
            [value for _, value in changes] + [note_id],
        )
        if not rows:
            raise _missing("update_note", note_id)
        return _note(rows[0])

    def delete_note(self, note_id: int) -> dict[str, Any]:
        """Delete a note.

        Args:
            note_id: The note's id, as add_note or find_notes returned it.
        """
        rows = self._store().execute("DELETE FROM notes WHERE id = ? RETURNING id", [note_id])
        if not rows:
            raise _missing("delete_note", note_id)
        return {"deleted": note_id}


def _missing(tool: str, note_id: int) -> Exception:
    return tool_error(tool, f"there is no note with id {note_id}", "Use find_notes to get ids.")


def _check_tag(tool: str, tag: str) -> str:
    cleaned = tag.strip()
    if not cleaned or "," in cleaned or len(cleaned) > MAX_TAG_CHARS:
        raise tool_error(
            tool,
            f"invalid tag {tag!r}",
            f"A tag is 1-{MAX_TAG_CHARS} characters without commas.",
        )
    return cleaned


def _pack_tags(tool: str, tags: list[str] | None) -> str:
    """Tags stored as ``,a,b,`` so one tag is found exactly with ``instr(tags, ',a,')``."""
    if not tags:
        return ","
    if len(tags) > MAX_TAGS:
        raise tool_error(tool, f"too many tags ({len(tags)})", f"Use at most {MAX_TAGS}.")
    cleaned = list(dict.fromkeys(_check_tag(tool, t) for t in tags))
    return "," + ",".join(cleaned) + ","


def _note(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "tags": [t for t in str(row["tags"]).split(",") if t]}
