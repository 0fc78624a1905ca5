"""Sans-I/O history trimming: plain functions over wire messages and token counts.

Nothing here awaits, counts with a tokenizer or keeps state: :class:`ConversationHistory`
feeds these functions plain values and applies what they return, so the rules below are tested
without an event loop.

Rules:

* A **unit** is what must stay or go together. An assistant message that requests tool calls and
  the ``tool`` message(s) answering it form one unit, so trimming never leaves a tool result
  without its call, nor a call without its results. Every other message is a unit on its own.
* :func:`plan_trim` drops the **oldest** units first until the history fits both bounds. It never
  drops the newest unit (the model must see what it is answering) and keeps the latest ``user``
  message until everything between it and the newest unit is gone, so a long agent loop keeps
  its task in view while old tool exchanges fall away.
* Token counts are whatever the caller supplies; :func:`estimate_tokens` is the fallback of
  4 characters per token, plus a fixed per-message overhead for the chat template's role markers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "MESSAGE_OVERHEAD_TOKENS",
    "Message",
    "UnitCost",
    "estimate_text_tokens",
    "estimate_tokens",
    "group_units",
    "message_text",
    "plan_trim",
    "requests_tool_calls",
    "result_call_ids",
    "tool_call_ids",
]

#: A message in the LM Studio SDK's history wire format.
Message = Mapping[str, Any]

#: The usual rule of thumb for English text on BPE tokenizers; only used without a tokenizer.
CHARS_PER_TOKEN = 4
#: Role markers a chat template wraps around each message (start, role, newline, end).
MESSAGE_OVERHEAD_TOKENS = 4


#: ``json.dumps(ensure_ascii=False)``, built once: every tool call request is rendered.
_ARGUMENTS_ENCODER = json.JSONEncoder(ensure_ascii=False)


def tool_call_ids(message: Message) -> list[str]:
    """Ids of the tool calls an assistant message requests (``[]`` if none).

    A request without an id still counts: it gets a positional placeholder, so a message that
    requests tools is recognised as one even when the server sent no ids.
    """
    ids: list[str] = []
    for i, part in enumerate(_parts(message)):
        if part.get("type") == "toolCallRequest":
            request = part.get("toolCallRequest") or {}
            ids.append(str(request.get("id") or f"#{i}"))
    return ids


def requests_tool_calls(message: Message) -> bool:
    """``bool(tool_call_ids(message))``, without collecting the ids."""
    return any(part.get("type") == "toolCallRequest" for part in _parts(message))


def result_call_ids(message: Message) -> list[str]:
    """Ids of the tool calls a ``tool`` message answers."""
    return [
        str(part.get("toolCallId"))
        for part in _parts(message)
        if part.get("type") == "toolCallResult"
    ]


def message_text(message: Message) -> str:
    """The text a tokenizer should see for one message: role, text, tool calls and results."""
    pieces = [str(message.get("role", ""))]
    for part in _parts(message):
        kind = part.get("type")
        if kind == "text":
            pieces.append(str(part.get("text", "")))
        elif kind == "toolCallRequest":
            request = part.get("toolCallRequest") or {}
            arguments = _ARGUMENTS_ENCODER.encode(request.get("arguments") or {})
            pieces.append(f"{request.get('name', '')}({arguments})")
        elif kind == "toolCallResult":
            pieces.append(str(part.get("content", "")))
        elif kind == "file":
            pieces.append(str(part.get("name", "")))
    return "\n".join(pieces)


def estimate_tokens(message: Message) -> int:
    """Fallback count: ceil(chars / 4) plus the per-message template overhead."""
    return estimate_text_tokens(message_text(message))


def estimate_text_tokens(text: str) -> int:
    """:func:`estimate_tokens` of a message whose :func:`message_text` is ``text``."""
    return -(-len(text) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def group_units(messages: Iterable[Message]) -> list[list[Message]]:
    """Split messages into units (see the module docstring), in order.

    A ``tool`` message joins the unit before it when that unit requested tool calls; a ``tool``
    message with nothing to join (an orphan) stays a unit of its own so the caller can see it.
    """
    units: list[list[Message]] = []
    for message in messages:
        if (
            message.get("role") == "tool"
            and units
            and units[-1][0].get("role") == "assistant"
            and tool_call_ids(units[-1][0])
        ):
            units[-1].append(message)
        else:
            units.append([message])
    return units


@dataclass(frozen=True, slots=True)
class UnitCost:
    """What one unit weighs: its message count and token count."""

    messages: int
    tokens: int
    #: True when the unit is a ``user`` message (the request the model is working on).
    is_user: bool = False


def plan_trim(
    units: Sequence[UnitCost],
    *,
    max_messages: int,
    max_tokens: int,
    pinned_messages: int = 0,
    pinned_tokens: int = 0,
    total_messages: int | None = None,
    total_tokens: int | None = None,
) -> list[int]:
    """Indices of the units to drop (ascending) so the rest fits both bounds.

    ``pinned_*`` is what never goes (the system prompt). ``total_*`` may be passed when the
    caller keeps running sums, which makes a call cost O(units dropped) instead of O(units).
    If the newest unit alone exceeds a bound, everything else goes and it stays: the result is
    then over budget, and the caller reports it.
    """
    if total_messages is None:
        total_messages = sum(u.messages for u in units)
    if total_tokens is None:
        total_tokens = sum(u.tokens for u in units)
    messages = total_messages + pinned_messages
    tokens = total_tokens + pinned_tokens
    if (messages <= max_messages and tokens <= max_tokens) or len(units) <= 1:
        return []
    newest = len(units) - 1
    keep_user = _latest_user(units, newest)
    drops: list[int] = []
    for i in range(newest):
        if messages <= max_messages and tokens <= max_tokens:
            return drops
        if i == keep_user:
            continue
        drops.append(i)
        messages -= units[i].messages
        tokens -= units[i].tokens
    if keep_user is not None and (messages > max_messages or tokens > max_tokens):
        drops.append(keep_user)
        drops.sort()
    return drops


def _latest_user(units: Sequence[UnitCost], newest: int) -> int | None:
    for i in range(newest - 1, -1, -1):
        if units[i].is_user:
            return i
    return None


def _parts(message: Message) -> Sequence[Mapping[str, Any]]:
    """The message's parts, read-only (callers iterate; none may change what comes back)."""
    content = message.get("content")
    # Every message the agent loop makes is a list of plain dicts: no copy, no ABC checks.
    if type(content) is list and all(type(p) is dict for p in content):
        return content
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Sequence):
        return [p for p in content if isinstance(p, Mapping)]
    return []
