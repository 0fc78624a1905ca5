"""Sans-I/O trimming rules: units, plan_trim, and a property over random conversations."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.config import HistorySettings
from elaria.memory.history import ConversationHistory
from elaria.memory.trim import (
    MESSAGE_OVERHEAD_TOKENS,
    UnitCost,
    estimate_tokens,
    group_units,
    plan_trim,
    result_call_ids,
    tool_call_ids,
)


def text(role: str, body: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": body}]}


def call(*ids: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": ""}]
    for call_id in ids:
        request = {"type": "function", "id": call_id, "name": "f", "arguments": {"x": 1}}
        parts.append({"type": "toolCallRequest", "toolCallRequest": request})
    return {"role": "assistant", "content": parts}


def result(*ids: str, body: str = "ok") -> dict[str, Any]:
    parts = [{"type": "toolCallResult", "toolCallId": i, "content": body} for i in ids]
    return {"role": "tool", "content": parts}


def test_call_and_its_results_are_one_unit() -> None:
    messages = [text("user", "u"), call("a", "b"), result("a"), result("b"), text("assistant", "x")]
    units = group_units(messages)
    assert [len(u) for u in units] == [1, 3, 1]
    assert tool_call_ids(units[1][0]) == ["a", "b"]
    assert result_call_ids(units[1][2]) == ["b"]


def test_orphan_tool_result_stays_visible_as_its_own_unit() -> None:
    units = group_units([result("z"), text("user", "u")])
    assert [u[0]["role"] for u in units] == ["tool", "user"]


def test_estimate_is_four_chars_per_token_plus_overhead() -> None:
    message = text("user", "x" * 400)
    # "user\n" + 400 chars = 405 chars -> 102 tokens, plus the template's role markers.
    assert estimate_tokens(message) == 102 + MESSAGE_OVERHEAD_TOKENS


def test_plan_trim_drops_oldest_first_and_never_the_newest() -> None:
    units = [UnitCost(1, 10), UnitCost(3, 30), UnitCost(1, 10), UnitCost(1, 10)]
    assert plan_trim(units, max_messages=4, max_tokens=1000) == [0, 1]
    assert plan_trim(units, max_messages=100, max_tokens=25) == [0, 1]
    # The newest unit stays even when it alone is over the budget.
    assert plan_trim(units, max_messages=100, max_tokens=5) == [0, 1, 2]
    assert plan_trim(units, max_messages=100, max_tokens=1000) == []


def test_plan_trim_keeps_the_latest_user_request_while_it_can() -> None:
    units = [UnitCost(1, 5, is_user=True), UnitCost(2, 5), UnitCost(2, 5), UnitCost(1, 5)]
    # The task (unit 0) survives while older tool exchanges go.
    assert plan_trim(units, max_messages=3, max_tokens=1000) == [1, 2]
    # When nothing else is left to drop, the request goes too; the newest unit never does.
    assert plan_trim(units, max_messages=1, max_tokens=1000) == [0, 1, 2]


def test_plan_trim_counts_the_pinned_system_prompt() -> None:
    units = [UnitCost(1, 10), UnitCost(1, 10)]
    assert plan_trim(units, max_messages=2, max_tokens=1000, pinned_messages=1) == [0]
    assert plan_trim(units, max_messages=5, max_tokens=25, pinned_tokens=10) == [0]


def test_soak_a_million_messages_through_the_trimming_rules() -> None:
    """A million messages, fed the way ConversationHistory feeds plan_trim: running totals,
    a unit growing as tool results arrive, the planned units dropped."""
    max_messages, max_tokens = 50, 2_000
    units: deque[UnitCost] = deque()
    messages = tokens = dropped = peak_messages = peak_tokens = 0
    pattern = ["user", "call", "result", "result", "answer"]  # two results for one call
    for i in range(1_000_000):
        kind = pattern[i % len(pattern)]
        cost = 30 + i % 17
        if kind == "result":  # joins its call's unit
            last = units.pop()
            units.append(UnitCost(last.messages + 1, last.tokens + cost))
        else:
            units.append(UnitCost(1, cost, is_user=kind == "user"))
        messages += 1
        tokens += cost
        drops = plan_trim(
            units,
            max_messages=max_messages,
            max_tokens=max_tokens,
            total_messages=messages,
            total_tokens=tokens,
        )
        for index in reversed(drops):
            gone = units[index]
            del units[index]
            messages -= gone.messages
            tokens -= gone.tokens
            dropped += gone.messages
        peak_messages = max(peak_messages, messages)
        peak_tokens = max(peak_tokens, tokens)
    assert peak_messages <= max_messages
    assert peak_tokens <= max_tokens
    assert dropped + messages == 1_000_000
    assert messages == sum(u.messages for u in units)


# ---------------------------------------------------------------- property over random chats

Step = tuple[str, int]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("user"), st.integers(0, 300)),
        st.tuples(st.just("answer"), st.integers(0, 300)),
        st.tuples(st.just("tools"), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=60,
)


def _check_pairing(messages: list[Any], *, complete: bool) -> None:
    """Every tool message answers a call just before it; every call has all its results."""
    units = group_units(messages[1:])  # [0] is the pinned system prompt
    for i, unit in enumerate(units):
        head = unit[0]
        assert head["role"] != "tool", "a tool result lost its call"
        asked = tool_call_ids(head)
        answered = [cid for m in unit[1:] for cid in result_call_ids(m)]
        assert set(answered) <= set(asked)
        if asked and (complete or i < len(units) - 1):
            assert sorted(answered) == sorted(asked), "a tool call lost its results"


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    max_messages=st.integers(1, 12),
    max_tokens=st.integers(1_000, 1_400),
)
def test_trimming_never_separates_calls_from_results(
    steps: list[Step], max_messages: int, max_tokens: int
) -> None:
    history = ConversationHistory(
        HistorySettings(max_messages=max_messages, max_tokens=max_tokens), system_prompt="sys"
    )
    n = 0
    for kind, size in steps:
        if kind == "tools":
            ids = [f"c{n}-{k}" for k in range(size)]
            n += 1
            history.add(call(*ids))
            _check_pairing(history.get_all(), complete=False)
            for call_id in ids:  # one tool message per result, as Chat.add_tool_result does
                history.add(result(call_id, body="r" * 200))
                _check_pairing(history.get_all(), complete=False)
        else:
            role = "user" if kind == "user" else "assistant"
            history.add(text(role, "w" * size))
        messages = history.get_all()
        _check_pairing(messages, complete=True)
        assert messages[0]["role"] == "system"
        newest = group_units(messages[1:])[-1]
        within = len(messages) <= max_messages and history.stats()["tokens"] <= max_tokens
        # Over a bound only when the newest unit alone (plus the pinned prompt) is too big.
        assert within or len(messages) == 1 + len(newest)
