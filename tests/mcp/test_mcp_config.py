"""mcp.json parsing: LM Studio's dialect, ${VAR} expansion, Elaria's extra keys, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elaria.errors import ConfigError
from elaria.mcp.config import (
    HttpServerConfig,
    StdioServerConfig,
    load_mcp_config,
    parse_mcp_config,
)


def test_lmstudio_dialect_with_extras_and_expansion() -> None:
    data = {
        "mcpServers": {
            "files": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-filesystem", "${HOME_DIR}/notes"],
                "env": {"TOKEN": "${SECRET}"},
                "timeout": 90,
                "allowed_tools": ["read_*", "list_directory"],
                "disabled_tools": ["read_media_file"],
                "approval": {"write_file": "ask", "*": "auto"},
                "validate": {"read_text_file": {"path": "path"}},
            },
            "remote": {
                "url": "https://example.test/mcp",
                "headers": {"Authorization": "Bearer ${SECRET}"},
            },
        }
    }
    config = parse_mcp_config(data, {"HOME_DIR": "/home/u", "SECRET": "s3"})
    files = config.servers["files"]
    assert isinstance(files, StdioServerConfig)
    assert files.args[-1] == "/home/u/notes"
    assert files.env == {"TOKEN": "s3"}
    assert files.uses_npx
    assert (files.timeout.init, files.timeout.call) == (90, 90)
    assert files.exposes("read_text_file")
    assert not files.exposes("read_media_file")
    assert not files.exposes("write_file")
    assert files.approval_for("write_file") == "ask"
    assert files.approval_for("list_directory") == "auto"
    assert files.arg_kinds("read_text_file") == {"path": "path"}
    remote = config.servers["remote"]
    assert isinstance(remote, HttpServerConfig)
    assert remote.headers == {"Authorization": "Bearer s3"}


def test_missing_variable_names_server_and_key() -> None:
    data = {"mcpServers": {"gh": {"command": "npx", "env": {"GITHUB_TOKEN": "${GH_TOKEN}"}}}}
    with pytest.raises(ConfigError) as info:
        parse_mcp_config(data, {})
    text = str(info.value)
    assert "mcpServers.gh.env.GITHUB_TOKEN" in text
    assert "export GH_TOKEN" in text


def test_every_problem_reported_at_once() -> None:
    data = {
        "mcpServers": {
            "both": {"command": "x", "url": "http://h/mcp"},
            "typo": {"command": "x", "timout": 5},
            "badtimeout": {"command": "x", "timeout": {"init": -1}},
            "ftp": {"url": "ftp://h"},
            "approval": {"command": "x", "approval": {"t": "sometimes"}},
        }
    }
    with pytest.raises(ConfigError) as info:
        parse_mcp_config(data, {})
    fields = [p.field for p in info.value.problems]
    assert "mcpServers.both" in fields
    assert "mcpServers.typo.timout" in fields
    assert "mcpServers.badtimeout.timeout.init" in fields
    assert "mcpServers.ftp.url" in fields
    assert "mcpServers.approval.approval.t" in fields
    assert len(fields) == 5


def test_not_an_mcp_config() -> None:
    with pytest.raises(ConfigError, match="mcpServers"):
        parse_mcp_config({"servers": {}}, {})


def test_load_reports_bad_json_with_position(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text('{"mcpServers": {,}}')
    with pytest.raises(ConfigError, match="line 1 column 17"):
        load_mcp_config(path, {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_mcp_config(tmp_path / "missing.json", {})


def test_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": "python3", "args": ["-V"]}}}))
    config = load_mcp_config(path, {})
    assert list(config.servers) == ["a"]
    assert config.source == str(path)
