"""Subprocess arguments and programs: ``check_shell_arg`` and ``check_program``.

Subprocesses run with ``shell=False``, an allowlisted program (a bare name the runtime resolves)
and a ``--`` inserted before the model's arguments. These checks refuse what would still matter
if any of that were lost on the way (a wrapper script that calls a shell, a program that parses
options after ``--``): shell metacharacters, line breaks, control and invisible characters, their
fullwidth lookalikes, a leading ``-``. Everything else is inert in argv form and passes. Pure
functions, any thread.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection

from elaria.security.violations import refuse

__all__ = ["MAX_SHELL_ARG_BYTES", "check_program", "check_shell_arg"]

#: One argv element; the kernel's own per-argument limit is far larger, models need far less.
MAX_SHELL_ARG_BYTES = 4096

_METACHARACTERS = frozenset(";&|`$<>()\\")
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_PROGRAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_shell_arg(arg: str) -> str:
    """Return ``arg`` unchanged if it is safe as one argv element; else refuse it.

    Raises:
        SecurityViolation: rules ``shell.type``, ``shell.too_long``, ``shell.control``,
            ``shell.metachar``, ``shell.lookalike``, ``shell.option``.
    """
    if not isinstance(arg, str):
        raise refuse("shell.type", "each argument must be a string", value=arg)
    size = len(arg.encode("utf-8", "surrogatepass"))
    if size > MAX_SHELL_ARG_BYTES:
        raise refuse(
            "shell.too_long",
            f"an argument is {size} bytes, over the limit of {MAX_SHELL_ARG_BYTES}",
            value=arg,
        )
    for ch in arg:
        if unicodedata.category(ch) in _INVISIBLE:
            raise refuse(
                "shell.control",
                f"an argument contains a control or invisible character (U+{ord(ch):04X}, "
                "e.g. a line break); remove it",
                value=arg,
                severity="high",
            )
        if ch in _METACHARACTERS:
            raise refuse(
                "shell.metachar",
                f"an argument contains the shell character {ch!r}; commands run without a "
                "shell, so pipes, redirects and substitutions cannot work: pass plain values",
                value=arg,
                severity="high",
            )
    normalized = arg if arg.isascii() else unicodedata.normalize("NFKC", arg)
    for ch in normalized:
        if ch in _METACHARACTERS:
            raise refuse(
                "shell.lookalike",
                f"an argument contains a lookalike of the shell character {ch!r}; use plain values",
                value=arg,
                severity="high",
            )
    if normalized.startswith("-"):
        raise refuse(
            "shell.option",
            f"the argument {arg!r} starts with '-', which a program reads as an option; "
            "options are not accepted, pass only operands (file names, words)",
            value=arg,
        )
    return arg


def check_program(name: str, allowed: Collection[str]) -> str:
    """Return ``name`` if it is a bare program name in ``allowed``; else refuse it."""
    if not isinstance(name, str) or not _PROGRAM_NAME.fullmatch(name):
        raise refuse(
            "shell.program_name",
            f"{name!r} is not a bare program name; give just the name (like 'ls'), no path",
            value=name,
            severity="high",
        )
    if name not in allowed:
        choices = (
            ", ".join(sorted(allowed)) if allowed else "none (agent.allowed_commands is empty)"
        )
        raise refuse(
            "shell.program_not_allowed",
            f"the program {name!r} is not allowed; allowed programs: {choices}",
            value=name,
        )
    return name
