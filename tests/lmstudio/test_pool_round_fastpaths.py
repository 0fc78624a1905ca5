"""The per-round fast paths of the LM Studio layer send what the general paths sent.

* The history goes to the SDK's endpoint as wire dicts (no ``Chat`` built from them first): the
  endpoint's request must equal, for any history, the one built from the ``Chat`` of
  :func:`~elaria.lmstudio.predict._chat`, and a shape the request refuses takes that path.
* The prediction config reserves the tool field with an empty array instead of the converted
  schemas: the request must equal the one built with every schema converted to ``LlmTool``,
  and a schema the SDK refuses must still be refused before anything is sent.
* Failover walks a cached (host, model) chain: it must follow ``targets()`` as settings change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmstudio._sdk_models import LlmTool, LlmToolUseSettingToolArray
from lmstudio.json_api import LlmPredictionConfig

from elaria.config import LMStudioSettings, Settings
from elaria.lmstudio.failover import Failover
from elaria.lmstudio.pool import ClientPool
from elaria.lmstudio.predict import _chat, _endpoint, _RoundEndpoint, prediction_config
from elaria.lmstudio.rounds import RoundRequest

ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"first_number": {"type": "integer", "description": "a"}},
            "required": ["first_number"],
            "additionalProperties": False,
            "$defs": {"unused": {"type": "string"}},
        },
    },
}

_NAMES = st.sampled_from(["file_path", "lineRange", "a", "b", "x-y", "title"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=6,
)
_TEXT_PART = st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=20))
_REQUEST_PART = st.builds(
    lambda i, n, a: {
        "type": "toolCallRequest",
        "toolCallRequest": {"type": "function", "id": i, "name": n, "arguments": a},
    },
    st.sampled_from(["call_1", "call_2"]),
    st.sampled_from(["read_file", "add"]),
    st.dictionaries(_NAMES, _VALUES, max_size=3),
)
_RESULT_PART = st.builds(
    lambda c, i: {"type": "toolCallResult", "content": c, "toolCallId": i},
    st.text(max_size=20),
    st.sampled_from(["call_1", "call_2"]),
)
_MESSAGES = st.one_of(
    st.builds(
        lambda role, parts: {"role": role, "content": parts},
        st.sampled_from(["system", "user"]),
        st.lists(_TEXT_PART, min_size=1, max_size=2),
    ),
    st.builds(
        lambda text, calls: {"role": "assistant", "content": [text, *calls]},
        _TEXT_PART,
        st.lists(_REQUEST_PART, max_size=2),
    ),
    st.builds(
        lambda parts: {"role": "tool", "content": parts},
        st.lists(_RESULT_PART, min_size=1, max_size=2),
    ),
    # Shapes the request struct refuses: the lenient path must take them.
    st.builds(lambda t: {"role": "user", "content": t}, st.text(max_size=10)),
)


def _config() -> LlmPredictionConfig:
    return LlmPredictionConfig(temperature=0.2, max_tokens=64)


def _general_endpoint(messages: list[dict[str, Any]], tools: Any) -> _RoundEndpoint:
    """The path before the fast ones: a ``Chat`` of the history, every schema an ``LlmTool``."""
    config = _config()
    if tools is not None:
        config.raw_tools = LlmToolUseSettingToolArray(
            tools=[LlmTool._from_api_dict(cast(Any, t)) for t in tools]
        )
    verbatim = None if tools is None else [dict(t) for t in tools]
    return _RoundEndpoint("model-x", _chat(messages), config, verbatim)


def _outcome(build: Callable[[], _RoundEndpoint]) -> tuple[str, Any]:
    try:
        return "request", build()._creation_params
    except Exception as exc:  # the general path refuses some shapes: so must the fast one
        return type(exc).__name__, str(exc)


@settings(max_examples=200, deadline=None)
@given(st.lists(_MESSAGES, min_size=1, max_size=6), st.booleans())
def test_the_history_reaches_the_endpoint_as_through_a_chat(
    messages: list[dict[str, Any]], with_tools: bool
) -> None:
    tools = [ADD_TOOL] if with_tools else None
    request = RoundRequest(messages, tools=tools, temperature=0.2, max_tokens=64)
    verbatim = None if tools is None else [dict(t) for t in tools]
    config = prediction_config(request, LMStudioSettings())
    fast = _outcome(lambda: _endpoint("model-x", request, config, verbatim))
    assert fast == _outcome(lambda: _general_endpoint(messages, tools))


def test_a_plain_string_content_takes_the_lenient_path() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "plain text"}]
    request = RoundRequest(messages)
    fast = _endpoint("m", request, _config(), None)
    history = fast._creation_params["history"]["messages"]
    assert history == [{"role": "user", "content": [{"type": "text", "text": "plain text"}]}]


def test_the_tool_field_holds_the_schemas_exactly_as_given() -> None:
    request = RoundRequest([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    request = RoundRequest(request.messages, tools=[ADD_TOOL, ADD_TOOL])
    config = prediction_config(request, LMStudioSettings())
    fast = _endpoint("m", request, config, [dict(t) for t in request.tools or []])
    fields = fast._creation_params["predictionConfigStack"]["layers"][0]["config"]["fields"]
    (tools,) = [f["value"] for f in fields if f["key"] == "llm.prediction.tools"]
    assert tools == {"type": "toolArray", "tools": [ADD_TOOL, ADD_TOOL]}  # $defs kept


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "function"},
        {"type": "function", "function": {"description": "no name"}},
        {"type": "function", "function": {"name": "x", "parameters": {"type": "array"}}},
    ],
)
def test_a_schema_the_sdk_refuses_is_still_refused_before_sending(bad: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        LlmTool._from_api_dict(cast(Any, bad))  # what the general path did per schema
    request = RoundRequest([], tools=[ADD_TOOL, bad])
    with pytest.raises(msgspec.ValidationError):
        prediction_config(request, LMStudioSettings())


def test_the_same_schema_dicts_are_checked_once_and_new_ones_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[Any] = []
    convert = msgspec.convert

    def counting(value: Any, *args: Any, **kwargs: Any) -> Any:
        checked.append(value)
        return convert(value, *args, **kwargs)

    monkeypatch.setattr(msgspec, "convert", counting)
    schemas = [dict(ADD_TOOL)]  # the registry hands out new lists of the same dicts
    for _ in range(3):
        prediction_config(RoundRequest([], tools=list(schemas)), LMStudioSettings())
    assert len(checked) == 1
    # Equal but other dicts are checked again, and a refused one beside a checked one fails.
    prediction_config(RoundRequest([], tools=[dict(ADD_TOOL)]), LMStudioSettings())
    assert len(checked) == 2
    bad = {"type": "function", "function": {"description": "no name"}}
    for _ in range(2):
        with pytest.raises(msgspec.ValidationError):
            prediction_config(RoundRequest([], tools=[*schemas, bad]), LMStudioSettings())
    assert len(checked) == 4  # a refusal is never remembered as checked


async def test_failover_follows_targets_when_the_settings_change() -> None:
    settings_ = Settings.model_validate(
        {"lmstudio": {"hosts": ["ws://127.0.0.1:1"], "model": "m1", "models": ["m2"]}}
    )
    failover = Failover(ClientPool.from_settings(settings_), settings_)

    def expected() -> tuple[tuple[str, str | None], ...]:
        return tuple((t.host, t.model) for t in failover.targets())

    assert (
        failover._chain() == expected() == (("ws://127.0.0.1:1", "m1"), ("ws://127.0.0.1:1", "m2"))
    )
    settings_.lmstudio.hosts.append("ws://127.0.0.1:2")  # mutated in place
    assert failover._chain() == expected()
    settings_.lmstudio.model = None
    assert (
        failover._chain() == expected() == (("ws://127.0.0.1:1", None), ("ws://127.0.0.1:2", None))
    )
    settings_.lmstudio.models = ["m3"]
    settings_.lmstudio.model = "m0"
    assert failover._chain() == expected()
    assert len(failover._chain()) == 4
