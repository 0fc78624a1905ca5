"""``PathGuard``: paths the model names stay inside the roots, under every reading, race-free.

Containment is decided on the kernel-resolved path (``os.path.realpath``: every symlink followed,
``..`` applied after resolution) and compared component-wise (``os.path.commonpath``) with the
realpath of each root; never by string prefix (CVE-2025-53110: ``/ws_old`` "starts with"
``/ws``). Every alternative reading of the string (:func:`~elaria.security.pathtext.readings`)
must stay inside too, so a downstream reader that decodes or normalises cannot be steered out.

:meth:`PathGuard.open` does not trust the check it just made: it walks from the root's directory
descriptor one component at a time with ``O_NOFOLLOW``, so a symlink swapped in between check and
open fails the open instead of escaping (CVE-2025-53109 followed a symlink in its fallback path).
It never creates a file through a symlink, and never outside a root.

A guard is immutable after construction and safe to share between threads. Refusals raise
:class:`~elaria.errors.SecurityViolation` (rules ``path.*``); ordinary OS errors on open
(``FileExistsError``, ``PermissionError``) propagate unchanged.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from elaria.security.pathtext import check_path_text, check_windows_forms, readings
from elaria.security.violations import refuse

__all__ = ["PathGuard"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MODE_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}
#: What a new file gets before the umask; the same as ``open()``.
NEW_FILE_MODE = 0o666


class PathGuard:
    """Keeps paths inside ``roots``; relative paths resolve against ``base`` (default: roots[0])."""

    def __init__(
        self, roots: Sequence[str | os.PathLike[str]], base: str | os.PathLike[str] | None = None
    ) -> None:
        if isinstance(roots, str | os.PathLike) or not roots:
            raise ValueError("PathGuard needs a non-empty sequence of root directories")
        real_roots: list[str] = []
        identities: dict[str, tuple[int, int]] = {}
        for root in roots:
            real = os.path.realpath(os.fspath(root))
            if not os.path.isdir(real):
                raise ValueError(f"PathGuard root {os.fspath(root)!r} is not an existing directory")
            st = os.stat(real)
            real_roots.append(real)
            identities[real] = (st.st_dev, st.st_ino)
        self._roots = tuple(real_roots)
        self._identities = identities
        self._base = os.path.realpath(os.fspath(base)) if base is not None else real_roots[0]
        if self._root_of(self._base) is None or not os.path.isdir(self._base):
            raise ValueError(f"PathGuard base {self._base!r} is not a directory inside a root")

    def __repr__(self) -> str:
        return f"PathGuard(roots={list(self._roots)!r}, base={self._base!r})"

    @property
    def roots(self) -> tuple[Path, ...]:
        return tuple(Path(r) for r in self._roots)

    @property
    def base(self) -> Path:
        return Path(self._base)

    # ---------------------------------------------------------------- resolve

    def resolve(self, path: str | os.PathLike[str], *, for_write: bool = False) -> Path:
        """The real absolute path, inside a root; or :class:`SecurityViolation`.

        Reading: the path must exist. Writing: its parent must exist inside a root; the leaf may
        not exist yet (if it is a symlink, its target must be inside a root); an existing
        directory inside a root is accepted too (a place to write into).
        """
        text = self._as_text(path)
        check_path_text(text)  # first, so the readings below work on bounded input
        anchor, rest = self._anchor(text)
        forms = readings(rest)
        for form in forms:
            check_path_text(form)
            check_windows_forms(form)
        for form in forms[1:]:
            if self._root_of(os.path.realpath(os.path.join(anchor, form))) is None:
                raise refuse(
                    "path.escape",
                    f"the path {text!r} leaves the workspace when decoded or normalised "
                    f"(as {form!r}); use a plain relative path inside the workspace",
                    value=text,
                    severity="high",
                )
        real = self._resolve_write(text) if for_write else self._resolve_read(text)
        return Path(real)

    def relative(self, real: str | os.PathLike[str]) -> str:
        """``real`` (a resolved path) relative to its root, for showing to the model."""
        text = os.fspath(real)
        root = self._root_of(text)
        if root is None:
            raise ValueError(f"{text!r} is not inside a root")
        rel = os.path.relpath(text, root)
        return rel if len(self._roots) == 1 else os.path.join(os.path.basename(root), rel)

    def is_symlink(self, path: str | os.PathLike[str]) -> bool:
        """Whether the leaf, as named (its parent resolved), is a symlink."""
        text = self._as_text(path)
        check_path_text(text)
        head, leaf = os.path.split(os.path.join(self._base, text))
        return os.path.islink(os.path.join(os.path.realpath(head), leaf))

    def _resolve_read(self, text: str) -> str:
        try:
            real = os.path.realpath(os.path.join(self._base, text), strict=True)
        except FileNotFoundError:
            real = os.path.realpath(os.path.join(self._base, text))
            self._require_inside(real, text)
            raise refuse(
                "path.not_found",
                f"{text!r} does not exist; list the directory to see what is there",
                value=text,
                severity="low",
            ) from None
        except OSError as exc:
            raise refuse(
                "path.unresolvable",
                f"{text!r} cannot be resolved ({exc.strerror}); check for symlink loops",
                value=text,
                severity="low",
            ) from None
        self._require_inside(real, text)
        return real

    def _resolve_write(self, text: str) -> str:
        joined = os.path.join(self._base, text)
        if os.path.isdir(joined):  # a directory to write into: it must itself be inside
            real = os.path.realpath(joined)
            self._require_inside(real, text)
            return real
        head, leaf = os.path.split(joined)
        if leaf in ("", ".", ".."):
            self._require_inside(os.path.realpath(joined), text)
            raise refuse(
                "path.parent_missing",
                f"the directory {text!r} does not exist; write into an existing directory",
                value=text,
                severity="low",
            )
        parent = os.path.realpath(head)
        self._require_inside(parent, text)
        if not os.path.isdir(parent):
            raise refuse(
                "path.parent_missing",
                f"the directory for {text!r} does not exist; write into an existing directory",
                value=text,
                severity="low",
            )
        real = os.path.realpath(os.path.join(parent, leaf))
        self._require_inside(real, text)
        return real

    # ---------------------------------------------------------------- open

    def open(
        self,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """Open a regular file inside a root without following any symlink swapped in since.

        ``mode`` is one of ``r w x a`` with optional ``b`` and ``+``; text mode defaults to UTF-8.
        """
        kind = mode.replace("b", "").replace("+", "")
        if kind not in _MODE_FLAGS or len(set(mode)) != len(mode) or set(mode) - set("rwxab+"):
            raise ValueError(f"unsupported mode {mode!r}")
        flags = _MODE_FLAGS[kind]
        if "+" in mode:
            flags = (flags & ~(os.O_WRONLY | os.O_RDONLY)) | os.O_RDWR
        real = self.resolve(path, for_write=kind != "r")
        with self.parent_fd(real) as (dir_fd, leaf):
            fd = self._open_leaf(dir_fd, leaf, flags, os.fspath(path))
        try:
            return os.fdopen(
                fd,
                mode,
                encoding=None if "b" in mode else (encoding or "utf-8"),
                errors=errors,
                newline=newline,
            )
        except BaseException:
            os.close(fd)
            raise

    @contextmanager
    def parent_fd(self, real: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
        """A descriptor of the directory holding ``real`` (a path :meth:`resolve` returned), and
        the leaf name; reached from the root without following symlinks. Closed on exit."""
        text = os.fspath(real)
        root = self._root_of(text)
        if root is None:
            raise refuse(
                "path.escape", f"{text!r} is outside every root", value=text, severity="high"
            )
        rel = os.path.relpath(text, root)
        if rel == ".":
            raise refuse(
                "path.not_a_file", "that is the workspace directory itself, not a file", value=text
            )
        *dirs, leaf = rel.split(os.sep)
        fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._identities[root]:
                raise self._race(text)
            for name in dirs:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise self._race(text) from None
                    raise
                os.close(fd)
                fd = child
            yield fd, leaf
        finally:
            os.close(fd)

    def stat(self, path: str | os.PathLike[str]) -> os.stat_result:
        """``os.stat`` of what ``path`` names inside a root, without following a swapped symlink."""
        real = os.fspath(self.resolve(path))
        if real in self._identities:
            return os.stat(real)  # a root: its identity is checked on every open
        with self.parent_fd(real) as (dir_fd, leaf):
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise self._race(os.fspath(path))
        return st

    def open_dir_fd(self, path: str | os.PathLike[str]) -> int:
        """A descriptor of the directory ``path`` names, reached without following symlinks.

        The caller closes it (``os.close``); ``os.scandir(fd)`` lists it.
        """
        real = os.fspath(self.resolve(path))
        root = self._root_of(real)
        if real == root:
            fd = os.open(real, _DIR_FLAGS & ~os.O_NOFOLLOW)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._identities[real]:
                os.close(fd)
                raise self._race(os.fspath(path))
            return fd
        with self.parent_fd(real) as (dir_fd, leaf):
            try:
                return os.open(leaf, _DIR_FLAGS, dir_fd=dir_fd)
            except NotADirectoryError:
                if os.path.islink(real):
                    raise self._race(os.fspath(path)) from None
                raise refuse(
                    "path.not_a_directory",
                    f"{os.fspath(path)!r} is a file, not a directory; use read_file",
                    value=os.fspath(path),
                    severity="low",
                ) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._race(os.fspath(path)) from None
                raise

    def _open_leaf(self, dir_fd: int, leaf: str, flags: int, shown: str) -> int:
        # O_TRUNC waits until the checks below passed: a refused file must stay as it was.
        truncate = bool(flags & os.O_TRUNC)
        try:
            # O_NONBLOCK: a FIFO must not hang the open; it is refused below as not regular.
            fd = os.open(
                leaf,
                (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                NEW_FILE_MODE,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refuse(
                    "path.symlink",
                    f"{shown!r} became a symlink while being opened; it was not followed",
                    value=shown,
                    severity="high",
                ) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise refuse(
                "path.not_regular",
                f"{shown!r} is not a regular file (a directory, device or pipe); "
                "use list_dir for directories",
                value=shown,
                severity="low",
            )
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
            # Another name for the same file may live outside every root (a planted hard link).
            os.close(fd)
            raise refuse(
                "path.hardlink",
                f"{shown!r} has other hard links, possibly outside the workspace; it is not "
                "modified in place. Write a new file instead",
                value=shown,
                severity="high",
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if truncate:
            os.ftruncate(fd, 0)
        return fd

    # ---------------------------------------------------------------- helpers

    def _anchor(self, text: str) -> tuple[str, str]:
        """(directory, the part of ``text`` after it) for the reading checks.

        An absolute path that starts with a root (whole components) is checked only after the
        root: the operator chose the root's own name, and it may contain what a model's path
        may not (a ':', a 'con' directory). Containment is still decided on the whole path.
        """
        if os.path.isabs(text):
            for root in self._roots:
                if text == root:
                    return root, "."
                if text.startswith(root.rstrip(os.sep) + os.sep):
                    return root, text[len(root.rstrip(os.sep)) + 1 :] or "."
        return self._base, text

    def _root_of(self, real: str) -> str | None:
        for root in self._roots:
            try:
                if os.path.commonpath([root, real]) == root:
                    return root
            except ValueError:  # pragma: no cover - mixed absolute/relative cannot happen here
                continue
        return None

    def _require_inside(self, real: str, shown: str) -> None:
        if self._root_of(real) is None:
            raise refuse(
                "path.escape",
                f"the path {shown!r} resolves outside the workspace; "
                "use a path inside the workspace (symlinks and '..' are followed first)",
                value=shown,
                severity="high",
            )

    @staticmethod
    def _as_text(path: str | os.PathLike[str]) -> str:
        text = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(text, str):
            raise refuse("path.type", "the path must be a string", value=text)
        return text

    @staticmethod
    def _race(shown: str) -> Exception:
        return refuse(
            "path.race",
            f"{shown!r} changed while being opened (a directory was replaced, perhaps by a "
            "symlink); it was not followed. Try again if the change was intended",
            value=shown,
            severity="high",
        )
