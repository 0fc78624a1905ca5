"""The firewall (keys, lengths, tagged validators, approval, audit) and the server side's errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from elaria.agent.tools import Tool
from elaria.errors import ToolDenied, ToolExecutionError, ToolRefused
from elaria.mcp.client import assess_mcp, render_result
from elaria.mcp.firewall import Firewall, default_validators
from elaria.mcp.server import build_server


def _firewall(tmp_path: Path, records: list[dict[str, Any]], **kw: Any) -> Firewall:
    return Firewall(
        max_argument_chars=50,
        validators=default_validators([tmp_path]),
        audit=records.append,
        **kw,
    )


def test_keys_lengths_and_tagged_paths(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    fw = _firewall(tmp_path, records)
    (tmp_path / "a.txt").write_text("x")
    fw.check("read", {"path": "a.txt"}, arg_kinds={"path": "path"})
    fw.check("read", {"path": "new/../a.txt"}, arg_kinds={"path": "path"})
    with pytest.raises(ToolRefused) as escape:
        fw.check("read", {"path": "../outside"}, arg_kinds={"path": "path"}, server="fs")
    assert escape.value.rule.startswith("path.")
    with pytest.raises(ToolRefused) as proto:
        fw.check("merge", {"patch": {"a": [{"constructor": {"prototype": {}}}]}})
    assert proto.value.rule.startswith("keys.")
    with pytest.raises(ToolRefused, match="over the limit of 50"):
        fw.check("echo", {"text": "x" * 51})
    # Lists of tagged values are checked item by item.
    with pytest.raises(ToolRefused):
        fw.check("read_many", {"paths": ["a.txt", "/etc/passwd"]}, arg_kinds={"paths": "path"})
    assert [r["outcome"] for r in records] == ["refused"] * 4
    assert records[0]["server"] == "fs"
    assert records[0]["arguments"] == {"path": "../outside"}
    assert fw.refusals == 4
    assert fw.calls == 6


def test_a_tag_without_validator_fails_closed(tmp_path: Path) -> None:
    fw = Firewall(max_argument_chars=100, validators={}, audit=None)
    with pytest.raises(ToolRefused, match="no path validator") as info:
        fw.check("read", {"path": "a.txt"}, arg_kinds={"path": "path"})
    assert info.value.rule == "validate.path"


def test_approval_deny_and_ask(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    proxy = _firewall(tmp_path, records, ask_means_deny=True)
    with pytest.raises(ToolDenied, match="denied by policy"):
        proxy.check("rm", {}, approval="deny")
    with pytest.raises(ToolDenied, match="nobody to ask"):
        proxy.check("rm", {}, approval="ask")
    proxy.check("ls", {}, approval="auto")
    bridge = _firewall(tmp_path, records, ask_means_deny=False)
    bridge.check("rm", {}, approval="ask")  # the agent loop asks the human itself
    assert [r["outcome"] for r in records] == ["denied", "denied"]


def test_a_failing_audit_sink_never_breaks_a_call(tmp_path: Path) -> None:
    def broken(record: dict[str, Any]) -> None:
        raise OSError("disk full")

    fw = Firewall(max_argument_chars=10, validators={}, audit=broken)
    with pytest.raises(ToolRefused):
        fw.check("echo", {"text": "x" * 11})
    fw.record("echo", {}, "ok")


def test_render_result_blocks() -> None:
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="hello"),
            types.ImageContent(type="image", data="aGVsbG8=", mime_type="image/png"),
            types.ResourceLink(type="resource_link", uri="file:///x", name="x"),
        ]
    )
    assert render_result(result) == "hello\n[image: image/png, 6 bytes]\n[resource link file:///x]"
    structured = types.CallToolResult(content=[], structured_content={"sum": 3})
    assert render_result(structured) == '{"sum": 3}'


def test_assess_mcp() -> None:
    assert assess_mcp([{"server": "a", "state": "ready"}]) == ("ok", [])
    status, reasons = assess_mcp([{"server": "b", "state": "failed", "last_error": "boom"}])
    assert status == "degraded"
    assert reasons == ["MCP server b is failed: boom"]


async def test_server_turns_every_failure_into_a_tool_error(tmp_path: Path) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def explode() -> str:
        """Always fails."""
        raise RuntimeError("kaboom")

    def refuse_model() -> str:
        """Fails the model's way."""
        raise ToolExecutionError("the note does not exist", hint="List the notes first.")

    def read(path: str) -> str:
        """Read a file."""
        return (tmp_path / path).read_text()

    (tmp_path / "a.txt").write_text("content")
    tools = [
        Tool.from_function(add),
        Tool.from_function(explode),
        Tool.from_function(refuse_model),
        Tool.from_function(read, arg_kinds={"path": "path"}),
    ]
    records: list[dict[str, Any]] = []
    server = build_server("t", tools, firewall=_firewall(tmp_path, records))
    async with Client(server, mode="legacy", cache=None) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == {"add", "explode", "refuse_model", "read"}
        assert listed["add"].input_schema["required"] == ["a", "b"]

        async def call(name: str, args: dict[str, Any]) -> tuple[bool, str]:
            result = await client.call_tool(name, args)
            return result.is_error, render_result(result)

        assert await call("add", {"a": 2, "b": 3}) == (False, "5")
        assert await call("read", {"path": "a.txt"}) == (False, "content")
        bad_args = await call("add", {"a": "two"})
        assert bad_args[0] is True
        assert "'b'" in bad_args[1]
        unknown = await call("nope", {})
        assert unknown[0] is True
        assert "Available tools: add, explode, read, refuse_model" in unknown[1]
        exploded = await call("explode", {})
        assert exploded == (True, "Error: tool 'explode' failed: RuntimeError: kaboom")
        model = await call("refuse_model", {})
        assert model == (True, "Error: the note does not exist. List the notes first.")
        escape = await call("read", {"path": "../../etc/passwd"})
        assert escape[0] is True
        assert "refused" in escape[1]
    outcomes = [r["outcome"] for r in records]
    assert outcomes.count("ok") == 2
    assert outcomes.count("refused") == 1
    assert outcomes.count("error") == 1


def test_duplicate_tool_names_rejected() -> None:
    def a() -> str:
        """A."""
        return "a"

    with pytest.raises(ValueError, match="unique"):
        build_server("t", [Tool.from_function(a), Tool.from_function(a)])


def test_url_sql_and_shell_tags(tmp_path: Path) -> None:
    validators = default_validators([tmp_path], allowed_remote_hosts=["example.org"])
    fw = Firewall(max_argument_chars=1_000, validators=validators)
    kinds: dict[str, Any] = {"url": "url", "sql": "sql", "arg": "shell"}
    fw.check("fetch", {"url": "http://localhost:8080/x"}, arg_kinds=kinds)
    fw.check("fetch", {"url": "https://example.org/page"}, arg_kinds=kinds)
    for bad in ("http://example.org/", "https://evil.test/", "file:///etc/passwd", "gopher://x"):
        with pytest.raises(ToolRefused, match="URL"):
            fw.check("fetch", {"url": bad}, arg_kinds=kinds)
    fw.check("query", {"sql": "SELECT title FROM notes WHERE id = ?"}, arg_kinds=kinds)
    with pytest.raises(ToolRefused):
        fw.check("query", {"sql": "ATTACH DATABASE 'x' AS y"}, arg_kinds=kinds)
    fw.check("run", {"arg": "notes.txt"}, arg_kinds=kinds)
    with pytest.raises(ToolRefused):
        fw.check("run", {"arg": "x; rm -rf /"}, arg_kinds=kinds)
