"""Validation of a WebSocket opening handshake (RFC 6455 §4.2.1), pure; shared by the hub and the gateway."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from wsgate.errors import HandshakeError

WEBSOCKET_VERSION = "13"


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
