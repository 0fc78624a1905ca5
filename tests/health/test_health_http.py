"""/health and /metrics over real HTTP on 127.0.0.1, and the two commands as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from elaria.config import HealthSettings
from elaria.memory.cache import Cache
from elaria.memory.monitor import MemoryMonitor
from elaria.telemetry.health import (
    HealthRegistry,
    HealthServer,
    assess_hosts,
    assess_memory,
    probe_hosts,
)
from elaria.testing import embedded_server

MiB = 1 << 20
WAIT = 30.0  # bound on a subprocess: it imports the package first, on a busy 2-core machine
LOOPBACK = HealthSettings(host="127.0.0.1", port=0)


async def http(url_host: str, port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange: what curl would see."""
    reader, writer = await asyncio.open_connection(url_host, port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def registry_with(level_rss: int, hosts: list[dict[str, Any]]) -> HealthRegistry:
    registry = HealthRegistry()
    monitor = MemoryMonitor(sampler=lambda: level_rss, limit=100 * MiB)
    cache: Cache[str, str] = Cache(name="handles")
    cache.set("k", "v")

    async def host_stats() -> list[dict[str, Any]]:
        return hosts

    registry.register("hosts", host_stats, assess=assess_hosts)
    registry.register("memory", monitor.check, assess=assess_memory)
    registry.register("caches", lambda: [cache.stats()])
    return registry


async def test_health_and_metrics_over_http() -> None:
    hosts = [{"host": "ws://a:1", "state": "up"}, {"host": "ws://b:2", "state": "down"}]
    async with HealthServer(registry_with(10 * MiB, hosts), LOOPBACK) as server:
        host, port = server.address
        assert host == "127.0.0.1"
        status, headers, body = await http(host, port, get("/health"))
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert headers["Connection"] == "close"
        assert int(headers["Content-Length"]) == len(body)
        snap = json.loads(body)
        assert snap["status"] == "degraded"
        assert set(snap["sections"]) == {"hosts", "memory", "caches"}

        status, headers, body = await http(host, port, get("/metrics?x=1"))
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        current = {s.labels["status"]: s.value for s in families["elaria_health_status"].samples}
        assert current == {"ok": 0.0, "degraded": 1.0, "unhealthy": 0.0}
        up = {s.labels["host"]: s.value for s in families["elaria_host_up"].samples}
        assert up == {"ws://a:1": 1.0, "ws://b:2": 0.0}
        stats = {
            (s.labels["section"], s.labels["stat"]): s.value
            for s in families["elaria_component_stat"].samples
        }
        assert stats[("memory", "rss")] == 10 * MiB
        assert stats[("caches", "[handles].entries")] == 1.0
        assert "python_gc_objects_collected" not in families  # our registry, not the global one


async def test_unhealthy_is_503_and_wrong_requests_get_proper_errors() -> None:
    registry = registry_with(95 * MiB, [{"host": "ws://a:1", "state": "down"}])
    async with HealthServer(registry, LOOPBACK) as server:
        host, port = server.address
        status, _, body = await http(host, port, get("/health"))
        assert status == 503
        assert json.loads(body)["status"] == "unhealthy"
        status, _, _ = await http(host, port, get("/nope"))
        assert status == 404
        status, headers, _ = await http(host, port, b"POST /health HTTP/1.1\r\n\r\n")
        assert status == 405
        assert headers["Allow"] == "GET"
        status, _, _ = await http(host, port, b"garbage\r\n\r\n")
        assert status == 400
        assert server.requests == 4


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELARIA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elaria.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_elaria_health_against_a_running_endpoint_with_the_embedded_server() -> None:
    async with embedded_server() as srv:
        dead = f"ws://127.0.0.1:{closed_port()}"
        registry = HealthRegistry()

        async def host_stats() -> list[dict[str, Any]]:
            return await probe_hosts([srv.ws_url, dead])

        registry.register("hosts", host_stats, assess=assess_hosts)
        registry.register("memory", MemoryMonitor().check, assess=assess_memory)
        async with HealthServer(registry, LOOPBACK) as server:
            code, out, _ = await run_cli("health", "--json", "--url", f"{server.url}/health")
            snap = json.loads(out)
            assert code == 3  # degraded
            assert snap["source"] == f"{server.url}/health"
            assert set(snap["sections"]) == {"hosts", "memory"}
            assert snap["reasons"] == [f"hosts: host {dead} is down"]

            code, out, _ = await run_cli("health", "--url", f"{server.url}/health")
            assert code == 3
            assert "DEGRADED" in out
            assert "LM Studio hosts" in out
            assert "scripted" in out  # the loaded model, listed through the SDK


async def test_elaria_health_falls_back_to_this_machine_and_refuses_a_bad_url() -> None:
    code, out, _ = await run_cli(
        "health", "--json", "--url", f"http://127.0.0.1:{closed_port()}/health"
    )
    snap = json.loads(out)
    assert code == 0
    assert snap["source"].startswith("this machine")
    assert snap["sections"]["memory"]["rss"] > 0
    code, _, err = await run_cli("health", "--url", "ftp://x")
    assert code == 2
    assert "is not an http(s) URL" in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs")
async def test_serve_health_serves_until_interrupted() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELARIA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elaria.cli",
        "serve-health",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
        assert line.startswith("serving http://127.0.0.1:")
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        status, _, body = await http("127.0.0.1", port, get("/health"))
        assert status == 200
        assert json.loads(body)["sections"]["memory"]["samples"] >= 1
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_health_explains_a_busy_or_bad_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await run_cli("serve-health", "--port", str(port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Pick another --port" in err
    code, _, err = await run_cli("serve-health", "--port", "70000")
    assert code == 2
    assert "outside 0..65535" in err


async def test_elaria_health_in_process_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from elaria import cli

    hosts = [{"host": "ws://a:1", "state": "up", "loaded_models": ["m1"]}]
    registry = registry_with(95 * MiB, hosts)  # memory critical: unhealthy
    registry.record_error(RuntimeError("boom"), where="test")
    async with HealthServer(registry, LOOPBACK) as server:
        url = f"{server.url}/health"
        assert await asyncio.to_thread(cli.main, ["health", "--url", url]) == 1
        out = capsys.readouterr().out
        assert "UNHEALTHY" in out
        assert "memory critical" in out
        assert "95 MiB" in out  # bytes shown readably
        assert "RuntimeError: boom" in out
        assert await asyncio.to_thread(cli.main, ["health", "--json", "--url", url]) == 1
        assert json.loads(capsys.readouterr().out)["status"] == "unhealthy"
    closed = f"http://127.0.0.1:{closed_port()}/health"
    assert await asyncio.to_thread(cli.main, ["health", "--url", closed]) == 0
    assert "this machine" in capsys.readouterr().out
