"""A misbehaving stdio MCP server for tests: ``python -m elaria.mcp.fixture_server MODE``.

Shipped in the package (like the embedded LM Studio server) so users can test their own MCP
setups against crashes and hangs. Modes: ``serve`` (normal), ``hang`` (never answers the
handshake), ``crash`` (exits with status 3 at once, after a line on stderr), ``spawn`` (serves,
after starting a long-lived helper process in its process group that outlives the server, the
way ``node`` outlives ``npx``: only killing the group ends it).

Tools: ``echo(text)``; ``block(marker)`` creates the file ``marker`` and then never returns (a
call in flight, for kill tests); ``grow(mb)`` allocates and keeps ``mb`` MiB (for RSS caps).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

__all__ = ["main"]

_hoard: list[bytes] = []


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    mode = args[0] if args else "serve"
    if mode == "crash":
        print("fixture: crashing on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        while True:  # never reads stdin, never answers
            time.sleep(3600)

    if mode == "spawn":
        import subprocess

        # Deliberately not waited for: it must outlive this server unless its group is killed.
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    from mcp.server.mcpserver import MCPServer

    server = MCPServer("fixture")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    @server.tool()
    async def block(marker: str) -> str:
        """Create the marker file, then never return."""
        await asyncio.to_thread(Path(marker).write_text, "started")
        await asyncio.Event().wait()
        return "unreachable"

    @server.tool()
    def grow(mb: int) -> str:
        """Keep mb MiB allocated."""
        _hoard.append(b"x" * (mb * 2**20))
        return f"holding {sum(len(b) for b in _hoard) // 2**20} MiB"

    asyncio.run(server.run_stdio_async())


if __name__ == "__main__":
    main()
