"""File tools over one workspace: ``list_dir``, ``read_file``, ``write_file``, ``search_text``,
``file_info``.

Every path goes through a :class:`~elaria.security.PathGuard` (the workspace and any extra roots)
and every open is its race-safe open, so a symlink swapped in mid-call cannot lead outside.
``write_file`` writes a temporary file next to the target and renames it into place (readers
never see half a file); without ``overwrite`` it links instead of renaming, which fails
atomically if the name exists; it never writes through a symlink. Paths in results are relative
to the workspace.

The methods are synchronous and run in a worker thread (``Tool.from_function``); an instance has
no mutable state and may serve concurrent calls.
"""

from __future__ import annotations

import codecs
import mimetypes
import os
import secrets
import stat
from collections.abc import Iterator
from typing import IO, Any

from elaria.security import PathGuard
from elaria.security.violations import refuse
from python_tools._common import os_error, timestamp, tool_error

__all__ = ["DEFAULT_MAX_READ_BYTES", "FileTools"]

#: What read_file returns at most in one call; the model asks for line ranges beyond it.
DEFAULT_MAX_READ_BYTES = 256 * 1024
#: Largest piece of one line read at once, so a file without newlines cannot fill memory.
READ_CHUNK_BYTES = 64 * 1024
#: Bytes sniffed to tell text from binary (the same idea as git's NUL heuristic).
SNIFF_BYTES = 8192
#: Entries list_dir returns at most; a model cannot use more in one round.
MAX_DIR_ENTRIES = 500
#: search_text bounds: files opened, bytes per file, matches returned.
MAX_SEARCH_FILES = 2_000
MAX_SEARCH_FILE_BYTES = 2 * 1024 * 1024
MAX_SEARCH_RESULTS = 200
#: Lines are counted for total_lines only in files up to this size.
MAX_COUNTED_BYTES = 64 * 1024 * 1024
#: Directories search_text does not descend into: tool caches, not the user's text.
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", ".mypy_cache"}
)


