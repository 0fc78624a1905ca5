"""Settings: one validated object for the whole runtime.

Sources, lowest precedence first: defaults < ``elaria.toml`` (or the file named by
``ELARIA_CONFIG``) < environment ``ELARIA_<SECTION>__<FIELD>`` < explicit keyword arguments.

:func:`load_settings` is the one entry point that never lets a pydantic traceback escape: every
problem in every source is collected into one :class:`~elaria.errors.ConfigError` whose
``problems`` name the field, the bad value, the allowed range and a fix. Secrets are ``SecretStr``
and never rendered.

Durations carry their unit in the field name (``_ms`` or ``_s``); properties on each section give
seconds as floats for the code that awaits them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from elaria.errors import ConfigError, ConfigProblem

__all__ = [
    "AgentSettings",
    "ApprovalRule",
    "BreakerSettings",
    "CacheSettings",
    "EmbeddedSettings",
    "FailoverTarget",
    "HealthSettings",
    "HistorySettings",
    "LMStudioSettings",
    "LoggingSettings",
    "McpSettings",
    "MemorySettings",
    "ReconnectSettings",
    "SecuritySettings",
    "Settings",
    "TelemetrySettings",
    "config_file_path",
    "load_settings",
]

DEFAULT_CONFIG_FILE = "elaria.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FailoverTarget(_Section):
    """One (host, model) pair of the failover chain."""

    host: str = Field(description="ws:// or wss:// URL of an LM Studio server")
    model: str | None = Field(default=None, description="model id; None means the host's default")


class LMStudioSettings(_Section):
    hosts: list[str] = Field(
        default_factory=list,
        description="LM Studio WebSocket URLs in failover order, e.g. ws://localhost:1234",
    )
    model: str | None = Field(default=None, description="model id to use; None = first loaded")
    models: list[str] = Field(default_factory=list, description="fallback model ids, in order")
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=2048, ge=1, le=1_000_000)
    timeout_ms: int = Field(default=120_000, ge=1_000, le=600_000, description="whole prediction")
    connect_timeout_ms: int = Field(default=5_000, ge=100, le=120_000)
    probe_timeout_ms: int = Field(default=2_000, ge=50, le=60_000)
    probe_interval_ms: int = Field(default=15_000, ge=100, le=600_000)
    first_token_timeout_ms: int = Field(default=60_000, ge=500, le=600_000)
    fragment_gap_timeout_ms: int = Field(default=30_000, ge=100, le=600_000)
    load_timeout_ms: int = Field(default=300_000, ge=1_000, le=3_600_000)
    idle_close_s: int = Field(default=600, ge=1, le=86_400)
    cleanup_interval_s: int = Field(default=60, ge=1, le=3_600)
    handle_ttl_s: int = Field(default=300, ge=1, le=86_400)
    api_token: SecretStr | None = Field(default=None, description="sk-lm-<8>:<20> when required")
    allow_plaintext_remote: bool = False

    @field_validator("hosts")
    @classmethod
    def _hosts_are_ws_urls(cls, v: list[str]) -> list[str]:
        for host in v:
            if not host.lower().startswith(("ws://", "wss://")):
                raise ValueError(
                    f"host {host!r} must be a ws:// or wss:// URL (ws://localhost:1234)"
                )
        return v

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000

    def targets(self) -> list[FailoverTarget]:
        """Hosts in order, models within a host in order."""
        models: list[str | None] = [self.model, *self.models] if self.model else [None]
        return [FailoverTarget(host=h, model=m) for h in self.hosts for m in models]


class ReconnectSettings(_Section):
    max_attempts: int = Field(default=10, ge=1, le=100)
    initial_delay_ms: int = Field(default=1_000, ge=100, le=60_000)
    max_delay_ms: int = Field(default=30_000, ge=1_000, le=300_000)
    stable_after_ms: int = Field(
        default=10_000,
        ge=0,
        le=600_000,
        description="a connection must stay up this long before the backoff resets",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSettings:
        if self.initial_delay_ms > self.max_delay_ms:
            raise ValueError("initial_delay_ms must not exceed max_delay_ms")
        return self


class BreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1, le=1_000)
    reset_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)


ApprovalMode = Literal["auto", "ask", "deny"]


class ApprovalRule(_Section):
    """A remembered decision: ``tool`` (glob), optional ``argument`` + ``pattern`` (glob)."""

    tool: str = Field(min_length=1, max_length=200)
    decision: Literal["allow", "deny"]
    argument: str | None = Field(default=None, max_length=200)
    pattern: str | None = Field(default=None, max_length=1_000)


class AgentSettings(_Section):
    max_iterations: int = Field(default=10, ge=1, le=100)
    tools: list[str] | None = Field(default=None, description="enabled tools; None = all")
    disabled_tools: list[str] = Field(default_factory=list)
    workspace: Path = Field(default=Path("workspace"))
    tool_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    max_parallel_tools: int = Field(default=4, ge=1, le=64)
    tool_retry_budget: int = Field(default=3, ge=0, le=20)
    max_repeated_calls: int = Field(default=3, ge=2, le=50)
    max_tool_output_chars: int = Field(default=10_000, ge=100, le=10_000_000)
    max_argument_chars: int = Field(default=10_000, ge=10, le=10_000_000)
    approval: dict[str, ApprovalMode] = Field(
        default_factory=dict, description="per-tool policy; tools not listed use default_approval"
    )
    default_approval: ApprovalMode = "auto"
    approval_rules: list[ApprovalRule] = Field(default_factory=list)
    approvals_file: Path | None = Field(
        default=None,
        description="where 'always'/'never' answers are saved (JSON); None = "
        "elaria.approvals.json beside the config file",
    )
    allowed_commands: list[str] = Field(default_factory=list, description="run_command allowlist")
    tool_calls_per_minute: int = Field(default=120, ge=1, le=100_000)
    system_prompt: str | None = None


class HistorySettings(_Section):
    max_messages: int = Field(default=50, ge=1, le=1_000)
    max_tokens: int = Field(default=100_000, ge=1_000, le=10_000_000)
    answer_reserve_tokens: int = Field(default=1_024, ge=0, le=1_000_000)


LogLevel = Literal["error", "warning", "info", "debug", "trace"]


class LoggingSettings(_Section):
    level: LogLevel = "info"
    log_dir: Path = Path("logs")
    service_name: str = Field(default="elaria", pattern=r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
    console: bool = True
    json_files: bool = True
    rotation_mb: int = Field(default=10, ge=1, le=10_000)

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class MemorySettings(_Section):
    warning_threshold: float = Field(default=0.80, gt=0.0, lt=1.0)
    critical_threshold: float = Field(default=0.90, gt=0.0, le=1.0)
    check_interval_ms: int = Field(default=30_000, ge=1_000, le=300_000)
    history_samples: int = Field(default=120, ge=3, le=100_000)

    @model_validator(mode="after")
    def _ordered(self) -> MemorySettings:
        if self.warning_threshold >= self.critical_threshold:
            raise ValueError("warning_threshold must be below critical_threshold")
        return self


class CacheSettings(_Section):
    max_entries: int = Field(default=100, ge=1, le=10_000_000)
    ttl_s: float = Field(default=300.0, gt=0, le=86_400 * 30)


class McpSettings(_Section):
    config: Path | None = Field(default=None, description="path to an LM Studio-style mcp.json")
    init_timeout_ms: int = Field(default=120_000, ge=1_000, le=1_800_000)
    call_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000)
    restart_budget: int = Field(default=5, ge=0, le=1_000)
    rss_cap_mb: int = Field(default=1_024, ge=16, le=1_048_576)
    health_interval_ms: int = Field(default=30_000, ge=500, le=3_600_000)


class SecuritySettings(_Section):
    allowed_roots: list[Path] = Field(
        default_factory=list, description="extra roots tools may touch besides the workspace"
    )
    allowed_remote_hosts: list[str] = Field(default_factory=list)
    command_cpu_seconds: int = Field(
        default=10, ge=1, le=3_600, description="run_command: CPU seconds (RLIMIT_CPU)"
    )
    command_memory_mb: int = Field(
        default=512, ge=16, le=1_048_576, description="run_command: address space (RLIMIT_AS)"
    )
    command_output_bytes: int = Field(
        default=65_536, ge=1_024, le=100_000_000, description="run_command: stdout+stderr kept"
    )
    command_timeout_s: float = Field(
        default=30.0, gt=0, le=3_600, description="run_command: default wall-clock timeout"
    )


class TelemetrySettings(_Section):
    """Inference event log and audit ledger. File names are relative to ``logging.log_dir`` and
    must resolve under ``./logs`` or the user data dir (checked at start-up)."""

    events: bool = True
    events_file: str = "inference.jsonl"
    ledger: bool = True
    ledger_file: str = "audit.jsonl"
    ledger_sqlite: bool = Field(default=False, description="also write audit.sqlite for queries")
    cost_per_1k_tokens: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    prompt_preview_chars: int = Field(default=512, ge=0, le=1_000_000)
    answer_preview_chars: int = Field(default=1_024, ge=0, le=1_000_000)
    arguments_preview_chars: int = Field(default=512, ge=0, le=1_000_000)
    ledger_full_text: bool = Field(
        default=False, description="keep whole (redacted) prompts and answers in the ledger"
    )
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    tenant: str | None = None
    project: str | None = None
    tier: str | None = None


class EmbeddedSettings(_Section):
    engine: Literal["scripted", "llama"] = "llama"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65_535, description="0 = a free port")
    n_ctx: int = Field(default=4_096, ge=256, le=131_072)
    n_threads: int | None = Field(default=None, ge=1, le=256)


class HealthSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65_535)


class Settings(BaseSettings):
    """Everything configurable, by section. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="ELARIA_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    lmstudio: LMStudioSettings = Field(default_factory=LMStudioSettings)
    reconnect: ReconnectSettings = Field(default_factory=ReconnectSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_file_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None and path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def config_file_path() -> Path | None:
    """``$ELARIA_CONFIG`` if set, else ``./elaria.toml``."""
    explicit = os.environ.get("ELARIA_CONFIG")
    if explicit:
        return Path(explicit)
    return Path(DEFAULT_CONFIG_FILE)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from every source, or raise one ConfigError with every problem."""
    path = config_file_path()
    explicit = os.environ.get("ELARIA_CONFIG")
    if explicit and path is not None and not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist",
            where="ELARIA_CONFIG",
            hint="Point ELARIA_CONFIG at an existing elaria.toml, or unset it.",
        )
    if path is not None and path.is_file():
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid TOML: {exc}",
                where=str(path),
                hint="Fix the syntax at the line and column shown; strings need quotes.",
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", where=str(path)) from None
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(
            f"{exc.error_count()} invalid setting(s)",
            problems=[_problem(err, path) for err in exc.errors(include_url=False)],
            hint="Fix each one in elaria.toml, the ELARIA_* environment, or the arguments.",
        ) from None


_SECRET_SUFFIXES = ("token", "password", "secret", "api_key", "passkey")


def _problem(err: Any, path: Path | None) -> ConfigProblem:
    loc = [str(x) for x in err["loc"]]
    field = ".".join(loc) or "(settings)"
    value = err.get("input")
    if loc and loc[-1].lower().endswith(_SECRET_SUFFIXES):
        value = "**********"
    if isinstance(value, dict):
        value = "{...}"
    ctx = err.get("ctx") or {}
    kind = err["type"]
    allowed, fix = _allowed_and_fix(kind, {**_field_bounds(loc), **ctx}, err["msg"], loc)
    env_name = "ELARIA_" + "__".join(x.upper() for x in loc if not x.isdigit())
    source = f"{path.name} or {env_name}" if path is not None and path.is_file() else env_name
    return ConfigProblem(field=field, value=value, allowed=allowed, fix=fix, source=source)


def _field_bounds(loc: list[str]) -> dict[str, Any]:
    """Both bounds of a numeric field, so the report shows the whole range, not the broken side."""
    model: Any = Settings
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return {}
        info = fields[part]
        model = info.annotation
    bounds: dict[str, Any] = {}
    for meta in getattr(info, "metadata", []):
        for key in ("ge", "gt", "le", "lt"):
            if getattr(meta, key, None) is not None:
                bounds[key] = getattr(meta, key)
    return bounds


def _allowed_and_fix(kind: str, ctx: dict[str, Any], msg: str, loc: list[str]) -> tuple[str, str]:
    bounds = {k: ctx[k] for k in ("ge", "gt", "le", "lt") if k in ctx}
    if bounds:
        lo = ctx.get("ge", ctx.get("gt"))
        hi = ctx.get("le", ctx.get("lt"))
        lo_s = "" if lo is None else f"{lo} {'<=' if 'ge' in ctx else '<'} "
        hi_s = "" if hi is None else f" {'<=' if 'le' in ctx else '<'} {hi}"
        return f"{lo_s}value{hi_s}", "use a number within the range"
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}", "pick one of the listed values"
    if kind == "string_pattern_mismatch":
        return f"text matching {ctx.get('pattern')}", "use lowercase letters, digits and hyphens"
    if kind == "extra_forbidden":
        return "a known setting", f"remove or rename {'.'.join(loc)} (check its spelling)"
    if kind == "missing":
        return "a value", "set it"
    if kind.endswith(("_type", "_parsing")):
        return msg.replace("Input should be ", ""), "use a value of that type"
    return msg.removeprefix("Value error, "), "correct the value as described"
