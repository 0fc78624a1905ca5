"""Shared helpers for the built-in tools: errors the model can act on, JSON-safe values."""

from __future__ import annotations

import base64
import errno
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elaria.errors import ToolExecutionError
from elaria.security import SafeSQLite

__all__ = ["LazyDatabase", "json_safe", "os_error", "timestamp", "tool_error"]


def tool_error(tool: str, message: str, hint: str | None = None) -> ToolExecutionError:
    """An error the model reads as the tool result: what went wrong and what to do instead."""
    return ToolExecutionError(message, tool=tool, hint=hint)


_OS_HINTS = {
    errno.ENOENT: "It does not exist; use list_dir to see what is there.",
    errno.EEXIST: "It already exists; pass overwrite=true to replace it, or pick another name.",
    errno.EISDIR: "It is a directory; use list_dir.",
    errno.ENOTDIR: "A part of the path is a file, not a directory.",
    errno.EACCES: "Permission denied; choose another file.",
    errno.EPERM: "Not permitted; choose another file.",
    errno.ENOSPC: "The disk is full.",
    errno.ENAMETOOLONG: "The name is too long; use a shorter one.",
}


def os_error(tool: str, shown: str, exc: OSError) -> ToolExecutionError:
    """Turn an OS error on ``shown`` into a tool error with a hint."""
    reason = exc.strerror or type(exc).__name__
    return tool_error(tool, f"{shown}: {reason}", _OS_HINTS.get(exc.errno or 0))


def json_safe(value: Any) -> Any:
    """``value`` with bytes turned into ``{"base64": ..., "length": n}`` so it serialises."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return {"base64": base64.b64encode(raw).decode("ascii"), "length": len(raw)}
    return value


def timestamp(seconds: float | None = None) -> str:
    """ISO 8601 UTC, to the second."""
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="seconds")


class LazyDatabase:
    """A :class:`SafeSQLite` opened on first use. Tools run in worker threads, so the open is
    decided under a lock; ``close`` may be called from any thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: SafeSQLite | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self, opener: Callable[[], SafeSQLite]) -> SafeSQLite:
        with self._lock:
            if self._db is None:
                self._db = opener()
            return self._db
