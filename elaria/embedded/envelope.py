"""Wire envelope of LM Studio's WebSocket API: message builders and the error object.

Pure functions over plain dicts; no I/O. Every server-to-client message the embedded server sends
is built here, which is how the rule "never an unsolicited message" is kept: each builder needs a
``callId`` or ``channelId`` except :func:`communication_warning` (the only top-level message the
SDK tolerates without one) and :func:`keep_alive_ack` (sent only in reply to a ``keepAlive``).

:class:`ProtocolError` is raised by endpoint handlers; the server turns it into ``rpcError`` or
``channelError`` with :func:`error_object`, whose ``displayData.code`` selects the SDK's typed
exception (``generic.noModelMatchingQuery`` -> ``LMStudioModelNotFoundError`` and so on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BadParameter",
    "ProtocolError",
    "channel_close",
    "channel_error",
    "channel_send",
    "communication_warning",
    "error_object",
    "keep_alive_ack",
    "rpc_error",
    "rpc_result",
]

Json = dict[str, Any]

#: Real displayData codes (lmstudio-js ``GenericErrorDisplayData``).
NO_MODEL_MATCHING_QUERY = "generic.noModelMatchingQuery"
PATH_NOT_FOUND = "generic.pathNotFound"
IDENTIFIER_NOT_FOUND = "generic.identifierNotFound"
DOMAIN_MISMATCH = "generic.domainMismatch"
SPECIFIC_MODEL_UNLOADED = "generic.specificModelUnloaded"


class ProtocolError(Exception):
    """An endpoint failed; becomes ``rpcError``/``channelError`` with a real error object."""

    def __init__(
        self,
        title: str,
        *,
        code: str | None = None,
        data: Mapping[str, Any] | None = None,
        cause: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(title)
        self.title = title
        self.code = code
        self.data = dict(data or {})
        self.cause = cause
        self.suggestion = suggestion


class BadParameter(Exception):
    """The parameter failed validation: the real server answers with a communicationWarning
    (kind ``"invalidParameter"``) and never replies to the call."""


def error_object(exc: ProtocolError) -> Json:
    """``SerializedLMSExtendedError``: ``title`` and ``rootTitle`` are both the message."""
    obj: Json = {"title": exc.title, "rootTitle": exc.title}
    if exc.cause:
        obj["cause"] = exc.cause
    if exc.suggestion:
        obj["suggestion"] = exc.suggestion
    if exc.code:
        obj["displayData"] = {"code": exc.code, **exc.data}
    return obj


def rpc_result(call_id: int, result: Any = None) -> Json:
    """A void endpoint omits ``result`` (the SDK reads a missing key as ``None``)."""
    msg: Json = {"type": "rpcResult", "callId": call_id}
    if result is not None:
        msg["result"] = result
    return msg


def rpc_error(call_id: int, exc: ProtocolError) -> Json:
    return {"type": "rpcError", "callId": call_id, "error": error_object(exc)}


def channel_send(channel_id: int, message: Json) -> Json:
    return {"type": "channelSend", "channelId": channel_id, "message": message}


def channel_close(channel_id: int) -> Json:
    return {"type": "channelClose", "channelId": channel_id}


def channel_error(channel_id: int, exc: ProtocolError) -> Json:
    return {"type": "channelError", "channelId": channel_id, "error": error_object(exc)}


def communication_warning(warning: str, kind: str) -> Json:
    return {"type": "communicationWarning", "warning": warning, "kind": kind}


def keep_alive_ack() -> Json:
    return {"type": "keepAliveAck"}
