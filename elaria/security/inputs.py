"""The gate every tool call passes (keys and lengths), result caps, and model identifiers.

:func:`check_tool_arguments` runs before dispatch for python tools and MCP tools alike, so
nothing polluting or oversized crosses into a Node process. :func:`cap_result` bounds what a tool
hands back to the model. Pure functions, any thread.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from elaria.security.keys import FORBIDDEN_JS_NAMES, check_keys
from elaria.security.violations import refuse

__all__ = [
    "DEFAULT_MAX_ARGUMENT_CHARS",
    "MAX_MODEL_ID_CHARS",
    "cap_result",
    "check_tool_arguments",
    "validate_model_id",
]

#: Default cap on any one argument string (matches ``agent.max_argument_chars``).
DEFAULT_MAX_ARGUMENT_CHARS = 10_000


def check_tool_arguments(
    arguments: Mapping[str, Any], *, max_chars: int = DEFAULT_MAX_ARGUMENT_CHARS
) -> None:
    """Refuse forbidden keys (:func:`check_keys`), deep nesting, or any string over ``max_chars``.

    Keys count as strings too. Raises:
        SecurityViolation: rules ``keys.*`` or ``length.argument``.
    """
    if type(arguments) is dict and _plainly_fine(arguments, max_chars):
        return
    _check_any(arguments, max_chars)


def _check_any(arguments: Mapping[str, Any], max_chars: int) -> None:
    """The general walk of :func:`check_tool_arguments`: any shape, any depth."""
    check_keys(arguments)  # also bounds the depth, so the walk below terminates quickly
    stack: list[tuple[Any, str]] = [(arguments, "$")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if len(node) > max_chars:
                raise refuse(
                    "length.argument",
                    f"argument {where} is {len(node)} characters, over the limit of {max_chars}; "
                    "send a shorter value (split the work, or refer to a file instead)",
                    value=node,
                    severity="low",
                )
        elif isinstance(node, Mapping):
            for key, child in node.items():
                name = key if isinstance(key, str) else str(key)
                stack.append((name, f"{where} (a key)"))
                stack.append((child, f"{where}.{name[:40]}"))
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))


#: Flat argument dicts up to this many keys are screened by :func:`_plainly_fine` first.
_FAST_PATH_MAX_KEYS = 16
#: Scalars that carry no keys and no text: nothing in them for either check to refuse.
_PLAIN_SCALARS = (int, float, bool, type(None))
#: A string starting so may be JSON, whose keys :func:`check_keys` looks into.
_JSON_OPENERS = ("{", "[")
#: Keys that no rule of :func:`check_keys` can refuse: short ASCII words, no dunder prefix
#: (so no control character, no NFKC change, no path separator, no ``__x__`` form).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _plainly_fine(arguments: dict[Any, Any], max_chars: int) -> bool:
    """True only when the general walk would surely accept ``arguments``: a small flat dict of
    plain keys and plain numbers, flags or strings that cannot be JSON (no ``{``/``[``/space
    first) and fit ``max_chars``. Anything else — including everything the walk would refuse —
    answers False, and the caller takes the general path, so verdicts and errors are its own.
    Tool calls are nearly always of this shape, once per tool call."""
    if len(arguments) > _FAST_PATH_MAX_KEYS:
        return False
    for key, value in arguments.items():
        if type(key) is not str or not _plain_key(key) or len(key) > max_chars:
            return False
        kind = type(value)
        if kind is str:
            first = value[:1]
            if len(value) > max_chars or first in _JSON_OPENERS or first.isspace():
                return False
        elif kind not in _PLAIN_SCALARS:
            return False
    return True


@functools.lru_cache(maxsize=1024)  # tool argument names repeat on every call
def _plain_key(key: str) -> bool:
    return _PLAIN_KEY.fullmatch(key) is not None and key not in FORBIDDEN_JS_NAMES


def cap_result(text: str, max_chars: int) -> str:
    """``text`` if it fits, else its head plus a marker saying how much was cut.

    The result is at most ``max_chars`` long whenever ``max_chars`` leaves room for the marker.
    """
    total = len(text)
    if total <= max_chars:
        return text
    # Size the marker for the worst case, so the real (possibly shorter) one still fits.
    room = max(0, max_chars - len(_marker(total, total)))
    return text[:room] + _marker(total - room, total)


def _marker(cut: int, total: int) -> str:
    return (
        f"\n[... truncated: {cut} of {total} characters cut; "
        "ask for a smaller part (a line range, a filter, a LIMIT) to see more]"
    )


# --------------------------------------------------------------------------- model identifiers

#: LM Studio identifiers are short; anything longer is a mistake or an attack.
MAX_MODEL_ID_CHARS = 256
MAX_MODEL_SEGMENT_CHARS = 96

_SEGMENT = r"(?=[^/:@]{1,96}(?:[/:@]|$))[A-Za-z0-9](?:[A-Za-z0-9_]|\.(?!\.)|-(?!-))*(?<![.-])"
_MODEL_ID = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,2}}(?:[:@][A-Za-z0-9._-]{{1,64}})?")


def validate_model_id(s: str) -> str:
    """Return ``s`` if it is a valid model identifier (SECURITY.md, "Model identifiers")."""
    if not isinstance(s, str) or not s.isascii() or len(s) > MAX_MODEL_ID_CHARS:
        raise refuse(
            "model.id",
            f"the model identifier must be ASCII and at most {MAX_MODEL_ID_CHARS} characters",
            value=s,
        )
    if not _MODEL_ID.fullmatch(s):
        raise refuse(
            "model.id",
            f"{s!r} is not a model identifier: use 1-3 segments like "
            "'publisher/model-name' (letters, digits, '.', '_', '-'; no '..' or '--'), "
            "optionally ':tag' or '@variant'",
            value=s,
        )
    return s
