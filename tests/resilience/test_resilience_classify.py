from __future__ import annotations

import asyncio
import json

import httpx
import lmstudio
import msgspec
import pytest

from elaria.errors import (
    BackendError,
    CircuitOpenError,
    ConfigError,
    ContentPolicyError,
    ContextOverflowError,
    ElariaTimeoutError,
    HostDown,
    ModelNotFoundError,
    ModelNotLoaded,
    ToolCallMalformed,
    TransientBackendError,
)
from elaria.resilience import ACTIONS, FailureClass, classify, to_backend_error
from elaria.resilience.classify import display_code, from_backend

F = FailureClass


def server_error(prefix: str, title: str, code: str | None = None) -> lmstudio.LMStudioServerError:
    details: dict[str, object] = {"title": title, "rootTitle": title}
    if code:
        details["displayData"] = {"code": code}
    return lmstudio.LMStudioServerError(prefix, details)


CASES: list[tuple[BaseException, FailureClass]] = [
    (lmstudio.LMStudioWebsocketError("Client unexpectedly disconnected."), F.HOST_DOWN),
    (
        lmstudio.LMStudioClientError("LM Studio is not reachable at h:1."),
        F.HOST_DOWN,
    ),
    (lmstudio.LMStudioClientError("Unexpected message"), F.TRANSIENT),
    (lmstudio.LMStudioTimeoutError("timed out"), F.TRANSIENT),
    (
        lmstudio.LMStudioModelNotFoundError("RPC error", {"title": "No model"}),
        F.MODEL_UNLOADED,
    ),
    (
        server_error("Chat response error", "gone", "generic.specificModelUnloaded"),
        F.MODEL_UNLOADED,
    ),
    (server_error("Model get/load error", "no such path", "generic.pathNotFound"), F.FATAL),
    (server_error("Chat response error", "The model crashed"), F.TRANSIENT),
    (
        server_error("Chat response error", "Context length exceeded: 9000 > 4096 tokens"),
        F.CONTEXT_OVERFLOW,
    ),
    (server_error("Chat response error", "Blocked by content policy"), F.CONTENT_POLICY),
    (
        lmstudio.LMStudioPredictionError("Failed to parse tool call request."),
        F.TOOL_CALL_MALFORMED,
    ),
    (lmstudio.LMStudioPredictionError("Prediction error: boom"), F.TRANSIENT),
    (
        lmstudio.LMStudioRuntimeError("Attempted to read result"),
        F.TRANSIENT,
    ),
    (msgspec.ValidationError("Expected `str`, got `int`"), F.FATAL),
    (ValueError("dictionary update sequence element #0 has length 1; 2 is required"), F.FATAL),
    (httpx.ReadTimeout("slow greeting"), F.HOST_DOWN),
    (httpx.ConnectError("refused"), F.HOST_DOWN),
    (json.JSONDecodeError("bad", "doc", 0), F.FATAL),
    (ConnectionResetError("reset"), F.HOST_DOWN),
    (OSError("no route"), F.HOST_DOWN),
    (TimeoutError(), F.TRANSIENT),
    (HostDown("x"), F.HOST_DOWN),
    (ModelNotLoaded("x"), F.MODEL_UNLOADED),
    (TransientBackendError("x"), F.TRANSIENT),
    (CircuitOpenError("x"), F.TRANSIENT),
    (ContextOverflowError("x"), F.CONTEXT_OVERFLOW),
    (ContentPolicyError("x"), F.CONTENT_POLICY),
    (ToolCallMalformed("x"), F.TOOL_CALL_MALFORMED),
    (ElariaTimeoutError("probe", 1.0), F.HOST_DOWN),
    (ElariaTimeoutError("connect", 1.0), F.HOST_DOWN),
    (ElariaTimeoutError("first token", 1.0), F.TRANSIENT),
    (ModelNotFoundError("x"), F.FATAL),
    (ConfigError("x"), F.FATAL),
    (KeyError("identifier"), F.FATAL),
]


@pytest.mark.parametrize(("exc", "expected"), CASES, ids=lambda v: type(v).__name__)
def test_classify(exc: BaseException, expected: FailureClass) -> None:
    assert classify(exc) is expected


def test_a_cancellation_cannot_be_classified() -> None:
    with pytest.raises(TypeError, match="cancellation"):
        classify(asyncio.CancelledError())


def test_the_action_table_covers_every_class_and_encodes_the_rules() -> None:
    assert set(ACTIONS) == set(FailureClass)
    assert not ACTIONS[F.CONTEXT_OVERFLOW].fail_over
    assert ACTIONS[F.CONTEXT_OVERFLOW].compact_history
    assert not ACTIONS[F.CONTENT_POLICY].fail_over
    assert ACTIONS[F.TOOL_CALL_MALFORMED].tell_model
    assert ACTIONS[F.MODEL_UNLOADED].load_model
    assert ACTIONS[F.HOST_DOWN].reconnect
    assert ACTIONS[F.TRANSIENT].retry_same_target
    assert not ACTIONS[F.FATAL].retry_same_target
    # Only the host's own failures count against its breaker.
    counting = {c for c, a in ACTIONS.items() if a.counts_against_host}
    assert counting == {F.TRANSIENT, F.HOST_DOWN}


def test_display_code_is_read_from_the_raw_server_error() -> None:
    assert display_code(server_error("x", "y", "generic.pathNotFound")) == "generic.pathNotFound"
    assert display_code(RuntimeError()) is None


def test_to_backend_error_maps_into_our_tree() -> None:
    ws = lmstudio.LMStudioWebsocketError("Client unexpectedly disconnected.")
    err = to_backend_error(ws, host="ws://h:1", model="m")
    assert isinstance(err, HostDown)
    assert err.host == "ws://h:1"
    assert "LM Studio is running" in str(err)
    overflow = server_error("Chat response error", "context length exceeded")
    assert isinstance(to_backend_error(overflow), ContextOverflowError)
    policy = server_error("Chat response error", "violates content policy")
    assert isinstance(to_backend_error(policy), ContentPolicyError)
    missing = server_error("Model get/load error", "nope", "generic.pathNotFound")
    assert isinstance(to_backend_error(missing), ModelNotFoundError)
    auth = to_backend_error(ValueError("dictionary update sequence element #0 has length 1"))
    assert "authentication" in str(auth)
    assert "api_token" in str(auth)
    assert isinstance(to_backend_error(lmstudio.LMStudioTimeoutError("t")), TransientBackendError)
    assert type(to_backend_error(msgspec.ValidationError("bad"))) is BackendError
    same = HostDown("already ours")
    assert to_backend_error(same) is same


@pytest.mark.parametrize(("exc", "expected"), CASES, ids=lambda v: type(v).__name__)
def test_conversion_keeps_the_class_of_backend_failures(
    exc: BaseException, expected: FailureClass
) -> None:
    if expected in (F.TOOL_CALL_MALFORMED, F.FATAL):
        return  # not backend failures with a class of their own
    assert classify(to_backend_error(exc)) is expected


def test_only_network_stack_errors_count_as_from_the_backend() -> None:
    assert from_backend(lmstudio.LMStudioWebsocketError("x"))
    assert from_backend(msgspec.ValidationError("x"))
    assert from_backend(httpx.ReadTimeout("x"))
    assert from_backend(ConnectionResetError())
    assert from_backend(ValueError("dictionary update sequence element #0 has length 1"))
    assert not from_backend(KeyError("a bug"))
    assert not from_backend(ValueError("a bug"))
    assert not from_backend(HostDown("ours already"))
