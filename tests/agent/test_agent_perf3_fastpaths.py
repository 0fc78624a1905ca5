"""The per-round fast paths of perf3 give the answers of the general paths they skip.

* ``EventLog.round`` builds the inference event line without a pydantic model: every such line
  must parse as an :class:`InferenceEvent` and equal, field for field, the line the validated
  path writes for the same round; where the validated path refuses a value, the fast path must
  refuse to build a line (so the validated path runs and raises as before).
* ``check_tool_arguments`` screens small flat dicts first: its verdict (accepted, or the same
  rule and message) must be the general walk's for any input.
* The run recorder's bound event sink still feeds the audit record and never raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from elaria.agent import events as ev
from elaria.config import Settings
from elaria.errors import SecurityViolation
from elaria.lmstudio.rounds import RoundResult
from elaria.security import inputs
from elaria.telemetry.events import EventLog, InferenceEvent

# ------------------------------------------------------------------ the inference event line

_TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "ws://127.0.0.1:1234",
            "scripted-llm",
            "sk-abcdefghijklmnopqrstuvwx1234",
            "Bearer abcdefghijklmnopqrstuvwxyz012345",
            "https://user:hunter2secret@example.com/v1",
            "ünïcödé ✓",
            "\ud800lone",
        ]
    ),
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0.0, -0.0, 1e-9, 1e300, 0.00123]),
)
_TOKENS = st.one_of(st.integers(min_value=-5, max_value=10**9), st.sampled_from([True, 3.0]))
_IDS = st.one_of(st.text(min_size=1, max_size=140), st.sampled_from(["x" * 128, "x" * 129]))


def _log(tenant: str | None, cost: float) -> EventLog:
    return EventLog(
        Path("logs") / "events.jsonl", tenant=tenant, tier="gold", cost_per_1k_tokens=cost
    )


def _comparable(line: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(line)
    data.pop("created")  # each path stamps its own time
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host=_TEXTS,
    model=_TEXTS,
    stop_reason=_TEXTS,
    provider=st.sampled_from(["lmstudio", "embedded", "other"]),
    tokens_in=_TOKENS,
    tokens_out=_TOKENS,
    ttft=st.one_of(st.none(), _NUMBERS),
    total=_NUMBERS,
    latency=st.one_of(st.none(), _NUMBERS),
    request_id=_IDS,
    run_id=st.one_of(st.none(), _IDS),
    tenant=st.one_of(st.none(), _TEXTS),
    cost=st.sampled_from([0.0, 0.002, 7.5]),
)
def test_fast_event_line_parses_and_equals_the_validated_line(
    host: str,
    model: str,
    stop_reason: str,
    provider: str,
    tokens_in: int,
    tokens_out: int,
    ttft: float | None,
    total: float,
    latency: float | None,
    request_id: str,
    run_id: str | None,
    tenant: str | None,
    cost: float,
) -> None:
    log = _log(tenant, cost)
    result = RoundResult(
        text="",
        stop_reason=stop_reason,
        prompt_tokens=tokens_in,
        predicted_tokens=tokens_out,
        time_to_first_token_s=ttft,
        total_time_s=total,
        host=host,
        model=model,
        provider=provider,
    )
    fast = log._round_line(result, request_id, run_id, latency)
    try:
        slow = log._round_event(result, request_id, run_id, latency, {}).to_line()
    except ValidationError:
        assert fast is None, "the fast path wrote a line the schema refuses"
        return
    if fast is None:
        return  # the validated path runs instead: same line by construction
    assert fast.endswith(b"\n")
    assert fast.count(b"\n") == 1
    parsed = InferenceEvent.model_validate_json(fast)
    assert parsed.success
    assert parsed.provider in ("lmstudio", "embedded")
    assert list(json.loads(fast)) == list(json.loads(slow)), "field order differs"
    assert _comparable(fast) == _comparable(slow)


def test_ordinary_rounds_take_the_fast_path_and_the_log_gets_them() -> None:
    log = _log("acme", 0.002)
    result = RoundResult(
        text="hi",
        stop_reason="toolCalls",
        prompt_tokens=120,
        predicted_tokens=12,
        time_to_first_token_s=0.0004,
        total_time_s=0.002,
        host="ws://127.0.0.1:1234",
        model="scripted-llm",
    )
    line = log._round_line(result, "req-1", "run-1", 0.00123)
    assert line is not None
    event = InferenceEvent.model_validate_json(line)
    assert (event.request_id, event.run_id, event.tenant, event.tier) == (
        "req-1",
        "run-1",
        "acme",
        "gold",
    )
    assert event.latency_ms == pytest.approx(1.23)
    assert event.cost_usd == pytest.approx(132 / 1000 * 0.002)
    assert event.meta == {"stop_reason": "toolCalls"}


async def test_round_writes_the_fast_line_and_extra_meta_takes_the_validated_path() -> None:
    log = _log(None, 0.0)
    result = RoundResult(text="", host="h", model="m", total_time_s=0.5)
    async with log:
        assert log.round(result, request_id="r1", run_id="run")
        assert log.round(result, request_id="r2", run_id="run", attempt=2)
    lines = [InferenceEvent.model_validate_json(x) for x in log.path.read_bytes().splitlines()]
    assert [e.request_id for e in lines] == ["r1", "r2"]
    assert lines[0].meta == {"stop_reason": "eosFound"}
    assert lines[1].meta == {"stop_reason": "eosFound", "attempt": 2}
    assert lines[0].latency_ms == pytest.approx(500.0)


def test_a_secret_never_reaches_the_fast_line() -> None:
    secret = "sk-abcdefghijklmnopqrstuvwx1234"
    log = _log(None, 0.0)
    result = RoundResult(text="", host=f"https://u:{secret}@h", model=secret, stop_reason=secret)
    line = log._round_line(result, "req", None, 0.1)
    assert line is not None
    assert secret.encode() not in line


# ------------------------------------------------------------------ tool argument checks

_ARG_KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "a",
            "path",
            "query-1",
            "__proto__",
            "constructor",
            "prototype",
            "a.constructor",
            "x[prototype]",
            "__init__",
            "_private",
            "ｃonstructor",
            "key\u200b",
            "tab\there",
            "k" * 64,
            "k" * 65,
        ]
    ),
)
_ARG_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(
        [
            '{"__proto__": 1}',
            ' [{"constructor": 2}]',
            "[1, 2]",
            "{not json",
            "x" * 40,
            "\n{}",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["a", "__proto__"]), st.integers(), max_size=2),
)


def _verdict(check: Any, arguments: Any, max_chars: int) -> tuple[str, str] | None:
    try:
        check(arguments, max_chars)
    except SecurityViolation as exc:
        return exc.rule, str(exc)
    return None


@settings(max_examples=500, deadline=None)
@given(
    arguments=st.dictionaries(_ARG_KEYS, _ARG_VALUES, max_size=20),
    max_chars=st.sampled_from([0, 3, 20, 64, 10_000]),
)
def test_argument_check_verdicts_match_the_general_walk(
    arguments: dict[str, Any], max_chars: int
) -> None:
    def fast(args: Any, limit: int) -> None:
        inputs.check_tool_arguments(args, max_chars=limit)

    assert _verdict(fast, arguments, max_chars) == _verdict(inputs._check_any, arguments, max_chars)


def test_plain_arguments_take_the_fast_path_and_bad_ones_still_fail() -> None:
    assert inputs._plainly_fine({"a": 1, "b": "two", "c": None, "d": 2.5}, 100)
    for bad in (
        {"__proto__": 1},
        {"constructor": "x"},
        {"a": "x" * 101},
        {"a": '{"__proto__": 1}'},
    ):
        assert not inputs._plainly_fine(bad, 100)
        with pytest.raises(SecurityViolation):
            inputs.check_tool_arguments(bad, max_chars=100)


# ------------------------------------------------------------------ the recorder's event sink


async def test_recorder_events_feed_the_audit_and_a_failing_audit_never_raises() -> None:
    from elaria.agent.recorder import Telemetry

    telemetry = Telemetry(Settings(), configure_logging=False)
    await telemetry.start()
    try:
        recorder = telemetry.recorder("run-1", "task", provider="lmstudio")
        context = recorder.context
        assert context is not None
        denied = ev.ToolCallDenied(
            run_id="run-1", call_id="c1", tool="add", by="policy", reason="not allowed"
        )
        recorder.on_event(denied)
        context.settle()
        assert [e["kind"] for e in context.events] == ["denial"]

        def broken(event: Any) -> None:
            raise RuntimeError("audit down")

        recorder._record_event = broken  # the audit context's sink, bound when the run began
        recorder.on_event(denied)  # logged, never raised into the run
        context.settle()
        assert [e["kind"] for e in context.events] == ["denial"]
    finally:
        await telemetry.close()


async def test_round_ok_feeds_the_audit_and_a_failing_audit_never_raises() -> None:
    from elaria.agent.recorder import Telemetry
    from elaria.lmstudio.rounds import RoundRequest

    telemetry = Telemetry(Settings(), configure_logging=False)
    await telemetry.start()
    try:
        recorder = telemetry.recorder("run-2", "task", provider="embedded")
        context = recorder.context
        assert context is not None
        request = RoundRequest(messages=[], request_id="req-9")
        result = RoundResult(text="ok", host="h", model="m", prompt_tokens=3)
        recorded = recorder.round_ok(request, result, 0.25)
        assert recorded.provider == "embedded"  # the runtime's provider, not the round's
        context.settle()  # the round was queued; the record would apply it when built
        assert [(c["request_id"], c["provider"]) for c in context.calls] == [("req-9", "embedded")]

        def broken(**_: Any) -> None:
            raise RuntimeError("audit down")

        context.record_model_call = broken  # type: ignore[method-assign]
        assert recorder.round_ok(request, result, 0.25).text == "ok"  # logged, not raised
        assert recorder.rounds == 2
    finally:
        await telemetry.close()
