"""The contract between the agent loop and the LM Studio layer: one prediction round.

The agent builds a :class:`RoundRequest` (the whole history in LM Studio's wire shape, the tool
schemas or ``None`` for a last round without tools, sampling options) and receives a
:class:`RoundResult`. The LM Studio layer (pool, failover) owns every timeout, reconnect,
breaker and the server-side ``cancel``; the agent owns tools and history.

Plain values only: these objects cross task boundaries and go into events and the audit ledger.
They are frozen dataclasses built through :func:`quick_init` (also used by the agent's events:
several of each are built per round).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "FragmentCallback",
    "MalformedCall",
    "RequestedCall",
    "RoundRequest",
    "RoundResult",
    "quick_init",
]

#: Called on the event loop with each text fragment as it arrives.
FragmentCallback = Callable[[str], None]

_C = TypeVar("_C", bound=type)


class _FactoryDefault:
    """Stands for "not given" where a field's default comes from a factory."""

    def __repr__(self) -> str:
        return "<factory>"  # what dataclass shows in the signature


_NOT_GIVEN: Any = _FactoryDefault()


def quick_init(cls: _C) -> _C:
    """Give a frozen dataclass an ``__init__`` that stores into the instance dict directly.

    The ``__init__`` that ``dataclass(frozen=True)`` writes calls ``object.__setattr__`` once per
    field, which costs as much again as the rest of building the object; these values are built
    several times per agent round. The new one has the same parameters (positional and
    keyword-only alike), defaults and default factories; the class stays a frozen dataclass
    (assigning to a field still raises ``FrozenInstanceError``). Only for classes without
    ``__slots__``, ``__post_init__`` or ``InitVar``/``init=False`` fields (checked here).
    """
    generated: Any = cls.__dict__["__init__"]
    own = [f.name for f in fields(cls)]
    if cls.__dictoffset__ == 0 or hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init does not support {cls.__name__}: slots or __post_init__")
    if list(inspect.signature(generated).parameters)[1:] != own:
        raise TypeError(f"quick_init does not support {cls.__name__}: InitVar or init=False")
    if any(name.startswith(("_quick_", "_factory_", "_NOT_GIVEN")) for name in own):
        raise TypeError(f"quick_init does not support {cls.__name__}: a reserved field name")
    names: dict[str, Any] = {"_NOT_GIVEN": _NOT_GIVEN}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields(cls):
        if f.default is not MISSING:
            names[f"_default_{f.name}"] = f.default
            param = f"{f.name}=_default_{f.name}"
            value = f.name
        elif f.default_factory is not MISSING:
            names[f"_factory_{f.name}"] = f.default_factory
            param = f"{f.name}=_NOT_GIVEN"
            value = f"_factory_{f.name}() if {f.name} is _NOT_GIVEN else {f.name}"
        else:
            param = value = f.name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    _quick_values[{f.name!r}] = {value}\n")
    params = ", ".join(["_quick_self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({params}):\n    _quick_values = _quick_self.__dict__\n{''.join(body)}"
    # Generated from the dataclass's own fields, the way dataclass writes its __init__.
    exec(source, names)
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = generated.__doc__
    init.__annotations__ = dict(generated.__annotations__)
    init.__wrapped__ = generated  # the dataclass's own, for tests that compare the two
    cls.__init__ = init  # type: ignore[misc]
    return cls


@quick_init
@dataclass(frozen=True)
class RoundRequest:
    """One prediction round. ``messages`` use the SDK's history wire format
    (``{"role": ..., "content": [{"type": "text", "text": ...}, ...]}``)."""

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    request_id: str | None = None


@quick_init
@dataclass(frozen=True)
class RequestedCall:
    """A tool call the model asked for. ``arguments`` is ``None`` when the model sent none."""

    name: str
    arguments: Mapping[str, Any] | None
    id: str | None = None


@quick_init
@dataclass(frozen=True)
class MalformedCall:
    """A tool call the server could not parse (``toolCallGenerationFailed``); ``raw`` is the
    model's text when the server sent it, for the agent's repair step."""

    error: str
    raw: str | None = None


@quick_init
@dataclass(frozen=True)
class RoundResult:
    text: str
    tool_calls: Sequence[RequestedCall] = ()
    malformed: Sequence[MalformedCall] = ()
    stop_reason: str = "eosFound"
    prompt_tokens: int = 0
    predicted_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_time_s: float = 0.0
    host: str = ""
    model: str = ""
    provider: str = "lmstudio"
    #: Resilience events met while producing this round (retries, reconnects, failovers), in order.
    events: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
