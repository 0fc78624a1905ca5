"""The engine interface behind the embedded LM Studio-compatible server.

The server (``server.py``) owns the wire protocol, model state (downloaded, loaded, identifiers,
JIT loading), per-model queueing and cancellation; an engine only turns a prediction request into
a stream of :data:`EngineEvent` and answers tokenizer and embedding questions. Two engines:
``ScriptedEngine`` (deterministic, programmable, for tests) and ``LlamaCppEngine`` (a real tiny
model; extra ``embedded``).

Threading: the server calls every method from its event loop. An engine whose work blocks
(llama.cpp) must move it off the loop itself (``asyncio.to_thread`` or a dedicated executor) and
must stop generating promptly when the consuming iterator is closed (``aclose()``): that is how a
``cancel`` reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Done",
    "Engine",
    "EngineError",
    "EngineEvent",
    "Fragment",
    "ModelSpec",
    "PredictRequest",
    "ToolCall",
    "ToolCallFailed",
]


@dataclass(frozen=True)
class ModelSpec:
    """A downloadable model as ``listDownloadedModels`` reports it."""

    model_key: str
    display_name: str
    path: str
    size_bytes: int
    max_context_length: int
    type: Literal["llm", "embedding"] = "llm"
    architecture: str | None = None
    params_string: str | None = None
    trained_for_tool_use: bool = True
    vision: bool = False
    publisher: str = "elaria"
    quantization: str | None = "Q4_K_M"


@dataclass(frozen=True)
class PredictRequest:
    """What a ``predict`` channel asked for, decoded from the wire."""

    model_key: str
    identifier: str
    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    temperature: float | None = None
    structured: Mapping[str, Any] | None = None
    stop_strings: Sequence[str] = ()
    context_length: int = 4096


@dataclass(frozen=True)
class Fragment:
    text: str
    tokens: int = 1
    reasoning: Literal["none", "reasoning", "reasoningStartTag", "reasoningEndTag"] = "none"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any] | None
    id: str | None = None
    raw: str | None = None


@dataclass(frozen=True)
class ToolCallFailed:
    error: str
    raw: str | None = None


@dataclass(frozen=True)
class EngineError:
    """Ends the prediction with a ``channelError`` (``code`` becomes ``displayData.code``)."""

    title: str
    code: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    stop_reason: str = "eosFound"
    prompt_tokens: int | None = None


EngineEvent = Fragment | ToolCall | ToolCallFailed | EngineError | Done


@runtime_checkable
class Engine(Protocol):
    name: str

    def catalogue(self) -> Sequence[ModelSpec]:
        """Every model this engine can load."""
        ...

    async def load(self, model_key: str, context_length: int) -> None:
        """Make the model ready (called by getOrLoad / loadModel / JIT predict)."""
        ...

    async def unload(self, model_key: str) -> None: ...

    def predict(self, request: PredictRequest) -> AsyncIterator[EngineEvent]:
        """Stream the answer. Ends with :class:`Done` or :class:`EngineError`."""
        ...

    async def tokenize(self, model_key: str, text: str) -> list[int]: ...

    async def apply_template(
        self,
        model_key: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str: ...

    async def embed(self, model_key: str, text: str) -> list[float]: ...
