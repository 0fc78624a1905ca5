"""The agent round's fast paths give what the general paths they replace gave.

* ``quick_init`` (events, round values): the same object as the dataclass's own ``__init__``
  for any arguments, defaults and factories included; still frozen, same signature.
* ``ApprovalPolicy.decide`` hands out shared decisions when no rule exists: equal to the ones
  the rule walk builds, for every mode.
* ``Tool.validate`` copies the model's ``__dict__``: equal to reading every field by name.
* ``ToolRegistry.lmstudio_schemas`` is built once per change: equal to building it anew.
* ``ConversationHistory.add`` returns what it trimmed, and keeps unit costs as counters: the
  number agrees with the message count, and the trimmer sees the costs it saw before.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.agent import events as ev
from elaria.agent.approval import ApprovalPolicy, Decision
from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import AgentSettings, ApprovalRule, HistorySettings
from elaria.lmstudio import rounds
from elaria.lmstudio.rounds import quick_init
from elaria.memory.history import ConversationHistory
from elaria.memory.trim import UnitCost, requests_tool_calls, tool_call_ids

# ------------------------------------------------------------------ quick_init

_CLASSES: list[type[Any]] = [getattr(ev, name) for name in ev.__all__] + [
    rounds.RoundRequest,
    rounds.RoundResult,
    rounds.RequestedCall,
    rounds.MalformedCall,
]
_VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans())


def _by_dataclass_init(cls: type[Any], kwargs: dict[str, Any]) -> Any:
    made = object.__new__(cls)
    cls.__init__.__wrapped__(made, **kwargs)  # the __init__ dataclass wrote
    return made


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_quick_init_builds_what_the_dataclass_init_builds(cls: type[Any], data: Any) -> None:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name == "at":
            if data.draw(st.booleans()):
                kwargs["at"] = data.draw(st.floats(allow_nan=False))
        elif required or data.draw(st.booleans()):
            kwargs[f.name] = data.draw(_VALUES)
    quick = cls(**kwargs)
    general = _by_dataclass_init(cls, kwargs)
    if "at" in {f.name for f in dataclasses.fields(cls)} and "at" not in kwargs:
        assert abs(quick.at - general.at) < 60  # both from the clock, moments apart
        general.__dict__["at"] = quick.at
    assert quick.__dict__ == general.__dict__
    assert list(quick.__dict__) == [f.name for f in dataclasses.fields(cls)]
    assert quick == general


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__name__)
def test_quick_init_keeps_the_signature_and_frozenness(cls: type[Any]) -> None:
    assert inspect.signature(cls.__init__) == inspect.signature(cls.__init__.__wrapped__)
    kwargs = {
        f.name: "x"
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    made = cls(**kwargs)
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, name, "y")
    with pytest.raises(TypeError):
        cls(**kwargs, not_a_field=1)


def test_quick_init_factories_give_fresh_values() -> None:
    first, second = (
        ev.ResilienceEvent(run_id="r", action="a"),
        ev.ResilienceEvent(run_id="r", action="a"),
    )
    assert first.detail == {}
    assert first.detail is not second.detail
    assert rounds.RoundRequest([{"role": "user", "content": []}]).tools is None
    with pytest.raises(TypeError):
        rounds.RoundRequest()  # type: ignore[call-arg]
    assert rounds.RequestedCall("n", None, "id") == rounds.RequestedCall(
        name="n", arguments=None, id="id"
    )


def test_quick_init_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Posted:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Hidden:
        a: int
        b: int = dataclasses.field(default=0, init=False)

    for cls in (Slotted, Posted, Hidden):
        with pytest.raises(TypeError, match="quick_init does not support"):
            quick_init(cls)


# ------------------------------------------------------------------ approval


@pytest.mark.parametrize("mode", ["auto", "ask", "deny"])
def test_shared_policy_decisions_equal_the_ones_the_rule_walk_builds(mode: str) -> None:
    agent = AgentSettings(default_approval=mode, approval={"special": "ask"})  # type: ignore[arg-type]
    no_rules = ApprovalPolicy(agent)
    # A rule for another tool: the walk runs, matches nothing, and builds its own decision.
    other = ApprovalRule(tool="unrelated", decision="deny")
    with_rules = ApprovalPolicy(agent.model_copy(update={"approval_rules": [other]}))
    for tool in ("add", "special"):
        shared = no_rules.decide(tool, {"a": 1})
        walked = with_rules.decide(tool, {"a": 1})
        assert shared == walked
        assert shared == Decision(
            "deny"
            if no_rules.mode(tool) == "deny"
            else "allow"
            if no_rules.mode(tool) == "auto"
            else "ask",
            "policy",
        )


# ------------------------------------------------------------------ Tool.validate


def _typed(count: int, name: str, ratio: float = 0.5, flags: list[bool] | None = None) -> str:
    """A tool with several argument types.

    Args:
        count: how many
        name: what
        ratio: a share
        flags: some switches
    """
    return name * count


@settings(max_examples=100, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "count": st.integers(-5, 5) | st.sampled_from(["3", "x", 2.0]),
            "name": st.text(max_size=4),
        },
        optional={
            "ratio": st.floats(allow_nan=False) | st.just("0.25"),
            "flags": st.lists(st.booleans(), max_size=3) | st.none(),
        },
    )
)
def test_validate_returns_every_field_as_reading_them_one_by_one(arguments: dict[str, Any]) -> None:
    tool = Tool.from_function(_typed)
    assert tool._model is not None
    try:
        parsed = tool._model.model_validate(dict(arguments))
    except Exception:
        with pytest.raises(Exception, match="argument"):
            tool.validate(arguments)
        return
    by_name = {k: getattr(parsed, k) for k in type(parsed).model_fields}
    fast = tool.validate(arguments)
    assert fast == by_name
    assert list(fast) == list(by_name)


# ------------------------------------------------------------------ history


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _call(call_id: str) -> dict[str, Any]:
    request = {"type": "function", "id": call_id, "name": "add", "arguments": {"a": 1}}
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": ""},
            {"type": "toolCallRequest", "toolCallRequest": request},
        ],
    }


def _result(call_id: str, text: str) -> dict[str, Any]:
    return {
        "role": "tool",
        "content": [{"type": "toolCallResult", "content": text, "toolCallId": call_id}],
    }


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("user"), st.integers(0, 3_000)),
        st.tuples(st.just("assistant"), st.integers(0, 3_000)),
        st.tuples(st.just("call"), st.integers(0, 3_000)),
        st.tuples(st.just("system"), st.integers(0, 3_000)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(_STEPS, st.integers(2, 12))
def test_add_returns_what_it_trimmed_and_unit_costs_stay_true(
    steps: list[tuple[str, int]], max_messages: int
) -> None:
    history = ConversationHistory(HistorySettings(max_messages=max_messages, max_tokens=1_000))
    for i, (kind, size) in enumerate(steps):
        text = "x" * size
        adds = [_call(f"c{i}"), _result(f"c{i}", text)] if kind == "call" else [_text(kind, text)]
        for message in adds:
            trimmed = history.stats()["trimmed_messages"]
            before = len(history)
            replaces = message["role"] == "system" and history._system is not None
            dropped = history.add(message)
            assert dropped == history.stats()["trimmed_messages"] - trimmed
            assert len(history) == before + (0 if replaces else 1) - dropped
        # What the trimmer reads equals the costs recomputed from the entries.
        for unit in history._units:
            assert unit.cost == UnitCost(
                len(unit.entries),
                sum(e.tokens for e in unit.entries),
                unit.entries[0].message["role"] == "user",
            )
        tokens = sum(e.tokens for e in history._entries())
        assert history.stats()["tokens"] == tokens


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "toolCallRequest", "file"])}),
            st.just({"type": "toolCallRequest", "toolCallRequest": None}),
            st.just("not a part"),
        ),
        max_size=4,
    )
    | st.text(max_size=3)
)
def test_requests_tool_calls_agrees_with_tool_call_ids(content: Any) -> None:
    message = {"role": "assistant", "content": content}
    assert requests_tool_calls(message) == bool(tool_call_ids(message))


# ------------------------------------------------------------------ registry schemas


def test_cached_schemas_follow_every_change_of_the_registry() -> None:
    def shout(text: str) -> str:
        """Shout.

        Args:
            text: what to shout
        """
        return text.upper()

    registry = ToolRegistry([Tool.from_function(_typed)])

    def built() -> list[dict[str, Any]]:
        return [t.lmstudio_schema() for t in registry]

    assert registry.lmstudio_schemas() == built()
    first = registry.lmstudio_schemas()
    first.clear()  # the caller's list is its own
    assert registry.lmstudio_schemas() == built()
    registry.add(Tool.from_function(shout))
    assert [s["function"]["name"] for s in registry.lmstudio_schemas()] == ["_typed", "shout"]
    assert registry.lmstudio_schemas() == built()
    registry.add(replace(Tool.from_function(shout), source="mcp:x"), namespace="x")
    assert registry.lmstudio_schemas() == built()
    registry.remove_source("mcp:x")
    assert [s["function"]["name"] for s in registry.lmstudio_schemas()] == ["_typed", "shout"]
    assert registry.lmstudio_schemas() == built()
