"""``elaria chat``: a REPL with an agent that keeps the conversation between turns.

Slash commands: ``/tools`` (the registry), ``/history`` (messages so far, with the history's
bounds), ``/reset`` (forget the conversation), ``/health`` (the runtime's stats), ``/quit``
(also Ctrl-D). Tool calls that need approval are asked for at the prompt (y/n/always/never;
"always" and "never" are saved). The same options as ``elaria run`` choose the backend.

Input is read in a worker thread so the event loop keeps the LM Studio connection alive while
the user types. Ctrl-C leaves the chat (exit 130) after cancelling any turn in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from elaria.agent.backend import require_lmstudio
from elaria.commands.run import (
    add_common_options,
    prepare_settings,
    quiet_libraries,
    start_runtime,
)
from elaria.config import Settings
from elaria.errors import ElariaError, RunError

__all__ = ["SLASH_COMMANDS", "configure", "main"]

SLASH_COMMANDS = {
    "/tools": "list the tools the agent can call",
    "/history": "show the conversation so far",
    "/reset": "forget the conversation",
    "/health": "show the runtime's state",
    "/quit": "leave (also Ctrl-D)",
}

#: Message previews in /history are cut here to keep the table readable.
HISTORY_PREVIEW_CHARS = 100


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser)


def main(args: argparse.Namespace) -> int:
    settings = prepare_settings(args)
    if args.backend == "lmstudio":
        asyncio.run(require_lmstudio(settings))
    quiet_libraries(settings)
    return asyncio.run(_chat(args, settings))


async def _chat(args: argparse.Namespace, settings: Settings) -> int:
    from elaria.agent.render import EventRenderer, summary_line

    console = Console(highlight=False, soft_wrap=True)
    renderer = EventRenderer(console)

    runtime = await start_runtime(args, settings, renderer, console, "starting…")
    async with runtime:
        console.print("[dim]Type a message; " + ", ".join(SLASH_COMMANDS) + ". Ctrl-D to leave.[/]")
        session = runtime.session()
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                console.print()
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not await _slash(text, console, runtime, session):
                    return 0
                continue
            try:
                result = await session.send(text, on_event=renderer)
            except (RunError, ElariaError) as exc:
                renderer.stop()
                console.print(f"[bold red]error:[/] {escape(str(exc))}")
                continue
            console.print(f"[dim]{escape(summary_line(result))}[/]")


async def _slash(command: str, console: Console, runtime: Any, session: Any) -> bool:
    """Run a slash command; False means leave."""
    name = command.split()[0].lower()
    if name in ("/quit", "/exit"):
        return False
    if name == "/tools":
        table = Table("tool", "source", "description")
        for tool in runtime.tools():
            table.add_row(tool.name, tool.source, tool.description)
        console.print(table)
    elif name == "/history":
        messages = session.messages()
        table = Table("#", "role", "content")
        for i, message in enumerate(messages, 1):
            table.add_row(str(i), message.get("role", "?"), _preview(message))
        console.print(table)
        if session.history is not None:
            stats = session.history.stats()
            console.print(
                f"[dim]{stats['messages']} messages, ~{stats['tokens']} tokens "
                f"(bounds {stats['max_messages']} messages, {stats['max_tokens']} tokens; "
                f"{stats['trimmed_messages']} trimmed so far)[/]"
            )
    elif name == "/reset":
        session.reset()
        console.print("[dim]conversation forgotten[/]")
    elif name == "/health":
        snapshot = await runtime.health.snapshot()
        console.print_json(json.dumps(snapshot, default=str))
    else:
        console.print(
            f"unknown command {escape(name)}; try "
            + ", ".join(f"{k} ({v})" for k, v in SLASH_COMMANDS.items())
        )
    return True


def _preview(message: dict[str, Any]) -> str:
    parts = []
    for part in message.get("content", []):
        kind = part.get("type")
        if kind == "text":
            parts.append(part.get("text", ""))
        elif kind == "toolCallRequest":
            call = part.get("toolCallRequest", {})
            parts.append(f"→ {call.get('name')}({json.dumps(call.get('arguments', {}))})")
        elif kind == "toolCallResult":
            parts.append(f"← {part.get('content', '')}")
    text = " ".join(" ".join(parts).split())
    return text if len(text) <= HISTORY_PREVIEW_CHARS else text[:HISTORY_PREVIEW_CHARS] + "…"
