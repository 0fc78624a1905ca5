"""Repairs of malformed tool calls: sans-I/O, no event loop."""

from __future__ import annotations

from typing import Any

import pytest

from elaria.agent.repair import (
    loads_lenient,
    looks_like_text_call,
    repair_arguments,
    repair_call,
)
from elaria.agent.tools import Tool, ToolRegistry
from elaria.errors import ToolArgumentsError, ToolCallMalformed, UnknownToolError


def read_file(path: str, max_lines: int = 100) -> str:
    """Read a file.

    Args:
        path: file path inside the workspace
        max_lines: how many lines at most
    """
    return path


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([Tool.from_function(read_file), Tool.from_function(add)])


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', "xml_tool_call"),
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}', "xml_tool_call"),
        ("<tool_call>{'name': 'add', 'arguments': {'a': 1, 'b': 2,},}", "xml_tool_call"),
        (
            "<function=add><parameter=a>1</parameter><parameter=b>2</parameter></function>",
            "function_tags",
        ),
        ("<function=add>\n<parameter=a>\n1\n<parameter=b>\n2\n", "function_tags"),
        ('<function=add>{"a": 1, "b": 2}</function>', "function_tags"),
        ('```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```', "json"),
        ('{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}', "json"),
        ('{"name": "add", "arguments": {"a": 1, "b": 2', "json"),
        ('{"function": {"name": "add", "parameters": {"a": 1, "b": 2}}}', "json"),
        ("add(a=1, b=2)", "python_call"),
        ("add(1, 2)", "python_call"),
        ('I will call it now: {"name": "add", "arguments": {"a": 1, "b": 2}}', "json"),
    ],
)
def test_repairs_that_pass_the_schema_are_accepted(
    registry: ToolRegistry, raw: str, method: str
) -> None:
    fixed = repair_call(raw, registry)
    assert (fixed.name, fixed.arguments, fixed.method) == ("add", {"a": 1, "b": 2}, method)


def test_arguments_only_text_uses_the_name_the_server_knew(registry: ToolRegistry) -> None:
    fixed = repair_call("{'path': 'notes/a.md',}", registry, name_hint="read_file")
    assert fixed.name == "read_file"
    assert fixed.arguments == {"path": "notes/a.md", "max_lines": 100}


def test_a_repair_failing_the_schema_explains_the_schema_problem(registry: ToolRegistry) -> None:
    with pytest.raises(ToolArgumentsError) as info:
        repair_call('<tool_call>{"name": "add", "arguments": {"a": "one"}}</tool_call>', registry)
    text = info.value.to_model_text()
    assert "'a'" in text
    assert "missing required argument 'b'" in text


def test_unknown_tool_lists_the_available_ones(registry: ToolRegistry) -> None:
    with pytest.raises(UnknownToolError) as info:
        repair_call("delete_everything(path='/')", registry)
    assert "delete_everything" in info.value.message
    assert "add, read_file" in info.value.to_model_text()


def test_unparseable_text_quotes_the_server_error_and_shows_the_format(
    registry: ToolRegistry,
) -> None:
    with pytest.raises(ToolCallMalformed) as info:
        repair_call("call add with one and two", registry, error="Failed to parse tool call")
    text = info.value.to_model_text()
    assert "Failed to parse tool call" in text
    assert '"arguments"' in text
    assert info.value.raw == "call add with one and two"


def test_empty_raw_text_is_malformed_not_a_crash(registry: ToolRegistry) -> None:
    with pytest.raises(ToolCallMalformed):
        repair_call(None, registry)
    with pytest.raises(ToolCallMalformed):
        repair_call("   ", registry)


def test_python_call_never_evaluates_code(registry: ToolRegistry) -> None:
    with pytest.raises(ToolCallMalformed):
        repair_call("add(a=__import__('os').getpid(), b=2)", registry)


def test_too_many_positional_arguments_are_explained(registry: ToolRegistry) -> None:
    with pytest.raises(ToolArgumentsError, match="positional"):
        repair_call("add(1, 2, 3)", registry)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{'a': 1}", {"a": 1}),
        ('{"a": [1, 2,],}', {"a": [1, 2]}),
        ('{"a": True, "b": None}', {"a": True, "b": None}),
        ('{"a": "unclosed', {"a": "unclosed"}),
        ("{'it\\'s': 'x \"q\"'}", {"it's": 'x "q"'}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('{"Nonexistent": "TrueStory"}', {"Nonexistent": "TrueStory"}),
    ],
)
def test_lenient_json(text: str, expected: Any) -> None:
    assert loads_lenient(text) == expected


def test_lenient_json_gives_up_with_value_error() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        loads_lenient("hello there")


def test_arguments_sent_as_json_text_are_parsed(registry: ToolRegistry) -> None:
    tool = registry.get("add")
    assert repair_arguments(tool, '{"a": 1, "b": 2,}') == {"a": 1, "b": 2}
    assert repair_arguments(registry.get("read_file"), {"path": "x"}) == {
        "path": "x",
        "max_lines": 100,
    }
    with pytest.raises(ToolArgumentsError):
        repair_arguments(tool, "not json")
    with pytest.raises(ToolArgumentsError):
        repair_arguments(tool, {"a": 1})


def test_text_call_markers() -> None:
    assert looks_like_text_call('<tool_call>{"name": "x"}</tool_call>')
    assert looks_like_text_call("<function=x></function>")
    assert not looks_like_text_call('The answer is {"a": 1}.')


def test_argument_names_in_another_case_style_are_matched() -> None:
    def read_range(file_path: str, start_line: int = 1) -> str:
        """Read a range."""
        return file_path

    tool = Tool.from_function(read_range)
    assert repair_arguments(tool, {"filePath": "a", "startLine": 3}) == {
        "file_path": "a",
        "start_line": 3,
    }
    assert repair_arguments(tool, '{"FILE_PATH": "a"}') == {"file_path": "a", "start_line": 1}
    with pytest.raises(ToolArgumentsError, match="unexpected argument 'other'"):
        repair_arguments(tool, {"filePath": "a", "other": 1})
