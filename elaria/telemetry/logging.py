"""Structured logging on loguru: a redacted console, JSONL files, correlation ids, event helpers.

``setup_logging(settings)`` installs, replacing whatever it installed before (so calling it again
reconfigures cleanly, and tests can point it at a temporary directory):

* a **patcher** on loguru's core that, for every record and therefore every sink (including sinks
  added by others), adds the current ``run_id`` / ``request_id`` to ``extra`` and runs
  :func:`~elaria.security.redact.redact` over the message text and all bound data (values that
  are not JSON types — objects, exceptions — become their ``str`` first, so nothing hides a
  secret from redaction; dicts, lists, tuples and scalars keep their shape);
* a **console** sink on stderr, human-readable, colourised when stderr is a terminal (and
  ``NO_COLOR`` is unset); its output, exception tracebacks included, is redacted once more;
* ``<log_dir>/elaria.jsonl`` (every level at or above ``settings.level``; 5 rotated files kept)
  and ``<log_dir>/elaria-error.jsonl`` (errors only; 10 kept), rotated at ``rotation_mb`` MB.
  Lines are serialised by :func:`json_line`, our own formatter, from the redacted record:
  ``time, level, message, service, logger, function, line, process, run_id, request_id,
  extra{...}`` and ``exception`` (redacted traceback text) when there is one.

Code elsewhere logs structured events with ``logger.bind(kind="...", **fields)``; those fields
land in ``extra``. Tracebacks never show local variables (``diagnose=False``): they hold secrets.

A sink that cannot write (disk full, permission denied, directory removed or replaced by a file)
never breaks the program: the first failure is printed to stderr once, lost records are counted
(:func:`logging_stats`), and writing resumes when the disk does.

The event helpers (``log_api_call`` … ``timer``) live in :mod:`elaria.telemetry.log_events` and
are re-exported here.

Correlation: :func:`run_context` and :func:`request_context` are context managers over
contextvars, so they work across ``await`` and are inherited by tasks created inside them; every
record made inside carries the ids. Call from any thread or task.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from elaria.config import LoggingSettings
from elaria.security.redact import redact, redact_text
from elaria.telemetry.log_events import (
    Timer,
    log_api_call,
    log_memory_usage,
    log_model_load,
    log_security_event,
    log_tool_execution,
    log_websocket_event,
    timer,
)
from elaria.telemetry.writer import JsonlFile

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = [
    "ERROR_LOG_NAME",
    "LOG_NAME",
    "Timer",
    "current_request_id",
    "current_run_id",
    "json_line",
    "log_api_call",
    "log_memory_usage",
    "log_model_load",
    "log_security_event",
    "log_tool_execution",
    "log_websocket_event",
    "logging_stats",
    "new_id",
    "request_context",
    "reset_logging",
    "run_context",
    "setup_logging",
    "timer",
]

LOG_NAME: Final = "elaria.jsonl"
ERROR_LOG_NAME: Final = "elaria-error.jsonl"
LOG_KEEP: Final = 5
ERROR_LOG_KEEP: Final = 10  # errors are rare and worth keeping longer

_run_id: ContextVar[str | None] = ContextVar("elaria_run_id", default=None)
_request_id: ContextVar[str | None] = ContextVar("elaria_request_id", default=None)

#: ``extra`` keys this module uses internally; never serialised.
_INTERNAL_PREFIX: Final = "_elaria"
_CONSOLE_FIELDS: Final = "_elaria_console"
_CORRELATION_KEYS: Final = ("run_id", "request_id")
_CONSOLE_FORMAT: Final = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
    "<cyan>{name}</cyan>:<cyan>{line}</cyan> <level>{message}</level>"
    "<dim>{extra[" + _CONSOLE_FIELDS + "]}</dim>\n{exception}"
)
#: Longest rendering of one bound value on the console; the JSON file keeps it whole.
_CONSOLE_VALUE_CHARS: Final = 120


class _RedactedExtra(dict[str, Any]):
    """Marks ``extra`` dicts our patcher already cleaned, so formatters do not redact twice."""


@dataclass
class _State:
    handler_ids: list[int] = field(default_factory=list)
    files: list[JsonlFile] = field(default_factory=list)
    service: str = "elaria"
    console_failures: int = 0


_state = _State()


# --------------------------------------------------------------------------- correlation ids


def new_id() -> str:
    """A fresh correlation id: 32 hex characters, 128 random bits (a UUID4's text without the
    object, which every run would build twice)."""
    return os.urandom(16).hex()


def current_run_id() -> str | None:
    return _run_id.get()


def current_request_id() -> str | None:
    return _request_id.get()


@contextmanager
def run_context(run_id: str | None = None) -> Iterator[str]:
    """Every record made inside carries ``run_id`` (a new one when not given); yields it."""
    value = run_id or new_id()
    token = _run_id.set(value)
    try:
        yield value
    finally:
        _run_id.reset(token)


@contextmanager
def request_context(request_id: str | None = None) -> Iterator[str]:
    """Every record made inside carries ``request_id`` (a new one when not given); yields it."""
    value = request_id or new_id()
    token = _request_id.set(value)
    try:
        yield value
    finally:
        _request_id.reset(token)


# --------------------------------------------------------------------------- setup


def setup_logging(settings: LoggingSettings | None = None) -> None:
    """Install the patcher and sinks described in the module docstring (idempotent)."""
    settings = settings or LoggingSettings()
    reset_logging()
    _remove_default_handler()
    _state.service = settings.service_name
    level = settings.level.upper()
    logger.configure(patcher=_patch)
    if settings.console:
        _state.handler_ids.append(
            logger.add(
                _console_sink,
                level=level,
                format=_console_format,
                colorize=_want_colour(),
                backtrace=False,
                diagnose=False,
                catch=False,
            )
        )
    if settings.json_files:
        max_bytes = settings.rotation_mb * 1024 * 1024
        for name, keep, file_level in (
            (LOG_NAME, LOG_KEEP, level),
            (ERROR_LOG_NAME, ERROR_LOG_KEEP, "ERROR"),
        ):
            sink = JsonlFile(
                settings.log_dir / name, max_bytes=max_bytes, keep=keep, on_failure=_to_stderr
            )
            _state.files.append(sink)
            _state.handler_ids.append(
                logger.add(
                    _file_writer(sink),
                    level=file_level,
                    format=_json_format,
                    colorize=False,
                    backtrace=False,
                    diagnose=False,
                    catch=False,
                )
            )


def reset_logging() -> None:
    """Remove what :func:`setup_logging` installed and close its files."""
    for handler_id in _state.handler_ids:
        try:
            logger.remove(handler_id)
        except ValueError:
            continue  # someone removed it already
    _state.handler_ids.clear()
    for sink in _state.files:
        sink.close()
    _state.files.clear()
    logger.configure(patcher=_no_patch)


def logging_stats() -> dict[str, Any]:
    """Per-file write counters (lines written, dropped, failures) for the health snapshot."""
    files = [sink.stats() for sink in _state.files]
    reasons = [f"cannot write {f['path']}: {f['last_error']}" for f in files if f["failing"]]
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "files": files,
        "console_failures": _state.console_failures,
    }


def _remove_default_handler() -> None:
    try:
        logger.remove(0)  # loguru's own unredacted stderr handler
    except ValueError:
        pass


def _want_colour() -> bool:
    stream = sys.stderr
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and bool(stream.isatty())


def _no_patch(record: Record) -> None:
    return None


# --------------------------------------------------------------------------- record processing


def _patch(record: Record) -> None:
    try:
        _clean_record(record)
    except Exception as exc:  # logging must never break the caller; keep nothing unredacted
        record["message"] = f"[record dropped: redaction failed with {type(exc).__name__}]"
        record["extra"] = _RedactedExtra()
        record["exception"] = None


def _clean_record(record: Record) -> None:
    extra = record["extra"]
    for key, var in (("run_id", _run_id), ("request_id", _request_id)):
        if key not in extra:
            value = var.get()
            if value is not None:
                extra[key] = value
    record["message"] = redact_text(record["message"])
    record["extra"] = _RedactedExtra(redact(_jsonable(dict(extra))))
    exc = record["exception"]
    if exc is not None and exc.value is not None:
        clean = _scrub_exception(exc.value, 0)
        if clean is not exc.value:
            record["exception"] = exc._replace(type=type(clean), value=clean)


#: Chained exceptions followed when scrubbing; deeper chains keep their originals' text out.
_EXCEPTION_CHAIN_DEPTH: Final = 8
#: Exception classes are few; the bound only guards against classes made on the fly.
_MAX_PROXY_CLASSES: Final = 1024
_proxy_classes: dict[type[BaseException], type[Exception]] = {}


def _scrub_exception(value: BaseException, depth: int) -> BaseException:
    """``value`` itself when its text and its chain hold no secret, else a look-alike whose
    ``str`` is redacted (same class name and module, same traceback, scrubbed chain), so every
    sink's traceback rendering is clean."""
    try:
        text = str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    clean = redact_text(text)
    cause = value.__cause__
    context = value.__context__
    if depth < _EXCEPTION_CHAIN_DEPTH:
        new_cause = cause if cause is None else _scrub_exception(cause, depth + 1)
        new_context = context if context is None else _scrub_exception(context, depth + 1)
    else:
        new_cause = new_context = None
    if clean == text and new_cause is cause and new_context is context:
        return value
    proxy = _proxy_class(type(value))(clean)
    proxy.__cause__ = new_cause
    proxy.__context__ = new_context
    proxy.__suppress_context__ = value.__suppress_context__
    return proxy.with_traceback(value.__traceback__)


