"""``elaria models`` against the embedded server, and its errors."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from elaria import cli
from elaria.embedded import EmbeddedServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_lists_downloaded_and_loaded_models_as_json(
    server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(cli.main, ["models", "--host", server.ws_url, "--json"])
    assert code == 0
    [listing] = json.loads(capsys.readouterr().out)
    assert listing["host"] == server.ws_url
    assert "scripted-llm" in {m["model_key"] for m in listing["downloaded"]}
    assert "scripted-llm" in {m["identifier"] for m in listing["loaded"]}


async def test_table_shows_reachable_and_unreachable_hosts(
    server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    args = ["models", "--host", server.ws_url, "--host", dead]
    code = await asyncio.to_thread(cli.main, args)
    out = capsys.readouterr().out
    assert code == 0
    assert "scripted-llm" in out
    assert f"{dead}: unreachable" in out


def test_no_reachable_host_is_one_readable_error(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    assert cli.main(["models", "--host", dead]) == 1
    err = capsys.readouterr().err
    assert "error:" in err
    assert dead in err
    assert "Traceback" not in err


def test_bad_or_missing_hosts_are_configuration_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 2
    assert "no LM Studio host" in capsys.readouterr().err
    assert cli.main(["models", "--host", "http://localhost:1234"]) == 2
    assert "scheme must be ws or wss" in capsys.readouterr().err
    assert cli.main(["models", "--host", "ws://example.com:1234"]) == 2
    assert "allowed_remote_hosts" in capsys.readouterr().err
