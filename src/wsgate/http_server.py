"""Serving an aiohttp application with the bounds wsgate promises, shared by the hub and the gateway.

aiohttp bounds header sizes but not the time a client may take to send them, so a client trickling one
header byte a second (slowloris) would hold a connection forever. :class:`GuardedRequestHandler` gives each
connection a deadline to deliver a complete request head, counted from accept and again after each response;
:func:`handshake_guard` is the middleware that stops and restarts that clock.

aiohttp bounds each header line (8 KiB) and their number (128), which still lets one head reach 1 MiB. The
handler also bounds the whole head (``max_head``): a head still arriving is cut with ``431`` as soon as it
passes the bound, so a connection holds at most that much of an unfinished head, and the middleware refuses
a complete head over it (one that arrived pipelined behind another request) with ``431`` too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from wsgate.front import FrontProtocol, UpgradeHandler, head_size, peer_address

log = logging.getLogger("wsgate.server")

# aiohttp's own defaults (8190 bytes a line or header, 128 headers), kept explicit because they are a promise.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
# A whole request head: Node's default (--max-http-header-size) and h11's; the gateway's limits.max_header.
MAX_HEAD = 16 * 1024

# Written straight to the transport when a head outgrows MAX_HEAD before aiohttp has parsed it.
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 36\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large\n"
)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus a deadline for each request head."""

    __slots__ = ("_guard", "_guard_timeout", "_head_size", "_head_tail", "_in_head", "_refused", "max_head")

    def __init__(
        self, manager: web.Server, *, guard_timeout: float, max_head: int = MAX_HEAD, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard_timeout = guard_timeout
        self._guard: asyncio.TimerHandle | None = None
        self.max_head = max_head
        self._in_head = False  # counting the bytes of a request head that has not ended yet
        self._head_size = 0
        self._head_tail = b""  # the last bytes seen, to find a blank line split across reads
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.arm_guard()
        self.expect_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.disarm_guard()
        super().connection_lost(exc)

    def expect_head(self) -> None:
        """What arrives next starts a request head: count it against ``max_head``."""
        self._in_head = True
        self._head_size = 0
        self._head_tail = b""

    def _count_head(self, data: bytes) -> int:
        """Add ``data`` to the head being received; returns the head's size so far, or whole once it ended."""
        if not self._head_size:
            data = data.lstrip(b"\r\n")  # RFC 9112 §2.2: empty lines before a request line are ignored
        window = self._head_tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            self._head_size += len(data)
            self._head_tail = window[-3:]
        else:
            self._head_size += end + 4 - len(self._head_tail)
            self._in_head = False
        return self._head_size

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the connection ends once the refusal is answered; what else the client sends is dropped
        if self._in_head and data and self._count_head(data) > self.max_head:
            self._refused = True
            if self.transport is not None:
                peer = peer_address(self.transport) or "-"
                log.info("refused a request head over %d bytes from %s: 431", self.max_head, peer)
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()
            return
        super().data_received(data)
        messages = self._messages
        if messages and not isinstance(messages[-1][0], RawRequestMessage):
            # aiohttp queued a parse error (400, 431). Until it is answered, every further chunk would be
            # parsed again and queued as one more error whose traceback holds that chunk: up to 32 chunks of
            # 256 KiB, some 16 MiB a connection for a head limited to 8 KiB. Stop reading instead.
            self._refused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def arm_guard(self) -> None:
        if self._guard is None and self.transport is not None:
            self._guard = asyncio.get_running_loop().call_later(self._guard_timeout, self._guard_expired)

    def rearm_guard(self, delay: float) -> None:
        """Give the head being received ``delay`` seconds: what is left of a deadline that began earlier."""
        self.disarm_guard()
        if self.transport is not None:
            self._guard = asyncio.get_running_loop().call_later(delay, self._guard_expired)

    def disarm_guard(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not handle, without echoing or logging any of its bytes.

        aiohttp's own version quotes the offending request line in its log and in the response body, and that
        line may be someone's ``Authorization`` or ``Cookie`` header.
        """
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()
        ):
            status = 431  # RFC 6585 §5: the request head is larger than we accept
        if status >= 500:
            log.error(
                "error handling a request from %s: %s", request.remote, type(exc).__name__, exc_info=exc
            )
        else:
            log.info("refused a malformed request from %s: %d %s", request.remote, status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way; closing the connection")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(status=status, text=f"{status} {phrase}\n")
        response.force_close()
        return response

    def _guard_expired(self) -> None:
        self._guard = None
        if self.transport is not None:
            log.debug("closing a connection that sent no complete request within %.1fs", self._guard_timeout)
            self.transport.abort()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def handshake_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    protocol = request.protocol
    if not isinstance(protocol, GuardedRequestHandler):
        return await handler(request)
    protocol.disarm_guard()
    try:
        if head_size(request) > protocol.max_head:
            # Only a head that arrived behind another request's gets here; the rest were cut while arriving.
            log.info("refused a request head over %d bytes from %s: 431", protocol.max_head, request.remote)
            response = web.Response(status=431, text="431 Request Header Fields Too Large\n")
            response.force_close()
            return response
        return await handler(request)
    finally:
        # The connection may carry another request (keep-alive): its head gets a fresh deadline, and once the
        # body (if any) has all arrived, what comes next is that head.
        transport = request.transport
        if transport is not None and not transport.is_closing():
            protocol.arm_guard()
            if not request.body_exists or request.content.is_eof():
                protocol.expect_head()


class Listener:
    """An aiohttp application bound to one address, with a handshake deadline on every connection.

    With ``upgrades``, each connection's first request is routed by :class:`~wsgate.front.FrontProtocol`:
    upgrades on the handler's paths go to it directly, the rest to the application.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        handshake_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 10.0,
        backlog: int = 1024,
        max_head: int = MAX_HEAD,
        upgrades: UpgradeHandler | None = None,
    ) -> None:
        self.app = app
        self.upgrades = upgrades
        self.host = host
        self.port = port
        self.handshake_timeout = handshake_timeout
        self.max_head = max_head
        self.ssl_context = ssl_context
        self.backlog = backlog
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
        )
        self._server: asyncio.Server | None = None

    def url(self, scheme: str) -> str:
        """``scheme://host:port`` of the bound address (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()

        def protocol_factory() -> GuardedRequestHandler:
            return GuardedRequestHandler(
                manager,
                loop=loop,
                guard_timeout=self.handshake_timeout,
                max_head=self.max_head,
                keepalive_timeout=self.handshake_timeout,
                # Not aiohttp's access log: it prints query strings, and with them tickets and tokens.
                access_log=None,
                max_line_size=MAX_LINE_SIZE,
                max_field_size=MAX_FIELD_SIZE,
                max_headers=MAX_HEADERS,
            )

        upgrades = self.upgrades

        def front_factory() -> FrontProtocol:
            assert upgrades is not None
            return FrontProtocol(
                upgrades, protocol_factory, timeout=self.handshake_timeout, max_head=self.max_head
            )

        self._server = await loop.create_server(
            protocol_factory if upgrades is None else front_factory,
            self.host,
            self.port,
            ssl=self.ssl_context,
            backlog=self.backlog,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        await self.stop_accepting()
        await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
