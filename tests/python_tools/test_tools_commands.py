"""run_command: allowlist, checked arguments, limits, timeout, output cap, environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elaria.errors import SecurityViolation, ToolExecutionError
from python_tools.commands import CommandLimits, CommandTools


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.md").write_text("one\ntwo\n")
    (ws / "my file.txt").write_text("spaced")
    return ws


def _tools(workspace: Path, *allowed: str, **limits: float) -> CommandTools:
    return CommandTools(workspace, allowed, limits=CommandLimits(**limits))  # type: ignore[arg-type]


def test_runs_an_allowed_program_in_the_workspace(workspace: Path) -> None:
    tools = _tools(workspace, "cat", "pwd", "wc")
    result = tools.run_command("cat", ["notes.md", "my file.txt"])
    assert result["exit_code"] == 0
    assert result["stdout"] == "one\ntwo\nspaced"
    assert tools.run_command("pwd")["stdout"].strip() == str(workspace.resolve())


def test_a_double_dash_goes_before_the_arguments(workspace: Path) -> None:
    (workspace / "-n").write_text("a file named like an option\n")
    result = _tools(workspace, "cat").run_command("cat", ["notes.md"])
    assert result["stdout"] == "one\ntwo\n"  # cat -- notes.md
    # Even a program that ignores "--" sees it first: no argument can become an option.
    echo = _tools(workspace, "echo").run_command("echo", ["hello"])
    assert echo["stdout"] == "-- hello\n"


def test_a_failing_program_reports_its_exit_code_and_stderr(workspace: Path) -> None:
    result = _tools(workspace, "cat").run_command("cat", ["missing.txt"])
    assert result["exit_code"] == 1
    assert "missing.txt" in result["stderr"]


def test_programs_outside_the_allowlist_are_refused(workspace: Path) -> None:
    tools = _tools(workspace, "cat")
    for program, rule in (
        ("rm", "shell.program_not_allowed"),
        ("/bin/cat", "shell.program_name"),
        ("sh", "shell.program_not_allowed"),
    ):
        with pytest.raises(SecurityViolation) as info:
            tools.run_command(program, ["x"])
        assert info.value.rule == rule


def test_dangerous_arguments_are_refused_before_anything_runs(workspace: Path) -> None:
    tools = _tools(workspace, "touch")
    for arg in ("a;touch b", "$(touch c)", "-rf", "x\ny", "ａ｜b"):
        with pytest.raises(SecurityViolation):
            tools.run_command("touch", ["made", arg])
    assert not (workspace / "made").exists()


def test_an_allowed_program_that_is_not_installed(workspace: Path) -> None:
    with pytest.raises(ToolExecutionError, match="not installed"):
        _tools(workspace, "no-such-program-xyz").run_command("no-such-program-xyz")


def test_resource_limits_are_applied(workspace: Path) -> None:
    tools = _tools(workspace, "cat", cpu_seconds=7, memory_bytes=300 * 1024 * 1024)
    limits = tools.run_command("cat", ["/proc/self/limits"])["stdout"]
    rows = {line[:26].strip(): line[26:].split() for line in limits.splitlines()[1:]}
    assert rows["Max cpu time"][:2] == ["7", "7"]
    assert rows["Max address space"][:2] == [str(300 * 1024 * 1024)] * 2
    assert rows["Max file size"][:2] == [str(64 * 1024 * 1024)] * 2
    assert rows["Max core file size"][:2] == ["0", "0"]


def test_cpu_limit_kills_a_busy_program(workspace: Path) -> None:
    tools = _tools(workspace, "sha256sum", cpu_seconds=1)
    result = tools.run_command("sha256sum", ["/dev/zero"], timeout_s=60)
    assert result.get("signal") in ("SIGXCPU", "SIGKILL")
    assert "timed_out" not in result


def test_wall_timeout_kills_the_process_group(workspace: Path) -> None:
    result = _tools(workspace, "sleep").run_command("sleep", ["30"], timeout_s=0.3)
    assert result["timed_out"] is True
    assert result["signal"] == "SIGKILL"
    assert result["seconds"] < 30


def test_output_is_capped(workspace: Path) -> None:
    result = _tools(workspace, "yes", output_bytes=10_000).run_command("yes", ["spam"])
    assert result["truncated"] is True
    assert len(result["stdout"]) <= 10_000
    assert result["stdout"].startswith("spam\nspam\n")


def test_environment_is_minimal(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_API_KEY", "sk-should-not-leak")
    result = _tools(workspace, "env").run_command("env")
    names = {line.split("=", 1)[0] for line in result["stdout"].splitlines()}
    assert names == {"PATH", "LANG", "LC_ALL"}
    assert "sk-should-not-leak" not in result["stdout"]


def test_bad_timeout(workspace: Path) -> None:
    with pytest.raises(ToolExecutionError, match="positive"):
        _tools(workspace, "cat").run_command("cat", ["notes.md"], timeout_s=-1)
    with pytest.raises(ToolExecutionError, match="positive"):
        _tools(workspace, "cat").run_command("cat", ["notes.md"], timeout_s=0)


def test_stdin_is_closed(workspace: Path) -> None:
    result = _tools(workspace, "cat").run_command("cat", timeout_s=10)
    assert result == result | {"exit_code": 0, "stdout": ""}
    assert os.path.exists(workspace)
