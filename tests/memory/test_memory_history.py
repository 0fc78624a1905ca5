"""ConversationHistory: bounds, pinning, token counting, spill-over, SDK Chat round trip."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import lmstudio
import pytest
from lmstudio.history import ToolCallResultData

from elaria.config import HistorySettings
from elaria.errors import ConfigError, ToolArgumentsError
from elaria.memory.cache import Cache
from elaria.memory.history import ConversationHistory, spill_reader_tool
from elaria.memory.trim import MESSAGE_OVERHEAD_TOKENS, estimate_tokens, message_text

WAIT = 5.0  # bound on every wait for a task we started


def text(role: str, body: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": body}]}


def call(call_id: str) -> dict[str, Any]:
    request = {"type": "function", "id": call_id, "name": "read", "arguments": {"p": "a"}}
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": ""},
            {"type": "toolCallRequest", "toolCallRequest": request},
        ],
    }


def result(call_id: str, body: str) -> dict[str, Any]:
    return {
        "role": "tool",
        "content": [{"type": "toolCallResult", "toolCallId": call_id, "content": body}],
    }


def test_soak_a_history_stays_within_bounds() -> None:
    """A million messages through the whole ConversationHistory path (the trimming rules alone
    are soaked the same way in test_memory_trim.py)."""
    settings = HistorySettings(max_messages=50, max_tokens=2_000)
    history = ConversationHistory(settings, system_prompt="you are terse")
    turn = [text("user", "q"), call("c"), result("c", "r"), text("assistant", "a")]
    peak_messages = peak_tokens = 0
    total = 1_000_000
    for i in range(total):
        history.add(turn[i % 4], tokens=37)  # counts precomputed: this soaks the trimming path
        peak_messages = max(peak_messages, len(history))
        if i % 7 == 0:  # 7 is prime to the turn's length: every position gets checked
            peak_tokens = max(peak_tokens, history.stats()["tokens"])
    assert peak_messages <= 50
    assert peak_tokens <= 2_000
    assert history.get_all()[0]["role"] == "system"
    assert history.stats()["trimmed_messages"] == total - len(history) + 1


def test_system_prompt_is_pinned_and_replaced_by_a_new_one() -> None:
    history = ConversationHistory(HistorySettings(max_messages=3), system_prompt="first")
    for i in range(10):
        history.add(text("user" if i % 2 == 0 else "assistant", f"m{i}"))
    assert [m["role"] for m in history.get_all()] == ["system", "user", "assistant"]
    history.add(text("system", "second"))
    assert history.system_prompt == "second"
    assert len([m for m in history.get_all() if m["role"] == "system"]) == 1


def test_get_last_clear_and_stats() -> None:
    history = ConversationHistory(system_prompt="s")
    for i in range(5):
        history.add(text("user", f"u{i}"))
    assert [message_text(m) for m in history.get_last(2)] == ["user\nu3", "user\nu4"]
    assert history.get_last(0) == []
    stats = history.stats()
    assert stats["messages"] == 6
    assert stats["tokens"] == sum(estimate_tokens(m) for m in history.get_all())
    history.clear()
    assert [m["role"] for m in history.get_all()] == ["system"]
    history.clear(keep_system=False)
    assert history.get_all() == []
    assert history.stats()["tokens"] == 0


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"role": "robot", "content": []}, "role 'robot'"),
        ({"role": "user", "content": 5}, "list of parts"),
        (result("x", "r"), "must follow the assistant message"),
    ],
)
def test_bad_messages_are_refused_with_a_clear_error(message: Any, fragment: str) -> None:
    history = ConversationHistory()
    history.add(text("user", "keep me"))
    with pytest.raises(ValueError, match=re.escape(fragment)):
        history.add(message)
    assert len(history) == 1  # nothing lost


def test_context_length_sets_the_token_budget_and_trims() -> None:
    history = ConversationHistory(HistorySettings(answer_reserve_tokens=1_000))
    for _ in range(20):
        history.add(text("user", "x" * 400))
    assert history.set_context_length(2_000) == 1_000
    assert history.stats()["tokens"] <= 1_000
    assert history.set_context_length(4_096, reserve=96) == 4_000
    with pytest.raises(ConfigError, match="no token budget"):
        history.set_context_length(0)


async def test_exact_counts_replace_estimates_and_are_cached() -> None:
    seen: list[str] = []

    async def count_tokens(text_: str) -> int:
        seen.append(text_)
        return len(text_.split())  # a stand-in tokenizer: one token per word

    history = ConversationHistory(counter=count_tokens)
    message = text("user", "one two three four")
    await history.add_counted(message)
    assert history.stats()["tokens"] == 5 + MESSAGE_OVERHEAD_TOKENS  # "user" + 4 words
    history.add(text("assistant", "fine"))
    history.add(message)  # the same text again: counted from the cache, no tokenizer call
    assert await history.recount() == 1
    assert seen == ["user\none two three four", "assistant\nfine"]


async def test_a_failing_tokenizer_keeps_the_estimate() -> None:
    async def broken(_text: str) -> int:
        raise RuntimeError("tokenizer gone")

    history = ConversationHistory(counter=broken)
    message = text("user", "hello there")
    await history.add_counted(message)
    assert history.stats()["tokens"] == estimate_tokens(message)
    assert history.stats()["counter_errors"] == 1


async def test_cancelled_count_leaves_the_message_with_its_estimate() -> None:
    started = asyncio.Event()

    async def slow(_text: str) -> int:
        started.set()
        await asyncio.Event().wait()
        return 1

    history = ConversationHistory(counter=slow)
    message = text("user", "hello")
    task = asyncio.create_task(history.add_counted(message))
    await asyncio.wait_for(started.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert history.get_all() == [message]
    assert history.stats()["tokens"] == estimate_tokens(message)


async def test_long_tool_result_is_spilled_and_readable_by_handle() -> None:
    history = ConversationHistory(HistorySettings(max_tokens=8_000))  # share: 2,000 tokens
    full = "".join(f"line {i}\n" for i in range(4_000))
    history.add(text("user", "read it"))
    history.add(call("c1"))
    history.add(result("c1", full))
    shown = history.get_last(1)[0]["content"][0]["content"]
    assert len(shown) < len(full)
    assert "truncated: showing 8000 of" in shown
    handle = re.search(r'handle="([^"]+)"', shown)
    assert handle is not None
    assert history.stats()["spilled_results"] == 1
    # The model reads the rest through the tool, page by page, and gets the exact text back.
    reader = spill_reader_tool(history)
    pages, offset = [], 8_000
    while True:
        page = await reader.invoke({"handle": handle.group(1), "offset": offset})
        assert len(page) <= 8_000  # a page fits the result share: recording it spills nothing
        marker = re.search(r"\n\[\.\.\. \d+ more characters; next page: offset=(\d+)\]$", page)
        pages.append(page[: marker.start()] if marker else page)
        if marker is None:
            break
        offset = int(marker.group(1))
    assert shown[:8_000] + "".join(pages) == full
    with pytest.raises(ToolArgumentsError, match="no spilled tool result"):
        history.read_spilled("spill-0-000000")


def test_long_tool_result_spills_into_a_shared_cache_even_when_it_is_empty() -> None:
    shared: Cache[str, str] = Cache(10, 60.0, name="shared")
    assert len(shared) == 0  # empty, hence falsy: the history must still use it
    history = ConversationHistory(HistorySettings(max_tokens=8_000), spill_cache=shared)
    history.add(text("user", "read it"))
    history.add(call("c1"))
    history.add(result("c1", "x" * 20_000))
    assert len(shared) == 1
    assert history.stats()["spilled_results"] == 1


def test_round_trip_through_the_sdk_chat() -> None:
    chat = lmstudio.Chat("be brief")
    chat.add_user_message("list files")
    chat.add_assistant_response(
        "",
        [lmstudio.ToolCallRequest(type="function", id="c1", name="ls", arguments={"p": "."})],
    )
    chat.add_tool_result(ToolCallResultData(tool_call_id="c1", content="a.txt"))
    chat.add_assistant_response("a.txt")
    history = ConversationHistory.from_chat(chat)
    assert history.system_prompt == "be brief"
    assert [m["role"] for m in history.get_all()] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    again = history.to_chat()
    assert again._get_history_for_prediction() == chat._get_history_for_prediction()


def test_shed_halves_the_history() -> None:
    history = ConversationHistory(HistorySettings(max_messages=40), system_prompt="s")
    for i in range(39):
        history.add(text("user" if i % 2 else "assistant", "x"))
    assert history.shed() > 0
    assert len(history) <= 20
    assert history.get_all()[0]["role"] == "system"
