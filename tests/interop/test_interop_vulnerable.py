"""The firewall's worth, shown on a deliberately vulnerable Node server (prototype pollution).

Directly, a ``__proto__`` payload pollutes the Node process (the payload is real). Through the
bridge and through ``elaria mcp proxy`` the same call is refused before it reaches Node, and
the process stays clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from elaria.errors import ToolRefused
from elaria.mcp.client import McpBridge
from elaria.mcp.config import parse_mcp_config
from elaria.mcp.testing import elaria_command, run_node_json

pytestmark = pytest.mark.interop


def _vulnerable(interop_dir: Path) -> dict[str, Any]:
    return {"command": "node", "args": [str(interop_dir / "vulnerable_server.mjs")]}


OBJECT_PAYLOAD: dict[str, Any] = {"__proto__": {"polluted": True}}
TEXT_PAYLOAD = json.dumps(OBJECT_PAYLOAD)


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@pytest.mark.parametrize("payload", [OBJECT_PAYLOAD, TEXT_PAYLOAD], ids=["object", "json-text"])
async def test_direct_call_pollutes_the_node_process(interop_dir: Path, payload: Any) -> None:
    params = StdioServerParameters(
        command="node", args=[str(interop_dir / "vulnerable_server.mjs")]
    )
    async with Client(params, mode="legacy", cache=None) as client:
        assert json.loads(_text(await client.call_tool("is_polluted", {}))) == {"polluted": False}
        merged = await client.call_tool("merge_settings", {"patch": payload})
        assert json.loads(_text(merged))["polluted"] is True
        assert json.loads(_text(await client.call_tool("is_polluted", {}))) == {"polluted": True}


async def test_bridge_refuses_the_payload_and_node_stays_clean(interop_dir: Path) -> None:
    records: list[dict[str, Any]] = []
    config = parse_mcp_config({"mcpServers": {"vuln": _vulnerable(interop_dir)}}, {})
    async with McpBridge(config, audit=records.append) as bridge:
        tools = {t.name: t for t in bridge.tools}
        assert set(tools) == {"merge_settings", "is_polluted"}
        assert tools["merge_settings"].source == "mcp:vuln"
        for payload in (OBJECT_PAYLOAD, TEXT_PAYLOAD):
            with pytest.raises(ToolRefused) as info:
                await tools["merge_settings"].invoke({"patch": payload})
            assert info.value.rule == "keys.prototype"
            assert "__proto__" in info.value.to_model_text()
        # A harmless patch still goes through: the firewall is not a blanket block.
        harmless = json.loads(await tools["merge_settings"].invoke({"patch": {"theme": "dark"}}))
        assert harmless == {"settings": {"theme": "dark"}, "polluted": False}
        assert json.loads(await tools["is_polluted"].invoke({})) == {"polluted": False}
    refused = [r for r in records if r["outcome"] == "refused"]
    assert len(refused) == 2
    assert {r["rule"] for r in refused} == {"keys.prototype"}
    assert all(r["server"] == "vuln" for r in refused)


async def test_proxy_refuses_the_payload_as_a_tool_error_and_audits_it(
    interop_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"vuln": _vulnerable(interop_dir)}}))
    command = elaria_command("mcp", "proxy", "--config", str(config))
    report = await run_node_json(
        interop_dir / "client.mjs",
        {
            "transport": "stdio",
            "command": command[0],
            "args": command[1:],
            "cwd": str(tmp_path),
            "calls": [
                {"name": "merge_settings", "arguments": {"patch": OBJECT_PAYLOAD}},
                {"name": "merge_settings", "arguments": {"patch": TEXT_PAYLOAD}},
                {"name": "is_polluted", "arguments": {}},
            ],
        },
        cwd=interop_dir,
    )
    assert {"merge_settings", "is_polluted", "runtime_health"} <= set(report["tools"])
    refusal, refusal_text, polluted = report["results"]
    for result in (refusal, refusal_text):
        assert result["isError"] is True
        assert "__proto__" in result["text"]
        assert "refused" in result["text"]
    assert polluted == {"name": "is_polluted", "isError": False, "text": '{"polluted":false}'}
    ledger = [
        json.loads(line) for line in (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()
    ]
    refusals = [e for r in ledger for e in r["events"] if e["kind"] == "validator_refusal"]
    assert len(refusals) == 2
    assert {e["rule"] for e in refusals} == {"keys.prototype"}
