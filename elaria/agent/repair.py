"""Cheap repairs of tool calls that local models get almost right.

Sans-I/O: plain strings in, plain values out; no event loop, no clock.

Local models often emit a tool call the server cannot parse (LM Studio reports
``toolCallGenerationFailed`` with the raw text) or leak it into the answer text. Before asking the
model again we try, in order:

* ``<tool_call>{...}</tool_call>`` (Qwen/Hermes style; the closing tag may be missing);
* ``<function=name><parameter=x>value</parameter></function>`` (Qwen3-coder style);
* JSON in a code fence or bare, with the usual damage mended: single quotes, trailing commas,
  Python's ``True``/``False``/``None``, unclosed strings, braces and brackets;
* Python call syntax ``name(a=1, b="x")`` (literals only; nothing is evaluated).

A repair is accepted **only if the result passes the tool's schema** (:meth:`Tool.validate`).
Otherwise :func:`repair_call` raises the :class:`~elaria.errors.ToolError` that says exactly what
was wrong, which the loop hands back to the model as the tool result.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from elaria.agent.tools import Tool, ToolRegistry
from elaria.errors import ToolArgumentsError, ToolCallMalformed, ToolError, UnknownToolError

__all__ = [
    "Candidate",
    "Repaired",
    "candidates",
    "loads_lenient",
    "looks_like_text_call",
    "repair_arguments",
    "repair_call",
]

#: Raw text longer than this is not worth repairing: it is an answer, not a call.
MAX_REPAIR_CHARS = 100_000

_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FUNCTION_RE = re.compile(r"<function=([^>\s]+)>\s*(.*?)\s*(?:</function>|$)", re.DOTALL)
_PARAMETER_RE = re.compile(
    r"<parameter=([^>\s]+)>\s*(.*?)\s*(?:</parameter>|(?=<parameter=)|$)", re.DOTALL
)
_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*\s*(.*?)\s*(?:```|$)", re.DOTALL)
_PY_CALL_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)\s*\(.*\)\s*$", re.DOTALL)
_TEXT_CALL_MARKERS = ("<tool_call>", "<function=")

_FORMAT_HINT = (
    'Call the tool with a JSON object: {"name": "<tool>", "arguments": {<argument>: <value>}}.'
)


@dataclass(frozen=True)
class Candidate:
    """One way of reading the raw text as a call."""

    name: str | None
    arguments: Any
    method: str


@dataclass(frozen=True)
class Repaired:
    """A repaired call that passed its tool's schema."""

    name: str
    arguments: dict[str, Any]
    method: str


def looks_like_text_call(text: str) -> bool:
    """True when answer text carries an explicit tool-call marker (a call leaked into text)."""
    return any(marker in text for marker in _TEXT_CALL_MARKERS)


def repair_call(
    raw: str | None,
    registry: ToolRegistry,
    *,
    name_hint: str | None = None,
    error: str | None = None,
) -> Repaired:
    """Turn ``raw`` into a schema-valid call, or raise the ToolError that explains why not.

    ``name_hint`` is the tool name when the server got that far; ``error`` is the server's own
    parse error, quoted back to the model when nothing can be repaired.
    """
    if not raw or not raw.strip():
        raise ToolCallMalformed(
            f"your tool call could not be parsed{_quoted(error)} and no text of it was kept",
            raw=raw,
            hint=_FORMAT_HINT + _available(registry),
        )
    if len(raw) > MAX_REPAIR_CHARS:
        raise ToolCallMalformed(
            f"your tool call is {len(raw)} characters long, too long to be a call",
            raw=raw[:200],
            hint=_FORMAT_HINT,
        )
    problems: list[ToolError] = []
    for cand in candidates(raw, name_hint=name_hint):
        name = cand.name or name_hint
        if name is None:
            continue
        if name not in registry:
            problems.append(
                UnknownToolError(
                    f"there is no tool named {name!r}",
                    tool=name,
                    hint=_available(registry).strip(),
                )
            )
            continue
        tool = registry.get(name)
        try:
            args = _bind_positional(tool, _coerce_arguments(cand.arguments))
            return Repaired(name=tool.name, arguments=tool.validate(args), method=cand.method)
        except ToolError as exc:
            problems.append(exc)
    if problems:
        # The first reading is the most literal one; its complaint is the most useful.
        raise problems[0]
    raise ToolCallMalformed(
        f"your tool call could not be parsed{_quoted(error)}: {_snippet(raw)}",
        tool=name_hint,
        raw=raw,
        hint=_FORMAT_HINT + _available(registry),
    )


