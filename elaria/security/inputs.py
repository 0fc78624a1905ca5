"""The gate every tool call passes, whatever the tool: keys and lengths; and result caps.

:func:`check_tool_arguments` runs before dispatch for python tools and MCP tools alike, so
nothing polluting or oversized crosses into a Node process. :func:`cap_result` bounds what a tool
hands back to the model. Pure functions, any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elaria.security.keys import check_keys
from elaria.security.violations import refuse

__all__ = ["DEFAULT_MAX_ARGUMENT_CHARS", "cap_result", "check_tool_arguments"]

#: Default cap on any one argument string (matches ``agent.max_argument_chars``).
DEFAULT_MAX_ARGUMENT_CHARS = 10_000


def check_tool_arguments(
    arguments: Mapping[str, Any], *, max_chars: int = DEFAULT_MAX_ARGUMENT_CHARS
) -> None:
    """Refuse forbidden keys (:func:`check_keys`), deep nesting, or any string over ``max_chars``.

    Keys count as strings too. Raises:
        SecurityViolation: rules ``keys.*`` or ``length.argument``.
    """
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
