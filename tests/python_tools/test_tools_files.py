"""The file tools: list_dir, read_file, write_file, search_text, file_info."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from elaria.errors import SecurityViolation, ToolExecutionError
from elaria.security import PathGuard
from python_tools.files import MAX_DIR_ENTRIES, FileTools


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    (ws / "docs").mkdir(parents=True)
    (ws / "notes.md").write_text("# Notes\nalpha\nBeta line\ngamma\n")
    (ws / "docs" / "guide.txt").write_text("first\nthe Alpha guide\n")
    (ws / "image.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    return ws


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("SECRET alpha")
    return out


@pytest.fixture
def files(workspace: Path) -> FileTools:
    return FileTools(PathGuard([workspace]), max_read_bytes=1024)


def test_list_dir_shows_directories_first(files: FileTools) -> None:
    listing = files.list_dir()
    assert listing["path"] == "."
    assert [e["name"] for e in listing["entries"]] == ["docs", "image.bin", "notes.md"]
    assert listing["entries"][0] == {"name": "docs", "type": "directory"}
    assert listing["entries"][2]["size"] == len("# Notes\nalpha\nBeta line\ngamma\n")
    assert files.list_dir("docs")["entries"] == [{"name": "guide.txt", "type": "file", "size": 22}]


def test_list_dir_caps_entries(files: FileTools, workspace: Path) -> None:
    many = workspace / "many"
    many.mkdir()
    for i in range(MAX_DIR_ENTRIES + 5):
        (many / f"f{i:04d}").touch()
    listing = files.list_dir("many")
    assert len(listing["entries"]) == MAX_DIR_ENTRIES
    assert listing["total"] == MAX_DIR_ENTRIES + 5
    assert listing["truncated"] is True


def test_list_dir_shows_symlinks_as_symlinks(
    files: FileTools, workspace: Path, outside: Path
) -> None:
    (workspace / "link").symlink_to(outside)
    entry = next(e for e in files.list_dir()["entries"] if e["name"] == "link")
    assert entry["type"] == "symlink"
    with pytest.raises(SecurityViolation):
        files.list_dir("link")


def test_read_file_whole_and_ranges(files: FileTools) -> None:
    whole = files.read_file("notes.md")
    assert whole["content"] == "# Notes\nalpha\nBeta line\ngamma\n"
    assert whole["total_lines"] == 4
    part = files.read_file("notes.md", start_line=2, end_line=3)
    assert part["content"] == "alpha\nBeta line\n"
    assert (part["start_line"], part["end_line"], part["total_lines"]) == (2, 3, 4)
    beyond = files.read_file("notes.md", start_line=10)
    assert beyond["content"] == ""
    assert "only 4 lines" in beyond["hint"]


def test_read_file_rejects_bad_ranges(files: FileTools) -> None:
    with pytest.raises(ToolExecutionError, match="invalid line range"):
        files.read_file("notes.md", start_line=0)
    with pytest.raises(ToolExecutionError, match="invalid line range"):
        files.read_file("notes.md", start_line=3, end_line=2)


def test_read_file_caps_bytes_and_says_where_to_continue(files: FileTools, workspace: Path) -> None:
    (workspace / "big.txt").write_text("".join(f"line {i:04d}\n" for i in range(1, 501)))
    first = files.read_file("big.txt")
    assert first["truncated"] is True
    assert len(first["content"].encode()) <= 1024
    next_line = first["end_line"] + 1
    assert f"start_line={next_line}" in first["hint"]
    second = files.read_file("big.txt", start_line=next_line)
    assert second["content"].startswith(f"line {next_line:04d}\n")
    assert first["total_lines"] == 500


def test_read_file_cuts_a_line_longer_than_the_cap(files: FileTools, workspace: Path) -> None:
    (workspace / "one-line.json").write_text("x" * 5000)
    result = files.read_file("one-line.json")
    assert result["truncated"] is True
    assert 0 < len(result["content"]) <= 1024


def test_read_file_detects_binary(files: FileTools, workspace: Path) -> None:
    result = files.read_file("image.bin")
    assert result["binary"] is True
    assert "content" not in result
    (workspace / "latin1.txt").write_bytes("café".encode("latin-1") * 10)
    assert files.read_file("latin1.txt")["binary"] is True
    (workspace / "short-latin1.txt").write_bytes("café".encode("latin-1"))
    assert files.read_file("short-latin1.txt")["binary"] is True
    (workspace / "cut.txt").write_bytes(b"a" * 8191 + "é".encode())  # é cut by the sniff window
    assert "content" in files.read_file("cut.txt")
    (workspace / "utf8.txt").write_text("café ☕")
    assert files.read_file("utf8.txt")["content"] == "café ☕"


def test_read_file_refuses_escapes_and_missing_files(files: FileTools, outside: Path) -> None:
    with pytest.raises(SecurityViolation) as info:
        files.read_file("../outside/secret.txt")
    assert info.value.rule == "path.escape"
    with pytest.raises(SecurityViolation) as info:
        files.read_file("%2e%2e/outside/secret.txt")
    assert info.value.rule == "path.escape"
    with pytest.raises(SecurityViolation) as info:
        files.read_file("missing.md")
    assert info.value.rule == "path.not_found"


def test_write_file_creates_and_does_not_overwrite(files: FileTools, workspace: Path) -> None:
    result = files.write_file("docs/new.md", "hello ☕")
    assert result == {"path": os.path.join("docs", "new.md"), "bytes_written": 9, "created": True}
    assert (workspace / "docs" / "new.md").read_text() == "hello ☕"
    with pytest.raises(ToolExecutionError, match="already exists") as info:
        files.write_file("docs/new.md", "other")
    assert "overwrite=true" in info.value.to_model_text()
    assert (workspace / "docs" / "new.md").read_text() == "hello ☕"
    replaced = files.write_file("docs/new.md", "other", overwrite=True)
    assert replaced["created"] is False
    assert (workspace / "docs" / "new.md").read_text() == "other"


def test_write_file_leaves_no_temporary_files(files: FileTools, workspace: Path) -> None:
    files.write_file("a.txt", "1")
    with pytest.raises(ToolExecutionError):
        files.write_file("a.txt", "2")
    files.write_file("a.txt", "3", overwrite=True)
    assert sorted(p.name for p in workspace.iterdir()) == ["a.txt", "docs", "image.bin", "notes.md"]


def test_write_file_never_writes_through_a_symlink(
    files: FileTools, workspace: Path, outside: Path
) -> None:
    (workspace / "inside-link.txt").symlink_to(workspace / "notes.md")
    (workspace / "outside-link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(SecurityViolation) as info:
        files.write_file("inside-link.txt", "x", overwrite=True)
    assert info.value.rule == "path.symlink"
    with pytest.raises(SecurityViolation):
        files.write_file("outside-link.txt", "x", overwrite=True)
    assert (outside / "secret.txt").read_text() == "SECRET alpha"
    assert (workspace / "notes.md").read_text().startswith("# Notes")


def test_write_file_refuses_escapes_and_missing_directories(
    files: FileTools, workspace: Path, outside: Path
) -> None:
    sibling = workspace.parent / "workspace_old"
    sibling.mkdir()
    for path in ("../outside/x.txt", str(sibling / "x.txt"), "..\\outside\\x.txt"):
        with pytest.raises(SecurityViolation):
            files.write_file(path, "x")
    assert list(sibling.iterdir()) == []
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    with pytest.raises(SecurityViolation) as info:
        files.write_file("nodir/x.txt", "x")
    assert info.value.rule == "path.parent_missing"
    with pytest.raises(ToolExecutionError, match="is a directory"):
        files.write_file("docs", "x")


def test_write_file_race_on_the_parent_creates_nothing_outside(
    workspace: Path, outside: Path
) -> None:
    class Swapping(PathGuard):
        swapped = False

        def is_symlink(self, path: str | os.PathLike[str]) -> bool:
            answer = super().is_symlink(path)
            if not self.swapped:  # after every check, right before the write
                self.swapped = True
                shutil.rmtree(workspace / "docs")
                (workspace / "docs").symlink_to(outside)
            return answer

    files = FileTools(Swapping([workspace]))
    with pytest.raises(SecurityViolation) as info:
        files.write_file("docs/planted.txt", "x")
    assert info.value.rule == "path.race"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_file_named_dotdot_foo_is_ordinary(files: FileTools, workspace: Path) -> None:
    files.write_file("..foo", "dots")
    assert files.read_file("..foo")["content"] == "dots"
    assert any(e["name"] == "..foo" for e in files.list_dir()["entries"])


def test_search_text_finds_lines_case_insensitively(files: FileTools) -> None:
    result = files.search_text("alpha")
    assert result["matches"] == [
        {"path": "notes.md", "line": 2, "text": "alpha"},
        {"path": os.path.join("docs", "guide.txt"), "line": 2, "text": "the Alpha guide"},
    ]
    assert files.search_text("alpha", case_sensitive=True)["matches"] == [
        {"path": "notes.md", "line": 2, "text": "alpha"}
    ]
    assert files.search_text("alpha", path="docs")["matches"][0]["line"] == 2
    assert files.search_text("Beta", path="notes.md")["matches"] == [
        {"path": "notes.md", "line": 3, "text": "Beta line"}
    ]


def test_search_text_skips_binaries_symlinks_and_stays_inside(
    files: FileTools, workspace: Path, outside: Path
) -> None:
    (workspace / "link-out").symlink_to(outside)
    (workspace / "file-link").symlink_to(outside / "secret.txt")
    (workspace / "blob.bin").write_bytes(b"alpha\x00alpha")
    found = {m["path"] for m in files.search_text("alpha")["matches"]}
    assert found == {os.path.join("docs", "guide.txt"), "notes.md"}


def test_search_text_limits_results(files: FileTools, workspace: Path) -> None:
    (workspace / "many.txt").write_text("hit\n" * 100)
    result = files.search_text("hit", max_results=5)
    assert len(result["matches"]) == 5
    assert result["truncated"] is True
    with pytest.raises(ToolExecutionError, match="empty"):
        files.search_text("")


def test_file_info(files: FileTools) -> None:
    info = files.file_info("notes.md")
    assert info["type"] == "file"
    assert info["size"] == len("# Notes\nalpha\nBeta line\ngamma\n")
    assert info["binary"] is False
    assert info["media_type"] == "text/markdown"
    assert info["modified"].endswith("+00:00")
    assert files.file_info("docs")["type"] == "directory"
    assert files.file_info("image.bin")["binary"] is True
    with pytest.raises(SecurityViolation):
        files.file_info("/etc/passwd")
