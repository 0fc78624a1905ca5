"""The CLI dispatcher and ``elaria config``: readable output and exit codes, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elaria.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_command_module_imports_and_configures() -> None:
    # A command whose module is missing or broken would only fail when a user runs it.
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0, name


def test_config_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check"]) == 0
    assert "settings are valid" in capsys.readouterr().out


def test_config_check_reports_all_problems_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elaria.toml").write_text(
        "[lmstudio]\ntemperature = 9\n[logging]\nservice_name = 'Nope Nope'\n"
    )
    assert main(["config", "check"]) == 2
    err = capsys.readouterr().err
    assert "lmstudio.temperature" in err
    assert "logging.service_name" in err
    assert "^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$" in err  # rendered literally, not eaten as markup
    assert "Traceback" not in err


def test_config_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "elaria.toml").write_text("[history]\nmax_messages = 0\n")
    assert main(["config", "check", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["problems"][0]["field"] == "history.max_messages"


def test_console_script_bad_toml_gives_one_paragraph_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "elaria.toml").write_text("this is = = not toml\n")
    proc = subprocess.run(
        [sys.executable, "-m", "elaria.cli", "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "not valid TOML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_list_names_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "list"]) == 0
    assert main(["bench", "no-such-bench"]) == 2


def test_bench_prints_only_json_and_no_log_lines() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "elaria.cli", "bench", "pool", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert isinstance(report, dict)
    # The pool logs its reconnects (35 lines before the fix); they go to the log files.
    assert proc.stderr == ""
