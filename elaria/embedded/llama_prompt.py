"""Prompt, grammar and answer decoding for the llama.cpp engine: plain values, no model, no I/O.

* :func:`render_prompt` turns LM Studio wire history (system/user/assistant/tool messages with
  content parts, ``toolCallRequest`` and ``toolCallResult`` parts) into Gemma's chat format
  (``<start_of_turn>user … <end_of_turn>``, ``<start_of_turn>model``). Gemma has no system or
  tool role: system text and the tool list open the first user turn, tool results come back as a
  user turn of ``tool: <result>`` lines. The result is a list of :class:`Segment` so the engine
  tokenizes the markup as special tokens and the *content* as plain text: a user who types
  ``<end_of_turn>`` gets those characters, not a turn boundary. ``"".join`` of the segments is
  exactly the text the model sees.
* :func:`tool_choice_schema` is the JSON schema the tool round is generated under: either
  ``{"answer": "<text>"}`` or ``{"tool": "<one offered name>", "arguments": {...that tool's
  parameters...}}``. When tools are offered, earlier assistant turns are rendered in that same
  JSON, so the model sees its own format in the history, and a call's arguments that equal their
  schema default are left out (:func:`without_defaults`): the client records calls with their
  defaults filled in, and a small model copies whatever it sees into its next call.
* :class:`AnswerStreamer` decodes the ``answer`` string while it is being generated, so a final
  answer streams token by token instead of arriving at the end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOS",
    "END_OF_TURN",
    "AnswerStreamer",
    "OfferedTool",
    "RepeatGuard",
    "Segment",
    "answer_only_schema",
    "call_json",
    "canonical_call",
    "inline_refs",
    "offered_tools",
    "previous_calls",
    "render_prompt",
    "tool_choice_schema",
    "without_defaults",
]

BOS = "<bos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

TOOL_INSTRUCTIONS = (
    'Reply with JSON only: {"tool": name, "arguments": {...}} to call a tool, '
    'or {"answer": text} to answer.'
)


@dataclass(frozen=True)
class Segment:
    """A piece of the prompt; ``special`` pieces are chat markup, tokenized as control tokens."""

    text: str
    special: bool = False


@dataclass(frozen=True)
class OfferedTool:
    name: str
    description: str
    parameters: Mapping[str, Any]


def offered_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[OfferedTool]:
    """Tools from the wire (``{"type": "function", "function": {...}}`` or the bare function)."""
    found: list[OfferedTool] = []
    for tool in tools or ():
        fn = tool.get("function", tool)
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name:
            continue
        params = fn.get("parameters")
        if not isinstance(params, Mapping):
            params = {"type": "object", "properties": {}}
        found.append(OfferedTool(name, str(fn.get("description") or ""), params))
    return found


def _signature(tool: OfferedTool) -> str:
    props = tool.parameters.get("properties")
    required = set(tool.parameters.get("required") or ())
    args = []
    if isinstance(props, Mapping):
        for key, schema in props.items():
            kind = schema.get("type", "any") if isinstance(schema, Mapping) else "any"
            if isinstance(kind, list):
                kind = "|".join(str(k) for k in kind)
            args.append(f"{key}{'' if key in required else '?'}: {kind}")
    text = f"{tool.name}({', '.join(args)})"
    return f"{text}: {tool.description}" if tool.description else text


def tools_block(tools: Sequence[OfferedTool]) -> str:
    lines = ["Tools:", *(f"- {_signature(t)}" for t in tools), TOOL_INSTRUCTIONS]
    return "\n".join(lines)


#: Deeper ``$ref`` nesting than this is treated as recursive (no finite grammar inlines it).
MAX_REF_DEPTH = 16


def inline_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with local ``#/$defs/…`` / ``#/definitions/…`` references replaced by their
    targets, so it can be nested inside the tool-choice schema. Raises ``ValueError`` for a
    recursive or unresolvable reference."""
    defs = {**dict(schema.get("definitions") or {}), **dict(schema.get("$defs") or {})}

    def walk(node: Any, depth: int) -> Any:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
                    raise ValueError(f"cannot resolve $ref {ref!r}")
                if depth >= MAX_REF_DEPTH:
                    raise ValueError(f"$ref {ref!r} is recursive")
                return walk(defs[name], depth + 1)
            return {k: walk(v, depth) for k, v in node.items() if k not in ("$defs", "definitions")}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        return node

    result: dict[str, Any] = walk(schema, 0)
    return result


