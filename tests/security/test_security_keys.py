"""check_keys: prototype names, dunders, embedded JSON, NFKC, control characters, depth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation
from elaria.security import check_keys
from elaria.security.keys import MAX_DEPTH


def _rule(value: Any) -> str:
    with pytest.raises(SecurityViolation) as info:
        check_keys(value)
    return info.value.rule


@pytest.mark.parametrize(
    "key",
    [
        "__proto__",
        "constructor",
        "prototype",
        "__proto__.polluted",
        "a[constructor][prototype]",
        "a.b.constructor",
        "x[__proto__]",
        "\uff3f\uff3fproto\uff3f\uff3f",  # fullwidth low lines: NFKC gives __proto__
        "ｃｏｎｓｔｒｕｃｔｏｒ",
    ],
)
def test_prototype_keys_are_refused_at_top_level_and_nested(key: str) -> None:
    assert _rule({key: 1}) == "keys.prototype"
    assert _rule({"ok": [{"deeper": {key: {}}}]}) == "keys.prototype"


@pytest.mark.parametrize("key", ["__class__", "__globals__", "__init__", "__a_b9__"])
def test_python_dunders_are_refused(key: str) -> None:
    assert _rule({"outer": {key: "x"}}) == "keys.dunder"


@pytest.mark.parametrize(
    "key",
    [
        "constructor_name",
        "prototype_id",
        "my_constructor",
        "proto",
        "__init__.py",
        "_private",
        "__dunderish",
        "a.b[c]",
        "Constructor",
        "naïve",
        "",
    ],
)
def test_legitimate_look_alike_keys_pass(key: str) -> None:
    check_keys({key: {"nested": [key]}})


def test_values_that_name_forbidden_words_pass() -> None:
    check_keys({"text": "__proto__", "list": ["constructor", "prototype"], "n": 1, "x": None})


def test_keys_inside_embedded_json_strings_are_checked() -> None:
    assert _rule({"payload": json.dumps({"a": {"__proto__": {"admin": True}}})}) == (
        "keys.prototype"
    )
    assert _rule({"payload": '  [{"constructor": {"prototype": 1}}]'}) == "keys.prototype"
    # JSON in JSON in JSON.
    inner = json.dumps({"__proto__": 1})
    assert _rule({"p": json.dumps({"q": inner})}) == "keys.prototype"


def test_escaped_key_spellings_are_caught_after_decoding() -> None:
    raw = '{"\\u005f\\u005fproto\\u005f\\u005f": {"polluted": true}}'
    assert _rule(json.loads(raw)) == "keys.prototype"
    assert _rule({"payload": raw}) == "keys.prototype"


def test_strings_that_only_look_like_json_pass() -> None:
    check_keys({"text": "{not json at all: __proto__}", "other": "[unclosed"})


@pytest.mark.parametrize("key", ["a\x00b", "ab\u200b", "x\u202ey", "a\x7f", "a\x85"])
def test_keys_with_control_or_format_characters_are_refused(key: str) -> None:
    assert _rule({key: 1}) == "keys.control"


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


def test_depth_limit_fails_closed() -> None:
    check_keys(_nested(MAX_DEPTH))
    assert _rule(_nested(MAX_DEPTH + 1)) == "keys.depth"


def test_embedded_json_too_deep_for_the_parser_fails_closed() -> None:
    assert _rule({"p": "[" * 100_000 + "]" * 100_000}) == "keys.depth"


def test_refusals_carry_a_message_the_model_can_act_on() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_keys({"a": {"__proto__": 1}})
    assert "rename the key" in str(info.value)
    assert "$.a" in str(info.value)


_FORBIDDEN = st.sampled_from(
    ["__proto__", "constructor", "prototype", "__class__", "a.__proto__", "b[prototype]"]
)
_SAFE_KEY = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12
).filter(
    lambda k: (
        not (k.startswith("__") and k.endswith("__")) and k not in ("constructor", "prototype")
    )
)
_SAFE_TREE = st.recursive(
    st.none() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_SAFE_KEY, children, max_size=3)
    ),
    max_leaves=12,
)


@settings(deadline=None)  # timing on a shared machine is not the property
@given(tree=_SAFE_TREE)
def test_property_safe_trees_pass(tree: Any) -> None:
    check_keys(tree)


@settings(deadline=None)  # timing on a shared machine is not the property
@given(
    tree=_SAFE_TREE, bad=_FORBIDDEN, path=st.lists(st.sampled_from(["list", "dict"]), max_size=8)
)
def test_property_a_forbidden_key_anywhere_is_refused(tree: Any, bad: str, path: list[str]) -> None:
    value: Any = {bad: tree}
    for step in path:
        value = [value] if step == "list" else {"wrap": value}
    with pytest.raises(SecurityViolation):
        check_keys({"safe": tree, "payload": value})


def test_long_keys_are_checked_the_same_way() -> None:
    assert _rule({"a" * 500 + ".__proto__": 1}) == "keys.prototype"
    check_keys({"a" * 500: 1, "b" * 500 + ".constructor_name": 2})
