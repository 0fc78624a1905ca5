"""The embedded LM Studio-compatible server and its engines.

``EmbeddedServer(engine)`` speaks LM Studio's WebSocket API well enough for the unmodified
``lmstudio`` SDK (see ``server.py``); ``ScriptedEngine`` is the deterministic engine for tests
(see ``scripted.py``); ``LlamaCppEngine`` (``elaria.embedded.llama``, extra ``embedded``) runs a
real tiny model and is imported lazily. ``Faults`` injects failures; ``FaultProxy`` sits between
any client and server. Test fixtures live in :mod:`elaria.testing`.
"""

from __future__ import annotations

from elaria.embedded.engine import (
    Done,
    Engine,
    EngineError,
    EngineEvent,
    Fragment,
    ModelSpec,
    PredictRequest,
    ToolCall,
    ToolCallFailed,
)
from elaria.embedded.faults import Faults
from elaria.embedded.proxy import FaultProxy
from elaria.embedded.scripted import (
    DEFAULT_EMBEDDING_KEY,
    DEFAULT_LLM_KEY,
    ScriptedEngine,
    Turn,
    call_tool_then_answer,
    echo_reply,
    malformed_call,
    reasoning,
    reply,
    server_error,
    structured,
    tool_call,
    tool_calls,
)
from elaria.embedded.server import EmbeddedServer

__all__ = [
    "DEFAULT_EMBEDDING_KEY",
    "DEFAULT_LLM_KEY",
    "Done",
    "EmbeddedServer",
    "Engine",
    "EngineError",
    "EngineEvent",
    "FaultProxy",
    "Faults",
    "Fragment",
    "ModelSpec",
    "PredictRequest",
    "ScriptedEngine",
    "ToolCall",
    "ToolCallFailed",
    "Turn",
    "call_tool_then_answer",
    "echo_reply",
    "malformed_call",
    "reasoning",
    "reply",
    "server_error",
    "structured",
    "tool_call",
    "tool_calls",
]
