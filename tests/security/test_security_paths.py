"""PathGuard.resolve: containment on real paths, every downstream reading, text rules, limits."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation
from elaria.security import PathGuard


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    (ws / "sub").mkdir(parents=True)
    (ws / "notes.md").write_text("hello")
    (ws / "sub" / "inner.txt").write_text("inner")
    return ws


@pytest.fixture
def guard(workspace: Path) -> PathGuard:
    return PathGuard([workspace])


def _rule(guard: PathGuard, path: str, *, for_write: bool = False) -> str:
    with pytest.raises(SecurityViolation) as info:
        guard.resolve(path, for_write=for_write)
    return info.value.rule


def test_relative_and_absolute_paths_inside_resolve(guard: PathGuard, workspace: Path) -> None:
    real = workspace.resolve()
    assert guard.resolve("notes.md") == real / "notes.md"
    assert guard.resolve("sub/inner.txt") == real / "sub" / "inner.txt"
    assert guard.resolve("sub/../notes.md") == real / "notes.md"
    assert guard.resolve(str(real / "notes.md")) == real / "notes.md"
    assert guard.resolve(".") == real
    assert guard.resolve(Path("notes.md")) == real / "notes.md"


def test_a_file_literally_named_dotdot_foo_passes(guard: PathGuard, workspace: Path) -> None:
    (workspace / "..foo").write_text("x")
    (workspace / "sub" / "..bar..").write_text("x")
    assert guard.resolve("..foo").name == "..foo"
    assert guard.resolve("sub/..bar..").name == "..bar.."
    assert guard.resolve("..new", for_write=True).name == "..new"


@pytest.mark.parametrize(
    "path",
    ["../outside.txt", "sub/../../outside.txt", "/etc/passwd", "..", "sub/../.."],
)
def test_dotdot_and_absolute_escapes_are_refused(guard: PathGuard, path: str) -> None:
    assert _rule(guard, path) == "path.escape"
    assert _rule(guard, path, for_write=True) == "path.escape"
    assert _rule(guard, path + "/new.txt", for_write=True) == "path.escape"


def test_prefix_sibling_directory_is_outside(guard: PathGuard, workspace: Path) -> None:
    sibling = workspace.parent / "workspace_old"
    sibling.mkdir()
    (sibling / "secret.txt").write_text("secret")
    assert _rule(guard, str(sibling / "secret.txt")) == "path.escape"
    assert _rule(guard, "../workspace_old/secret.txt") == "path.escape"
    assert _rule(guard, str(sibling / "new.txt"), for_write=True) == "path.escape"


def test_symlink_escapes_are_refused(guard: PathGuard, workspace: Path) -> None:
    outside = workspace.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (workspace / "link_dir").symlink_to(outside)
    (workspace / "link_file").symlink_to(outside / "secret.txt")
    (workspace / "dangling").symlink_to(outside / "not-yet.txt")
    assert _rule(guard, "link_dir/secret.txt") == "path.escape"
    assert _rule(guard, "link_file") == "path.escape"
    assert _rule(guard, "link_dir/new.txt", for_write=True) == "path.escape"
    # Writing through a dangling link would create the file outside.
    assert _rule(guard, "dangling", for_write=True) == "path.escape"


def test_dotdot_is_applied_after_symlink_resolution(guard: PathGuard, workspace: Path) -> None:
    deep = workspace.parent / "a" / "b"
    deep.mkdir(parents=True)
    (workspace.parent / "a" / "leak.txt").write_text("x")
    (workspace / "hop").symlink_to(deep)
    # Lexically "hop/.." is the workspace; the kernel goes to a/, outside.
    assert _rule(guard, "hop/../leak.txt") == "path.escape"


def test_symlinks_that_stay_inside_are_fine(guard: PathGuard, workspace: Path) -> None:
    (workspace / "alias").symlink_to(workspace / "sub")
    assert guard.resolve("alias/inner.txt") == workspace.resolve() / "sub" / "inner.txt"


def test_a_symlinked_root_is_compared_on_its_real_path(tmp_path: Path, workspace: Path) -> None:
    (tmp_path / "ws_link").symlink_to(workspace)
    guard = PathGuard([tmp_path / "ws_link"])
    assert guard.resolve("notes.md") == workspace.resolve() / "notes.md"
    assert _rule(guard, "../workspace/../outside") == "path.escape"


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/outside.txt",
        "..%2foutside.txt",
        "%252e%252e%252foutside.txt",  # double-encoded
        "sub%2f%2e%2e%2f%2e%2e%2fx",
        "..\\outside.txt",
        "sub\\..\\..\\x",
        "%2e%2e%5coutside.txt",  # percent-encoded backslash
        "．．/outside.txt",  # fullwidth full stops: NFKC gives ..
        "sub／..／..／x",  # fullwidth solidus
        "~/.ssh/id_rsa",
        "~root/.bashrc",
    ],
)
def test_escapes_under_a_downstream_reading_are_refused(guard: PathGuard, path: str) -> None:
    assert _rule(guard, path) == "path.escape"
    assert _rule(guard, path, for_write=True) == "path.escape"


def test_encoded_names_that_stay_inside_pass(guard: PathGuard, workspace: Path) -> None:
    (workspace / "a%20b.txt").write_text("x")
    (workspace / "100%.txt").write_text("x")
    (workspace / "back\\slash.txt").write_text("x")
    assert guard.resolve("a%20b.txt").name == "a%20b.txt"
    assert guard.resolve("100%.txt").name == "100%.txt"
    assert guard.resolve("back\\slash.txt").name == "back\\slash.txt"


def test_more_than_three_encoding_rounds_fail_closed(guard: PathGuard) -> None:
    assert _rule(guard, "%25252525252e") == "path.encoding"


def test_invalid_utf8_after_decoding_is_refused(guard: PathGuard) -> None:
    assert _rule(guard, "a%ff%fe.txt") == "path.encoding"


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("C:\\Windows\\system32", "path.windows_drive"),
        ("c:/x", "path.windows_drive"),
        ("C%3A%5Cx", "path.windows_drive"),
        ("\\\\server\\share\\x", "path.windows_unc"),
        ("//server/share", "path.windows_unc"),
        ("CON", "path.windows_device"),
        ("sub/nul.txt", "path.windows_device"),
        ("com1", "path.windows_device"),
        ("LPT9.log", "path.windows_device"),
        ("COM¹", "path.windows_device"),
        ("notes.md:hidden", "path.windows_stream"),
        ("file::$DATA", "path.windows_stream"),
        (".. /x", "path.windows_dots"),
        ("...", "path.windows_dots"),
    ],
)
def test_windows_forms_are_refused(guard: PathGuard, path: str, rule: str) -> None:
    assert _rule(guard, path) == rule


@pytest.mark.parametrize("name", ["console.log", "conference.md", "nullable.py", "com.txt"])
def test_names_that_merely_start_like_devices_pass(
    guard: PathGuard, workspace: Path, name: str
) -> None:
    (workspace / name).write_text("x")
    assert guard.resolve(name).name == name


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("a\x00b", "path.nul"),
        ("a%00b", "path.nul"),
        ("a\nb", "path.control"),
        ("a%0ab", "path.control"),
        ("a\x7fb", "path.control"),
        ("a\x9bb", "path.control"),
        ("a\u2028b", "path.control"),
        ("evil\u202etxt.exe", "path.format"),
        ("zero\u200bwidth", "path.format"),
        ("a\ud800b", "path.encoding"),
        ("", "path.empty"),
    ],
)
def test_forbidden_characters_are_refused(guard: PathGuard, path: str, rule: str) -> None:
    assert _rule(guard, path) == rule


def test_length_limits(guard: PathGuard, workspace: Path) -> None:
    assert _rule(guard, "a" * 256, for_write=True) == "path.component_too_long"
    assert _rule(guard, "é" * 128, for_write=True) == "path.component_too_long"  # 256 bytes
    assert _rule(guard, "/".join(["d" * 200] * 21)) == "path.too_long"
    assert guard.resolve("a" * 255, for_write=True).name == "a" * 255


def test_non_ascii_names_pass(guard: PathGuard, workspace: Path) -> None:
    (workspace / "résumé — 日本語.txt").write_text("x")
    assert guard.resolve("résumé — 日本語.txt").name == "résumé — 日本語.txt"


def test_reading_needs_an_existing_file(guard: PathGuard) -> None:
    assert _rule(guard, "missing.txt") == "path.not_found"


def test_writing_needs_an_existing_parent_inside(guard: PathGuard, workspace: Path) -> None:
    assert guard.resolve("new.txt", for_write=True) == workspace.resolve() / "new.txt"
    assert guard.resolve("sub/new.txt", for_write=True) == workspace.resolve() / "sub" / "new.txt"
    assert _rule(guard, "nodir/new.txt", for_write=True) == "path.parent_missing"
    assert _rule(guard, "nodir/", for_write=True) == "path.parent_missing"
    assert _rule(guard, str(workspace.parent), for_write=True) == "path.escape"
    assert _rule(guard, str(workspace.parent / "new.txt"), for_write=True) == "path.escape"


def test_existing_directories_inside_are_writable_places(guard: PathGuard, workspace: Path) -> None:
    real = workspace.resolve()
    assert guard.resolve(".", for_write=True) == real
    assert guard.resolve("sub/", for_write=True) == real / "sub"
    assert guard.resolve(str(workspace), for_write=True) == real
    assert _rule(guard, "..", for_write=True) == "path.escape"


def test_symlink_loops_are_refused(guard: PathGuard, workspace: Path) -> None:
    (workspace / "loop").symlink_to(workspace / "loop")
    assert _rule(guard, "loop") == "path.unresolvable"


def test_relative_paths_use_the_base(workspace: Path) -> None:
    guard = PathGuard([workspace], base=workspace / "sub")
    assert guard.resolve("inner.txt") == workspace.resolve() / "sub" / "inner.txt"
    assert guard.resolve("../notes.md") == workspace.resolve() / "notes.md"


def test_several_roots(tmp_path: Path, workspace: Path) -> None:
    other = tmp_path / "data"
    other.mkdir()
    (other / "d.csv").write_text("1")
    guard = PathGuard([workspace, other])
    assert guard.resolve(str(other / "d.csv")) == other.resolve() / "d.csv"
    assert guard.relative(other.resolve() / "d.csv") == os.path.join("data", "d.csv")


def test_bad_construction_is_a_clear_error(tmp_path: Path, workspace: Path) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        PathGuard([])
    with pytest.raises(ValueError, match="not an existing directory"):
        PathGuard([tmp_path / "missing"])
    with pytest.raises(ValueError, match="inside a root"):
        PathGuard([workspace], base=tmp_path)


_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{k}{n}" for k in ("COM", "LPT") for n in "0123456789"}
_SAFE_NAME = st.text(
    alphabet=st.characters(
        categories=("L", "N"), include_characters="._- ~#@=+,()'", exclude_characters=":"
    ),
    min_size=1,
    max_size=40,
).filter(
    lambda n: (
        n.strip(". ") != ""
        and not n.startswith("~")
        and unicodedata.normalize("NFKC", n).split(".", 1)[0].rstrip(" ").upper() not in _DEVICES
    )
)


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=200
)
@given(name=_SAFE_NAME)
def test_property_safe_names_resolve_inside(guard: PathGuard, workspace: Path, name: str) -> None:
    real = guard.resolve(name, for_write=True)
    assert os.path.commonpath([workspace.resolve(), real]) == str(workspace.resolve())
    assert real.name == name


def test_a_root_whose_own_name_a_model_could_not_use(tmp_path: Path) -> None:
    root = tmp_path / "proj:v2" / "con"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("x")
    guard = PathGuard([root])
    assert guard.resolve(str(root / "sub" / "a.txt")) == root.resolve() / "sub" / "a.txt"
    assert guard.resolve("sub/a.txt") == root.resolve() / "sub" / "a.txt"
    assert guard.resolve(str(root)) == root.resolve()
    with pytest.raises(SecurityViolation) as info:
        guard.resolve(str(root / "sub" / "b:stream"), for_write=True)
    assert info.value.rule == "path.windows_stream"
    with pytest.raises(SecurityViolation) as info:
        guard.resolve(str(root / "%2e%2e" / "%2e%2e" / "x"), for_write=True)
    assert info.value.rule == "path.escape"
