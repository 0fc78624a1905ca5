"""Append-only JSONL files that never disturb their callers: the one writer under every telemetry
file (log sinks, the inference event log, the audit ledger).

* :class:`JsonlFile` — synchronous. ``write(data)`` appends whole lines, each ``os.write`` a run
  of complete lines on an ``O_APPEND`` descriptor (so lines from concurrent processes do not
  interleave); rotates by size when asked, between lines; follows the path when the file or its
  directory is removed or rotated by someone else; opens with ``O_NOFOLLOW`` and mode 0600; and
  **never raises on I/O**: the first failure of an outage goes to ``on_failure`` (once), every
  lost write is counted, and it tries again after :data:`RETRY_AFTER_S`. Thread-safe (one lock
  per file).
* :class:`LineWriter` — asynchronous. A bounded queue and a single writer task in front of a
  :class:`JsonlFile`, so callers on the event loop never wait for the disk: ``submit`` is
  non-blocking and drops (and counts) when the queue is full. Lines are written in batches from a
  worker thread, gathered for up to :data:`LINGER_S` so a busy loop pays one thread hop per
  batch, not per line. ``start``/``submit``/``aclose`` must be called on the loop that started it.
  Cancelling ``aclose`` cancels the writer; lines still queued are counted as dropped.
  ``submit_deferred(make_line)`` queues a line that is not built yet: the writer task calls
  ``make_line()`` on the loop when it takes the batch (so within :data:`LINGER_S`). Callers
  capture plain values when they submit and leave redaction and JSON encoding to the batch: a
  record built per agent round, between the SDK's and the tools' work, runs with cold caches and
  costs several times what the same code costs in a batch. A ``make_line`` that raises or
  returns None drops its line (counted; the first failure is reported through ``on_failure``).
  ``stats()["build_seconds"]`` is the time the loop spent building deferred lines: work the
  callers handed over, done later (benchmarks charge it back to them).

A write that the disk accepts only in part (disk full mid-line) can leave one truncated line;
readers of these files skip lines that are not valid JSON and count them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import msgspec

__all__ = [
    "BATCH_MAX_LINES",
    "CLOSE_TIMEOUT_S",
    "LINGER_S",
    "REOPEN_CHECK_S",
    "RETRY_AFTER_S",
    "DeferredLine",
    "JsonlFile",
    "LineWriter",
    "encode_line",
]

#: After a failed write, wait this long before touching the disk again: a full disk or a
#: missing directory does not heal in microseconds, and each retry costs syscalls per record.
RETRY_AFTER_S: Final = 5.0
#: How often to check that our descriptor is still the file at ``path`` (removed, rotated by
#: another process); checking on every write would double the syscalls.
REOPEN_CHECK_S: Final = 1.0
#: ``aclose`` waits this long for queued lines to reach the disk before giving up on them.
CLOSE_TIMEOUT_S: Final = 10.0
#: Upper bound of lines joined into one write by the writer task (keeps each write small).
BATCH_MAX_LINES: Final = 512
#: After the first queued line, wait this long for more before writing: each write costs a hop
#: to a worker thread (milliseconds on a busy machine), so one hop per 50 ms, not per event.
#: Lines reach the disk at most this late; ``aclose`` still writes everything.
LINGER_S: Final = 0.05

_FILE_MODE: Final = 0o600  # logs may hold previews of user data: owner only
#: Compact JSON, several times faster than ``json``; a value it has no JSON form for becomes
#: its ``str()``, as with ``json.dumps(default=str)``. NaN and infinities become null.
_LINE_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


def encode_line(value: Any) -> bytes:
    """``value`` as one line of compact UTF-8 JSON, newline included.

    Raises ``UnicodeEncodeError`` for text UTF-8 cannot hold (a lone surrogate) and msgspec's
    errors for what has no JSON form; callers then take their ``json`` path, which escapes."""
    return _LINE_ENCODER.encode(value) + b"\n"


class JsonlFile:
    """One append-only file of whole lines; see the module docstring for the contract."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        keep: int = 0,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._keep = keep
        self._on_failure = on_failure
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._last_check = 0.0
        self._retry_at = 0.0
        self._failing = False
        self._closed = False
        self.lines_written = 0
        self.bytes_written = 0
        self.failed_writes = 0
        self.lines_dropped = 0
        self.rotations = 0
        self.last_error: str | None = None

    def write(self, data: bytes) -> bool:
        """Append ``data`` (complete lines). False when it was dropped; never raises ``OSError``."""
        lines = data.count(b"\n")
        with self._lock:
            if self._closed:
                self.lines_dropped += lines
                return False
            now = self._clock()
            if self._failing and now < self._retry_at:
                self.lines_dropped += lines
                return False
            try:
                self._ensure_open(now)
                if self._max_bytes:
                    self._write_rotating(data, self._max_bytes)
                else:
                    self._write_all(data)
            except OSError as exc:
                self._fail(exc, now)
                self.lines_dropped += lines
                return False
            if self._failing:
                self._failing = False
                self._report(f"writing to {self.path} works again")
            self.lines_written += lines
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close_fd()

    def stats(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "lines_written": self.lines_written,
            "bytes_written": self.bytes_written,
            "lines_dropped": self.lines_dropped,
            "failed_writes": self.failed_writes,
            "rotations": self.rotations,
            "failing": self._failing,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ internals (lock held)

    def _ensure_open(self, now: float) -> None:
        if self._fd is not None and now - self._last_check >= REOPEN_CHECK_S:
            self._last_check = now
            if not self._still_ours():
                self._close_fd()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink planted at the file's name after start-up checks is refused.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, _FILE_MODE)
            self._size = os.fstat(self._fd).st_size
            self._last_check = now

    def _still_ours(self) -> bool:
        assert self._fd is not None
        try:
            on_disk = os.stat(self.path)
        except OSError:
            return False
        mine = os.fstat(self._fd)
        self._size = mine.st_size  # other processes append too
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            self.bytes_written += written
            view = view[written:]

    def _write_rotating(self, data: bytes, max_bytes: int) -> None:
        """Write whole lines, rotating whenever the next line would pass ``max_bytes`` (a batch
        can hold many lines; a single line longer than the limit gets a file to itself)."""
        if self._size + len(data) <= max_bytes:
            self._write_all(data)
            return
        pending: list[bytes] = []
        pending_bytes = 0
        for line in data.splitlines(keepends=True):
            if self._size + pending_bytes + len(line) > max_bytes:
                if pending:
                    self._write_all(b"".join(pending))
                    pending, pending_bytes = [], 0
                if self._size:
                    self._rotate()
            pending.append(line)
            pending_bytes += len(line)
        if pending:
            self._write_all(b"".join(pending))

    def _rotate(self) -> None:
        self._close_fd()
        if self._keep <= 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self._keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._ensure_open(self._clock())

    def _fail(self, exc: OSError, now: float) -> None:
        self.failed_writes += 1
        self.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        self._retry_at = now + RETRY_AFTER_S
        self._close_fd()
        if not self._failing:
            self._failing = True
            self._report(
                f"cannot write {self.path} ({self.last_error}); records for it are dropped and "
                f"counted, retrying every {RETRY_AFTER_S:g} s"
            )

    def _report(self, text: str) -> None:
        _report(self._on_failure, text)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _report(on_failure: Callable[[str], None] | None, text: str) -> None:
    if on_failure is not None:
        with contextlib.suppress(Exception):  # a broken reporter must not stop the writing
            on_failure(text)


_STOP: Final = object()
#: Builds one line (ending in ``\n``) when its batch is written; None drops it.
DeferredLine = Callable[[], bytes | None]


class LineWriter:
    """A bounded queue and one writer task in front of a :class:`JsonlFile`."""

    def __init__(
        self,
        file: JsonlFile,
        *,
        queue_size: int,
        on_batch: Callable[[list[bytes]], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        linger_s: float = LINGER_S,
    ) -> None:
        self.file = file
        self._linger_s = linger_s
        self._on_batch = on_batch
        self._on_failure = on_failure
        self._batch_failing = False
        self.batch_failures = 0
        # A deque and a wake-up future, not an asyncio.Queue: a put is an append (every agent
        # round submits lines), and the writer is woken once per batch, not once per line.
        self._items: deque[bytes | DeferredLine | object] = deque()
        self._queue_size = queue_size
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.submitted = 0
        self.dropped_queue_full = 0
        self.dropped_not_running = 0
        self.dropped_unbuilt = 0
        self._unbuilt_reported = False
        self.build_seconds = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._closing

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"telemetry-writer:{self.file.path.name}"
            )

    def submit(self, line: bytes) -> bool:
        """Queue one line (ending in ``\\n``) without waiting. False when dropped."""
        return self._put(line)

    def submit_deferred(self, make_line: DeferredLine) -> bool:
        """Queue a line that ``make_line()`` builds when its batch is written (see the module
        docstring). False when dropped."""
        return self._put(make_line)

    def _put(self, item: bytes | DeferredLine) -> bool:
        if not self.running:
            self.dropped_not_running += 1
            return False
        if len(self._items) >= self._queue_size:
            self.dropped_queue_full += 1
            return False
        self._items.append(item)
        self.submitted += 1
        if self._waiter is not None:
            self._wake()
        return True

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def aclose(self) -> None:
        """Write everything queued (bounded by :data:`CLOSE_TIMEOUT_S`), then close the file."""
        if self._task is None or self._closing:
            return
        self._closing = True
        task = self._task
        try:
            self._items.append(_STOP)  # beyond the bound: the end marker is never dropped
            self._wake()
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=CLOSE_TIMEOUT_S)
            self.dropped_not_running += self._discard_queued()
            self.file.close()

    def stats(self) -> dict[str, Any]:
        """Counters, plus ``status`` (``ok`` | ``degraded``) and ``reasons`` in the shape the
        health snapshot's generic assessor reads."""
        reasons = []
        if self.file.stats()["failing"]:
            reasons.append(f"cannot write {self.file.path.name}: {self.file.last_error}")
        if self.batch_failures and self._batch_failing:
            reasons.append(f"secondary store for {self.file.path.name} failing")
        if self.dropped_queue_full:
            reasons.append(f"{self.dropped_queue_full} line(s) dropped: queue full")
        if self.dropped_unbuilt:
            reasons.append(f"{self.dropped_unbuilt} line(s) dropped: could not be built")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            **self.file.stats(),
            "submitted": self.submitted,
            "queued": len(self._items),
            "dropped_queue_full": self.dropped_queue_full,
            "dropped_not_running": self.dropped_not_running,
            "batch_failures": self.batch_failures,
            "dropped_unbuilt": self.dropped_unbuilt,
            "build_seconds": round(self.build_seconds, 6),
            "dropped": self.dropped_queue_full
            + self.dropped_not_running
            + self.dropped_unbuilt
            + self.file.lines_dropped,
        }

    async def _run(self) -> None:
        items = self._items
        stop = False
        while not stop:
            if not items:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
            if items[0] is not _STOP and len(items) <= BATCH_MAX_LINES and self._linger_s:
                await asyncio.sleep(self._linger_s)  # let a batch gather: one thread hop for many
            batch = [items.popleft() for _ in range(min(len(items), BATCH_MAX_LINES))]
            stop = any(item is _STOP for item in batch)
            started = time.perf_counter()
            lines = self._build(batch)
            self.build_seconds += time.perf_counter() - started
            if lines:
                await asyncio.to_thread(self._write_batch, lines)

    def _build(self, batch: list[bytes | DeferredLine | object]) -> list[bytes]:
        lines: list[bytes] = []
        for item in batch:
            if isinstance(item, bytes):
                lines.append(item)
            elif item is not _STOP:
                line = self._run_deferred(cast(DeferredLine, item))
                if line is None:
                    self.dropped_unbuilt += 1
                else:
                    lines.append(line)
        return lines

    def _run_deferred(self, make_line: DeferredLine) -> bytes | None:
        try:
            return make_line()
        except Exception as exc:
            if not self._unbuilt_reported:
                self._unbuilt_reported = True
                self._report(
                    f"a line for {self.file.path.name} could not be built ({exc!r}); "
                    "it is dropped and counted"
                )
            return None

    def _write_batch(self, lines: list[bytes]) -> None:
        """Worker thread: the file, then the optional second store (SQLite), never raising."""
        self.file.write(b"".join(lines))
        if self._on_batch is None:
            return
        try:
            self._on_batch(lines)
        except Exception as exc:
            self.batch_failures += 1
            if not self._batch_failing:
                self._report(f"secondary store for {self.file.path.name} failed: {exc!r}")
            self._batch_failing = True
        else:
            self._batch_failing = False

    def _report(self, text: str) -> None:
        _report(self._on_failure, text)

    def _discard_queued(self) -> int:
        count = sum(1 for item in self._items if item is not _STOP)
        self._items.clear()
        return count
