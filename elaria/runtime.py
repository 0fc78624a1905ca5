"""``Runtime``: the whole stack behind one object — backend, pool, tools, guard, history, logs.

Use::

    async with Runtime(settings) as rt:
        result = await rt.run("List the workspace", on_event=print)
        async for event in rt.stream("Read notes.md"):
            ...
        chat = rt.session()          # keeps history between turns (elaria chat)
        await chat.send("hello")

What :meth:`Runtime.start` composes, in order (each piece closed by :meth:`Runtime.close`, in
reverse, even when start-up fails half-way):

1. saved approval rules merged into the settings (:func:`~elaria.agent.approval.with_saved_rules`);
2. the :class:`~elaria.memory.monitor.MemoryMonitor` (a run is refused while memory is critical);
3. the backend (:mod:`elaria.agent.backend`): LM Studio when reachable (``lmstudio``: fail fast
   with a readable error when it is not), else — with ``auto`` or ``embedded`` — the embedded
   server with the tiny llama.cpp model (or the ``engine`` given, e.g. a ``ScriptedEngine`` in
   tests). The tiny model gets a focused system prompt and only the ``list_dir`` and
   ``read_file`` built-in tools, unless ``agent.system_prompt`` / ``agent.tools`` say otherwise;
4. the :class:`~elaria.lmstudio.pool.ClientPool` and the predictor over it;
5. the tool registry: the built-in ``python_tools`` for the workspace, the caller's tools, and
   the MCP bridge's tools when ``mcp.config`` is set — one registry, one guard for all;
6. telemetry: the inference event log and the audit ledger, filled as each run goes, and
   Elaria's redacted logging when nothing configured loguru yet (``configure_logging``);
7. the health registry (:attr:`Runtime.health`: every component's stats plus a live probe of the
   LM Studio hosts) and, with ``serve_health=True``, its HTTP server on ``settings.health``
   (``GET /health``, ``GET /metrics``; :attr:`Runtime.health_url`).

Hosts: every ``lmstudio.hosts`` entry is checked against ``security.allowed_remote_hosts`` and
``lmstudio.allow_plaintext_remote`` before anything connects (a refused host is a ConfigError).

Every run gets its own :class:`~elaria.agent.loop.AgentLoop` and
:class:`~elaria.memory.history.ConversationHistory` (budget: the loaded model's context length),
so concurrent ``run`` calls are independent; a :class:`ChatSession` keeps one history across
turns. Histories share one spill cache (``cache`` settings) and are registered with the memory
monitor, which asks them to shed at its warning level. Log records made during a run carry its id.

Loop confinement: a Runtime belongs to the event loop that started it. Cancelling a ``run`` (or
leaving a ``stream`` early) cancels the prediction on the server and the running tools, and the
audit record is still written. :meth:`close` leaves no task, socket, thread or child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from elaria.agent import events as ev
from elaria.agent.approval import (
    ApprovalCallback,
    ApprovalPolicy,
    ApprovalStore,
    approvals_path,
    with_saved_rules,
)
from elaria.agent.backend import (
    TINY_MODEL_SYSTEM_PROMPT,
    TINY_MODEL_TEMPERATURE,
    TINY_MODEL_TOOLS,
    Backend,
    BackendChoice,
    open_backend,
)
from elaria.agent.guard import ArgumentValidator
from elaria.agent.loop import AgentLoop, EventCallback, Predictor, RunResult
from elaria.agent.recorder import RunRecorder, Telemetry
from elaria.agent.tools import ArgKind, Tool, ToolRegistry
from elaria.config import Settings, load_settings
from elaria.errors import ConfigError, ElariaError, RunError
from elaria.lmstudio.connection import check_host
from elaria.lmstudio.pool import ClientPool
from elaria.memory.cache import Cache
from elaria.memory.history import ConversationHistory
from elaria.memory.monitor import MemoryMonitor
from elaria.telemetry.health import (
    DEFAULT_ASSESSORS,
    STATS_TIMEOUT_S,
    Assessor,
    HealthRegistry,
    HealthServer,
    assess_hosts,
    probe_hosts,
)
from elaria.telemetry.logging import new_id

__all__ = ["ChatSession", "Runtime", "ToolLike"]

#: A tool as callers give it: a Tool, or a typed function that becomes one.
ToolLike = Tool | Callable[..., Any]
#: Each host probe of a health snapshot gets at most this (twice: greeting, then model list),
#: so that every probe fits in the snapshot's own per-section budget.
HOST_PROBE_TIMEOUT_S = STATS_TIMEOUT_S / 2 - 0.25
#: Histories listed one by one in the health snapshot; the totals count them all.
HISTORIES_LISTED = 20


class Runtime:
    """See the module docstring. Not reusable after :meth:`close`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: BackendChoice = "auto",
        model: str | None = None,
        workspace: Path | str | None = None,
        engine: Any = None,
        tools: Iterable[ToolLike] = (),
        builtin_tools: bool = True,
        approve: ApprovalCallback | None = None,
        monitor: MemoryMonitor | None = None,
        serve_health: bool = False,
        configure_logging: bool | None = None,
    ) -> None:
        """``serve_health``: serve ``/health`` and ``/metrics`` on ``settings.health`` while
        running. ``configure_logging``: see :class:`~elaria.agent.recorder.Telemetry`."""
        base = settings if settings is not None else load_settings()
        updates: dict[str, Any] = {}
        if workspace is not None:
            updates["workspace"] = Path(workspace)
        if updates:
            base = base.model_copy(
                update={"agent": base.agent.model_copy(update=updates)}, deep=True
            )
        if model is not None:
            base = base.model_copy(
                update={"lmstudio": base.lmstudio.model_copy(update={"model": model})}, deep=True
            )
        self.settings = base
        #: The hosts the operator configured: the health probe watches them even when the
        #: backend resolved to others (an embedded fallback, the reachable subset).
        self._configured_hosts = list(base.lmstudio.hosts)
        self.backend_choice = backend
        self._engine = engine
        self._extra_tools = list(tools)
        self._builtin_tools = builtin_tools
        self.approve = approve
        self.monitor = monitor
        self.registry = ToolRegistry()
        self.backend: Backend | None = None
        self.pool: ClientPool | None = None
        self.predictor: Predictor | None = None
        self.policy: ApprovalPolicy | None = None
        self.validators: dict[ArgKind, ArgumentValidator] = {}
        self.telemetry: Telemetry | None = None
        self.health = HealthRegistry()
        self.health_server: HealthServer | None = None
        self._serve_health = serve_health
        self._configure_logging = configure_logging
        self.spill_cache: Cache[str, str] = Cache(
            base.cache.max_entries, base.cache.ttl_s, name="tool-results"
        )
        self._histories: weakref.WeakSet[ConversationHistory] = weakref.WeakSet()
        self._mcp: Any = None
        self._started = False
        self._closed = False
        self._stack = contextlib.AsyncExitStack()
        self._runs: set[asyncio.Task[Any]] = set()
        self._started_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._closed:
            raise RunError("this Runtime was closed", hint="Create a new Runtime.")
        if self._started:
            return
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        self.settings = with_saved_rules(self.settings)
        for host in self.settings.lmstudio.hosts:  # before discovery probes any of them
            check_host(host, self.settings.lmstudio, self.settings.security)
        agent = self.settings.agent
        self.policy = ApprovalPolicy(agent, ApprovalStore(approvals_path(agent)))
        if self.monitor is None:
            self.monitor = MemoryMonitor(self.settings.memory)
            await self.monitor.start()
            self._stack.push_async_callback(self.monitor.stop)
        self.monitor.check_admission()
        self.monitor.register(self.spill_cache)
        self.telemetry = Telemetry(self.settings, configure_logging=self._configure_logging)
        await self.telemetry.start()
        self._stack.push_async_callback(self.telemetry.close)
        self.backend = await self._stack.enter_async_context(
            open_backend(self.settings, self.backend_choice, engine=self._engine)
        )
        self.settings = self.backend.settings
        if self.backend.tiny_model:
            self.settings = _tiny_model_defaults(self.settings)
        self.pool = ClientPool.from_settings(self.settings)
        self._stack.push_async_callback(self.pool.close)
        self.predictor = self.backend.predictor(self.pool)
        await self._register_tools()
        self._register_health()
        if self._serve_health:
            server = HealthServer(self.health, self.settings.health)
            try:
                await server.start()
            except OSError as exc:
                health = self.settings.health
                raise ConfigError(
                    f"cannot serve health on {health.host}:{health.port}: {exc.strerror or exc}",
                    where="health.port",
                    hint="Pick another health.port (0 picks a free one) or stop what holds it.",
                ) from None
            self.health_server = server
            self._stack.push_async_callback(self._stop_health_server)

    async def _stop_health_server(self) -> None:
        server, self.health_server = self.health_server, None
        if server is not None:
            await server.stop()

    async def _register_tools(self) -> None:
        from elaria.mcp.firewall import default_validators

        workspace = self.workspace
        roots = [workspace, *self.settings.security.allowed_roots]
        if self._builtin_tools:
            from elaria.agent.workspace import builtin_tools, ensure_sample_workspace

            ensure_sample_workspace(workspace)
            starters = self.backend is not None and self.backend.tiny_model
            for tool in builtin_tools(self.settings, workspace):
                if (
                    starters
                    and self.settings.agent.tools is None
                    and (tool.name not in TINY_MODEL_TOOLS)
                ):
                    continue
                self.registry.add(tool)
        self.validators = default_validators(
            [Path(r) for r in roots],
            allowed_remote_hosts=self.settings.security.allowed_remote_hosts,
        )
        for item in self._extra_tools:
            self.registry.add(item if isinstance(item, Tool) else Tool.from_function(item))
        if self.settings.mcp.config is not None:
            await self._start_mcp(workspace)
        self._apply_tool_filters()

    async def _start_mcp(self, workspace: Path) -> None:
        from elaria.mcp.client import McpBridge
        from elaria.mcp.config import load_mcp_config

        path = self.settings.mcp.config
        assert path is not None
        bridge = McpBridge(
            load_mcp_config(path),
            self.settings.mcp,
            workspace=workspace,
            max_argument_chars=self.settings.agent.max_argument_chars,
            allowed_remote_hosts=self.settings.security.allowed_remote_hosts,
            retry_failed_starts=True,
        )
        self._mcp = bridge
        self._stack.push_async_callback(bridge.aclose)
        await bridge.start()
        # Each bridged tool carries its config's approval mode; the policy reads it per call,
        # so a tool that first appears after a server restart is asked about too.
        bridge.register(self.registry)

    def _apply_tool_filters(self) -> None:
        agent = self.settings.agent
        keep = set(agent.tools) if agent.tools is not None else None
        drop = set(agent.disabled_tools)
        unknown = ((keep or set()) | drop) - set(self.registry.names())
        if unknown:
            raise ConfigError(
                "agent.tools / agent.disabled_tools name unknown tools: "
                + ", ".join(sorted(unknown)),
                where="agent.tools",
                hint=f"Available tools: {', '.join(self.registry.names()) or 'none'}.",
            )
        kept = [t for t in self.registry if (keep is None or t.name in keep) and t.name not in drop]
        self.registry = ToolRegistry(kept)
        if self._mcp is not None:  # tools appearing after an MCP restart pass the same filter
            self._mcp.track(self.registry, lambda n: (keep is None or n in keep) and n not in drop)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._runs):
            task.cancel()
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        await self._stack.aclose()

    # ------------------------------------------------------------------ properties

    @property
    def workspace(self) -> Path:
        return Path(self.settings.agent.workspace).expanduser().resolve()

    def tools(self) -> list[Tool]:
        return list(self.registry)

    @property
    def health_url(self) -> str | None:
        """``http://host:port/health`` while serving health (``serve_health=True``), else None."""
        return None if self.health_server is None else f"{self.health_server.url}/health"

    def stats(self) -> dict[str, Any]:
        """Every component's stats (cheap, no I/O) and the recent errors."""
        return {**self._component_stats(), "recent_errors": self.health.recent_errors()}

    def _component_stats(self) -> dict[str, Any]:
        """The runtime's sections of the health snapshot (see :meth:`_register_health`)."""
        data: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "runs_in_flight": len(self._runs),
            "backend": self.backend.describe() if self.backend else None,
            "tools": self.registry.names(),
        }
        breakers = self._breaker_stats()
        if self.pool is not None:
            data["pool"] = self._pool_stats(self.pool, breakers.get("hosts", {}))
            data["breakers"] = breakers
            data["models"] = self._model_stats(self.pool)
        if self.monitor is not None:
            data["memory"] = self.monitor.stats()
        data["caches"] = [self.spill_cache.stats()]
        data["histories"] = self._history_stats()
        if self._mcp is not None:
            data["mcp"] = self._mcp.stats()
        if self.telemetry is not None:
            data["telemetry"] = self.telemetry.stats()
        return data

    def _breaker_stats(self) -> dict[str, Any]:
        stats = getattr(self.predictor, "stats", None)
        breakers = stats().get("breakers") if callable(stats) else None
        return dict(breakers) if isinstance(breakers, Mapping) else {}

    def _pool_stats(self, pool: ClientPool, breakers: Mapping[str, Any]) -> dict[str, Any]:
        """Per host of the backend: the pool's view (idle until first used) and its breaker."""
        known = pool.stats()
        hosts = list(self.settings.lmstudio.hosts) + [
            h for h in known if h not in self.settings.lmstudio.hosts
        ]
        return {
            url: {
                **known.get(url, {"state": pool.state(url).value}),
                "breaker": (breakers.get(url) or {}).get("state", "closed"),
            }
            for url in hosts
        }

    def _model_stats(self, pool: ClientPool) -> dict[str, Any]:
        """The model asked for, and the handles the pool holds (loaded and in use) per host."""
        return {
            "model": self.settings.lmstudio.model,
            "fallbacks": list(self.settings.lmstudio.models),
            "handles": {url: h["cached_handles"] for url, h in pool.stats().items()},
        }

    def _history_stats(self) -> dict[str, Any]:
        histories = [h.stats() for h in list(self._histories)]
        return {
            "active": len(histories),
            "messages": sum(h["messages"] for h in histories),
            "tokens": sum(h["tokens"] for h in histories),
            "trimmed_messages": sum(h["trimmed_messages"] for h in histories),
            "each": histories[:HISTORIES_LISTED],
        }

    def _register_health(self) -> None:
        """The runtime's sections, each assessed; plus a live probe of every host."""
        assessors: dict[str, Assessor] = dict(DEFAULT_ASSESSORS)
        if self._mcp is not None:
            from elaria.mcp.client import assess_mcp

            assessors["mcp"] = assess_mcp
        self.health.register_sections("runtime", self._component_stats, assessors=assessors)
        self.health.register("hosts", self._probe_hosts, assess=assess_hosts)

    async def _probe_hosts(self) -> list[dict[str, Any]]:
        """The operator's configured hosts and the backend's, probed now (loaded models too)."""
        hosts = list(dict.fromkeys([*self._configured_hosts, *self.settings.lmstudio.hosts]))
        timeout = min(self.settings.lmstudio.probe_timeout_ms / 1000, HOST_PROBE_TIMEOUT_S)
        return await probe_hosts(hosts, timeout)

    # ------------------------------------------------------------------ runs

    def _loop_for(
        self,
        history: ConversationHistory,
        tools: Iterable[ToolLike] | None,
        predictor: Predictor | None = None,
    ) -> AgentLoop:
        if not self._started or self._closed or self.predictor is None:
            raise RunError(
                "the Runtime is not running",
                hint="Use 'async with Runtime(...) as rt:' (or await rt.start()) first.",
            )
        assert self.monitor is not None
        assert self.policy is not None
        self.monitor.check_admission()
        registry = self.registry
        if tools is not None:
            registry = ToolRegistry(list(self.registry))
            for item in tools:
                registry.add(item if isinstance(item, Tool) else Tool.from_function(item))
        return AgentLoop(
            predictor or self.predictor,
            registry,
            self.settings,
            history,
            policy=self.policy,
            validators=self.validators,
            approve=self.approve,
        )

    async def new_history(self) -> ConversationHistory:
        """A history whose token budget comes from the loaded model."""
        history = ConversationHistory(self.settings.history, spill_cache=self.spill_cache)
        if self.backend is not None and self.pool is not None:
            info = await self.backend.model_info(self.pool)
            if info.context_length:
                history.set_context_length(info.context_length)
            if info.count_tokens is not None:
                history.attach_counter(info.count_tokens)
        return history

    async def run(
        self,
        task: str,
        *,
        tools: Iterable[ToolLike] | None = None,
        on_event: EventCallback | None = None,
        history: ConversationHistory | None = None,
    ) -> RunResult:
        """Run ``task`` to an answer.

        Raises RunError subclasses, BackendError, ResourceExhausted; CancelledError when
        cancelled (after cancelling the prediction and tools and writing the audit record).
        """
        if not task.strip():
            raise RunError("the task is empty", hint="Say what the agent should do.")
        history = history if history is not None else await self.new_history()
        run_id = new_id()
        if self.telemetry is None or self.predictor is None:
            raise RunError(
                "the Runtime is not running",
                hint="Use 'async with Runtime(...) as rt:' (or await rt.start()) first.",
            )
        recorder = self.telemetry.recorder(run_id, task, provider=self._provider())
        loop = self._loop_for(history, tools, recorder.wrap(self.predictor))
        # Registered after admission: memory pressure asks the run's history to shed.
        assert self.monitor is not None
        self.monitor.register(history)
        self._histories.add(history)
        # The recorder's callback never raises: alone, it needs no fan-out guarding it.
        callback = recorder.on_event if on_event is None else _fan_out(recorder.on_event, on_event)
        return await self._run_task(
            run_id, lambda: loop.run(task, on_event=callback, run_id=run_id), recorder
        )

    async def _run_task(
        self,
        run_id: str,
        body: Callable[[], Awaitable[RunResult]],
        recorder: RunRecorder,
    ) -> RunResult:
        async def recorded() -> RunResult:
            with recorder.log_context():
                try:
                    result = await body()
                except asyncio.CancelledError:
                    recorder.finish(None, cancelled=True)
                    raise
                except Exception as exc:
                    recorder.finish(None, error=exc)
                    self.health.record_error(exc, where=f"run {run_id}")
                    raise
                recorder.finish(result)
                return result

        # A task of its own, so close() can cancel exactly the run (never the caller's task);
        # cancelling the caller cancels it too, since it is what the caller awaits.
        runner = asyncio.create_task(recorded(), name=f"elaria-run {run_id[:8]}")
        self._runs.add(runner)
        runner.add_done_callback(self._runs.discard)
        return await runner

    async def stream(
        self,
        task: str,
        *,
        tools: Iterable[ToolLike] | None = None,
        history: ConversationHistory | None = None,
    ) -> AsyncIterator[ev.AgentEvent]:
        """The run's events as they happen; ends after ``FinalAnswer`` (or raises the error).

        Leaving the iteration early cancels the run.
        """
        # Unbounded on purpose: on_event cannot wait, and losing events (or the end marker)
        # would break the consumer. A run's events are bounded by the run itself
        # (max_iterations rounds of at most max_tokens fragments and their tool calls).
        queue: asyncio.Queue[ev.AgentEvent | None] = asyncio.Queue()

        def put(event: ev.AgentEvent) -> None:
            queue.put_nowait(event)

        async def drive() -> RunResult:
            try:
                return await self.run(task, tools=tools, on_event=put, history=history)
            finally:
                queue.put_nowait(None)

        runner = asyncio.create_task(drive())
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield event
            await runner  # re-raises the run's error
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, ElariaError):
                    await runner

    def session(self, system_prompt: str | None = None) -> ChatSession:
        return ChatSession(self, system_prompt)

    def _provider(self) -> str:
        return self.backend.kind if self.backend is not None else "lmstudio"


