"""``GET /echo``: a test-only echo endpoint, mounted only with ``[hub] echo = true``.

It exists for the Autobahn|Testsuite fuzzing client (``scripts/conformance``), which checks the WebSocket
implementation the hub serves ``/ws`` with: the same frame reader (:mod:`wsgate.hub.frame_reader`), closing
handshake and keepalive (:mod:`wsgate.hub.connection`), and frame encoder
(:func:`~wsgate.hub.frames.server_frame`). Every text and binary message comes back whole (fragments joined),
and close frames are answered as on ``/ws``.
Unlike ``/ws`` it accepts permessage-deflate when offered (:mod:`wsgate.hub.deflate`), so that the suite's
compression cases (12.*, 13.*) run; messages are bounded by ``limits.max_message`` after inflation, as on
``/ws``, and replies are never compressed.

wstest cannot send a credential header, so ``/echo`` admits **without a credential**. Every other check of
``/ws`` applies (:meth:`~wsgate.hub.core.Hub.check_handshake`: draining, upgrade, capacity, Origin), and an
open echo connection holds one of ``limits.max_connections``. Anyone the Origin policy admits can use it:
never enable it outside a test.
"""

from __future__ import annotations

import asyncio
import time

from wsgate.front import OnEnd, peer_address
from wsgate.handshake import switching_protocols
from wsgate.http_head import RequestHead
from wsgate.hub.connection import WebSocketConnection
from wsgate.hub.core import Hub
from wsgate.hub.deflate import Inflater, accept_offer
from wsgate.hub.frame_reader import FrameReader
from wsgate.hub.frames import GOING_AWAY, OP_BINARY, OP_TEXT, server_frame
from wsgate.hub.websocket import ADMISSION_ERRORS, reject
from wsgate.logs import access_log

PATH = "/echo"


class EchoConnection(WebSocketConnection):
    """Sends every message back. Unlike a ``/ws`` subscriber, a client that reads slowly is waited for:
    while the transport's buffer is full the connection is not read."""

    __slots__ = ("_endpoint", "opened")

    def __init__(
        self,
        endpoint: EchoEndpoint,
        transport: asyncio.Transport,
        reader: FrameReader,
        *,
        max_message: int,
        on_end: OnEnd | None,
    ) -> None:
        super().__init__(transport, reader, max_message=max_message, on_end=on_end)
        self._endpoint = endpoint
        self.opened = time.monotonic()

    def on_text(self, text: str) -> None:
        self.transport.write(server_frame(text.encode(), OP_TEXT))

    def on_binary(self, data: bytes) -> None:
        self.transport.write(server_frame(data, OP_BINARY))

    def wants_input(self) -> bool:
        return not self.writing_paused and super().wants_input()

    def on_closed(self) -> None:
        self._endpoint.closed(self)


class EchoEndpoint:
    """The ``/echo`` acceptor and its open connections, closed with 1001 when the hub shuts down."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.connections: set[EchoConnection] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def accept(
        self, head: RequestHead, transport: asyncio.Transport, data: bytes, on_end: OnEnd | None
    ) -> None:
        hub = self.hub
        try:
            hub.check_handshake(head.method, head.headers)
        except ADMISSION_ERRORS as exc:
            reject(hub, transport, exc, on_end, endpoint="echo")
            return

        agreement = accept_offer(head.headers.getall("Sec-WebSocket-Extensions", []))
        max_message = hub.config.limits.max_message
        inflater = None
        if agreement is not None:
            inflater = Inflater(client_no_context_takeover=agreement.client_no_context_takeover)
        reader = FrameReader(max_message, inflater)
        connection = EchoConnection(self, transport, reader, max_message=max_message, on_end=on_end)
        transport.set_protocol(connection)
        key = head.headers["Sec-WebSocket-Key"].strip()
        transport.write(switching_protocols(key, agreement.response if agreement else None))
        # The connection holds a slot for its whole life, so echo clients count against max_connections.
        hub.reserve_slot()
        hub.keepalive.add(connection)
        self.connections.add(connection)
        self._idle.clear()
        access_log.info("echo open peer=%s", peer_address(transport) or "-")
        connection.start(data)

    def closed(self, connection: EchoConnection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.hub.keepalive.discard(connection)
        self.hub.release_slot()
        access_log.info(
            "echo close code=%s duration=%.1fs", connection.close_code, time.monotonic() - connection.opened
        )
        if not self.connections:
            self._idle.set()

    async def drain(self, deadline: float) -> None:
        """Close every echo connection with 1001, waiting at most ``deadline`` seconds for them to end."""
        for connection in list(self.connections):
            connection.close(GOING_AWAY, "server shutting down")
        try:
            async with asyncio.timeout(deadline):
                await self._idle.wait()
        except TimeoutError:
            for connection in list(self.connections):
                connection.abort()
