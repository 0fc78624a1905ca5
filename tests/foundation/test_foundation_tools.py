"""The Tool contract: schemas from type hints and docstrings, validation that explains itself."""

from __future__ import annotations

import pytest

from elaria.agent.tools import Tool, ToolRegistry
from elaria.errors import ToolArgumentsError, UnknownToolError


def add_note(title: str, body: str, tags: list[str] | None = None) -> dict[str, str]:
    """Store a note.

    Args:
        title: short title of the note
        body: the text
        tags: optional labels
    """
    return {"title": title, "body": body}


async def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def test_schema_from_hints_and_docstring_keeps_a_property_named_title() -> None:
    t = Tool.from_function(add_note)
    props = t.parameters["properties"]
    assert set(props) == {"title", "body", "tags"}
    assert props["title"] == {"type": "string", "description": "short title of the note"}
    assert t.parameters["required"] == ["title", "body"]
    assert t.parameters["additionalProperties"] is False
    assert t.description == "Store a note."


def test_validation_explains_what_is_wrong() -> None:
    t = Tool.from_function(add_note)
    with pytest.raises(ToolArgumentsError) as info:
        t.validate({"body": 3, "colour": "red"})
    text = info.value.to_model_text()
    assert "missing required argument 'title'" in text
    assert "unexpected argument 'colour'" in text
    assert "Expected arguments:" in text


async def test_sync_and_async_functions_run() -> None:
    assert await Tool.from_function(shout).invoke({"text": "hi"}) == "HI"
    result = await Tool.from_function(add_note).invoke({"title": "a", "body": "b"})
    assert result == {"title": "a", "body": "b"}


async def test_json_schema_tools_are_validated_with_jsonschema() -> None:
    async def handler(arguments: dict[str, object]) -> object:
        return arguments

    t = Tool(
        name="fs.read",
        description="read",
        parameters={
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
        handler=handler,
        source="mcp:fs",
    )
    assert await t.invoke({"path": "a"}) == {"path": "a"}
    with pytest.raises(ToolArgumentsError, match="'path' is a required property"):
        t.validate({})


def test_registry_namespaces_clashes_across_sources_only() -> None:
    reg = ToolRegistry([Tool.from_function(shout)])

    async def other(arguments: dict[str, object]) -> object:
        return None

    mcp_shout = Tool(name="shout", description="x", parameters={}, handler=other, source="mcp:s")
    added = reg.add(mcp_shout, namespace="s")
    assert added.name == "s.shout"
    with pytest.raises(ValueError, match="already registered"):
        reg.add(Tool.from_function(shout))
    with pytest.raises(UnknownToolError) as info:
        reg.get("nope")
    assert "Available tools: s.shout, shout" in info.value.to_model_text()
    assert [s["function"]["name"] for s in reg.lmstudio_schemas()] == ["shout", "s.shout"]
