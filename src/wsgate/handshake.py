"""The WebSocket opening handshake (RFC 6455 §4.2), pure: validating the request (shared by the hub and the
gateway) and the server's 101 answer (the hub's)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from wsgate.errors import HandshakeError

WEBSOCKET_VERSION = "13"
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # §1.3


def header_tokens(value: str | None) -> set[str]:
    """The comma-separated tokens of a header, lower-cased (RFC 9110 §5.6.1)."""
    if not value:
        return set()
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def single_header(headers: Mapping[str, str], name: str) -> str | None:
    """The one value of a header that must not repeat, or ``None`` when absent.

    Two ``Origin`` headers (RFC 6454 §7.2 forbids it) would let a check read one while a later hop trusts
    the other; such a request is refused rather than guessed at.
    """
    getall = getattr(headers, "getall", None)
    values: list[str] = getall(name, []) if getall is not None else [headers[name]] if name in headers else []
    if len(values) > 1:
        raise HandshakeError(400, f"more than one {name} header")
    return values[0] if values else None


def check_upgrade(method: str, headers: Mapping[str, str]) -> None:
    """Raise :class:`HandshakeError` unless the request is a well-formed WebSocket upgrade.

    ``headers`` must look names up case-insensitively (aiohttp's ``CIMultiDictProxy``).
    """
    # Browsers send "Connection: Upgrade", Firefox "keep-alive, Upgrade": look for the token, not the value.
    if "websocket" not in header_tokens(headers.get("Upgrade")) or "upgrade" not in header_tokens(
        headers.get("Connection")
    ):
        raise HandshakeError(
            426,
            "this endpoint speaks WebSocket only; send an upgrade request",
            {"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    if method != "GET":
        raise HandshakeError(400, "a WebSocket upgrade must use GET")
    if headers.get("Sec-WebSocket-Version", "").strip() != WEBSOCKET_VERSION:
        # §4.4: answer 426 and name the version we speak.
        raise HandshakeError(
            426, "unsupported WebSocket version; use 13", {"Sec-WebSocket-Version": WEBSOCKET_VERSION}
        )
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 random bytes in base64")


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (§4.2.2 item 5.4): base64 of the SHA-1 of the
    key, as sent, followed by the GUID."""
    # SHA-1 is what the protocol specifies; it proves the server read the handshake, nothing secret.
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii", "replace"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def switching_protocols(key: str, extensions: str | None = None) -> bytes:
    """The 101 answer to a request :func:`check_upgrade` passed, with no subprotocol selected (§4.2.2).

    ``key`` is the request's ``Sec-WebSocket-Key`` (stripped); ``extensions`` the accepted extension, if any.
    A client that offered subprotocols gets none back: it then decides whether to go on (§4.1 and the
    browser API fail only on a protocol the client did not offer).
    """
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
