"""``check_keys``: no key that could pollute a prototype or reach a Python dunder.

Arguments cross into Node MCP servers, which ``JSON.parse`` them and may merge them into objects;
a key ``__proto__`` (or ``constructor.prototype``) there rewrites every object of the process.
The check walks dicts and lists at any depth, looks inside string values that parse as a JSON
object or array, compares keys after decoding and after NFKC, and fails closed past
:data:`MAX_DEPTH`. Pure function, any thread.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from elaria.security.violations import refuse

__all__ = ["FORBIDDEN_JS_NAMES", "MAX_DEPTH", "check_keys"]

#: Names that reach an object's prototype when a JavaScript merge walks a key path.
FORBIDDEN_JS_NAMES = frozenset({"__proto__", "constructor", "prototype"})

#: JSON nesting deeper than any honest tool argument; deeper input is refused, not walked.
MAX_DEPTH = 64

_DUNDER = re.compile(r"__[A-Za-z0-9_]+__")
_SEGMENT_SPLIT = re.compile(r"[.\[\]]")
_JSON_START = ("{", "[")


def check_keys(value: Any) -> None:
    """Refuse ``value`` if any key at any depth is forbidden (see module docstring).

    Raises:
        SecurityViolation: rule ``keys.prototype``, ``keys.dunder``, ``keys.control`` or
            ``keys.depth``.
    """
    # An explicit stack instead of recursion: the depth limit is ours, not the interpreter's.
    stack: list[tuple[Any, int, str]] = [(value, 0, "$")]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            parsed = _embedded_json(node, depth, where)
            if parsed is not None:
                stack.append((parsed, depth + 1, where + "<json>"))
            continue
        if not isinstance(node, Mapping | list | tuple):
            continue
        if depth >= MAX_DEPTH:
            raise refuse(
                "keys.depth",
                f"arguments nest deeper than {MAX_DEPTH} levels at {where}; "
                "send a flatter structure",
                severity="medium",
            )
        if isinstance(node, Mapping):
            for key, child in node.items():
                text = key if isinstance(key, str) else str(key)
                _check_key(text, where)
                stack.append((child, depth + 1, f"{where}.{text[:40]}"))
        else:
            for index, child in enumerate(node):
                stack.append((child, depth + 1, f"{where}[{index}]"))


def _embedded_json(text: str, depth: int, where: str) -> Any:
    """The JSON object or array ``text`` holds, or None (a Node server would parse it too)."""
    stripped = text.lstrip()
    if not stripped.startswith(_JSON_START):
        return None
    try:
        return json.loads(stripped)
    except RecursionError:
        raise refuse(
            "keys.depth",
            f"a JSON string at {where} nests too deeply to check; send a flatter structure",
        ) from None
    except ValueError:
        return None


def _check_key(key: str, where: str) -> None:
    for ch in key:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs"):
            raise refuse(
                "keys.control",
                f"key {key!r} at {where} contains a control or invisible character "
                f"(U+{ord(ch):04X}); use plain printable key names",
                value=key,
            )
    forms = {key, unicodedata.normalize("NFKC", key)}
    for form in forms:
        if form in FORBIDDEN_JS_NAMES or not FORBIDDEN_JS_NAMES.isdisjoint(
            _SEGMENT_SPLIT.split(form)
        ):
            raise refuse(
                "keys.prototype",
                f"key {key!r} at {where} names a JavaScript prototype property "
                "(__proto__, constructor, prototype); rename the key",
                value=key,
                severity="high",
            )
        if _DUNDER.fullmatch(form):
            raise refuse(
                "keys.dunder",
                f"key {key!r} at {where} is a Python dunder name; rename the key",
                value=key,
                severity="high",
            )
