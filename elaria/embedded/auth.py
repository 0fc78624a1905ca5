"""The auth handshake of the embedded server: packet parsing and credential checks.

The client speaks first with ``{"authVersion": 1, "clientIdentifier", "clientPasskey"}``;
frames that do not parse as such are ignored, as on the real server, until
:data:`AUTH_TIMEOUT_S`. :class:`Credentials` decides:

* open mode (no tokens): any identifier, first come first served: the first connection that
  uses an identifier fixes its passkey, and a later one with another passkey is refused with
  the real server's message ``Failed to validate client: Invalid client passkey for client "X"``;
* a token table: only the ``sk-lm-<8>:<20>`` pairs given pass (SDK 1.6 splits a token into
  identifier and passkey; SDK 1.5.0 cannot send one, so it is always refused).

Plain state, loop-confined.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection

from elaria.errors import ConfigError

__all__ = ["AUTH_TIMEOUT_S", "Credentials", "parse_token", "read_auth_packet"]

#: The real server gives up on a client that sends no valid auth packet within 10 s.
AUTH_TIMEOUT_S = 10.0
#: The real server's schema bound on identifier and passkey length.
MAX_FIELD = 256
_TOKEN = re.compile(r"^sk-lm-(?P<id>[A-Za-z0-9]{8}):(?P<key>[A-Za-z0-9]{20})$")


def parse_token(token: str) -> tuple[str, str]:
    """``sk-lm-<8>:<20>`` -> (clientIdentifier, clientPasskey); ConfigError otherwise."""
    match = _TOKEN.match(token.strip())
    if match is None:
        raise ConfigError(
            f"invalid API token {token[:12]!r}...",
            where="--token",
            hint="A token looks like sk-lm-ABCD1234:abcdefghij0123456789 (8 and 20 letters or "
            "digits after sk-lm-).",
        )
    return match["id"], match["key"]


async def read_auth_packet(ws: ServerConnection) -> dict[str, str]:
    """The first frame that is a valid auth packet (the caller bounds the wait)."""
    while True:
        raw = await ws.recv()
        with contextlib.suppress(ValueError):
            packet = json.loads(raw)
            if (
                isinstance(packet, dict)
                and packet.get("authVersion") == 1
                and isinstance(packet.get("clientIdentifier"), str)
                and isinstance(packet.get("clientPasskey"), str)
                and len(packet["clientIdentifier"]) <= MAX_FIELD
                and len(packet["clientPasskey"]) <= MAX_FIELD
            ):
                return packet


class Credentials:
    """Open mode (first come, first served) or a token table; see the module docstring."""

    def __init__(self, tokens: Sequence[str] = ()) -> None:
        self.token_table = dict(parse_token(t) for t in tokens)
        self._first_seen: dict[str, str] = {}

    def check(self, ident: str, key: str) -> str | None:
        """``None`` when the pair may connect, else the real server's error string."""
        if self.token_table:
            if self.token_table.get(ident) == key:
                return None
            if ident not in self.token_table:
                return f'Failed to validate client: Unknown client "{ident}"'
            return f'Failed to validate client: Invalid client passkey for client "{ident}"'
        if self._first_seen.setdefault(ident, key) != key:
            return f'Failed to validate client: Invalid client passkey for client "{ident}"'
        return None
