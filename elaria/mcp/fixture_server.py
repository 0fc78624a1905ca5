"""A misbehaving stdio MCP server for tests: ``python -m elaria.mcp.fixture_server MODE``.

Shipped in the package (like the embedded LM Studio server) so users can test their own MCP
setups against crashes and hangs. Modes:

* ``serve`` — a normal server;
* ``hang`` — never answers the handshake;
* ``crash`` — exits with status 3 at once, after a line on stderr;
* ``broken-schema`` — serves, and also lists a tool ``broken`` whose input schema is invalid;
* ``spawn`` — serves, after starting a long-lived helper process in its own process group that
  outlives the server, the way ``node`` outlives ``npx``: only killing the group ends it.

Environment (set through the server's ``env`` in ``mcp.json``):

* ``FIXTURE_FAIL_UNTIL=FILE`` — while ``FILE`` does not exist, every start exits at once with
  status 3 (a server that fails to start until the test says it may come up);
* ``FIXTURE_TOOLS_FILE=FILE`` — offer the tools named in ``FILE`` (comma or newline separated),
  read at each start: a name not listed below is an extra tool that echoes ``text`` back
  prefixed by its name. Rewrite the file and restart the server to change its tool list.

Tools: ``echo(text)``; ``block(marker)`` creates the file ``marker`` and never answers (a
call in flight, for kill tests; other requests are still served); ``grow(mb)`` allocates and
keeps ``mb`` MiB (for RSS caps). An unknown tool is a JSON-RPC error (-32602).

It speaks newline-delimited JSON-RPC with the standard library only, so it starts in a few
milliseconds and restart timings measure the supervisor, not imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

PROTOCOL_VERSION = "2025-06-18"

_hoard: list[bytes] = []

_TOOLS: list[dict[str, Any]] = [
    {
        "name": "echo",
        "description": "Return the text.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
    {
        "name": "block",
        "description": "Create the marker file, then never answer.",
        "inputSchema": {
            "type": "object",
            "properties": {"marker": {"type": "string"}},
            "required": ["marker"],
        },
    },
    {
        "name": "grow",
        "description": "Keep mb MiB allocated.",
        "inputSchema": {
            "type": "object",
            "properties": {"mb": {"type": "integer", "minimum": 0, "maximum": 4096}},
            "required": ["mb"],
        },
    },
]


def _text(text: str, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def _offered(mode: str) -> list[dict[str, Any]]:
    tools_file = os.environ.get("FIXTURE_TOOLS_FILE")
    if tools_file is None:
        return [*_TOOLS, _BROKEN] if mode == "broken-schema" else _TOOLS
    names = Path(tools_file).read_text().replace(",", "\n").split()
    known = {t["name"]: t for t in _TOOLS}
    return [known.get(n) or _extra_tool(n) for n in names]


def _extra_tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"Return the text prefixed by {name}.",
        "inputSchema": dict(_TOOLS[0]["inputSchema"]),
    }


def _call(name: str, args: dict[str, Any], mode: str) -> dict[str, Any] | None:
    if name not in {t["name"] for t in _offered(mode)}:
        raise ValueError(f"Unknown tool: {name}")
    if name == "echo":
        return _text(str(args.get("text", "")))
    if name == "block":
        Path(str(args["marker"])).write_text("started")
        return None  # never answered
    if name == "grow":
        _hoard.append(b"x" * (int(args["mb"]) * 2**20))
        return _text(f"holding {sum(len(b) for b in _hoard) // 2**20} MiB")
    return _text(f"{name}: {args.get('text', '')}")


_BROKEN: dict[str, Any] = {
    "name": "broken",
    "description": "Its schema is not a valid JSON schema.",
    "inputSchema": {"type": "object", "properties": {"x": {"type": "no-such-type"}}},
}


def _answer(message: dict[str, Any], mode: str) -> dict[str, Any] | None:
    method = message.get("method")
    params = message.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", PROTOCOL_VERSION),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fixture", "version": "1.0.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": _offered(mode)}
    if method == "tools/call":
        return _call(str(params.get("name")), dict(params.get("arguments") or {}), mode)
    raise LookupError(f"method not found: {method}")


def serve(mode: str) -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if "id" not in message or "method" not in message:
            continue  # a notification, or a response to nothing we asked
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        try:
            result = _answer(message, mode)
        except LookupError as exc:
            reply["error"] = {"code": -32601, "message": str(exc)}
        except ValueError as exc:  # as SDK servers answer an unknown tool
            reply["error"] = {"code": -32602, "message": str(exc)}
        else:
            if result is None:
                continue
            reply["result"] = result
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    mode = args[0] if args else "serve"
    fail_until = os.environ.get("FIXTURE_FAIL_UNTIL")
    if fail_until is not None and not Path(fail_until).exists():
        print("fixture: failing this start on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "crash":
        print("fixture: crashing on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        while True:  # never reads stdin, never answers
            time.sleep(3600)
    if mode == "spawn":
        # Deliberately not waited for: it must outlive this server unless its group is killed.
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    serve(mode)


if __name__ == "__main__":
    main()