def _proxy_class(cls: type[BaseException]) -> type[Exception]:
    proxy = _proxy_classes.get(cls)
    if proxy is None:
        proxy = type(
            cls.__name__,
            (Exception,),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
        if len(_proxy_classes) < _MAX_PROXY_CLASSES:
            _proxy_classes[cls] = proxy
    return proxy


def _clean_extra(record: Record) -> Mapping[str, Any]:
    extra = record["extra"]
    if isinstance(extra, _RedactedExtra):
        return extra
    return dict(redact(_jsonable(dict(extra))))


_PLAIN_TYPES: Final = frozenset({str, int, float, bool, type(None)})
#: Below this, a bound value is shown by its repr (redaction fails closed deeper still).
_JSONABLE_DEPTH: Final = 32


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON types only, so that redaction sees text where an object would hide it."""
    kind = type(value)
    if kind in _PLAIN_TYPES:  # exact types first: this runs on every bound value
        return value
    if kind is dict and depth <= _JSONABLE_DEPTH:
        return {
            (k if type(k) is str else str(k)): (
                v if type(v) in _PLAIN_TYPES else _jsonable(v, depth + 1)
            )
            for k, v in value.items()
        }
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth > _JSONABLE_DEPTH:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, tuple):  # kept a tuple: other sinks may compare bound values
        return tuple(_jsonable(v, depth + 1) for v in value)
    if isinstance(value, list | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def json_line(record: Record) -> str:
    """One redacted JSON object (and a newline) for ``record``; the file sinks' format."""
    extra = _clean_extra(record)
    message = record["message"]
    if not isinstance(record["extra"], _RedactedExtra):
        message = redact_text(message)
    payload: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": message,
        "service": _state.service,
        "logger": record["name"],
        "function": record["function"],
        "line": record["line"],
        "process": record["process"].id,
        "run_id": extra.get("run_id"),
        "request_id": extra.get("request_id"),
        "extra": {
            k: v
            for k, v in extra.items()
            if k not in _CORRELATION_KEYS and not k.startswith(_INTERNAL_PREFIX)
        },
    }
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        payload["exception"] = redact_text(text)
    return json.dumps(payload, ensure_ascii=False, default=str) + "\n"


