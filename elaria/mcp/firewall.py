"""The one place MCP traffic is checked: keys, lengths, tagged validators, approval, audit.

Every call that crosses the bridge (Elaria → an MCP server) or the server side (an MCP host →
Elaria's tools, or through the proxy to another server) passes :meth:`Firewall.check` before
anything is sent or run:

1. :func:`~elaria.security.check_tool_arguments` — forbidden keys (``__proto__`` at any depth,
   also inside JSON-in-a-string), depth, argument lengths;
2. the domain validator for each argument tagged in ``arg_kinds`` (``path`` → ``PathGuard``,
   ``url``, ``sql``, ``shell``). A tag whose validator is not available fails closed;
3. the approval mode: ``deny`` refuses; ``ask`` refuses here too unless the caller owns an
   approval callback (the agent loop asks the human itself: each bridged tool carries its mode).

Refusals raise :class:`~elaria.errors.ToolRefused` / :class:`~elaria.errors.ToolDenied` (tell the
model) and, like every outcome, become an audit record through :meth:`Firewall.record`. Records
carry the arguments as given; the sink must redact them (the ledger and :class:`JsonlAudit` do).
Sans-I/O apart from the audit sink; any thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from elaria.agent.tools import ArgKind
from elaria.errors import SecurityViolation, ToolDenied, ToolRefused
from elaria.security import check_tool_arguments

__all__ = ["ArgumentValidator", "AuditSink", "Firewall", "default_validators"]

ArgumentValidator = Callable[[Any], None]
AuditSink = Callable[[dict[str, Any]], None]
Outcome = Literal["allowed", "refused", "denied", "ok", "error"]

_URL_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def default_validators(
    roots: Sequence[Path], *, allowed_remote_hosts: Sequence[str] = ()
) -> dict[ArgKind, ArgumentValidator]:
    """A validator per tag, from :mod:`elaria.security`.

    * ``path`` — inside ``roots`` (the leaf may not exist yet: a file to create);
    * ``url`` — ``http``/``ws`` only to loopback, ``https``/``wss`` to ``allowed_remote_hosts``
      (the LM Studio URL rules of :func:`~elaria.security.validate_ws_url`, by scheme);
    * ``sql`` — :func:`~elaria.security.check_sql` (read-only rules);
    * ``shell`` — :func:`~elaria.security.check_shell_arg`.

    No existing root means no ``path`` validator, so path-tagged calls are refused.
    """
    from elaria.security import PathGuard, check_shell_arg, check_sql, validate_ws_url

    validators: dict[ArgKind, ArgumentValidator] = {}
    existing = [r for r in roots if r.is_dir()]
    if existing:
        guard = PathGuard(existing)

        def path(value: Any) -> None:
            guard.resolve(str(value), for_write=True)

        validators["path"] = path

    def url(value: Any) -> None:
        text = str(value)
        scheme, sep, rest = text.partition("://")
        mapped = _URL_SCHEMES.get(scheme.lower()) if sep else None
        if mapped is None:
            raise SecurityViolation(
                "url.scheme", f"the URL {text[:200]!r} must start with http(s):// or ws(s)://"
            )
        try:
            validate_ws_url(f"{mapped}://{rest}", allowed_remote_hosts=allowed_remote_hosts)
        except SecurityViolation as exc:
            raise SecurityViolation(
                exc.rule,
                f"the URL {text[:200]!r} is not allowed: plain http only to localhost, https "
                "only to a host listed in security.allowed_remote_hosts",
                value=exc.value,
            ) from exc

    def sql(value: Any) -> None:
        check_sql(str(value))

    def shell(value: Any) -> None:
        check_shell_arg(str(value))

    validators["url"] = url
    validators["sql"] = sql
    validators["shell"] = shell
    return validators


class Firewall:
    """Checks calls and records outcomes; share one per bridge or server."""

    def __init__(
        self,
        *,
        max_argument_chars: int,
        validators: Mapping[ArgKind, ArgumentValidator],
        audit: AuditSink | None = None,
        ask_means_deny: bool = True,
    ) -> None:
        self.max_argument_chars = max_argument_chars
        self._validators = dict(validators)
        self._audit = audit
        self._ask_means_deny = ask_means_deny
        self.refusals = 0
        self.calls = 0

    def check(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        arg_kinds: Mapping[str, ArgKind] | None = None,
        approval: str | None = None,
        server: str | None = None,
    ) -> None:
        """Refuse the call (and audit it) or return quietly."""
        self.calls += 1
        try:
            check_tool_arguments(arguments, max_chars=self.max_argument_chars)
            for arg, kind in (arg_kinds or {}).items():
                value = arguments.get(arg)
                if value is None:
                    continue
                validator = self._validators.get(kind)
                if validator is None:
                    raise SecurityViolation(
                        f"validate.{kind}",
                        f"argument {arg!r} is tagged {kind!r} but no {kind} validator is "
                        "available, so the call is refused",
                    )
                for item in value if isinstance(value, list | tuple) else (value,):
                    validator(item)
        except SecurityViolation as exc:
            self.refusals += 1
            self.record(
                tool, arguments, "refused", server=server, rule=exc.rule, reason=exc.message
            )
            raise ToolRefused(
                exc.message if exc.message.endswith(".") else f"{exc.message}.",
                rule=exc.rule,
                tool=tool,
                hint="This call was refused before it ran; change the arguments.",
            ) from exc
        if approval == "deny" or (approval == "ask" and self._ask_means_deny):
            self.refusals += 1
            why = "denied by policy" if approval == "deny" else "needs approval; nobody to ask"
            self.record(tool, arguments, "denied", server=server, reason=why)
            raise ToolDenied(
                f"calling {tool!r} is {why}",
                tool=tool,
                hint="Use another tool; the operator can change `approval` in mcp.json.",
            )

    def record(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None,
        outcome: Outcome,
        *,
        server: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """One audit record; a failing sink is logged, never raised into the call."""
        if self._audit is None:
            return
        record: dict[str, Any] = {
            "ts": time.time(),
            "kind": "mcp.tool_call",
            "tool": tool,
            "server": server,
            "outcome": outcome,
            "argument_names": sorted(str(k) for k in (arguments or {})),
            # The sink redacts and truncates (the ledger does); refused payloads are evidence.
            "arguments": dict(arguments or {}),
        }
        if rule is not None:
            record["rule"] = rule
        if reason is not None:
            record["reason"] = reason[:500]
        if duration_ms is not None:
            record["duration_ms"] = round(duration_ms, 2)
        try:
            self._audit(record)
        except Exception as exc:
            logger.warning("audit sink failed: {}", exc)
