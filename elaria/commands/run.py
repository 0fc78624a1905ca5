"""``elaria run "task"``: run one task with an agent, streaming text and tool calls.

Options: ``--backend auto|lmstudio|embedded`` (default ``auto``: LM Studio when reachable, else
the embedded tiny model, announced by a banner), ``--model ID``, ``--workspace DIR`` (created
with sample files on first run), ``--max-iterations N``, ``--json`` (one JSON object on stdout:
the result and every event; nothing else on stdout).

Errors a user can cause are :class:`~elaria.errors.ElariaError` and reach the dispatcher, which
prints one paragraph (exit 1, or 2 for configuration). Ctrl-C cancels the run (the server-side
prediction too) and exits 130. Exit 0 when the run produced an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from elaria.agent.backend import BackendChoice, require_lmstudio
from elaria.config import Settings, load_settings
from elaria.errors import ConfigError, ElariaError

if TYPE_CHECKING:
    from elaria.agent.render import EventRenderer
    from elaria.runtime import Runtime

__all__ = ["configure", "main", "prepare_settings", "quiet_libraries", "start_runtime"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="what the agent should do, in plain words")
    add_common_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result and events as JSON")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["auto", "lmstudio", "embedded"],
        default="auto",
        help="auto: LM Studio if reachable, else the embedded tiny model (default)",
    )
    parser.add_argument("--model", help="model id to use (default: the first loaded model)")
    parser.add_argument("--workspace", help="directory the tools work in (default ./workspace)")
    parser.add_argument(
        "--max-iterations", type=int, help="rounds at most, 1-100 (agent.max_iterations)"
    )
    parser.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve /health and /metrics on 127.0.0.1:PORT while running (0 = a free port)",
    )


def prepare_settings(args: argparse.Namespace) -> Settings:
    """Settings from every source plus the command-line options (validated together)."""
    overrides: dict[str, Any] = {}
    agent: dict[str, Any] = {}
    if args.workspace:
        agent["workspace"] = Path(args.workspace)
    if args.max_iterations is not None:
        agent["max_iterations"] = args.max_iterations
    base = load_settings()
    if getattr(args, "health_port", None) is not None:
        overrides["health"] = {**base.health.model_dump(), "port": args.health_port}
    if agent:
        overrides["agent"] = {**base.agent.model_dump(exclude_unset=True), **agent}
    if args.model:
        overrides["lmstudio"] = {
            **base.lmstudio.model_dump(exclude_unset=True),
            "model": args.model,
        }
    if not overrides:
        return base
    return load_settings(**overrides)


def quiet_libraries(settings: Settings) -> None:
    """Logs go to the files only: the terminal is for the run (errors still reach it)."""
    from elaria.telemetry.logging import setup_logging

    setup_logging(settings.logging.model_copy(update={"console": False}))
    # Libraries log through stdlib logging (the SDK logs a dropped socket at ERROR, and each
    # of its classes has its own top-level logger): send it all to our log files instead of the
    # terminal, where the run's own output is.
    root = logging.getLogger()
    root.handlers[:] = [_ToLogFiles()]
    root.setLevel(logging.INFO)


class _ToLogFiles(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not break the run
            message = str(record.msg)
        logger.bind(kind="library", library=record.name).log(
            record.levelname if record.levelno in _LEVELS else "INFO", message
        )


_LEVELS = {logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL}


def main(args: argparse.Namespace) -> int:
    try:
        settings = prepare_settings(args)
        if args.backend == "lmstudio":
            # Before anything heavy is imported: no LM Studio must fail in seconds.
            asyncio.run(require_lmstudio(settings))
        quiet_libraries(settings)
        return asyncio.run(_run(args, settings))
    except ElariaError as exc:
        if not args.json:
            raise  # the dispatcher prints it as one paragraph
        error = {"class": type(exc).__name__, "message": str(exc)}
        print(json.dumps({"ok": False, "error": error}))
        return 2 if isinstance(exc, ConfigError) else 1


async def start_runtime(
    args: argparse.Namespace,
    settings: Settings,
    renderer: EventRenderer,
    notices: Console,
    starting: str,
) -> Runtime:
    """Start a Runtime for a CLI command: approvals are asked on ``notices``, a spinner turns while
    it starts, then the embedded-model banner and the health URL are shown. The caller enters
    the returned runtime with ``async with`` (which closes it)."""
    from elaria.agent.render import ask_approval
    from elaria.runtime import Runtime

    async def approve(request: Any) -> Any:
        renderer.stop()
        return await ask_approval(notices, request)

    runtime = Runtime(
        settings, backend=args.backend, approve=approve, serve_health=args.health_port is not None
    )
    renderer.spin(starting)
    try:
        await runtime.start()
    finally:
        renderer.stop()
    assert runtime.backend is not None
    banner = runtime.backend.banner()
    if banner:
        notices.print(Panel(escape(banner), title="embedded model", border_style="yellow"))
    if runtime.health_url:
        notices.print(f"[dim]health: {escape(runtime.health_url)} (and /metrics)[/]")
    return runtime


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from elaria.agent.render import EventRenderer, summary_line

    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    ui = err if args.json else out
    backend: BackendChoice = args.backend
    events: list[dict[str, Any]] = []
    renderer = EventRenderer(ui, show_spinner=not args.json)

    runtime = await start_runtime(args, settings, renderer, err, _starting_text(backend))
    async with runtime:

        def on_event(event: Any) -> None:
            if args.json:
                events.append(event.to_dict())
            else:
                renderer(event)

        try:
            result = await runtime.run(args.task, on_event=on_event)
        finally:
            renderer.stop()
    if args.json:
        print(json.dumps({"ok": True, "result": result.to_dict(), "events": events}, default=str))
    else:
        out.print(f"[dim]{escape(summary_line(result))}[/]")
    return 0


def _starting_text(backend: str) -> str:
    if backend == "lmstudio":
        return "connecting to LM Studio…"
    if backend == "embedded":
        return "starting the embedded model…"
    return "looking for LM Studio…"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(argparse.Namespace()))
