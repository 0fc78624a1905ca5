"""The fast paths taken on every agent round give the same answers as the general paths.

Redaction walks plain dicts with scalars inline and remembers short strings found clean; the
history counts a message from one rendering of its text. Each test compares the fast path with
the general one (a non-dict Mapping takes the general walk) or checks the memo's one promise:
it never holds a secret.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.agent.guard import call_signature
from elaria.agent.state import result_text
from elaria.memory.history import ConversationHistory
from elaria.memory.trim import estimate_text_tokens, estimate_tokens, message_text
from elaria.security.redact import MAX_DEPTH, REDACTED, redact, redact_text
from elaria.telemetry.ledger import preview

# The package re-exports the function under the module's name; this is the module.
redact_module = importlib.import_module("elaria.security.redact")


class _View(Mapping[Any, Any]):
    """A Mapping that is not a dict: redact() walks it by the general branch."""

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _as_views(value: Any) -> Any:
    if isinstance(value, dict):
        return _View({k: _as_views(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_as_views(v) for v in value]
    return value


_KEYS = st.sampled_from(
    [
        "host",
        "password",
        "api_key",
        "token",
        "max_tokens",
        "prompt_tokens",
        "auth",
        "name",
        "arguments",
        "X-Api-Key",
        "sk-abcdefghijklmnopqrstu",
    ]
)
_STRINGS = st.sampled_from(
    [
        "",
        "plain words",
        "ws://127.0.0.1:1234",
        "https://user:hunter2@example.com/x",
        "sk-abcdefghijklmnopqrstuvwx",
        "Bearer abcdefghijklmnop",
        "password=swordfish",
        '{"token": "abcdefgh12345"}',
        "call_1_1",
    ]
)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _STRINGS)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_the_plain_dict_walk_redacts_exactly_like_the_general_one(record: dict[str, Any]) -> None:
    assert redact(record) == redact(_as_views(record))


def test_a_remembered_plain_shape_still_redacts_every_value_it_holds() -> None:
    secret = "sk-abcdefghijklmnopqrstuvwx"
    record = {"host": "ws://127.0.0.1:1234", "name": secret, "arguments": {"password": "pw12345"}}
    expected = redact(_as_views(record))
    assert expected["name"] == REDACTED
    assert expected["arguments"]["password"] == REDACTED
    for _ in range(3):  # the shape is judged once, then remembered
        assert redact(dict(record)) == expected
    assert ("host", "name", "arguments") in redact_module._plain_shapes
    # One more key, secret-named: another shape, and no longer plain.
    keyed = {**record, "api_key": 12345}
    assert redact(keyed) == redact(_as_views(keyed))
    assert redact(keyed)["api_key"] == REDACTED
    # Keys that are data (long text) are judged, never kept alive in the memo.
    long_keys = {"x" * 2000: secret, "y": 1}
    assert redact(long_keys) == {"x" * 2000: REDACTED, "y": 1}
    assert tuple(long_keys) not in redact_module._plain_shapes


def test_the_depth_limit_still_covers_scalars_under_plain_dicts() -> None:
    nested: dict[str, Any] = {"count": 7, "flag": True, "text": "plain words"}
    for _ in range(MAX_DEPTH + 2):
        nested = {"inner": nested}
    walked = redact(nested)
    general = redact(_as_views(nested))
    assert walked == general
    for _ in range(MAX_DEPTH):
        walked = walked["inner"]
    assert walked == {"inner": REDACTED}


def test_a_secret_is_never_remembered_as_clean_and_always_redacted() -> None:
    secret = "key sk-abcdefghijklmnopqrstuvwx here"
    clean = "ws://127.0.0.1:4321/llm"
    for _ in range(3):
        assert redact_text(clean) == clean
        assert "sk-abcdefghijklmnopqrstuvwx" not in redact_text(secret)
        assert redact({"host": clean, "note": secret})["note"] == f"key {REDACTED} here"
    assert clean in redact_module._clean
    assert secret not in redact_module._clean
    # Whatever the memo holds really is clean text.
    assert all(redact_module._scan_str(text) == text for text in list(redact_module._clean))


def test_the_clean_memo_stays_bounded() -> None:
    for i in range(redact_module._CLEAN_MAX_ENTRIES + 10):
        redact_text(f"plain value number {i}")
    assert len(redact_module._clean) <= redact_module._CLEAN_MAX_ENTRIES


def test_history_counts_each_message_as_the_estimate_does() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Add 1 and 2."}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "toolCallRequest",
                    "toolCallRequest": {"id": "c1", "name": "add", "arguments": {"a": 1, "b": 2}},
                }
            ],
        },
        {
            "role": "tool",
            "content": [{"type": "toolCallResult", "toolCallId": "c1", "content": "3"}],
        },
        {"role": "assistant", "content": "The total is 3."},
    ]
    history = ConversationHistory()
    for message in messages:
        history.add(message)
    expected = sum(estimate_tokens(m) for m in messages)
    assert history.stats()["tokens"] == expected
    assert all(estimate_text_tokens(message_text(m)) == estimate_tokens(m) for m in messages)
    assert history.get_all() == messages


def test_previews_and_call_signatures_are_the_json_they_always_were() -> None:
    value: dict[str, Any] = {
        "b": "grüße",
        "a": [1, 2.5, None],
        "path": Path("x/y"),
        "token": "abcdefgh1",
    }
    expected = json.dumps(redact(value), ensure_ascii=False, default=str, sort_keys=True)
    assert preview(value, None) == expected
    assert preview(value, 10) == expected[:10] + "…[truncated]"
    assert '"token": "[REDACTED]"' in expected
    signature = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    assert call_signature("read", value) == f"read:{signature}"
    assert call_signature("read", None) == "read:{}"


def test_a_tool_call_request_renders_its_arguments_as_json_text() -> None:
    arguments = {"path": "grüße/notes.md", "lines": [1, 2]}
    message = {
        "role": "assistant",
        "content": [
            {"type": "toolCallRequest", "toolCallRequest": {"name": "read", "arguments": arguments}}
        ],
    }
    rendered = json.dumps(arguments, ensure_ascii=False)
    assert message_text(message) == f"assistant\nread({rendered})"


def test_a_tool_result_is_the_json_text_it_always_was() -> None:
    value = {"total": 3, "where": Path("grüße"), "items": (1, 2)}
    assert result_text(value) == json.dumps(value, ensure_ascii=False, default=str)
    assert result_text(3) == "3"
    assert result_text("plain") == "plain"