def tool_choice_schema(
    tools: Sequence[OfferedTool], argument_schemas: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Answer or exactly one call; ``argument_schemas`` overrides a tool's parameters schema
    (the engine passes a generic object where a tool's own schema cannot become a grammar)."""
    overrides = argument_schemas or {}
    alternatives: list[dict[str, Any]] = [_answer_schema()]
    for tool in tools:
        alternatives.append(
            {
                "type": "object",
                "properties": {
                    "tool": {"const": tool.name},
                    "arguments": dict(overrides.get(tool.name) or inline_refs(tool.parameters)),
                },
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    return {"oneOf": alternatives}


def _answer_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def answer_only_schema() -> dict[str, Any]:
    return _answer_schema()


def call_json(name: str, arguments: Any) -> str:
    return json.dumps({"tool": name, "arguments": arguments}, ensure_ascii=False)


def _text_of(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    texts: list[str] = []
    for part in parts or ():
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "file":
            texts.append(f"[file: {part.get('name', 'unnamed')}]")
    return "\n".join(t for t in texts if t)


def _calls_of(parts: Any) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    for part in parts if isinstance(parts, list | tuple) else ():
        if isinstance(part, Mapping) and part.get("type") == "toolCallRequest":
            req = part.get("toolCallRequest") or {}
            calls.append((str(req.get("name", "")), req.get("arguments") or {}))
    return calls


def _results_of(parts: Any) -> list[str]:
    if isinstance(parts, str):
        return [parts]
    results: list[str] = []
    for part in parts or ():
        if isinstance(part, Mapping) and part.get("type") == "toolCallResult":
            results.append(str(part.get("content", "")))
        elif isinstance(part, Mapping) and part.get("type") == "text":
            results.append(str(part.get("text", "")))
    return results


def _defaults(tool: OfferedTool | None) -> dict[str, Any]:
    props = tool.parameters.get("properties") if tool is not None else None
    if not isinstance(props, Mapping):
        return {}
    return {
        key: schema["default"]
        for key, schema in props.items()
        if isinstance(schema, Mapping) and "default" in schema
    }


def _property_key(key: str, defaults: Mapping[str, Any]) -> str:
    """``key`` as the schema spells it: a client may have camelCased a snake_case name."""
    if key in defaults:
        return key
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)
    return snake if snake in defaults else key


def without_defaults(arguments: Any, tool: OfferedTool | None) -> Any:
    """``arguments`` without the ones equal to their schema default: how the model writes a
    call, so a history where the client filled the defaults in does not teach it to spell them
    all out (a small model then copies the filled-in values, e.g. a line range, into new calls)."""
    defaults = _defaults(tool)
    if not isinstance(arguments, Mapping) or not defaults:
        return arguments
    return {
        key: value
        for key, value in arguments.items()
        if (prop := _property_key(key, defaults)) not in defaults or defaults[prop] != value
    }


def canonical_call(name: str, arguments: Any, tool: OfferedTool | None = None) -> str:
    """One spelling per call, whatever the key order and whether defaults were spelled out (for
    the engine's loop guard)."""
    return json.dumps(
        {"tool": name, "arguments": without_defaults(arguments, tool)}, sort_keys=True
    )


def previous_calls(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[OfferedTool] = ()
) -> set[str]:
    """:func:`canonical_call` of every call already made in the history."""
    by_name = {t.name: t for t in tools}
    return {
        canonical_call(name, args, by_name.get(name))
        for msg in messages
        if msg.get("role") == "assistant"
        for name, args in _calls_of(msg.get("content"))
    }


def render_prompt(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[OfferedTool] = ()
) -> list[Segment]:
    """The whole prompt, ending with an open model turn."""
    system = "\n\n".join(
        t for m in messages if m.get("role") == "system" if (t := _text_of(m.get("content")))
    )
    preamble = "\n\n".join(x for x in (system, tools_block(tools) if tools else "") if x)
    segments: list[Segment] = [Segment(BOS, special=True)]
    by_name = {t.name: t for t in tools}

    def turn(role: str, text: str) -> None:
        segments.append(Segment(f"{START_OF_TURN}{role}\n", special=True))
        segments.append(Segment(text))
        segments.append(Segment(END_OF_TURN, special=True))
        segments.append(Segment("\n"))

    for msg in messages:
        role, content = msg.get("role"), msg.get("content")
        if role == "system":
            continue
        if role == "assistant":
            text = _text_of(content)
            lines = []
            if text:
                lines.append(json.dumps({"answer": text}, ensure_ascii=False) if tools else text)
            lines += [
                call_json(name, without_defaults(args, by_name.get(name)))
                for name, args in _calls_of(content)
            ]
            turn("model", "\n".join(lines))
            continue
        if role == "tool":
            body = "\n".join(f"tool: {r}" for r in _results_of(content))
        else:
            body = _text_of(content)
        if preamble:
            body, preamble = f"{preamble}\n\n{body}", ""
        turn("user", body)
    if preamble:  # a history with no user turn still shows the system prompt and tools
        turn("user", preamble)
    segments.append(Segment(f"{START_OF_TURN}model\n", special=True))
    return segments


#: A line or sentence at least this long, started again word for word, is a base model going round
#: in circles.
REPEAT_MIN_CHARS = 24
#: Where a new line or sentence starts.
_UNIT_BREAK = re.compile(r"\n|(?<=[.!?]) ")


class RepeatGuard:
    """Ends an answer that starts repeating itself, before the repeat reaches the reader.

    ``feed(text)`` takes decoded answer text and returns what may be shown now. A new line or
    sentence is held back while it could be the start of an earlier one of at least
    :data:`REPEAT_MIN_CHARS` characters; once :data:`REPEAT_MIN_CHARS` of it match one, the
    answer is over (``stopped``) and the repeat is dropped. One that differs is released at
    once. ``flush()`` releases what is held when the answer ends on its own."""

    def __init__(self, min_chars: int = REPEAT_MIN_CHARS) -> None:
        self.min_chars = min_chars
        self.stopped = False
        self._shown = ""
        self._held = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self._held += text
        out: list[str] = []
        while self._held:
            before = (self._shown + "".join(out))[-1:]  # a break may follow a shown "."
            found = _UNIT_BREAK.search(before + self._held, len(before))
            start = found.start() - len(before) if found else len(self._held)
            if start > 0:  # inside a line or sentence: release up to its end
                out.append(self._held[:start])
                self._held = self._held[start:]
                continue
            body = self._held.lstrip(" \n")
            if not body:
                break  # only the break so far
            unit_end = _UNIT_BREAK.search(body)
            unit = body[: unit_end.start()] if unit_end else body
            earlier = [
                x.strip()
                for x in _UNIT_BREAK.split(self._shown + "".join(out))
                if len(x.strip()) >= self.min_chars
            ]
            if len(unit) >= self.min_chars and any(
                x.startswith(unit[: self.min_chars]) for x in earlier
            ):
                self.stopped, self._held = True, ""
                break
            if unit_end is None and any(x.startswith(unit) for x in earlier):
                break  # could still become a repeat: wait for more
            lead = len(self._held) - len(body)
            out.append(self._held[: lead + len(unit)])
            self._held = self._held[lead + len(unit) :]
        shown = "".join(out)
        self._shown += shown
        return shown

    def flush(self) -> str:
        held, self._held = ("" if self.stopped else self._held), ""
        self._shown += held
        return held


_ANSWER_OPENING = re.compile(r'\s*\{\s*"answer"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class AnswerStreamer:
    """Feeds on generated JSON text; hands out the decoded ``answer`` string as it grows.

    ``feed(text)`` returns the newly decoded answer characters (empty while the JSON is still in
    its opening, inside an escape, or when the output turns out to be a tool call).
    ``is_answer`` is ``True`` once the opening ``{"answer": "`` has been seen; ``closed`` once
    the closing quote has."""

    def __init__(self) -> None:
        self.raw = ""
        self.is_answer = False
        self.closed = False
        self._pos = 0  # index in ``raw`` of the first undecoded answer character

    def feed(self, text: str) -> str:
        self.raw += text
        if not self.is_answer:
            match = _ANSWER_OPENING.match(self.raw)
            if match is None:
                return ""
            self.is_answer = True
            self._pos = match.end()
        out: list[str] = []
        raw, pos = self.raw, self._pos
        while pos < len(raw) and not self.closed:
            ch = raw[pos]
            if ch == '"':
                self.closed = True
                pos += 1
            elif ch != "\\":
                out.append(ch)
                pos += 1
            elif pos + 1 >= len(raw):
                break  # an escape split across tokens: wait for the rest
            elif raw[pos + 1] == "u":
                code = _hex4(raw, pos + 2)
                if code is None:
                    break
                if 0xD800 <= code < 0xDC00:  # a surrogate pair: decode both halves together
                    if len(raw) < pos + 12:
                        break
                    low = _hex4(raw, pos + 8) if raw[pos + 6 : pos + 8] == "\\u" else None
                    if low is not None and 0xDC00 <= low < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        pos += 6
                    else:
                        code = 0xFFFD
                elif 0xDC00 <= code < 0xE000:  # a low half on its own encodes nothing
                    code = 0xFFFD
                out.append(chr(code))
                pos += 6
            else:
                out.append(_ESCAPES.get(raw[pos + 1], raw[pos + 1]))
                pos += 2
        self._pos = pos
        return "".join(out)


def _hex4(raw: str, start: int) -> int | None:
    digits = raw[start : start + 4]
    if len(digits) < 4:
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return 0xFFFD
