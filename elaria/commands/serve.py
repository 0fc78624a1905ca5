"""``elaria serve``: run the embedded LM Studio-compatible server until SIGINT/SIGTERM.

Defaults come from the ``[embedded]`` settings (``elaria.toml`` / ``ELARIA_EMBEDDED__*``: host
loopback, port 0 = a free one, engine ``llama``); flags override them. Prints exactly one ready
line on stdout once it listens::

    elaria serve: ready api_host=127.0.0.1:41343 ws_url=ws://127.0.0.1:41343 engine=scripted pid=42

(``elaria.testing.ServerProcess`` waits for it). Point the SDK at it with
``lmstudio.Client("127.0.0.1:41343")``; ``--port 41343`` (LM Studio's first discovery port) also
makes zero-configuration clients (``lms.llm()``) find it. Fault flags set the server's
:class:`~elaria.embedded.faults.Faults` from the start, for users' own resilience tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from elaria.config import EmbeddedSettings, load_settings
from elaria.embedded.engine import Engine
from elaria.embedded.faults import Faults
from elaria.errors import ConfigError

__all__ = ["READY_PREFIX", "build_engine", "configure", "main"]

READY_PREFIX = "elaria serve: ready"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=None, help="listen address (default: embedded.host, loopback)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="TCP port (default: embedded.port; 0 = free)"
    )
    parser.add_argument(
        "--engine",
        choices=["scripted", "llama"],
        default=None,
        help="scripted: deterministic replies; llama: the real tiny model "
        "(needs the 'embedded' extra); default: embedded.engine",
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="sk-lm-ID:KEY",
        help="require this API token (repeatable); default: open mode",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=None,
        metavar="MODEL_KEY",
        help="load this model at start (repeatable); default: the whole "
        "catalogue for scripted, nothing for llama",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="answer unknown endpoints with an error instead of a warning",
    )
    parser.add_argument(
        "--no-queue", action="store_true", help="let predictions to one model run concurrently"
    )
    parser.add_argument(
        "--no-jit", action="store_true", help="predict fails for models that are not loaded"
    )
    scripted = parser.add_argument_group("scripted engine")
    scripted.add_argument(
        "--tokens-per-second", type=float, default=None, help="stream rate (default: no delay)"
    )
    scripted.add_argument(
        "--first-token-latency-ms", type=float, default=0.0, help="delay before the first token"
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--auth",
        choices=["ok", "reject", "hang", "close"],
        default="ok",
        help="reject: string error (SDK 1.5 raises ValueError); hang: never answer; "
        "close: succeed, then close",
    )
    faults.add_argument(
        "--greeting",
        choices=["ok", "slow", "non_json", "not_found"],
        default="ok",
        help="the /lmstudio-greeting probe: slow (past the SDK's 1 s timeout), non-JSON, 404",
    )
    faults.add_argument(
        "--delay-ms", type=float, default=0.0, help="latency before every outgoing message"
    )
    faults.add_argument(
        "--jitter-ms", type=float, default=0.0, help="random extra latency, up to this much"
    )
    faults.add_argument(
        "--drop-after-fragments",
        type=int,
        default=None,
        metavar="N",
        help="reset the connection streaming the N-th fragment (once)",
    )
    faults.add_argument(
        "--drop-graceful",
        action="store_true",
        help="with --drop-after-fragments: close frame instead of RST",
    )


def build_engine(
    name: str, args: argparse.Namespace | None = None, settings: EmbeddedSettings | None = None
) -> Engine:
    """The engine named on the command line; a clear error when the extra is missing."""
    if name == "scripted":
        from elaria.embedded.scripted import ScriptedEngine

        tps = getattr(args, "tokens_per_second", None)
        latency = getattr(args, "first_token_latency_ms", 0.0) or 0.0
        return ScriptedEngine(tokens_per_second=tps, first_token_latency=latency / 1000)
    try:
        from elaria.embedded.llama import LlamaCppEngine
    except ImportError as exc:
        raise ConfigError(
            f"the llama engine cannot be imported ({exc})",
            where="--engine llama",
            hint="Install the 'embedded' extra: pip install 'elaria[embedded]', "
            "or use --engine scripted.",
        ) from exc
    return LlamaCppEngine(settings=settings)


def _faults(args: argparse.Namespace) -> Faults:
    if args.drop_after_fragments is not None and args.drop_after_fragments < 1:
        raise ConfigError(
            "--drop-after-fragments must be at least 1",
            where="--drop-after-fragments",
            hint="Pass a fragment count, e.g. 3.",
        )
    for flag in ("delay_ms", "jitter_ms"):
        if getattr(args, flag) < 0:
            raise ConfigError(
                f"--{flag.replace('_', '-')} must not be negative",
                where=f"--{flag.replace('_', '-')}",
                hint="Pass 0 or more.",
            )
    return Faults(
        auth=args.auth,
        greeting=args.greeting,
        delay_s=args.delay_ms / 1000,
        jitter_s=args.jitter_ms / 1000,
        drop_after_fragments=args.drop_after_fragments,
        drop_graceful=args.drop_graceful,
    )


async def _serve(args: argparse.Namespace) -> int:
    from elaria.embedded.server import EmbeddedServer

    settings = load_settings().embedded
    engine_name = args.engine or settings.engine
    engine = build_engine(engine_name, args, settings)
    preload: list[str] = (
        args.preload
        if args.preload is not None
        else ([s.model_key for s in engine.catalogue()] if engine_name == "scripted" else [])
    )
    host = args.host if args.host is not None else settings.host
    port = args.port if args.port is not None else settings.port
    args.host, args.port = host, port  # for error messages
    server = EmbeddedServer(
        engine,
        host=host,
        port=port,
        tokens=args.token,
        strict=args.strict,
        queue_per_model=not args.no_queue,
        jit=not args.no_jit,
        preload=preload,
        faults=_faults(args),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(
            f"elaria serve: warning: listening on {host} with no --token: anyone who can reach "
            "this address can use the server",
            file=sys.stderr,
        )
    try:
        await _start(server, args)
        print(
            f"{READY_PREFIX} api_host={server.api_host} ws_url={server.ws_url} "
            f"engine={engine.name} pid={os.getpid()}",
            flush=True,
        )
        await stop.wait()
    finally:
        await server.close()
        close: Any = getattr(engine, "close", None)
        if callable(close):
            close()
    return 0


async def _start(server: Any, args: argparse.Namespace) -> None:
    from elaria.embedded.envelope import ProtocolError

    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            where="--host/--port",
            hint="Pick another --port (0 chooses a free one).",
        ) from exc
    except ProtocolError as exc:
        raise ConfigError(
            f"cannot preload: {exc.title}",
            where="--preload",
            hint="Use a model key the engine offers.",
        ) from exc


def main(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(args))
    return 130
