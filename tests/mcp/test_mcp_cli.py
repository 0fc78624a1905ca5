"""``elaria mcp``: readable errors for bad input, and ``check`` reporting every server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elaria.cli import main
from elaria.mcp.testing import fixture_server


def test_bad_config_is_one_readable_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"gh": {"command": "npx", "timout": 5}}}))
    assert main(["mcp", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "mcpServers.gh.timout" in err
    assert "Traceback" not in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp", "proxy", "--config", str(tmp_path / "nope.json")]) == 2
    assert "cannot read MCP config" in capsys.readouterr().err


def test_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp", "serve", "--transport", "http", "--port", "70000"]) == 2
    assert "0..65535" in capsys.readouterr().err


def test_check_lists_tools_and_the_failed_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mcp.json"
    servers = {"good": fixture_server(), "bad": fixture_server("crash")}
    config.write_text(json.dumps({"mcpServers": servers}))
    assert main(["mcp", "check", "--config", str(config)]) == 1
    report = json.loads(capsys.readouterr().out)
    states = {s["server"]: s["state"] for s in report["servers"]}
    assert states == {"good": "ready", "bad": "failed"}
    names = {t["name"] for t in report["tools"]}
    assert {"echo", "block", "grow", "bad.unavailable"} == names
    bad = next(s for s in report["servers"] if s["server"] == "bad")
    assert "crashing on purpose" in bad["last_error"]