def _json_format(record: Record) -> str:
    try:
        line = json_line(record)
    except Exception as exc:  # never let one odd record break the caller
        line = (
            json.dumps(
                {
                    "time": record["time"].isoformat(),
                    "level": record["level"].name,
                    "message": f"[unserialisable record: {type(exc).__name__}]",
                }
            )
            + "\n"
        )
    record["extra"]["_elaria_json"] = line
    return "{extra[_elaria_json]}"


def _console_format(record: Record) -> str:
    extra = _clean_extra(record)
    shown = [
        f"{k}={_short(v)}"
        for k, v in extra.items()
        if not k.startswith(_INTERNAL_PREFIX) and k not in _CORRELATION_KEYS
    ]
    run = extra.get("run_id")
    prefix = f" run={str(run)[:8]}" if run else ""
    request = extra.get("request_id")
    prefix += f" req={str(request)[:8]}" if request else ""
    record["extra"][_CONSOLE_FIELDS] = (prefix + (" " + " ".join(shown) if shown else "")).rstrip()
    return _CONSOLE_FORMAT


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _CONSOLE_VALUE_CHARS else text[:_CONSOLE_VALUE_CHARS] + "…"


def _console_sink(message: Message) -> None:
    try:
        sys.stderr.write(redact_text(str(message)))
    except (OSError, ValueError):
        # stderr itself is gone (closed pipe): there is nowhere left to report it.
        _state.console_failures += 1


def _file_writer(sink: JsonlFile) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        # backslashreplace: a lone surrogate (undecodable file name) becomes a valid JSON
        # escape instead of an exception in the caller.
        sink.write(str(message).encode("utf-8", "backslashreplace"))

    return write


def _to_stderr(text: str) -> None:
    try:
        sys.stderr.write(f"elaria logging: {text}\n")
    except (OSError, ValueError):
        _state.console_failures += 1
