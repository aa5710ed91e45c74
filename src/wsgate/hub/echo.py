"""``GET /echo``: a test-only echo endpoint, mounted only with ``[hub] echo = true``.

It exists for the Autobahn|Testsuite fuzzing client (``scripts/conformance``), which checks the WebSocket
implementation the hub serves ``/ws`` with: every text and binary message comes back as it was received,
encoded by the hub's own :func:`~wsgate.hub.frames.server_frame`, and close frames are answered as on ``/ws``.
Unlike ``/ws`` it accepts permessage-deflate when offered, so that the suite's compression cases (12.*, 13.*)
run; messages are bounded by ``limits.max_message`` after decompression, as on ``/ws``.

wstest cannot send a credential header, so ``/echo`` admits **without a credential**. Every other check of
``/ws`` applies (:meth:`~wsgate.hub.core.Hub.check_handshake`: draining, upgrade, capacity, Origin), and an
open echo connection holds one of ``limits.max_connections``. Anyone the Origin policy admits can use it:
never enable it outside a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WebSocketError, WSMsgType, web

from wsgate.errors import AuthError, HandshakeError
from wsgate.hub.core import CLOSE_GRACE, GOING_AWAY, Draining, Hub, Overloaded
from wsgate.hub.frames import OP_BINARY, OP_TEXT, close_reply_code, server_frame

access_log = logging.getLogger("wsgate.access")

PATH = "/echo"
ABNORMAL_CLOSURE = 1006  # logged, never sent: the connection was lost without a close frame


class EchoEndpoint:
    """The ``/echo`` handler and the open echo connections, closed with 1001 when the hub shuts down."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._open: set[web.WebSocketResponse] = set()

    def mount(self, app: web.Application) -> None:
        # Every method reaches the handler, as on /ws: a POST is told it is not an upgrade (426).
        app.router.add_route("*", PATH, self.handle)
        app.on_shutdown.append(self._close_all)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        try:
            hub.check_handshake(request.method, request.headers)
        except HandshakeError as exc:
            reason = "not_websocket" if exc.status == 426 else "bad_handshake"
            return self._refuse(request, exc.status, reason, exc.message, exc.headers)
        except AuthError as exc:
            return self._refuse(request, exc.status, exc.reason, exc.message)
        except Overloaded as exc:
            return self._refuse(request, 429, "too_many_connections", str(exc), {"Retry-After": "5"})
        except Draining as exc:
            return self._refuse(request, 503, "draining", str(exc))

        limits = hub.config.limits
        ws = web.WebSocketResponse(
            compress=True,
            max_msg_size=limits.max_message,
            heartbeat=limits.ping_interval,
            timeout=CLOSE_GRACE,
            autoclose=False,  # answered in _echo, as /ws does (close_reply_code)
        )
        opened = time.monotonic()
        # The connection holds a slot for its whole life, so echo clients count against max_connections.
        hub.reserve_handshake()
        try:
            await ws.prepare(request)
            self._open.add(ws)
            access_log.info("echo open peer=%s", request.remote or "-")
            code = await self._echo(request, ws)
        finally:
            self._open.discard(ws)
            hub.release_handshake()
        access_log.info("echo close code=%s duration=%.1fs", code, time.monotonic() - opened)
        return ws

    async def _echo(self, request: web.Request, ws: web.WebSocketResponse) -> int | None:
        """Echo until the connection ends; returns the close code to log: the peer's, or ours on failure."""
        # aiohttp validates frames, UTF-8 (1007) and sizes (1009) and answers pings: what reaches here is a
        # whole message, sent back as it came, or the peer's close.
        while True:
            try:
                message = await ws.receive()
            except ConnectionError:
                # aiohttp answers a ping inside receive() and waits for the pong to drain; a peer that has
                # vanished makes that wait raise (as in Session.receive). A lost connection: 1006.
                await ws.close()
                return ABNORMAL_CLOSURE
            if message.type is WSMsgType.TEXT:
                await self._reply(request, server_frame(message.data.encode(), OP_TEXT))
            elif message.type is WSMsgType.BINARY:
                await self._reply(request, server_frame(message.data, OP_BINARY))
            elif message.type is WSMsgType.CLOSE:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2 * CLOSE_GRACE):
                        await ws.close(code=close_reply_code(message.data))
                return int(message.data)
            elif message.type is WSMsgType.ERROR and isinstance(message.data, WebSocketError):
                # aiohttp failed the connection with this code; ws.close_code would say 1006 when the peer
                # then drops the TCP connection without answering the close frame.
                return int(message.data.code)
            else:  # CLOSING, CLOSED, other errors: aiohttp has closed the connection
                return ws.close_code

    @staticmethod
    async def _reply(request: web.Request, frame: bytes) -> None:
        """Write a frame as ``/ws`` does: encoded by the hub (``server_frame``), straight to the transport.

        So the suite checks the hub's own frame encoder, not aiohttp's. Replies are never compressed, which
        permessage-deflate allows (RFC 7692 §6: a message without RSV1 is uncompressed); the hub never
        compresses either. Unlike a ``/ws`` subscriber, an echo client is waited for, not dropped, when it
        reads slowly.
        """
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        transport.write(frame)
        with contextlib.suppress(ConnectionError):  # the peer is gone: the next receive() says so
            await request.writer.drain()

    def _refuse(
        self,
        request: web.Request,
        status: int,
        reason: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.hub.reject(reason)
        access_log.info("echo reject status=%d reason=%s peer=%s", status, reason, request.remote or "-")
        return web.Response(status=status, text=message + "\n", headers=headers)

    async def _close_all(self, app: web.Application) -> None:
        # Together, so the wait for close frames (CLOSE_GRACE each) does not add up.
        closes = (ws.close(code=GOING_AWAY, message=b"server shutting down") for ws in list(self._open))
        await asyncio.gather(*closes)
