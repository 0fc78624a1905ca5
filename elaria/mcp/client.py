"""The bridge: every configured MCP server's tools as Elaria :class:`~elaria.agent.tools.Tool`\\ s.

``McpBridge(config, settings)`` starts one :class:`~elaria.mcp.supervisor.ServerSupervisor` per
server, all at once. :meth:`McpBridge.start` returns the tools of every server that came up:

* named as the server names them, or ``server.tool`` when two servers offer the same name (and
  always sanitised to Elaria's tool-name alphabet);
* ``parameters`` is the server's JSON schema, checked to be a valid schema first (a tool with a
  broken schema is left out and named in the server's ``last_error``);
* ``source`` is ``mcp:<server>``, ``arg_kinds`` comes from the config's ``validate`` key;
* each call goes through the :class:`~elaria.mcp.firewall.Firewall` before it reaches the server,
  and its outcome is audited.

A server that fails to start stops nothing else: it is represented by one tool,
``<server>.unavailable``, whose call explains the failure to the model, and its stats say why.
With ``retry_failed_starts=True`` (the runtime and the proxy ask for it; a one-shot check does
not) the server is retried in the background within its restart budget; meanwhile the
placeholder's call says when the next attempt is due, and once the server is up its tools
replace the placeholder. A server that dies later keeps its tools; their calls fail fast with a
readable error until it is back. Tool failures reach the model as
:class:`~elaria.errors.ToolError`\\ s.

Every restart lists the server's tools again. When the list changed (or the server came up for
the first time late), :attr:`McpBridge.tools` is rebuilt for that server and the registry given
to :meth:`McpBridge.register` (or :meth:`McpBridge.track`) gets the server's entries swapped:
``remove_source`` then ``add``, in one synchronous step on the supervisor's task. That task runs
on the loop that called :meth:`start`, which must be the loop owning the registry; a call
already running keeps its handler, and the next round sees the new list. A new name that clashes
with another server's tool is exposed as ``server.tool``. Every bridged tool carries its config
``approval`` mode (:attr:`~elaria.agent.tools.Tool.approval`), so the agent's policy asks about
an ``ask`` tool even when it first appears after a restart.

Loop confinement: all methods on the loop that called :meth:`start`; tool handlers may run
concurrently. :meth:`aclose` kills every child's process group; so do interpreter exit and
SIGTERM (see :func:`~elaria.mcp.transport.install_exit_cleanup`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import jsonschema
import mcp_types as types
from loguru import logger

from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import McpSettings
from elaria.errors import McpError, ToolError, ToolExecutionError
from elaria.mcp.config import McpConfig, ServerConfig
from elaria.mcp.firewall import AuditSink, Firewall, default_validators
from elaria.mcp.supervisor import RESTART_INITIAL_DELAY_S, ServerSupervisor

__all__ = ["McpBridge", "assess_mcp", "render_result"]

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
_ANY_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
#: Default cap on a tool argument string when no agent settings are given.
DEFAULT_MAX_ARGUMENT_CHARS = 10_000


class McpBridge:
    """Supervised MCP servers exposed as tools. Use as ``async with`` or call start/aclose."""

    def __init__(
        self,
        config: McpConfig,
        settings: McpSettings | None = None,
        *,
        firewall: Firewall | None = None,
        workspace: Path | None = None,
        audit: AuditSink | None = None,
        max_argument_chars: int = DEFAULT_MAX_ARGUMENT_CHARS,
        restart_initial_delay_s: float | None = None,
        ask_means_deny: bool = False,
        allowed_remote_hosts: Sequence[str] = (),
        retry_failed_starts: bool = False,
    ) -> None:
        self.config = config
        self.settings = settings or McpSettings()
        self._workspace = workspace or Path.cwd()
        self._firewall = firewall
        self._audit = audit
        self._max_argument_chars = max_argument_chars
        self._ask_means_deny = ask_means_deny
        self._allowed_remote_hosts = tuple(allowed_remote_hosts)
        delay = restart_initial_delay_s
        if delay is None:
            delay = RESTART_INITIAL_DELAY_S
        self.supervisors = {
            name: ServerSupervisor(
                name,
                server,
                self.settings,
                restart_initial_delay_s=delay,
                retry_first_start=retry_failed_starts,
                on_tools=self._tools_changed,
            )
            for name, server in config.servers.items()
        }
        self.tools: list[Tool] = []
        self._listed: dict[str, list[dict[str, Any]]] = {}
        self._registry: ToolRegistry | None = None
        self._accept: Callable[[str], bool] = _accept_all
        self._approvals: dict[str, str] = {}
        self._firewalls: dict[str, Firewall] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> list[Tool]:
        """Start every server concurrently; the tools of all of them (see module docstring)."""
        names = list(self.supervisors)
        results = await asyncio.gather(
            *(self.supervisors[n].start() for n in names), return_exceptions=True
        )
        offered: dict[str, list[types.Tool]] = {}
        failed: dict[str, BaseException] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                failed[name] = result
            else:
                offered[name] = [t for t in result if self.config.servers[name].exposes(t.name)]
                self._listed[name] = _fingerprint(offered[name])
        counts: dict[str, int] = {}
        for tools in offered.values():
            for t in tools:
                local = _sanitise(t.name)
                counts[local] = counts.get(local, 0) + 1
        built: list[Tool] = []
        for name, tools in offered.items():
            for t in tools:
                tool = self._bridge_tool(name, t, namespaced=counts[_sanitise(t.name)] > 1)
                if tool is not None:
                    built.append(tool)
        for name, exc in failed.items():
            built.append(self._unavailable_tool(name, exc))
        self.tools = built
        return list(built)

    def register(self, registry: ToolRegistry) -> list[Tool]:
        """Add the tools to ``registry``; a clash with another source becomes ``server.tool``.

        The registry is then kept current as servers restart (see the module docstring).
        """
        added = []
        for tool in self.tools:
            server = tool.source.removeprefix("mcp:")
            added.append(registry.add(tool, namespace=server))
        self.track(registry)
        return added

    def track(self, registry: ToolRegistry, accept: Callable[[str], bool] | None = None) -> None:
        """Keep ``registry``'s MCP entries current from now on (it already holds the tools).

        For a caller that copied the registered tools into a new registry (e.g. after filtering
        them): ``accept(name)`` says whether a tool that appears after a restart may be added.
        """
        self._registry = registry
        self._accept = accept or _accept_all

    def _tools_changed(self, server: str, remote: list[types.Tool]) -> None:
        """A (re)start listed ``remote``: rebuild the server's tools if the list changed."""
        cfg = self.config.servers[server]
        offered = [t for t in remote if cfg.exposes(t.name)]
        fingerprint = _fingerprint(offered)
        if self._listed.get(server) == fingerprint:
            return
        self._listed[server] = fingerprint
        source = f"mcp:{server}"
        others = {t.name for t in self.tools if t.source != source}
        built = []
        for t in offered:
            clashes = _sanitise(t.name) in others
            tool = self._bridge_tool(server, t, namespaced=clashes)
            if tool is not None:
                built.append(tool)
        self.tools = [t for t in self.tools if t.source != source] + built
        registry = self._registry
        if registry is not None:
            registry.remove_source(source)
            for tool in built:
                if not self._accept(tool.name):
                    continue
                try:
                    registry.add(tool, namespace=server)
                except ValueError as exc:  # the name and server.name are both taken
                    logger.bind(kind="mcp", server=server).warning(
                        "MCP tool {} left out: {}", tool.name, exc
                    )
        logger.bind(kind="mcp", server=server).info(
            "MCP server {} now offers {} tools: {}",
            server,
            len(built),
            ", ".join(t.name for t in built) or "none",
        )

    def approvals(self) -> dict[str, str]:
        """Exposed tool name → ``auto|ask|deny`` from the config (each tool also carries its
        own in :attr:`~elaria.agent.tools.Tool.approval`, which the agent's policy reads)."""
        return dict(self._approvals)

    def stats(self) -> list[dict[str, Any]]:
        """Per server: transport, state, pid, RSS, restarts, last error, tool count."""
        return [s.stats().as_dict() for s in self.supervisors.values()]

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.supervisors.values()))

    async def __aenter__(self) -> McpBridge:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        states = ", ".join(f"{n}={s.state}" for n, s in self.supervisors.items())
        return f"<McpBridge {len(self.tools)} tools; {states}>"

    # ------------------------------------------------------------------ tools

    def firewall_for(self, server: str) -> Firewall:
        """The firewall a server's calls pass (its own roots for ``path`` tags)."""
        if self._firewall is not None:
            return self._firewall
        if server not in self._firewalls:
            roots = self.config.servers[server].roots or [self._workspace]
            self._firewalls[server] = Firewall(
                max_argument_chars=self._max_argument_chars,
                validators=default_validators(
                    roots, allowed_remote_hosts=self._allowed_remote_hosts
                ),
                audit=self._audit,
                ask_means_deny=self._ask_means_deny,
            )
        return self._firewalls[server]

    def _bridge_tool(self, server: str, remote: types.Tool, *, namespaced: bool) -> Tool | None:
        supervisor = self.supervisors[server]
        cfg: ServerConfig = self.config.servers[server]
        schema = dict(remote.input_schema or {})
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
            if schema.get("type", "object") != "object":
                raise jsonschema.SchemaError("the arguments must be an object")
        except jsonschema.SchemaError as exc:
            supervisor.last_error = f"tool {remote.name!r} left out: invalid schema: {exc.message}"
            return None
        schema.setdefault("type", "object")
        local = _sanitise(remote.name)
        name = f"{server}.{local}" if namespaced else local
        firewall = self.firewall_for(server)
        arg_kinds = cfg.arg_kinds(remote.name)
        approval = cfg.approval_for(remote.name)
        if approval is not None:
            self._approvals[name] = approval
        remote_name = remote.name

        async def handler(arguments: dict[str, Any]) -> str:
            firewall.check(
                name,
                arguments,
                arg_kinds=arg_kinds,
                approval=approval,
                server=server,
            )
            started = time.perf_counter()
            try:
                result = await supervisor.call(remote_name, arguments)
            except McpError as exc:
                firewall.record(name, arguments, "error", server=server, reason=str(exc))
                raise ToolExecutionError(
                    f"MCP server {server!r} {exc.message}", tool=name, hint=exc.hint
                ) from exc
            except ToolError as exc:
                firewall.record(name, arguments, "error", server=server, reason=exc.message)
                raise
            text = render_result(result)
            elapsed = (time.perf_counter() - started) * 1000
            firewall.record(
                name,
                arguments,
                "error" if result.is_error else "ok",
                server=server,
                duration_ms=elapsed,
            )
            if result.is_error:
                raise ToolExecutionError(text or "the tool reported an error", tool=name)
            return text

        return Tool(
            name=name,
            description=remote.description or remote.title or remote.name,
            parameters=schema,
            handler=handler,
            source=f"mcp:{server}",
            arg_kinds=arg_kinds,
            timeout=supervisor.call_timeout_s,
            approval=approval,
        )

    def _unavailable_tool(self, server: str, exc: BaseException) -> Tool:
        message = str(exc)
        supervisor = self.supervisors[server]

        async def handler(arguments: dict[str, Any]) -> str:
            if supervisor.state == "restarting":
                raise ToolExecutionError(
                    f"MCP server {server!r} {supervisor.down_message()}",
                    tool=f"{server}.unavailable",
                    hint="Its tools appear once it is up; meanwhile use the other tools.",
                )
            tries = supervisor.attempts
            gave_up = f" (gave up after {tries} attempts)" if tries > 1 else ""
            raise ToolExecutionError(
                f"MCP server {server!r} is unavailable: {message}{gave_up}",
                tool=f"{server}.unavailable",
                hint="Its tools cannot be used in this run; continue with the other tools.",
            )

        return Tool(
            name=f"{_sanitise(server)}.unavailable",
            description=f"MCP server {server!r} failed to start; calling this explains why.",
            parameters=_ANY_ARGUMENTS,
            handler=handler,
            source=f"mcp:{server}",
        )


def render_result(result: types.CallToolResult) -> str:
    """The text the model reads: text blocks as they are, other blocks as short descriptions."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {resource.uri}]")
        else:
            parts.append(f"[resource link {block.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _accept_all(name: str) -> bool:
    return True


def _fingerprint(tools: list[types.Tool]) -> list[dict[str, Any]]:
    """What makes two tool lists the same for the bridge (names, descriptions, schemas)."""
    return [t.model_dump(mode="json", exclude_none=True) for t in tools]


def _sanitise(name: str) -> str:
    cleaned = _BAD_NAME_CHARS.sub("_", name)[:100] or "tool"
    if not re.match(r"^[A-Za-z_]", cleaned):
        cleaned = f"t_{cleaned}"
    return cleaned


def assess_mcp(stats: Any) -> tuple[Literal["ok", "degraded", "unhealthy"], list[str]]:
    """Health assessor for :meth:`McpBridge.stats`: a server not ``ready`` degrades the run."""
    reasons = [
        f"MCP server {s.get('server')} is {s.get('state')}: {s.get('last_error') or 'no detail'}"
        for s in stats or []
        if isinstance(s, Mapping) and s.get("state") not in ("ready", "closed")
    ]
    return ("degraded" if reasons else "ok"), reasons
