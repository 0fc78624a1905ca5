"""Tools and the tool registry: one shape for Python functions and MCP tools alike.

A :class:`Tool` is a name, a description, a JSON schema for its arguments, and an async
``handler`` that receives arguments that already passed the schema. ``arg_kinds`` tells the guard
pipeline which arguments need a domain validator (``"path"``, ``"sql"``, ``"shell"``, ``"url"``).

* :meth:`Tool.from_function` builds a tool from a typed Python function: type hints become the
  schema (through pydantic), the docstring's first paragraph the description and its
  ``Args:`` section the per-argument descriptions. Sync functions run in a worker thread.
* :meth:`Tool.validate` checks arguments against the schema and returns the coerced arguments,
  or raises :class:`~elaria.errors.ToolArgumentsError` with a message the model can act on.

Loop confinement: a registry is mutated only from the event loop that runs the agent. Handlers
may be called concurrently; a tool that is not safe for that must serialise itself.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from elaria.errors import ToolArgumentsError, UnknownToolError

__all__ = ["ArgKind", "Tool", "ToolRegistry", "tool"]

ArgKind = Literal["path", "sql", "shell", "url"]
Handler = Callable[[dict[str, Any]], Awaitable[Any]]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class Tool:
    """A callable the model may ask for."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: Handler
    source: str = "python"
    arg_kinds: Mapping[str, ArgKind] = field(default_factory=dict)
    cacheable: bool = False
    timeout: float | None = None
    #: The approval mode its source asks for (an MCP server's ``approval`` config): used when
    #: the operator's ``agent.approval`` does not name this tool exactly; see
    #: :meth:`~elaria.agent.approval.ApprovalPolicy.mode`.
    approval: Literal["auto", "ask", "deny"] | None = None
    _model: type[BaseModel] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} must match {_NAME_RE.pattern} (letters, digits, _ . -)"
            )

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        arg_kinds: Mapping[str, ArgKind] | None = None,
        cacheable: bool = False,
        timeout: float | None = None,
    ) -> Tool:
        """Build a tool from a typed function (sync or async)."""
        tool_name = name or fn.__name__
        doc = inspect.getdoc(fn) or ""
        summary, arg_docs = _parse_docstring(doc)
        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {tool_name}: *args/**kwargs cannot become a schema")
            annotation = hints.get(pname, Any)
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (annotation, Field(default, description=arg_docs.get(pname)))
        model = create_model(
            f"{tool_name.replace('.', '_').replace('-', '_')}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        schema = _clean_schema(model.model_json_schema())
        is_async = inspect.iscoroutinefunction(fn)

        async def handler(arguments: dict[str, Any]) -> Any:
            if is_async:
                return await fn(**arguments)
            return await asyncio.to_thread(fn, **arguments)

        return cls(
            name=tool_name,
            description=description or summary or tool_name,
            parameters=schema,
            handler=handler,
            arg_kinds=dict(arg_kinds or {}),
            cacheable=cacheable,
            timeout=timeout,
            _model=model,
        )

    # ---------------------------------------------------------------- use

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``arguments`` against the schema; return them coerced, or explain the problem."""
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                f"arguments must be a JSON object, got {type(arguments).__name__}",
                tool=self.name,
                hint=f"Send an object matching: {_schema_summary(self.parameters)}",
            )
        if self._model is not None:
            try:
                parsed = self._model.model_validate(dict(arguments))
            except ValidationError as exc:
                raise ToolArgumentsError(
                    _explain_pydantic(exc),
                    tool=self.name,
                    hint=f"Expected arguments: {_schema_summary(self.parameters)}",
                ) from exc
            # A model with ``extra="forbid"`` holds exactly its fields in ``__dict__``, in field
            # order; reading them one by one (through the ``model_fields`` property) cost more.
            return dict(parsed.__dict__)
        validator = self._json_validator()
        if validator is None:
            # A server published a broken schema; the server, not the model, is at fault.
            return dict(arguments)
        try:
            validator.validate(dict(arguments))
        except jsonschema.ValidationError as exc:
            path = "".join(f"[{p!r}]" for p in exc.absolute_path) or "(top level)"
            raise ToolArgumentsError(
                f"argument {path}: {exc.message}",
                tool=self.name,
                hint=f"Expected arguments: {_schema_summary(self.parameters)}",
            ) from exc
        return dict(arguments)

    def _json_validator(self) -> Any:
        """The compiled validator for ``parameters``, built once per schema (it costs ~ms)."""
        return _compiled_validator(_schema_key(self.parameters))

    async def invoke(self, arguments: Mapping[str, Any]) -> Any:
        """Validate and run. Guards (keys, paths, approval) are the caller's job."""
        return await self.handler(self.validate(arguments))

    def lmstudio_schema(self) -> dict[str, Any]:
        """The shape LM Studio expects in ``llm.prediction.tools``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


def tool(
    *,
    name: str | None = None,
    arg_kinds: Mapping[str, ArgKind] | None = None,
    cacheable: bool = False,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a function as a tool; ``ToolRegistry.add_function`` reads the options."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__elaria_tool__ = {  # type: ignore[attr-defined]
            "name": name,
            "arg_kinds": dict(arg_kinds or {}),
            "cacheable": cacheable,
            "timeout": timeout,
        }
        return fn

    return mark


class ToolRegistry:
    """Tools by name. Names collide only across sources; then the later one is namespaced."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        #: ``lmstudio_schemas()`` as of the last change (every round asks; tools rarely change).
        self._schemas: tuple[dict[str, Any], ...] | None = None
        for t in tools:
            self.add(t)

    def add(self, new: Tool, *, namespace: str | None = None) -> Tool:
        """Register ``new``; on a clash with another source, as ``namespace.name``."""
        if new.name in self._tools:
            if namespace is None or self._tools[new.name].source == new.source:
                raise ValueError(f"a tool named {new.name!r} is already registered")
            new = _renamed(new, f"{namespace}.{new.name}")
            if new.name in self._tools:
                raise ValueError(f"a tool named {new.name!r} is already registered")
        self._tools[new.name] = new
        self._schemas = None
        return new

    def add_function(self, fn: Callable[..., Any]) -> Tool:
        opts = dict(getattr(fn, "__elaria_tool__", {}))
        return self.add(Tool.from_function(fn, **opts))

    def remove_source(self, source: str) -> None:
        for name in [n for n, t in self._tools.items() if t.source == source]:
            del self._tools[name]
        self._schemas = None

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(
                f"there is no tool named {name!r}",
                tool=name,
                hint=f"Available tools: {', '.join(sorted(self._tools)) or 'none'}.",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def lmstudio_schemas(self) -> list[dict[str, Any]]:
        """Every tool's :meth:`Tool.lmstudio_schema`, built once per change of the registry.

        The list is new on each call; the schemas in it are shared: read them, do not change
        them."""
        if self._schemas is None:
            self._schemas = tuple(t.lmstudio_schema() for t in self._tools.values())
        return list(self._schemas)


# ------------------------------------------------------------------------------- helpers


def _schema_key(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, default=str)


@functools.lru_cache(maxsize=1024)
def _compiled_validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    return cls(schema)


def _renamed(t: Tool, name: str) -> Tool:
    return Tool(
        name=name,
        description=t.description,
        parameters=t.parameters,
        handler=t.handler,
        source=t.source,
        arg_kinds=t.arg_kinds,
        cacheable=t.cacheable,
        timeout=t.timeout,
        _model=t._model,
    )


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """First paragraph as summary; Google-style ``Args:`` entries as argument descriptions."""
    paragraphs = doc.split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            in_args, current = True, None
            continue
        if in_args:
            if not stripped:
                continue
            if stripped.endswith(":") and not line.startswith((" ", "\t")):
                in_args = False
                continue
            m = re.match(r"^(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and line.startswith((" ", "\t")) and len(line) - len(line.lstrip()) <= 4:
                current = m.group(1)
                args[current] = m.group(2)
            elif current:
                args[current] = f"{args[current]} {stripped}".strip()
    return summary, args


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's titles (noise for a small model) and keep the object shape."""

    def strip(node: Any, *, names: bool = False) -> Any:
        # ``names`` marks a mapping whose keys are property names: a property may be *called*
        # "title" (add_note), only the annotation of that name is dropped.
        if isinstance(node, dict):
            return {
                k: strip(v, names=not names and k in ("properties", "$defs"))
                for k, v in node.items()
                if names or k != "title"
            }
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    cleaned: dict[str, Any] = strip(schema)
    cleaned.setdefault("type", "object")
    cleaned.setdefault("properties", {})
    cleaned["additionalProperties"] = False
    return cleaned


def _schema_summary(schema: Mapping[str, Any]) -> str:
    props = schema.get("properties", {}) or {}
    required = set(schema.get("required", []) or [])
    parts = []
    for pname, spec in props.items():
        kind = spec.get("type", "any") if isinstance(spec, Mapping) else "any"
        parts.append(f"{pname}: {kind}{'' if pname in required else ' (optional)'}")
    return "{" + ", ".join(parts) + "}"


def _explain_pydantic(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unexpected argument {loc!r}")
        elif err["type"] == "missing":
            problems.append(f"missing required argument {loc!r}")
        else:
            problems.append(f"argument {loc!r}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)
