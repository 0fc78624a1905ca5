"""Structured logging: files where configured, rotation, correlation ids, no secret anywhere,
failing sinks that never break the program."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from elaria.config import LoggingSettings
from elaria.telemetry.logging import (
    ERROR_LOG_NAME,
    LOG_NAME,
    log_api_call,
    log_memory_usage,
    log_model_load,
    log_security_event,
    log_tool_execution,
    log_websocket_event,
    logging_stats,
    request_context,
    reset_logging,
    run_context,
    setup_logging,
    timer,
)

SECRETS = {
    "lmstudio": "sk-lm-Ab12Cd34:Zy98Xw76Vu54Ts32Rq10",
    "openai": "sk-proj-4fGh7JkL9mNpQrStUvWx0123",
    "github": "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "password": "correct-horse-battery-staple",
    "bearer": "Zm9vYmFyYmF6cXV4MTIz",
}


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    reset_logging()


def _settings(log_dir: Path, **kw: Any) -> LoggingSettings:
    return LoggingSettings(log_dir=log_dir, level=kw.pop("level", "debug"), **kw)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _everything_written(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_files_appear_where_configured_with_levels(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path / "a" / "logs", level="info", console=False))
    logger.debug("not at info")
    logger.info("hello {}", "world")
    logger.error("it broke")
    main = _lines(tmp_path / "a" / "logs" / LOG_NAME)
    errors = _lines(tmp_path / "a" / "logs" / ERROR_LOG_NAME)
    assert [r["message"] for r in main] == ["hello world", "it broke"]
    assert [r["message"] for r in errors] == ["it broke"]
    assert main[0]["level"] == "INFO"
    assert main[0]["service"] == "elaria"
    assert main[0]["function"] == "test_files_appear_where_configured_with_levels"


def test_setup_again_reconfigures_without_duplicates(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path / "one", console=False))
    logger.info("first")
    setup_logging(_settings(tmp_path / "two", console=False, service_name="other-svc"))
    logger.info("second")
    assert [r["message"] for r in _lines(tmp_path / "one" / LOG_NAME)] == ["first"]
    second = _lines(tmp_path / "two" / LOG_NAME)
    assert [r["message"] for r in second] == ["second"]
    assert second[0]["service"] == "other-svc"


def test_bound_fields_are_carried(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False))
    seen: list[dict[str, Any]] = []
    handler = logger.add(lambda m: seen.append(dict(m.record["extra"])), level="DEBUG")
    logger.bind(pair=("a", 1), when=Path("x")).info("shapes")
    logger.remove(handler)
    assert seen[0]["pair"] == ("a", 1)  # other sinks see the bound shapes they bound
    assert seen[0]["when"] == "x"  # objects become text, so redaction can see inside
    logger.bind(kind="breaker", host="ws://localhost:1234", old="closed", new="open").info("trip")
    record = _lines(tmp_path / LOG_NAME)[-1]
    assert record["extra"] == {
        "kind": "breaker",
        "host": "ws://localhost:1234",
        "old": "closed",
        "new": "open",
    }


async def test_correlation_ids_follow_runs_requests_and_tasks(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False))

    async def request(name: str, gate: asyncio.Event) -> None:
        with request_context(f"req-{name}"):
            logger.info(f"start {name}")
            await gate.wait()  # both requests are in flight at once
            logger.info(f"end {name}")

    logger.info("outside")
    with run_context("run-1") as run_id:
        assert run_id == "run-1"
        gate = asyncio.Event()
        tasks = [asyncio.create_task(request(n, gate)) for n in ("a", "b")]
        await asyncio.sleep(0)
        gate.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks)
    records = _lines(tmp_path / LOG_NAME)
    by_message = {r["message"]: r for r in records}
    assert by_message["outside"]["run_id"] is None
    for name in ("a", "b"):
        for phase in ("start", "end"):
            record = by_message[f"{phase} {name}"]
            assert record["run_id"] == "run-1"
            assert record["request_id"] == f"req-{name}"


def test_run_context_generates_an_id_when_none_is_given(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False))
    with run_context() as run_id:
        logger.info("x")
    assert len(run_id) == 32
    assert _lines(tmp_path / LOG_NAME)[0]["run_id"] == run_id


def test_files_rotate_and_keep_a_bounded_number(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False, rotation_mb=1))
    chunk = "x" * 100_000
    for i in range(80):  # ~8 MB: more rotations than files kept
        logger.info(f"{i} {chunk}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([LOG_NAME, *(f"{LOG_NAME}.{i}" for i in range(1, 6))])
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 1024 * 1024
        for line in path.read_text().splitlines():
            json.loads(line)  # every line whole
    stats = logging_stats()["files"][0]
    assert stats["rotations"] >= 6
    # The newest record is in the live file.
    assert _lines(tmp_path / LOG_NAME)[-1]["message"].startswith("79 ")


def _log_everything_secret() -> None:
    s = SECRETS
    logger.bind(
        kind="request",
        headers={"Authorization": f"Bearer {s['bearer']}", "Accept": "*/*"},
        config={"lmstudio": {"api_key": s["lmstudio"], "hosts": ["ws://localhost:1234"]}},
        args=[{"nested": [{"deeper": {"password": s["password"]}}]}],
        url=f"https://bob:{s['password']}@example.com/x?token={s['github']}",
        raw=json.dumps({"aws": s["aws"], "n": 3}),
    ).info(f"calling with {s['openai']} and password={s['password']}")
    logger.warning("key {} then {}", s["lmstudio"], s["aws"])
    try:
        raise RuntimeError(f"auth failed for {s['github']} / Bearer {s['bearer']}")
    except RuntimeError:
        logger.exception("request failed")
    with timer("inference", api_key=s["openai"]):
        pass
    log_api_call("GET", f"https://x.test/?api_key={s['openai']}", status=200, duration_s=0.1)
    log_security_event("credential in argument", severity="critical", value=s["github"])


def test_no_secret_reaches_any_sink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(_settings(tmp_path / "logs"))
    captured: list[str] = []
    logger.add(captured.append, format="{message} {extra}", level="DEBUG")  # a foreign sink
    _log_everything_secret()
    written = _everything_written(tmp_path / "logs") + capsys.readouterr().err + "".join(captured)
    assert "request failed" in written
    assert "[REDACTED]" in written
    for name, secret in SECRETS.items():
        assert secret not in written, name
    assert "Zy98Xw76Vu54Ts32Rq10" not in written  # not even the LM Studio key's tail
    # Non-secrets survive.
    assert "ws://localhost:1234" in written
    assert '"n": 3' in written or '\\"n\\": 3' in written


def test_helpers_log_their_kinds_and_fields(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False))
    log_api_call("POST", "/v1/x", status=500, duration_s=0.25, success=False)
    log_model_load("gemma-3-270m", success=True, duration_s=1.5, host="ws://localhost:1234")
    log_model_load("big-model", success=False, duration_s=0.1, error="out of memory")
    log_tool_execution("read_file", outcome="ok", duration_s=0.002, call_id="c1")
    log_websocket_event("reconnect", host="ws://localhost:1234", attempt=2)
    log_memory_usage(512 * 1_048_576, fraction=0.85, level="warning")
    log_security_event("path escape", severity="high", rule="path.escape")
    records = _lines(tmp_path / LOG_NAME)
    kinds = [(r["extra"]["kind"], r["level"]) for r in records]
    assert kinds == [
        ("api_call", "WARNING"),
        ("model_load", "INFO"),
        ("model_load", "ERROR"),
        ("tool", "INFO"),
        ("websocket", "INFO"),
        ("memory", "WARNING"),
        ("security", "ERROR"),
    ]
    assert records[0]["extra"]["duration_ms"] == 250.0
    assert records[1]["extra"]["model"] == "gemma-3-270m"
    assert records[2]["extra"]["success"] is False
    assert records[3]["extra"]["call_id"] == "c1"
    assert records[4]["extra"]["attempt"] == 2
    assert records[6]["extra"]["severity"] == "high"
    # The helpers report the caller's location, not their own.
    assert {r["function"] for r in records} == {"test_helpers_log_their_kinds_and_fields"}
    assert len(_lines(tmp_path / ERROR_LOG_NAME)) == 2


def test_timer_measures_with_an_injected_clock_and_logs_failures(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False))
    now = [100.0]
    with timer("inference", clock=lambda: now[0], model="m") as t:
        now[0] += 0.5
        assert t.elapsed == pytest.approx(0.5)
        t.meta["tokens"] = 12
        now[0] += 0.25
    assert t.elapsed == pytest.approx(0.75)
    with pytest.raises(ZeroDivisionError), timer("broken", clock=lambda: now[0]):
        _ = 1 / 0
    ok, failed = _lines(tmp_path / LOG_NAME)
    assert ok["extra"] == {
        "kind": "timer",
        "timer": "inference",
        "duration_ms": 750.0,
        "success": True,
        "model": "m",
        "tokens": 12,
    }
    assert failed["extra"]["success"] is False
    assert ok["function"] == "test_timer_measures_with_an_injected_clock_and_logs_failures"


def test_unwritable_log_dir_reports_once_and_work_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tests run as root, where permissions do not stop writes: a log dir whose parent is a
    # regular file cannot be created by anyone.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    setup_logging(_settings(blocker / "logs"))
    for i in range(20):
        logger.info(f"message {i}")
    logger.error("an error too")
    err = capsys.readouterr().err
    assert "message 19" in err  # the console sink kept working
    reports = [line for line in err.splitlines() if line.startswith("elaria logging: cannot")]
    assert len(reports) == 2  # once per file (main and error), not once per record
    assert "elaria.jsonl" in reports[0]
    stats = logging_stats()["files"]
    assert stats[0]["lines_dropped"] == 21
    assert stats[0]["failed_writes"] == 1  # it did not hammer the disk for every record
    assert stats[0]["failing"] is True
    assert logging_stats()["status"] == "degraded"


# Free text can only be recognised by its format; a bare password needs its key.
_token = st.sampled_from([SECRETS[k] for k in ("lmstudio", "openai", "github", "aws")])
_keyed = st.sampled_from(["password", "api_key", "secret"]).map(
    lambda key: {key: SECRETS["password"]}
)
_secret_tree = st.recursive(
    _token | _keyed | st.integers(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "data", "args", "token", "x"]), children, max_size=3
        )
    ),
    max_leaves=8,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_secret_tree, message_secret=_token)
def test_property_secret_structures_never_reach_the_files(
    tmp_path: Path, tree: Any, message_secret: str
) -> None:
    log_dir = tmp_path / "prop"
    setup_logging(_settings(log_dir, console=False))
    logger.bind(payload=tree, text=json.dumps({"wrapped": tree})).error(
        f"value {message_secret} in message"
    )
    written = _everything_written(log_dir)
    assert "in message" in written
    for secret in SECRETS.values():
        assert secret not in written


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_odd_records_never_break_the_caller(tmp_path: Path) -> None:
    setup_logging(_settings(tmp_path, console=False))
    logger.bind(path="caf\udce9.txt", thing=_Unprintable()).info("file caf\udce9.txt seen")
    record = _lines(tmp_path / LOG_NAME)[0]
    assert record["message"] == "file caf\udce9.txt seen"  # a JSON escape, read back as written
    assert record["extra"]["thing"] == "<unprintable _Unprintable>"


def test_chained_exception_messages_are_scrubbed_in_every_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(_settings(tmp_path))
    foreign: list[str] = []
    logger.add(foreign.append, format="{message}", level="DEBUG")  # gets "\n{exception}" added
    try:
        try:
            raise ValueError(f"upstream said {SECRETS['github']}")
        except ValueError as inner:
            raise RuntimeError(f"call failed with key {SECRETS['openai']}") from inner
    except RuntimeError:
        logger.exception("wrapped failure")
    written = _everything_written(tmp_path) + capsys.readouterr().err + "".join(foreign)
    assert "ValueError: upstream said [REDACTED]" in written  # type names and chain kept
    assert "RuntimeError: call failed with key [REDACTED]" in written
    assert SECRETS["github"] not in written
    assert SECRETS["openai"] not in written
