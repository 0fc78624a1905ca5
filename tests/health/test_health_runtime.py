"""A running Runtime serves its own health: ``elaria health --json`` (a real subprocess) against
it shows every section; a host that is down, a failing event log or an open breaker degrade it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from elaria.config import Settings
from elaria.embedded import ScriptedEngine, reply, tool_call
from elaria.errors import ConfigError
from elaria.runtime import Runtime
from elaria.telemetry.health import HealthRegistry, assess_breakers, assess_nested

#: Bound on the subprocess: it imports the package first, on a busy 2-core machine.
WAIT_S = 30.0
#: Every section a runtime with the embedded server reports (MCP only when configured).
SECTIONS = {
    "runtime",
    "backend",
    "tools",
    "pool",
    "breakers",
    "models",
    "memory",
    "caches",
    "histories",
    "telemetry",
    "hosts",
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def settings(**sections: Any) -> Settings:
    return Settings.model_validate(
        {"agent": {"workspace": "ws"}, "health": {"host": "127.0.0.1", "port": 0}, **sections}
    )


async def elaria_health(url: str) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELARIA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elaria.cli",
        "health",
        "--json",
        "--url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None, err.decode()
    snapshot: dict[str, Any] = json.loads(out)
    return proc.returncode, snapshot


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def test_elaria_health_against_a_running_runtime_shows_every_section() -> None:
    engine = ScriptedEngine()
    engine.script(tool_call("add", {"a": 2, "b": 3}), reply("5"))
    async with Runtime(
        settings(), engine=engine, tools=[add], builtin_tools=False, serve_health=True
    ) as rt:
        result = await rt.run("add 2 and 3")
        assert result.answer == "5"
        assert rt.health_url is not None
        code, snap = await elaria_health(rt.health_url)
        assert snap["source"] == rt.health_url  # the runtime's own, not the fallback snapshot
        assert set(snap["sections"]) >= SECTIONS, SECTIONS - set(snap["sections"])
        assert (code, snap["status"]) == (0, "ok"), snap["reasons"]
        sections = snap["sections"]
        (host,) = rt.settings.lmstudio.hosts
        assert sections["pool"][host]["state"] == "connected"
        assert sections["pool"][host]["breaker"] == "closed"
        assert sections["breakers"]["hosts"][host]["state"] == "closed"
        (probe,) = sections["hosts"]
        assert probe["state"] == "up"
        assert probe["loaded_models"]  # listed through the unmodified SDK
        assert "trend" in sections["memory"]
        assert sections["caches"][0]["name"] == "tool-results"
        assert sections["telemetry"]["events"]["lines_written"] >= 2  # one line per round
        assert set(sections["telemetry"]) >= {"events", "ledger", "logs"}
        assert sections["tools"] == ["add"]
        assert sections["runtime"]["runs_in_flight"] == 0
        url = rt.health_url
    assert rt.health_server is None
    hostname, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(hostname, int(port))
    except OSError:
        return  # closed with the runtime: nothing listens there any more
    writer.close()
    raise AssertionError("the health server outlived its runtime")


async def test_a_configured_host_that_is_down_degrades_and_a_dead_backend_is_unhealthy() -> None:
    dead = f"ws://127.0.0.1:{closed_port()}"
    engine = ScriptedEngine()
    async with Runtime(
        settings(lmstudio={"hosts": [dead]}),
        engine=engine,
        builtin_tools=False,
        serve_health=True,
    ) as rt:
        assert rt.health_url is not None
        code, snap = await elaria_health(rt.health_url)
        assert (code, snap["status"]) == (3, "degraded")
        assert f"hosts: host {dead} is down" in snap["reasons"]
        states = {h["host"]: h["state"] for h in snap["sections"]["hosts"]}
        assert states == {dead: "down", rt.settings.lmstudio.hosts[0]: "up"}

        assert rt.backend is not None
        await rt.backend.server.close()  # the embedded server dies under the runtime
        code, snap = await elaria_health(rt.health_url)
        assert snap["status"] == "unhealthy"  # every host down: nothing can answer a run
        assert code == 1
        assert all(h["state"] == "down" for h in snap["sections"]["hosts"])


async def test_a_failing_event_log_degrades_the_runtime(tmp_path: Path) -> None:
    # The event log's directory name is taken by a regular file: every write fails.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "blocked").write_text("a file, not a directory")
    engine = ScriptedEngine()
    engine.script(reply("hello"))
    async with Runtime(
        settings(telemetry={"events_file": "blocked/inference.jsonl"}),
        engine=engine,
        builtin_tools=False,
    ) as rt:
        await rt.run("say hello")
        assert rt.telemetry is not None
        assert rt.telemetry.events is not None
        await rt.telemetry.events.aclose()  # flush: the failed write is counted at close
        snap = await rt.health.snapshot()
    assert snap["section_status"]["telemetry"] == "degraded"
    assert snap["status"] == "degraded"
    assert any(r.startswith("telemetry: events: cannot write") for r in snap["reasons"])


async def test_a_failed_run_is_a_recent_error() -> None:
    engine = ScriptedEngine()
    async with Runtime(settings(), engine=engine, builtin_tools=False) as rt:
        try:
            await rt.run("   ")
        except Exception:
            pass  # refused before it starts: not a run error
        engine.script(*[tool_call("add", {"a": 1, "b": 1})] * 4)
        try:
            await rt.run("loop forever", tools=[add])
        except Exception as exc:
            failure = exc
        else:
            raise AssertionError("a repeated-call loop must end the run")
        snap = await rt.health.snapshot()
    assert [e["type"] for e in snap["recent_errors"]] == [type(failure).__name__]
    assert rt.stats()["recent_errors"] == snap["recent_errors"]


def test_breakers_and_nested_statuses_are_assessed() -> None:
    assert assess_breakers({"hosts": {"ws://a": {"state": "open"}}, "models": {}}) == (
        "degraded",
        ["breaker ws://a is open"],
    )
    assert assess_breakers({"hosts": {"ws://a": {"state": "closed"}}}) == ("ok", [])
    nested = {"events": {"status": "degraded", "reasons": ["cannot write x"]}, "ledger": {}}
    assert assess_nested(nested) == ("degraded", ["events: cannot write x"])
    assert assess_nested({"events": {"status": "ok", "reasons": []}}) == ("ok", [])


async def test_recent_errors_are_a_copy() -> None:
    registry = HealthRegistry()
    registry.record_error(ValueError("boom"), where="here")
    errors = registry.recent_errors()
    errors.clear()
    assert registry.recent_errors()[0]["message"] == "boom"


async def test_the_runtime_serves_metrics_and_refuses_a_busy_port_readably() -> None:
    async with Runtime(
        settings(), engine=ScriptedEngine(), builtin_tools=False, serve_health=True
    ) as rt:
        assert rt.health_server is not None
        host, port = rt.health_server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), WAIT_S)
        writer.close()
        await writer.wait_closed()
        assert raw.startswith(b"HTTP/1.1 200")
        (backend_host,) = rt.settings.lmstudio.hosts
        assert f'elaria_host_up{{host="{backend_host}"}} 1.0'.encode() in raw

        taken = settings(health={"host": host, "port": port})
        with pytest.raises(ConfigError) as refused:
            async with Runtime(taken, engine=ScriptedEngine(), serve_health=True):
                pass
        assert refused.value.where == "health.port"
        assert str(port) in str(refused.value)
