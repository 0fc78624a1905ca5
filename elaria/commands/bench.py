"""``elaria bench NAME``: run ``elaria.bench.NAME`` and print its JSON report.

A benchmark module exposes ``run(quick: bool) -> dict`` (or an async one). Reports carry ratios
measured in the same run, because absolute times drift on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import pkgutil
from typing import Any

import elaria.bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(elaria.bench.__path__) if not m.ispkg)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="benchmark name, or 'list'")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")


def main(args: argparse.Namespace) -> int:
    names = available()
    if args.name == "list":
        print("\n".join(names))
        return 0
    if args.name not in names:
        print(f"error: no benchmark named {args.name!r}; available: {', '.join(names)}")
        return 2
    from elaria.commands.run import quiet_libraries
    from elaria.config import load_settings

    # The terminal is for the JSON report; what the components log goes to the log files.
    quiet_libraries(load_settings())
    module = importlib.import_module(f"elaria.bench.{args.name}")
    result: Any = module.run(quick=args.quick)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    print(json.dumps(result, indent=2, default=str))
    return 0
