"""Terminal rendering of agent events with rich, shared by ``elaria run`` and ``elaria chat``.

:class:`EventRenderer` is an ``on_event`` callback: it streams the model's text as it arrives,
prints one line per tool call (requested, denied, finished, failed), shows a spinner while the
model thinks (from the start of a round until its first fragment), and builds the summary line.
:func:`ask_approval` is the CLI's approval callback (y/n/always/never), reading the answer in a
worker thread so the event loop keeps serving the connection.

Called on the event loop, synchronously, in event order.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from elaria.agent import events as ev
from elaria.agent.approval import Answer, ApprovalAnswer, ApprovalRequest
from elaria.agent.loop import RunResult

__all__ = ["EventRenderer", "ask_approval", "summary_line"]

#: Argument previews on a tool line are cut here: the line is a hint, the ledger has the rest.
ARGUMENT_PREVIEW_CHARS = 120


class EventRenderer:
    def __init__(self, console: Console, *, show_spinner: bool = True) -> None:
        self.console = console
        self.show_spinner = show_spinner and console.is_terminal
        self._status: Status | None = None
        self._mid_line = False
        self._round_text = ""

    def __call__(self, event: ev.AgentEvent) -> None:
        if isinstance(event, ev.RoundStarted):
            self._round_text = ""
            self._spin(f"thinking (round {event.round})…")
        elif isinstance(event, ev.TextFragment):
            self._round_text += event.text
            self._stop_spinner()
            self.console.print(event.text, end="", markup=False, highlight=False)
            self._mid_line = True
        elif isinstance(event, ev.RoundFinished):
            self._stop_spinner()
            self._end_line()
        elif isinstance(event, ev.ToolCallRequested):
            self._stop_spinner()
            self._end_line()
            self.console.print(
                f"[cyan]→ {escape(event.tool)}[/]({escape(_preview(event.arguments))})"
            )
        elif isinstance(event, ev.ToolCallRepaired):
            self.console.print(f"  [yellow]repaired[/] a malformed call ({event.method})")
        elif isinstance(event, ev.ToolCallDenied):
            self.console.print(
                f"  [red]✗ denied[/] by {event.by}: {escape(event.reason)}", highlight=False
            )
        elif isinstance(event, ev.ToolCallStarted):
            self._spin(f"running {event.tool}…")
        elif isinstance(event, ev.ToolCallFinished):
            self._stop_spinner()
            cut = ", truncated" if event.truncated else ""
            self.console.print(
                f"  [green]✓ {escape(event.tool)}[/] [dim]{event.seconds:.2f} s, "
                f"{event.result_chars} chars{cut}[/]"
            )
        elif isinstance(event, ev.ToolCallFailed):
            self._stop_spinner()
            self.console.print(
                f"  [red]✗ {escape(event.tool)}[/]: {escape(_first_line(event.message))}",
                highlight=False,
            )
        elif isinstance(event, ev.ResilienceEvent):
            self._stop_spinner()
            detail = event.detail.get("message") or event.detail.get("error_class") or ""
            self.console.print(f"  [yellow]{escape(event.action)}[/] [dim]{escape(str(detail))}[/]")
        elif isinstance(event, ev.HistoryTrimmed):
            self.console.print(
                f"  [dim]history trimmed: {event.dropped_messages} old messages dropped[/]"
            )
        elif isinstance(event, ev.FinalAnswer):
            self._stop_spinner()
            self._end_line()
            if not self._round_text.strip() and event.text:
                # Nothing was streamed (the answer came whole): show it now.
                self.console.print(event.text, markup=False, highlight=False)
        elif isinstance(event, ev.RunFailed):
            self._stop_spinner()
            self._end_line()

    def spin(self, text: str) -> None:
        self._spin(text)

    def stop(self) -> None:
        self._stop_spinner()
        self._end_line()

    def _spin(self, text: str) -> None:
        if not self.show_spinner:
            return
        self._end_line()
        if self._status is None:
            self._status = self.console.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _end_line(self) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False


def summary_line(result: RunResult) -> str:
    calls = len(result.tool_calls)
    return (
        f"{result.rounds} round{'s' if result.rounds != 1 else ''} · "
        f"{calls} tool call{'s' if calls != 1 else ''} · "
        f"{result.prompt_tokens} tokens in / {result.predicted_tokens} out · "
        f"{result.seconds:.1f} s" + (f" · {result.model}" if result.model else "")
    )


async def ask_approval(console: Console, request: ApprovalRequest) -> Answer | ApprovalAnswer:
    """Ask on the terminal: y(es) / n(o) / a(lways) / N(ever). Anything else counts as no."""
    console.print(
        f"[bold yellow]approve[/] {escape(request.tool)}({escape(_preview(request.arguments))})? "
        "[dim]\\[y]es / \\[n]o / \\[a]lways / ne\\[v]er[/] ",
        end="",
    )
    try:
        raw = await asyncio.to_thread(input)
    except EOFError:
        console.print("[dim](no terminal input: no)[/]")
        return "no"
    answer = {"y": "yes", "yes": "yes", "a": "always", "always": "always", "v": "never"}.get(
        raw.strip().lower(), "never" if raw.strip().lower() == "never" else "no"
    )
    if answer == "always" and request.scope_argument:
        value = request.arguments.get(request.scope_argument)
        if isinstance(value, str) and "/" in value.strip("/"):
            folder = value.rsplit("/", 1)[0]
            return ApprovalAnswer("always", argument=request.scope_argument, pattern=f"{folder}/*")
    return _answer(answer)


def _answer(text: str) -> Answer:
    if text == "yes":
        return "yes"
    if text == "always":
        return "always"
    if text == "never":
        return "never"
    return "no"


def _preview(arguments: Any) -> str:
    if arguments is None:
        return ""
    try:
        text = json.dumps(arguments, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(arguments)
    text = text.removeprefix("{").removesuffix("}")
    return text if len(text) <= ARGUMENT_PREVIEW_CHARS else text[:ARGUMENT_PREVIEW_CHARS] + "…"


def _first_line(text: str) -> str:
    return text.removeprefix("Error: ").splitlines()[0] if text else ""
