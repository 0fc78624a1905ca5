"""One way to refuse: build a :class:`SecurityViolation` and log it as a security event.

Every validator in :mod:`elaria.security` refuses through :func:`refuse`, so each refusal is a
loguru record bound with ``kind="security"``, ``rule`` and ``severity`` that the telemetry sinks
pick up (and redact) for the log and the audit ledger. Safe to call from any thread.
"""

from __future__ import annotations

from typing import Literal

from loguru import logger

from elaria.errors import SecurityViolation

__all__ = ["Severity", "refuse"]

Severity = Literal["low", "medium", "high"]

#: How much of the refused input a security event keeps; enough to recognise an attack.
EVENT_VALUE_CHARS = 200


def refuse(
    rule: str,
    message: str,
    *,
    value: object = None,
    severity: Severity = "medium",
) -> SecurityViolation:
    """Log the refusal and return the exception for the caller to ``raise``.

    ``message`` is what the model reads: what was refused and what to do instead.
    """
    shown = None if value is None else _clip(repr(value) if not isinstance(value, str) else value)
    logger.bind(kind="security", rule=rule, severity=severity, value=shown).warning(
        "security refusal [{rule}]: {message}", rule=rule, message=message
    )
    return SecurityViolation(rule, message, value=shown)


def _clip(text: str) -> str:
    if len(text) <= EVENT_VALUE_CHARS:
        return text
    return text[:EVENT_VALUE_CHARS] + f"...({len(text) - EVENT_VALUE_CHARS} more characters)"
