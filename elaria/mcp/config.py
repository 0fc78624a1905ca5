"""LM Studio's ``mcp.json`` dialect, plus the keys LM Studio drops and users want.

The file is ``{"mcpServers": {name: server}}`` where a server is either a child process
(``command``, ``args``, ``env``, ``cwd``) or a remote endpoint (``url``, ``headers``), exactly as
LM Studio reads it. Elaria also honours, per server:

* ``timeout`` — seconds, or ``{"init": s, "call": s}``: how long the first start (handshake and
  tool listing) and each tool call may take. LM Studio strips this key; we keep it.
* ``allowed_tools`` / ``disabled_tools`` — glob patterns on the server's own tool names.
* ``approval`` — ``{tool_glob: "auto" | "ask" | "deny"}``.
* ``validate`` — ``{tool: {argument: "path" | "sql" | "shell" | "url"}}``: which arguments the
  firewall runs through a domain validator before the call leaves Elaria.
* ``roots`` — directories a ``path``-tagged argument may point into (default: the workspace and
  ``security.allowed_roots``).

``${VAR}`` in ``command``, ``args``, ``env``, ``cwd``, ``url`` and ``headers`` expands from the
environment given to :func:`parse_mcp_config`; a missing variable is a :class:`ConfigError`
naming the server and the key. Every problem in the file is reported at once. Pure functions: no
I/O except :func:`load_mcp_config` reading the file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from elaria.agent.tools import ArgKind
from elaria.errors import ConfigError, ConfigProblem

__all__ = [
    "HttpServerConfig",
    "McpConfig",
    "ServerConfig",
    "StdioServerConfig",
    "Timeouts",
    "load_mcp_config",
    "parse_mcp_config",
]

ApprovalMode = Literal["auto", "ask", "deny"]

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SERVER_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"


class Timeouts(BaseModel):
    """Seconds; ``None`` means the ``[mcp]`` settings decide."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    init: float | None = Field(default=None, gt=0, le=1_800)
    call: float | None = Field(default=None, gt=0, le=3_600)


