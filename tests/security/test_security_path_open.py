"""PathGuard.open: race-safe opening; a symlink swapped in between check and open never escapes.

The race is made deterministic by a guard whose ``resolve`` swaps the file system right after the
check has passed, exactly where an attacker would strike.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from elaria.errors import SecurityViolation
from elaria.security import PathGuard


class SwappingGuard(PathGuard):
    """Runs ``swap`` once, after the containment check and before the open."""

    def __init__(self, root: Path, swap: Callable[[], None]) -> None:
        super().__init__([root])
        self._swap: Callable[[], None] | None = swap

    def resolve(self, path: str | os.PathLike[str], *, for_write: bool = False) -> Path:
        real = super().resolve(path, for_write=for_write)
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        return real


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "inner.txt").write_text("inner")
    (ws / "notes.md").write_text("hello")
    return ws


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "inner.txt").write_text("SECRET")
    (out / "notes.md").write_text("SECRET")
    return out


def test_open_reads_and_writes_inside(workspace: Path) -> None:
    guard = PathGuard([workspace])
    with guard.open("notes.md") as fh:
        assert fh.read() == "hello"
    with guard.open("sub/new.txt", "w") as fh:
        fh.write("ünïcode")
    assert (workspace / "sub" / "new.txt").read_text(encoding="utf-8") == "ünïcode"
    with guard.open("sub/new.txt", "ab") as fh:
        fh.write(b"!")
    with guard.open("sub/new.txt", "rb") as fh:
        assert fh.read() == "ünïcode!".encode()
    with guard.open("notes.md", "r+") as fh:
        fh.write("J")
    assert (workspace / "notes.md").read_text() == "Jello"


def test_exclusive_create_does_not_overwrite(workspace: Path) -> None:
    guard = PathGuard([workspace])
    with pytest.raises(FileExistsError):
        guard.open("notes.md", "x")
    assert (workspace / "notes.md").read_text() == "hello"


def test_directories_and_fifos_are_not_opened_as_files(workspace: Path) -> None:
    guard = PathGuard([workspace])
    os.mkfifo(workspace / "pipe")
    for name in ("pipe", "sub"):
        with pytest.raises(SecurityViolation) as info:
            guard.open(name)
        assert info.value.rule == "path.not_regular"


def test_bad_modes_are_refused(workspace: Path) -> None:
    guard = PathGuard([workspace])
    for mode in ("rw", "q", "rr", ""):
        with pytest.raises(ValueError, match="unsupported mode"):
            guard.open("notes.md", mode)


def test_a_directory_swapped_for_a_symlink_is_not_followed_on_read(
    workspace: Path, outside: Path
) -> None:
    def swap() -> None:
        shutil.rmtree(workspace / "sub")
        (workspace / "sub").symlink_to(outside)

    guard = SwappingGuard(workspace, swap)
    with pytest.raises(SecurityViolation) as info:
        guard.open("sub/inner.txt")
    assert info.value.rule == "path.race"
    # The plain builtin open would have read the secret: the swap really happened.
    assert (workspace / "sub" / "inner.txt").read_text() == "SECRET"


def test_a_directory_swapped_for_a_symlink_gets_no_file_created(
    workspace: Path, outside: Path
) -> None:
    def swap() -> None:
        shutil.rmtree(workspace / "sub")
        (workspace / "sub").symlink_to(outside)

    guard = SwappingGuard(workspace, swap)
    with pytest.raises(SecurityViolation):
        guard.open("sub/created.txt", "w")
    assert not (outside / "created.txt").exists()


def test_a_leaf_swapped_for_a_symlink_is_not_followed(workspace: Path, outside: Path) -> None:
    def swap() -> None:
        (workspace / "notes.md").unlink()
        (workspace / "notes.md").symlink_to(outside / "notes.md")

    guard = SwappingGuard(workspace, swap)
    with pytest.raises(SecurityViolation) as info:
        guard.open("notes.md")
    assert info.value.rule == "path.symlink"


def test_a_dangling_symlink_planted_at_a_new_name_creates_nothing_outside(
    workspace: Path, outside: Path
) -> None:
    def swap() -> None:
        (workspace / "fresh.txt").symlink_to(outside / "planted.txt")

    guard = SwappingGuard(workspace, swap)
    with pytest.raises(SecurityViolation) as info:
        guard.open("fresh.txt", "w")
    assert info.value.rule == "path.symlink"
    assert not (outside / "planted.txt").exists()


def test_a_swapped_root_is_detected(tmp_path: Path, workspace: Path, outside: Path) -> None:
    def swap() -> None:
        workspace.rename(tmp_path / "moved")
        outside.rename(workspace)

    guard = SwappingGuard(workspace, swap)
    with pytest.raises(SecurityViolation) as info:
        guard.open("notes.md")
    assert info.value.rule == "path.race"


def test_is_symlink_looks_at_the_leaf_as_named(workspace: Path) -> None:
    guard = PathGuard([workspace])
    (workspace / "alias.md").symlink_to(workspace / "notes.md")
    assert guard.is_symlink("alias.md")
    assert not guard.is_symlink("notes.md")
    assert not guard.is_symlink("missing.md")


def test_open_dir_fd_lists_directories_inside(workspace: Path) -> None:
    guard = PathGuard([workspace])
    for path, expected in ((".", {"sub", "notes.md"}), ("sub", {"inner.txt"})):
        fd = guard.open_dir_fd(path)
        try:
            assert {entry.name for entry in os.scandir(fd)} == expected
        finally:
            os.close(fd)
    with pytest.raises(SecurityViolation) as info:
        guard.open_dir_fd("notes.md")
    assert info.value.rule == "path.not_a_directory"


def test_open_dir_fd_does_not_follow_a_swapped_directory(workspace: Path, outside: Path) -> None:
    def swap() -> None:
        shutil.rmtree(workspace / "sub")
        (workspace / "sub").symlink_to(outside)

    guard = SwappingGuard(workspace, swap)
    with pytest.raises(SecurityViolation) as info:
        guard.open_dir_fd("sub")
    assert info.value.rule == "path.race"


def test_stat_inside_and_after_a_swap(workspace: Path, outside: Path) -> None:
    guard = PathGuard([workspace])
    assert guard.stat("notes.md").st_size == len("hello")
    assert guard.stat(".").st_ino == workspace.stat().st_ino

    def swap() -> None:
        (workspace / "notes.md").unlink()
        (workspace / "notes.md").symlink_to(outside / "notes.md")

    with pytest.raises(SecurityViolation) as info:
        SwappingGuard(workspace, swap).stat("notes.md")
    assert info.value.rule == "path.race"


def test_a_hard_link_to_an_outside_file_is_not_modified(workspace: Path, outside: Path) -> None:
    os.link(outside / "notes.md", workspace / "linked.md")
    guard = PathGuard([workspace])
    for mode in ("w", "a", "r+"):
        with pytest.raises(SecurityViolation) as info:
            guard.open("linked.md", mode)
        assert info.value.rule == "path.hardlink"
    assert (outside / "notes.md").read_text() == "SECRET"
    with guard.open("notes.md", "w") as fh:  # an ordinary file is truncated as usual
        fh.write("new")
    assert (workspace / "notes.md").read_text() == "new"
