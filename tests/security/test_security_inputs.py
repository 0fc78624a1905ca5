"""check_tool_arguments (the gate for every tool call) and cap_result."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elaria.errors import SecurityViolation
from elaria.security import cap_result, check_tool_arguments


def test_arguments_within_limits_pass() -> None:
    check_tool_arguments(
        {"path": "a.txt", "lines": [1, 2], "meta": {"k": "v" * 100}}, max_chars=100
    )


def test_a_long_string_at_any_depth_is_refused() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_tool_arguments({"a": [{"b": "x" * 101}]}, max_chars=100)
    assert info.value.rule == "length.argument"
    assert "101 characters" in str(info.value)
    assert "$.a[0].b" in str(info.value)


def test_a_long_key_is_refused() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_tool_arguments({"k" * 11: 1}, max_chars=10)
    assert info.value.rule == "length.argument"


def test_the_default_limit_is_ten_thousand_characters() -> None:
    check_tool_arguments({"a": "x" * 10_000})
    with pytest.raises(SecurityViolation):
        check_tool_arguments({"a": "x" * 10_001})


def test_forbidden_keys_are_refused_by_the_gate() -> None:
    with pytest.raises(SecurityViolation) as info:
        check_tool_arguments({"options": {"__proto__": {"isAdmin": True}}})
    assert info.value.rule == "keys.prototype"


def test_cap_result_leaves_short_text_alone() -> None:
    assert cap_result("hello", 5) == "hello"


def test_cap_result_says_how_much_was_cut() -> None:
    text = "x" * 5_000
    capped = cap_result(text, 1_000)
    assert len(capped) <= 1_000
    cut = 5_000 - capped.index("\n[")
    assert f"truncated: {cut} of 5000 characters cut" in capped
    assert capped.startswith("x" * 100)


@settings(deadline=None)  # timing on a shared machine is not the property
@given(text=st.text(max_size=3_000), cap=st.integers(min_value=200, max_value=2_000))
def test_property_cap_result_never_exceeds_the_cap(text: str, cap: int) -> None:
    capped = cap_result(text, cap)
    assert len(capped) <= cap
    assert capped == text or "truncated" in capped