class ChatSession:
    """Turns that share one history (``elaria chat``)."""

    def __init__(self, runtime: Runtime, system_prompt: str | None = None) -> None:
        self.runtime = runtime
        self.system_prompt = system_prompt
        self.history: ConversationHistory | None = None
        self.turns = 0

    async def send(self, text: str, *, on_event: EventCallback | None = None) -> RunResult:
        if self.history is None:
            self.history = await self.runtime.new_history()
            if self.system_prompt:
                self.history.add(
                    {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}
                )
        result = await self.runtime.run(text, on_event=on_event, history=self.history)
        self.turns += 1
        return result

    def reset(self) -> None:
        self.history = None
        self.turns = 0

    def messages(self) -> list[Mapping[str, Any]]:
        return list(self.history.get_all()) if self.history is not None else []


def _tiny_model_defaults(settings: Settings) -> Settings:
    """What the tiny embedded model needs, where the operator did not choose otherwise: its
    system prompt, and greedy decoding (a 270M model wanders at any temperature)."""
    agent, lm = settings.agent, settings.lmstudio
    if agent.system_prompt is None:
        agent = agent.model_copy(update={"system_prompt": TINY_MODEL_SYSTEM_PROMPT})
    if "temperature" not in lm.model_fields_set:
        lm = lm.model_copy(update={"temperature": TINY_MODEL_TEMPERATURE})
    return settings.model_copy(update={"agent": agent, "lmstudio": lm})


def _fan_out(*callbacks: EventCallback | None) -> EventCallback:
    active = [c for c in callbacks if c is not None]

    def call(event: ev.AgentEvent) -> None:
        for callback in active:
            try:
                callback(event)
            except Exception:
                logger.opt(exception=True).warning("event callback failed for {}", event.kind)

    return call
