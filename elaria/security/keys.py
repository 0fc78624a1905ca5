"""``check_keys``: no key that could pollute a prototype or reach a Python dunder.

Arguments cross into Node MCP servers, which ``JSON.parse`` them and may merge them into objects;
a key ``__proto__`` (or ``constructor.prototype``) there rewrites every object of the process.
The check walks dicts and lists at any depth, looks inside string values that parse as a JSON
object or array, compares keys after decoding and after NFKC, and fails closed past
:data:`MAX_DEPTH`. Pure function, any thread.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from elaria.security.violations import Severity, refuse

__all__ = ["FORBIDDEN_JS_NAMES", "MAX_DEPTH", "check_keys"]

#: Names that reach an object's prototype when a JavaScript merge walks a key path.
FORBIDDEN_JS_NAMES = frozenset({"__proto__", "constructor", "prototype"})

#: JSON nesting deeper than any honest tool argument; deeper input is refused, not walked.
MAX_DEPTH = 64

#: Distinct keys whose verdict is remembered (documents repeat the same few keys), and the
#: longest key remembered, so the cache stays small whatever the input.
KEY_VERDICT_CACHE_SIZE = 4096
CACHED_KEY_CHARS = 128

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
    # Only containers are pushed; ``where`` is a (parent, step) chain rendered on refusal only.
    stack: list[tuple[Any, int, _Where]] = []
    _push(stack, value, 0, None, _ROOT)
    while stack:
        node, depth, where = stack.pop()
        if depth >= MAX_DEPTH:
            raise refuse(
                "keys.depth",
                f"arguments nest deeper than {MAX_DEPTH} levels at {_render(where)}; "
                "send a flatter structure",
            )
        if isinstance(node, Mapping):
            for key, child in node.items():
                text = key if isinstance(key, str) else str(key)
                problem = (
                    _key_problem_cached(text)
                    if len(text) <= CACHED_KEY_CHARS
                    else _key_problem(text)
                )
                if problem is not None:
                    rule, message, severity = problem
                    raise refuse(
                        rule,
                        f"key {text!r} at {_render(where)} {message}",
                        value=text,
                        severity=severity,
                    )
                _push(stack, child, depth + 1, where, text)
        else:
            for index, child in enumerate(node):
                _push(stack, child, depth + 1, where, index)


#: A path into the value as a chain of (parent, step); a str step is a key, an int an index.
_Where = tuple[Any, object] | None
_ROOT = object()
_EMBEDDED = object()
_CONTAINERS = (dict, list, tuple)
_SCALARS = (int, float, bool, type(None))


def _push(
    stack: list[tuple[Any, int, _Where]], node: Any, depth: int, parent: _Where, step: object
) -> None:
    kind = type(node)
    if kind in _SCALARS:
        return
    if kind is str or (kind not in _CONTAINERS and isinstance(node, str)):
        # A Node server would JSON.parse this string: its keys count too.
        looks_like_json = node[:1] in _JSON_START or (
            node[:1].isspace() and node.lstrip()[:1] in _JSON_START
        )
        parsed = _embedded_json(node, (parent, step)) if looks_like_json else None
        if isinstance(parsed, dict | list):
            stack.append((parsed, depth, ((parent, step), _EMBEDDED)))
    elif kind in _CONTAINERS or isinstance(node, Mapping | list | tuple):
        stack.append((node, depth, (parent, step)))


def _render(where: _Where) -> str:
    steps: list[str] = []
    while where is not None:
        where, step = where
        if step is _ROOT:
            steps.append("$")
        elif step is _EMBEDDED:
            steps.append("<json>")
        elif isinstance(step, int):
            steps.append(f"[{step}]")
        else:
            steps.append(f".{str(step)[:40]}")
    return "".join(reversed(steps))


def _embedded_json(text: str, where: _Where) -> Any:
    """The value ``text`` holds as JSON, or None if it is not JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise refuse(
            "keys.depth",
            f"a JSON string at {_render(where)} nests too deeply to check; "
            "send a flatter structure",
        ) from None
    except ValueError:
        return None


def _key_problem(key: str) -> tuple[str, str, Severity] | None:
    """(rule, what is wrong and what to do, severity) for a forbidden key, else None."""
    for ch in key:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            return (
                "keys.control",
                f"contains a control or invisible character (U+{ord(ch):04X}); "
                "use plain printable key names",
                "medium",
            )
    for form in {key, unicodedata.normalize("NFKC", key)}:
        if form in FORBIDDEN_JS_NAMES or not FORBIDDEN_JS_NAMES.isdisjoint(
            _SEGMENT_SPLIT.split(form)
        ):
            return (
                "keys.prototype",
                "names a JavaScript prototype property (__proto__, constructor, prototype); "
                "rename the key",
                "high",
            )
        if _DUNDER.fullmatch(form):
            return "keys.dunder", "is a Python dunder name; rename the key", "high"
    return None


_key_problem_cached = functools.lru_cache(maxsize=KEY_VERDICT_CACHE_SIZE)(_key_problem)
