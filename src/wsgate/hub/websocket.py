"""``/ws``: admission of a WebSocket upgrade and the hand-over of its connection to a :class:`Session`.

The listener's front (:mod:`wsgate.front`) gives us the parsed request head and the transport; so does
:func:`wsgate.front.take_over` for an upgrade aiohttp routed. The checks are :meth:`Hub.admit`'s, in its
order; a refusal is answered with its status and a one-line reason and the connection closed; an admitted
request gets its 101 written here and the transport's protocol becomes the session. Nothing of the request
(its head, headers, credential) is kept once the session exists.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from wsgate.errors import AuthError, HandshakeError
from wsgate.front import OnEnd, peer_address, refuse
from wsgate.handshake import switching_protocols
from wsgate.http_head import RequestHead
from wsgate.hub.core import Draining, Hub, Overloaded
from wsgate.hub.session import Session
from wsgate.logs import access_log

PATH = "/ws"


# What Hub.admit and Hub.check_handshake raise.
ADMISSION_ERRORS = (HandshakeError, AuthError, Overloaded, Draining)


def reject(
    hub: Hub, transport: asyncio.Transport, exc: Exception, on_end: OnEnd | None, *, endpoint: str = "ws"
) -> None:
    """Refuse a handshake that failed admission: count it, log it, answer its status and close."""
    headers: Mapping[str, str] | None = None
    if isinstance(exc, HandshakeError):
        status, reason, message, headers = exc.status, "bad_handshake", exc.message, exc.headers
        if status == 426:
            reason = "not_websocket"
    elif isinstance(exc, AuthError):
        status, reason, message = exc.status, exc.reason, exc.message
    elif isinstance(exc, Overloaded):
        status, reason, message, headers = 429, "too_many_connections", str(exc), {"Retry-After": "5"}
    else:
        status, reason, message = 503, "draining", str(exc)
    hub.reject(reason)
    peer = peer_address(transport) or "-"
    access_log.info("%s reject status=%d reason=%s peer=%s", endpoint, status, reason, peer)
    # A plain one-line reason: never the request's headers, query or credential.
    refuse(transport, status, message, headers, on_end)


class WebSocketEndpoint:
    """Serves ``/ws`` (an :class:`~wsgate.front.Acceptor`)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def accept(
        self, head: RequestHead, transport: asyncio.Transport, data: bytes, on_end: OnEnd | None
    ) -> None:
        hub = self.hub
        try:
            grant = hub.admit(head.method, head.headers)
        except ADMISSION_ERRORS as exc:
            reject(hub, transport, exc, on_end)
            return
        # Admission and the 101 happen in this one callback, so no other handshake can slip in between the
        # capacity check and the session being counted: no slot needs reserving meanwhile.
        session = Session(
            hub,
            transport,
            grant,
            session_id=secrets.token_urlsafe(9),
            connected_at=datetime.now(UTC).isoformat(timespec="seconds"),
            opened=time.monotonic(),
            on_end=on_end,
        )
        transport.set_protocol(session)
        # No subprotocol is selected and no extension accepted (the hub never compresses: docs/hub.md).
        transport.write(switching_protocols(head.headers["Sec-WebSocket-Key"].strip()))
        hub.open_session(session)
        peer = peer_address(transport) or "-"
        access_log.info("ws open id=%s subject=%s peer=%s", session.id, grant.subject, peer)
        session.start(data)
