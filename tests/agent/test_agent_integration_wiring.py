"""How the Runtime wires its parts: logging for library users, the memory monitor, host checks,
and the security settings reaching the validators."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from elaria.agent.recorder import logging_is_configured
from elaria.config import Settings
from elaria.embedded import ScriptedEngine, reply, tool_call
from elaria.errors import ConfigError, HostDown, ResourceExhausted, SecurityViolation
from elaria.memory.monitor import MemoryMonitor
from elaria.runtime import Runtime
from elaria.telemetry.logging import reset_logging

MiB = 1 << 20
#: A non-loopback address reserved for documentation (RFC 5737): nothing ever answers there.
REMOTE = "192.0.2.10"


def settings(**sections: Any) -> Settings:
    return Settings.model_validate({"agent": {"workspace": "ws"}, **sections})


@pytest.fixture
def unconfigured_logging() -> Iterator[None]:
    """Loguru as a library user's program has it: no sink chosen by anyone."""
    reset_logging()
    # loguru lists its handlers nowhere public; remove every one, the stock one included.
    for handler in list(getattr(logger, "_core").handlers):  # noqa: B009
        logger.remove(handler)
    assert not logging_is_configured()
    yield
    reset_logging()


def secret_tool(note: str) -> str:
    """Log a note and return it."""
    logger.info("tool saw token sk-lm-Abcdefgh:Abcdefghijklmnopqrst and {}", note)
    return note


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ logging


async def test_a_library_runtime_sets_up_redacted_logs_whose_run_records_carry_the_run_id(
    unconfigured_logging: None, tmp_path: Path
) -> None:
    engine = ScriptedEngine()
    engine.script(tool_call("secret_tool", {"note": "first"}), reply("done"))
    config = settings(logging={"console": False, "level": "debug"})
    async with Runtime(config, engine=engine, tools=[secret_tool], builtin_tools=False) as rt:
        result = await rt.run("note it")
        assert logging_is_configured()
    assert not logging_is_configured()  # put back as found: loguru's stock stderr handler only
    records = log_lines(tmp_path / "logs" / "elaria.jsonl")
    tool_records = [r for r in records if r["message"].startswith("tool saw token")]
    assert len(tool_records) == 1
    assert tool_records[0]["run_id"] == result.run_id
    assert "Abcdefghijklmnopqrst" not in json.dumps(records)  # redacted by the patcher
    during_run = [r for r in records if r["run_id"] is not None]
    assert {r["run_id"] for r in during_run} == {result.run_id}


async def test_a_configuration_the_caller_made_is_left_alone(
    unconfigured_logging: None, tmp_path: Path
) -> None:
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message)), level="INFO")
    try:
        engine = ScriptedEngine()
        engine.script(tool_call("secret_tool", {"note": "mine"}), reply("done"))
        async with Runtime(
            settings(), engine=engine, tools=[secret_tool], builtin_tools=False
        ) as rt:
            await rt.run("note it")
    finally:
        logger.remove(handler)
    assert not (tmp_path / "logs" / "elaria.jsonl").exists()
    assert any("tool saw token" in line for line in seen)


async def test_two_runtimes_share_the_logging_they_set_up(
    unconfigured_logging: None, tmp_path: Path
) -> None:
    first = Runtime(settings(logging={"console": False}), engine=ScriptedEngine())
    second = Runtime(settings(logging={"console": False}), engine=ScriptedEngine())
    await first.start()
    await second.start()
    await first.close()
    assert logging_is_configured()  # still in use by the second
    logger.info("after the first closed")
    await second.close()
    assert not logging_is_configured()
    messages = [r["message"] for r in log_lines(tmp_path / "logs" / "elaria.jsonl")]
    assert "after the first closed" in messages


# ------------------------------------------------------------------ memory


class Sampler:
    def __init__(self) -> None:
        self.rss = 10 * MiB

    def __call__(self) -> int:
        return self.rss


async def test_memory_warning_sheds_run_histories_and_critical_refuses_runs() -> None:
    sampler = Sampler()
    monitor = MemoryMonitor(sampler=sampler, limit=100 * MiB)
    engine = ScriptedEngine()
    async with Runtime(
        settings(history={"max_messages": 8}), engine=engine, builtin_tools=False, monitor=monitor
    ) as rt:
        chat = rt.session()
        for i in range(4):
            engine.script(reply(f"answer {i}"))
            await chat.send(f"question {i}")
        assert chat.history is not None
        before = chat.history.stats()["messages"]
        assert rt.stats()["histories"]["active"] == 1
        assert rt.stats()["histories"]["messages"] == before

        sampler.rss = 85 * MiB  # warning: holders are asked to shed
        monitor.check()
        assert chat.history.stats()["messages"] < before
        assert monitor.stats()["shed_items"] > 0

        sampler.rss = 95 * MiB  # critical: no new run
        monitor.check()
        with pytest.raises(ResourceExhausted, match="Memory is critical"):
            await rt.run("one more")
        sampler.rss = 50 * MiB
        monitor.check()
        engine.script(reply("back"))
        assert (await rt.run("one more")).answer == "back"


# ------------------------------------------------------------------ hosts and validators


async def test_a_remote_host_is_refused_before_anything_connects() -> None:
    config = settings(lmstudio={"hosts": [f"ws://{REMOTE}:1234"]})
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        async with Runtime(config, backend="lmstudio"):
            pass
    assert time.monotonic() - started < 1.0  # refused, not probed
    assert refused.value.where == "lmstudio.hosts"
    assert REMOTE in str(refused.value)


async def test_an_allowed_remote_host_passes_the_check() -> None:
    config = settings(
        lmstudio={
            "hosts": [f"ws://{REMOTE}:1234"],
            "allow_plaintext_remote": True,
            "probe_timeout_ms": 100,
        },
        security={"allowed_remote_hosts": [REMOTE]},
    )
    # Past the host check, discovery finds nothing there: the readable "no LM Studio" error.
    with pytest.raises(HostDown, match="No LM Studio server answered"):
        async with Runtime(config, backend="lmstudio"):
            pass


async def test_allowed_remote_hosts_reach_the_url_validator() -> None:
    config = settings(security={"allowed_remote_hosts": ["api.example.com"]})
    async with Runtime(config, engine=ScriptedEngine(), builtin_tools=False) as rt:
        check_url = rt.validators["url"]
        check_url("https://api.example.com/v1/items")
        with pytest.raises(SecurityViolation):
            check_url("https://elsewhere.example.org/")
