"""Elaria: an agent runtime for LM Studio.

The public API is what ``__all__`` lists and nothing else::

    from elaria import Runtime, Settings, Tool

    async with Runtime(Settings()) as rt:
        result = await rt.run("List the workspace and read notes.md")

``Runtime``, ``Settings`` and ``Tool`` are imported on first use, so ``import elaria`` (and
``elaria --help``) stays fast; the errors are plain classes and imported at once. Everything
else lives in submodules whose contents may change between releases.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from elaria.errors import (
    AllTargetsFailed,
    BackendError,
    CircuitOpenError,
    ConfigError,
    ContentPolicyError,
    ContextOverflowError,
    ElariaError,
    ElariaTimeoutError,
    HostDown,
    LoopDetected,
    McpError,
    ModelNotFoundError,
    ModelNotLoaded,
    ResourceExhausted,
    RunCancelled,
    RunError,
    SecurityViolation,
    ToolArgumentsError,
    ToolBudgetExhausted,
    ToolCallMalformed,
    ToolDenied,
    ToolError,
    ToolExecutionError,
    ToolRefused,
    ToolTimeoutError,
    TransientBackendError,
    UnknownToolError,
)

if TYPE_CHECKING:
    from elaria.agent.tools import Tool
    from elaria.config import Settings
    from elaria.runtime import Runtime

__version__ = "0.1.0"

__all__ = [
    "AllTargetsFailed",
    "BackendError",
    "CircuitOpenError",
    "ConfigError",
    "ContentPolicyError",
    "ContextOverflowError",
    "ElariaError",
    "ElariaTimeoutError",
    "HostDown",
    "LoopDetected",
    "McpError",
    "ModelNotFoundError",
    "ModelNotLoaded",
    "ResourceExhausted",
    "RunCancelled",
    "RunError",
    "Runtime",
    "SecurityViolation",
    "Settings",
    "Tool",
    "ToolArgumentsError",
    "ToolBudgetExhausted",
    "ToolCallMalformed",
    "ToolDenied",
    "ToolError",
    "ToolExecutionError",
    "ToolRefused",
    "ToolTimeoutError",
    "TransientBackendError",
    "UnknownToolError",
]

_LAZY = {
    "Runtime": "elaria.runtime",
    "Settings": "elaria.config",
    "Tool": "elaria.agent.tools",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'elaria' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
