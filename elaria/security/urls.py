"""``validate_ws_url``: where Elaria may connect to LM Studio.

Plain ``ws://`` only to loopback spelled canonically (``localhost``, dotted-quad 127.0.0.0/8,
``[::1]``); any other host must be listed in ``allowed_remote_hosts`` and use ``wss://``, unless
the operator opts into plaintext for a LAN machine. Checks run on the raw string first, because
``urllib.parse.urlsplit`` silently strips tabs and newlines. Pure function, any thread.
"""

from __future__ import annotations

import ipaddress
import socket
import unicodedata
from collections.abc import Collection
from urllib.parse import urlsplit

from loguru import logger

from elaria.security.violations import refuse

__all__ = ["MAX_URL_CHARS", "validate_ws_url"]

MAX_URL_CHARS = 2048

_HINT = (
    "use ws://localhost:1234, or wss://<host>:<port> for a host in security.allowed_remote_hosts"
)


def validate_ws_url(
    url: str,
    *,
    allowed_remote_hosts: Collection[str] = (),
    allow_plaintext_remote: bool = False,
) -> str:
    """Return ``url`` unchanged if Elaria may connect there; else refuse it (rules ``url.*``)."""
    if not isinstance(url, str) or not url:
        raise refuse("url.invalid", f"the URL must be a non-empty string; {_HINT}", value=url)
    if len(url) > MAX_URL_CHARS:
        raise refuse("url.too_long", f"the URL is longer than {MAX_URL_CHARS} characters")
    for ch in url:
        if ch.isspace() or ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            raise refuse(
                "url.characters",
                f"the URL contains whitespace, a control character or a backslash "
                f"(U+{ord(ch):04X}); {_HINT}",
                value=url,
            )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise refuse("url.scheme", f"the URL scheme must be ws or wss; {_HINT}", value=url)
    if "#" in url:
        raise refuse("url.fragment", "the URL must not have a #fragment", value=url)
    if "@" in parts.netloc:
        raise refuse(
            "url.userinfo",
            "the URL must not contain user:password@; configure credentials separately",
            value=url,
            severity="high",
        )
    _check_port(parts.netloc, url)
    host = parts.hostname
    if not host:
        raise refuse("url.host", f"the URL has no host; {_HINT}", value=url)
    if _is_canonical_loopback(host, parts.netloc):
        return url
    canonical = _canonical_remote(host, url)
    allowed = {_allowlisted(h) for h in allowed_remote_hosts}
    if canonical not in allowed:
        raise refuse(
            "url.remote_not_allowed",
            f"the host {host!r} is not loopback and not in security.allowed_remote_hosts; "
            "add it there to connect to LM Studio on another machine",
            value=url,
        )
    if scheme == "ws":
        if not allow_plaintext_remote:
            raise refuse(
                "url.plaintext_remote",
                f"ws:// to the remote host {host!r} is unencrypted; use wss://, or opt in to "
                "plaintext on a trusted LAN (allow_plaintext_remote)",
                value=url,
            )
        logger.bind(kind="security", rule="url.plaintext_remote", severity="low").warning(
            "connecting to {host} over unencrypted ws:// (plaintext explicitly allowed)", host=host
        )
    return url


def _check_port(netloc: str, url: str) -> None:
    hostport = netloc.rsplit("]", 1)[-1] if netloc.startswith("[") else netloc
    if ":" not in hostport:
        return
    port = hostport.rsplit(":", 1)[1]
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65_535 and port[0] != "0"):
        raise refuse("url.port", f"the port must be a number from 1 to 65535; {_HINT}", value=url)


def _is_canonical_loopback(host: str, netloc: str) -> bool:
    if host == "localhost":
        return True
    if netloc.startswith("[::1]"):
        return True
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return str(address) == host and address in ipaddress.IPv4Network("127.0.0.0/8")


def _canonical_remote(host: str, url: str) -> str:
    """The host as compared with the allowlist; refuses IP addresses spelled non-canonically."""
    if ":" in host or host.startswith("["):
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise refuse("url.host", f"{host!r} is not a valid IPv6 address", value=url) from None
        if v6.ipv4_mapped is not None or v6.is_unspecified or v6.is_loopback or v6.scope_id:
            raise refuse(
                "url.ip_noncanonical",
                f"the address {host!r} is a disguised or unspecified IP; {_HINT}",
                value=url,
            )
        if str(v6) != host:
            raise refuse("url.ip_noncanonical", f"write the IPv6 address as {str(v6)!r}", value=url)
        return host
    if _looks_numeric(host):
        try:
            v4 = ipaddress.IPv4Address(host)
        except ValueError:
            v4 = None
        if v4 is None or str(v4) != host or v4.is_unspecified or v4.is_loopback:
            raise refuse(
                "url.ip_noncanonical",
                f"{host!r} is an IP address spelled in a non-canonical or unspecified form "
                f"(decimal, hex, octal, shortened, 0.0.0.0); {_HINT}",
                value=url,
                severity="high",
            )
        return host
    return _idna(host, url)


def _looks_numeric(host: str) -> bool:
    """Whether a resolver could read ``host`` as an IPv4 address (inet_aton's lenient forms)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return host.replace(".", "").isdigit()
    return True


def _allowlisted(entry: str) -> str | None:
    """An allowlist entry in the form hosts are compared in (IPs canonical, names IDNA)."""
    text = entry.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return None  # an entry that names no host matches nothing


def _idna(host: str, url: str) -> str:
    try:
        return host.strip().lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise refuse("url.host", f"the host {host!r} is not a valid host name", value=url) from None
