"""The ``elaria`` command: a thin dispatcher over ``elaria.commands.*``.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``main(args) -> int``;
only the chosen one is imported, so ``elaria --help`` stays fast and one command's heavy imports
(llama.cpp, the MCP SDK) never slow another. Errors a user can cause are ``ElariaError``s and are
printed as one readable paragraph, never a traceback: exit 2 for configuration errors, 1 for any
other failure, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from elaria.errors import ConfigError, ElariaError

__all__ = ["COMMANDS", "main"]

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("elaria.commands.run", "run one task with an agent and print the answer"),
    "chat": ("elaria.commands.chat", "talk to an agent in a REPL that keeps history"),
    "models": ("elaria.commands.models", "list downloaded and loaded models per host"),
    "health": ("elaria.commands.health", "show the runtime's health snapshot"),
    "serve-health": ("elaria.commands.serve_health", "serve /health and /metrics over HTTP"),
    "serve": ("elaria.commands.serve", "run the embedded LM Studio-compatible server"),
    "mcp": ("elaria.commands.mcp", "serve python_tools over MCP, or proxy MCP servers"),
    "events": ("elaria.commands.events", "inspect the inference event log"),
    "audit": ("elaria.commands.audit", "inspect the audit ledger"),
    "bench": ("elaria.commands.bench", "run a benchmark and print JSON"),
    "config": ("elaria.commands.config", "check and show the effective settings"),
}


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elaria",
        description="Elaria: an agent runtime for LM Studio.",
    )
    from elaria import __version__

    parser.add_argument("--version", action="version", version=f"elaria {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).configure(p)
    return parser


def _selected(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = _selected(args_list)
    parser = build_parser(selected)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        code: int = module.main(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        _print_error(exc)
        return 2
    except ElariaError as exc:
        _print_error(exc)
        return 1
    return code


def _print_error(exc: ElariaError) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print("[bold red]error:[/]", end=" ")
    console.print(str(exc), markup=False)


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    sys.exit(main())