class FileTools:
    """The file tools bound to ``guard``."""

    def __init__(self, guard: PathGuard, *, max_read_bytes: int = DEFAULT_MAX_READ_BYTES) -> None:
        self.guard = guard
        self.max_read_bytes = max_read_bytes

    # ---------------------------------------------------------------- list_dir

    def list_dir(self, path: str = ".") -> dict[str, Any]:
        """List the files and directories in a workspace directory.

        Args:
            path: Directory to list, relative to the workspace ("." is the workspace itself).
        """
        fd = self.guard.open_dir_fd(path)
        entries: list[dict[str, Any]] = []
        total = 0
        try:
            with os.scandir(fd) as listing:
                for entry in listing:
                    total += 1
                    if len(entries) < MAX_DIR_ENTRIES:
                        entries.append(_describe_entry(entry))
        except OSError as exc:
            raise os_error("list_dir", path, exc) from exc
        finally:
            os.close(fd)
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"]))
        result: dict[str, Any] = {
            "path": self._shown(self.guard.resolve(path)),
            "entries": entries,
            "total": total,
        }
        if total > len(entries):
            result["truncated"] = True
            result["hint"] = f"Only the first {MAX_DIR_ENTRIES} entries are shown."
        return result

    # ---------------------------------------------------------------- read_file

    def read_file(
        self, path: str, start_line: int = 1, end_line: int | None = None
    ) -> dict[str, Any]:
        """Read a text file from the workspace, whole or a range of lines.

        Args:
            path: File to read, relative to the workspace.
            start_line: First line to return, counting from 1.
            end_line: Last line to return (inclusive); omit to read to the end.
        """
        if start_line < 1 or (end_line is not None and end_line < start_line):
            raise tool_error(
                "read_file",
                f"invalid line range {start_line}..{end_line}",
                "start_line counts from 1 and end_line must not be before it.",
            )
        try:
            with self.guard.open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(SNIFF_BYTES)
                if _looks_binary(head):
                    return {
                        "path": path,
                        "binary": True,
                        "size": size,
                        "hint": "This is a binary file; its content is not shown. Use file_info.",
                    }
                fh.seek(0)
                return self._read_lines(fh, path, size, start_line, end_line)
        except OSError as exc:
            raise os_error("read_file", path, exc) from exc

    def _read_lines(
        self, fh: IO[bytes], path: str, size: int, start_line: int, end_line: int | None
    ) -> dict[str, Any]:
        count_all = size <= MAX_COUNTED_BYTES
        pieces: list[bytes] = []
        used = 0
        truncated = False
        counted: int | None = 0
        last_shown = start_line - 1
        for number, piece in _line_pieces(fh, min(self.max_read_bytes, READ_CHUNK_BYTES)):
            counted = number
            wanted = number >= start_line and (end_line is None or number <= end_line)
            if wanted and not truncated:
                if used + len(piece) <= self.max_read_bytes:
                    pieces.append(piece)
                    used += len(piece)
                    last_shown = number
                    continue
                truncated = True
            if (truncated or (end_line is not None and number > end_line)) and not count_all:
                counted = None  # a huge file: do not read on just to count its lines
                break
        result: dict[str, Any] = {
            "path": path,
            "content": b"".join(pieces).decode("utf-8", errors="replace"),
            "start_line": start_line,
            "end_line": last_shown,
            "total_lines": counted,
        }
        if truncated:
            result["truncated"] = True
            result["hint"] = (
                f"Only {self.max_read_bytes} bytes are returned per call; ask for "
                f"start_line={last_shown + 1} to continue."
            )
        elif counted is not None and counted < start_line:
            result["hint"] = f"The file has only {counted} lines."
        return result

    # ---------------------------------------------------------------- write_file

    def write_file(self, path: str, content: str, overwrite: bool = False) -> dict[str, Any]:
        """Write a text file in the workspace (UTF-8). Existing files are kept unless overwrite.

        Args:
            path: File to write, relative to the workspace; its directory must exist.
            content: The complete text to write.
            overwrite: Replace the file if it already exists.
        """
        real = self.guard.resolve(path, for_write=True)
        if os.path.isdir(real):
            raise tool_error("write_file", f"{path} is a directory", "Add a file name to the path.")
        if self.guard.is_symlink(path):
            raise refuse(
                "path.symlink",
                f"{path!r} is a symlink; write_file never writes through a symlink. "
                "Write to the real file's path instead",
                value=path,
            )
        data = content.encode("utf-8")
        existed = os.path.lexists(real)
        try:
            with self.guard.parent_fd(real) as (dir_fd, leaf):
                _write_atomically(dir_fd, leaf, data, overwrite=overwrite)
        except FileExistsError as exc:
            raise tool_error(
                "write_file",
                f"{path} already exists",
                "Pass overwrite=true to replace it, or choose another name.",
            ) from exc
        except OSError as exc:
            raise os_error("write_file", path, exc) from exc
        return {
            "path": self._shown(real),
            "bytes_written": len(data),
            "created": not existed,
        }

    # ---------------------------------------------------------------- search_text

    def search_text(
        self,
        query: str,
        path: str = ".",
        case_sensitive: bool = False,
        max_results: int = 50,
    ) -> dict[str, Any]:
        """Find lines containing a piece of text (plain text, not a regex) in workspace files.

        Args:
            query: The text to look for.
            path: Directory (searched recursively) or single file, relative to the workspace.
            case_sensitive: Match upper and lower case exactly.
            max_results: Stop after this many matching lines (at most 200).
        """
        if not query:
            raise tool_error("search_text", "the query is empty", "Give the text to look for.")
        limit = max(1, min(max_results, MAX_SEARCH_RESULTS))
        needle = query if case_sensitive else query.casefold()
        start = self.guard.resolve(path)
        matches: list[dict[str, Any]] = []
        scanned = 0
        for real in self._walk_files(str(start)):
            if len(matches) >= limit or scanned >= MAX_SEARCH_FILES:
                break
            scanned += 1
            matches.extend(self._search_file(real, needle, case_sensitive, limit - len(matches)))
        result: dict[str, Any] = {"query": query, "matches": matches, "files_scanned": scanned}
        if len(matches) >= limit or scanned >= MAX_SEARCH_FILES:
            result["truncated"] = True
            result["hint"] = "Narrow the search: a more specific query or a subdirectory."
        return result

    def _walk_files(self, start: str) -> Iterator[str]:
        if os.path.isfile(start):
            yield start
            return
        for top, dirs, files in os.walk(start, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                full = os.path.join(top, name)
                if not os.path.islink(full):
                    yield full

    def _search_file(
        self, real: str, needle: str, case_sensitive: bool, room: int
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        try:
            with self.guard.open(real, "rb") as fh:
                if os.fstat(fh.fileno()).st_size > MAX_SEARCH_FILE_BYTES:
                    return found
                data = fh.read()
        except (OSError, ValueError):
            return found  # unreadable, vanished or refused mid-walk: skip, the walk goes on
        if _looks_binary(data[:SNIFF_BYTES]):
            return found
        shown = self._shown(real)
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            hay = line if case_sensitive else line.casefold()
            if needle in hay:
                found.append({"path": shown, "line": number, "text": line[:500]})
                if len(found) >= room:
                    break
        return found

    # ---------------------------------------------------------------- file_info

    def file_info(self, path: str) -> dict[str, Any]:
        """Size, type and modification time of a file or directory in the workspace.

        Args:
            path: File or directory, relative to the workspace.
        """
        real = self.guard.resolve(path)
        try:
            st = self.guard.stat(path)
        except OSError as exc:
            raise os_error("file_info", path, exc) from exc
        info: dict[str, Any] = {
            "path": self._shown(real),
            "type": _kind(st.st_mode),
            "size": st.st_size,
            "modified": timestamp(st.st_mtime),
        }
        if stat.S_ISREG(st.st_mode):
            info["media_type"] = mimetypes.guess_type(real.name)[0]
            try:
                with self.guard.open(path, "rb") as fh:
                    info["binary"] = _looks_binary(fh.read(SNIFF_BYTES))
            except OSError:
                pass
        return info

    # ---------------------------------------------------------------- helpers

    def _shown(self, real: os.PathLike[str] | str) -> str:
        return self.guard.relative(real)


def _describe_entry(entry: os.DirEntry[str]) -> dict[str, Any]:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return {"name": entry.name, "type": "unknown"}
    described: dict[str, Any] = {"name": entry.name, "type": _kind(st.st_mode)}
    if stat.S_ISREG(st.st_mode):
        described["size"] = st.st_size
    return described


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _line_pieces(fh: IO[bytes], chunk: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) in order; a line longer than ``chunk`` comes in several pieces."""
    number = 1
    while piece := fh.readline(chunk):
        yield number, piece
        if piece.endswith(b"\n"):
            number += 1


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    try:
        # A multi-byte character cut by the sniff window is still text; a head shorter than
        # the window is the whole file, where a cut character is an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return True
    return False


def _write_atomically(dir_fd: int, leaf: str, data: bytes, *, overwrite: bool) -> None:
    temp = f".{secrets.token_hex(8)}.elaria-tmp"
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=dir_fd,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            # rename replaces a symlink itself, never its target.
            os.rename(temp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            # link fails with EEXIST if the name exists, atomically: no check-then-write race.
            os.link(temp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            os.unlink(temp, dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