def repair_arguments(tool: Tool, arguments: Any) -> dict[str, Any]:
    """Validate ``arguments``; mend two common slips first if they fail: JSON text instead of
    an object (parsed leniently), and argument names in another case style (``startLine`` for
    ``start_line``).

    Raises :class:`ToolArgumentsError` with the schema's complaint when nothing fits.
    """
    try:
        return tool.validate(arguments if arguments is not None else {})
    except ToolArgumentsError as first:
        parsed: Any = arguments
        if isinstance(arguments, str):
            try:
                parsed = loads_lenient(arguments)
            except ValueError:
                raise first from None
        if not isinstance(parsed, Mapping):
            raise first from None
        renamed = _match_argument_names(tool, parsed)
        if renamed == parsed and parsed is arguments:
            raise
        try:
            return tool.validate(renamed)
        except ToolArgumentsError:
            raise first from None


def _match_argument_names(tool: Tool, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``startLine`` for ``start_line`` and back: names that differ only in case style."""
    known = set((tool.parameters.get("properties") or {}).keys())
    by_key = {_name_key(name): name for name in known}
    fixed: dict[str, Any] = {}
    for name, value in arguments.items():
        target = name if name in known else by_key.get(_name_key(name), name)
        fixed.setdefault(target, value)
    return fixed


def _name_key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def candidates(raw: str, *, name_hint: str | None = None) -> Iterator[Candidate]:
    """Every plausible reading of ``raw``, most specific first."""
    text = raw.strip()
    for m in _TOOL_CALL_RE.finditer(text):
        yield from _from_json_text(m.group(1), "xml_tool_call", name_hint)
    for m in _FUNCTION_RE.finditer(text):
        name, body = m.group(1), m.group(2)
        params = {p.group(1): _scalar(p.group(2)) for p in _PARAMETER_RE.finditer(body)}
        if params or not body:
            yield Candidate(name, params, "function_tags")
        else:
            for c in _from_json_text(body, "function_tags", name):
                yield Candidate(name, c.arguments, "function_tags")
    for m in _FENCE_RE.finditer(text):
        yield from _from_json_text(m.group(1), "json", name_hint)
    start = text.find("{")
    if start >= 0:
        yield from _from_json_text(text[start:], "json", name_hint)
    call = _python_call(text)
    if call is not None:
        yield call


# ------------------------------------------------------------------------------- JSON mending


def loads_lenient(text: str) -> Any:
    """``json.loads`` that mends what small models break; ValueError when it cannot."""
    text = text.strip()
    fence = _FENCE_RE.match(text)
    if fence:
        text = fence.group(1)
    try:
        return json.loads(text)
    except ValueError:
        pass
    mended = _mend(text)
    try:
        return json.loads(mended)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError(f"not JSON, even after repair: {_snippet(text)}") from None
    return value


def _mend(text: str) -> str:
    """One pass over ``text``: requote strings, drop trailing commas, close what is open."""
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                # \' is valid in a single-quoted string but not in JSON.
                out.append("'" if nxt == "'" else ch + nxt)
                i += 2
                continue
            if ch == quote:
                out.append('"')
                quote = None
            elif ch == '"':
                out.append('\\"')
            elif ch == "\n":
                out.append("\\n")
            else:
                out.append(ch)
            i += 1
            continue
        if ch in "\"'":
            quote = ch
            out.append('"')
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            out.append(ch)
        elif ch in "}]":
            _drop_trailing_comma(out)
            if stack:
                stack.pop()
            out.append(ch)
        elif text.startswith(("True", "False", "None"), i) and not _ident_before(out):
            word = next(w for w in ("True", "False", "None") if text.startswith(w, i))
            out.append({"True": "true", "False": "false", "None": "null"}[word])
            i += len(word)
            continue
        else:
            out.append(ch)
        i += 1
    if quote is not None:
        out.append('"')
    _drop_trailing_comma(out)
    if "".join(out).rstrip().endswith(":"):
        out.append("null")  # cut off right after a key: the value never came
    out.extend(reversed(stack))
    return "".join(out)


def _drop_trailing_comma(out: list[str]) -> None:
    j = len(out) - 1
    while j >= 0 and out[j].isspace():
        j -= 1
    if j >= 0 and out[j] == ",":
        del out[j]


def _ident_before(out: list[str]) -> bool:
    return bool(out) and (out[-1].isalnum() or out[-1] == "_")


# ------------------------------------------------------------------------------- shapes


def _from_json_text(text: str, method: str, name_hint: str | None) -> Iterator[Candidate]:
    try:
        value = loads_lenient(text)
    except ValueError:
        return
    yield from _from_value(value, method, name_hint)


def _from_value(value: Any, method: str, name_hint: str | None) -> Iterator[Candidate]:
    if isinstance(value, list):
        for item in value:
            yield from _from_value(item, method, name_hint)
        return
    if not isinstance(value, Mapping):
        return
    inner = value.get("function")
    if isinstance(inner, Mapping) and "name" in inner:
        value = inner
    name = value.get("name") or value.get("tool") or value.get("tool_name")
    if isinstance(name, str):
        for key in ("arguments", "parameters", "args", "input"):
            if key in value:
                yield Candidate(name, value[key], method)
                return
        rest = {k: v for k, v in value.items() if k not in ("name", "tool", "tool_name", "type")}
        yield Candidate(name, rest, method)
    elif name_hint is not None:
        # The server knew the name; the text is the arguments alone.
        yield Candidate(name_hint, dict(value), method)


def _coerce_arguments(arguments: Any) -> Any:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        try:
            return loads_lenient(arguments)
        except ValueError:
            return arguments
    return arguments


def _scalar(text: str) -> Any:
    """A ``<parameter>`` body: JSON when it parses as JSON, otherwise the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _python_call(text: str) -> Candidate | None:
    if not _PY_CALL_RE.match(text):
        return None
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not isinstance(node, ast.Call):
        return None
    name = _dotted(node.func)
    if name is None:
        return None
    try:
        args: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                return None
            args[kw.arg] = ast.literal_eval(kw.value)
        positional = [ast.literal_eval(a) for a in node.args]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if positional:
        args["__positional__"] = positional
    return Candidate(name, _PositionalArgs(args), "python_call")


class _PositionalArgs(dict[str, Any]):
    """Python-call arguments; positional ones are mapped onto the schema's order on coercion."""


def _bind_positional(tool: Tool, arguments: Any) -> Any:
    if not isinstance(arguments, _PositionalArgs) or "__positional__" not in arguments:
        return dict(arguments) if isinstance(arguments, _PositionalArgs) else arguments
    bound = {k: v for k, v in arguments.items() if k != "__positional__"}
    names = [n for n in (tool.parameters.get("properties") or {}) if n not in bound]
    positional = arguments["__positional__"]
    if len(positional) > len(names):
        raise ToolArgumentsError(
            f"{len(positional)} positional arguments given but the tool takes "
            f"{len(names) + len(bound)}",
            tool=tool.name,
            hint="Pass arguments by name.",
        )
    bound.update(zip(names, positional, strict=False))
    return bound


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


# ------------------------------------------------------------------------------- text


def _available(registry: ToolRegistry) -> str:
    return f" Available tools: {', '.join(registry.names()) or 'none'}."


def _quoted(error: str | None) -> str:
    return f" ({error})" if error else ""


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")