class _ServerBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: Timeouts = Field(default_factory=Timeouts)
    allowed_tools: list[str] | None = None
    disabled_tools: list[str] = Field(default_factory=list)
    approval: dict[str, ApprovalMode] = Field(default_factory=dict)
    validate_args: dict[str, dict[str, ArgKind]] = Field(default_factory=dict, alias="validate")
    roots: list[Path] | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _number_means_both(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return {"init": v, "call": v}
        return v

    def exposes(self, tool: str) -> bool:
        """Whether ``allowed_tools`` / ``disabled_tools`` let ``tool`` through."""
        if self.allowed_tools is not None and not _matches(tool, self.allowed_tools):
            return False
        return not _matches(tool, self.disabled_tools)

    def approval_for(self, tool: str) -> ApprovalMode | None:
        """The first matching ``approval`` entry (exact names win over globs)."""
        if tool in self.approval:
            return self.approval[tool]
        for pattern, mode in self.approval.items():
            if fnmatch.fnmatchcase(tool, pattern):
                return mode
        return None

    def arg_kinds(self, tool: str) -> dict[str, ArgKind]:
        return dict(self.validate_args.get(tool, {}))


class StdioServerConfig(_ServerBase):
    """A server Elaria starts as a child process and talks to over stdin/stdout."""

    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None

    @property
    def uses_npx(self) -> bool:
        """``npx`` may download the package on first start: it gets the long timeout."""
        return Path(self.command).name in ("npx", "npx.cmd", "pnpx", "bunx")


class HttpServerConfig(_ServerBase):
    """A server reached over streamable HTTP."""

    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")):
            raise ValueError(f"url {v!r} must start with http:// or https://")
        return v


ServerConfig = StdioServerConfig | HttpServerConfig


class McpConfig(BaseModel):
    """Every configured server by name, in file order."""

    model_config = ConfigDict(frozen=True)

    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    source: str = "mcp.json"


def load_mcp_config(path: Path, env: Mapping[str, str] | None = None) -> McpConfig:
    """Read and validate ``path``; every problem becomes one :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read MCP config {path}: {exc.strerror}",
            where=str(path),
            hint="Check the path given to --config or mcp.config.",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            where=str(path),
            hint="Fix the syntax there (trailing commas and comments are not JSON).",
        ) from None
    return parse_mcp_config(data, os.environ if env is None else env, source=str(path))


def parse_mcp_config(data: Any, env: Mapping[str, str], *, source: str = "mcp.json") -> McpConfig:
    """Validate an already-parsed ``mcp.json`` document and expand ``${VAR}``."""
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise ConfigError(
            'an MCP config must be an object with an "mcpServers" object',
            where=source,
            hint='Write {"mcpServers": {"name": {"command": "npx", "args": [...]}}}.',
        )
    problems: list[ConfigProblem] = []
    servers: dict[str, ServerConfig] = {}
    for name, raw in data["mcpServers"].items():
        if not re.match(_SERVER_NAME_RE, name):
            problems.append(
                ConfigProblem(
                    field=f"mcpServers.{name}",
                    value=name,
                    allowed="letters, digits, _ and -, at most 64, starting with a letter/digit",
                    fix="rename the server",
                    source=source,
                )
            )
            continue
        parsed = _parse_server(name, raw, env, source, problems)
        if parsed is not None:
            servers[name] = parsed
    if problems:
        raise ConfigError(
            f"{len(problems)} problem(s) in MCP config",
            problems=problems,
            where=source,
            hint="Fix each server entry as described.",
        )
    return McpConfig(servers=servers, source=source)


def _parse_server(
    name: str,
    raw: Any,
    env: Mapping[str, str],
    source: str,
    problems: list[ConfigProblem],
) -> ServerConfig | None:
    where = f"mcpServers.{name}"
    if not isinstance(raw, dict):
        problems.append(
            ConfigProblem(where, "...", "an object", "describe the server as an object", source)
        )
        return None
    has_command, has_url = "command" in raw, "url" in raw
    if has_command == has_url:
        problems.append(
            ConfigProblem(
                where,
                sorted(raw),
                'exactly one of "command" (a child process) or "url" (streamable HTTP)',
                'give either "command" with "args", or "url"',
                source,
            )
        )
        return None
    expanded: dict[str, Any] = dict(raw)
    for key in ("command", "args", "env", "cwd", "url", "headers"):
        if key in expanded:
            expanded[key] = _expand(expanded[key], env, f"{where}.{key}", source, problems)
    model: type[StdioServerConfig] | type[HttpServerConfig] = (
        StdioServerConfig if has_command else HttpServerConfig
    )
    try:
        return model.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(x) for x in err["loc"])
            value = err.get("input")
            problems.append(
                ConfigProblem(
                    field=f"{where}.{loc}",
                    value="{...}" if isinstance(value, dict) else value,
                    allowed=_allowed(err),
                    fix="remove the key (check its spelling)"
                    if err["type"] == "extra_forbidden"
                    else "correct the value",
                    source=source,
                )
            )
        return None


def _allowed(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return (
            "command, args, env, cwd | url, headers; and timeout, allowed_tools, "
            "disabled_tools, approval, validate, roots"
        )
    return str(err["msg"]).removeprefix("Value error, ")


def _expand(
    value: Any, env: Mapping[str, str], where: str, source: str, problems: list[ConfigProblem]
) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in env:
                problems.append(
                    ConfigProblem(
                        field=where,
                        value=m.group(0),
                        allowed="a variable set in the environment",
                        fix=f"export {var}=... before starting Elaria, or write the value",
                        source=source,
                    )
                )
                return ""
            return env[var]

        return _VAR_RE.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, env, f"{where}[{i}]", source, problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{where}.{k}", source, problems) for k, v in value.items()}
    return value


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
