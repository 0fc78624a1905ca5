"""``elaria config check|show``: validate every source at once; print the effective settings."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from elaria.config import config_file_path, load_settings
from elaria.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check", "show"], help="check: validate; show: print")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    console = Console(highlight=False, soft_wrap=True)
    try:
        settings = load_settings()
    except ConfigError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "error": exc.message,
                        "problems": [
                            {
                                "field": p.field,
                                "value": repr(p.value),
                                "allowed": p.allowed,
                                "fix": p.fix,
                                "source": p.source,
                            }
                            for p in exc.problems
                        ],
                    },
                    indent=2,
                )
            )
            return 2
        raise
    path = config_file_path()
    if args.action == "check":
        if args.json:
            print(json.dumps({"ok": True, "config_file": str(path) if path else None}))
        else:
            origin = str(path) if path is not None and path.is_file() else "defaults + environment"
            console.print(f"[green]ok[/]: settings are valid ({origin})")
        return 0
    dumped = settings.model_dump(mode="json")
    if args.json:
        print(json.dumps(dumped, indent=2))
    else:
        console.print_json(data=dumped)
    return 0
