"""The first protocol on every accepted connection: WebSocket paths go straight to their handler, everything
else to aiohttp.

aiohttp is a fine HTTP server, but a WebSocket connection served through it keeps a request, a response, a
parser and a suspended handler task alive for as long as the connection lasts — some 15 KiB each, and a few
hundred microseconds per handshake. A WebSocket connection needs none of that once its head is read. So
each connection starts here: the request line is read and, when its path belongs to an
:class:`UpgradeHandler` (the gateway's WebSocket routes, the hub's ``/ws``), the head is read and parsed
(:mod:`wsgate.http_head`) and the handler takes the transport over — or, for a head the handler has seen
before but for its key, takes it over unparsed (:meth:`UpgradeHandler.recall`). Any other first request — and
every request after it on that connection — is aiohttp's, which receives the connection as if it had accepted
it.

The same bounds hold on both paths: the head must arrive within ``handshake_timeout`` (slowloris) and stay
within ``max_head`` bytes (431). An upgrade arriving on a connection aiohttp already serves (a second request
on a kept-alive connection: no browser does this, some clients might) reaches the same handler through
:func:`take_over`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Protocol

from aiohttp import web

from wsgate.errors import HandshakeError
from wsgate.http_head import HEAD_END, RequestHead, parse_request_head, request_path

log = logging.getLogger("wsgate.server")

OnEnd = Callable[[BaseException | None], None]


class Acceptor(Protocol):
    """Serves upgrade requests on connections it takes over."""

    def accept(
        self, head: RequestHead, transport: asyncio.Transport, data: bytes, on_end: OnEnd | None
    ) -> None:
        """Serve the request ``head`` on ``transport``; ``data`` is what arrived after the head.

        Must set the transport's protocol (``transport.set_protocol``) before returning — even to refuse
        (:func:`refuse`) — and call ``on_end`` once, when the connection is lost, if it is given.
        """
        ...


class UpgradeHandler(Acceptor, Protocol):
    """An acceptor that takes connections whose first request targets one of its paths."""

    def claims(self, path: str) -> bool:
        """Whether requests for ``path`` (raw, without the query) are this handler's."""
        ...

    def recall(self, path: str, raw: bytes, transport: asyncio.Transport, data: bytes) -> bool:
        """Serve the request head ``raw`` for ``path`` from memory, without it being parsed, if it is one the
        handler has seen before but for its key (:mod:`wsgate.gateway.memo`), taking the transport over as
        :meth:`accept` would; ``False`` when it is not one: the head is then parsed and accepted."""
        ...


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The client's IP address, ``""`` when unknown (a Unix socket)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def response_bytes(status: int, message: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with a one-line plain-text body that ends the connection."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (message + "\n").encode()
    extra = {name: value for name, value in (headers or {}).items() if name.lower() != "connection"}
    # One Connection header: a 426 names Upgrade in it (RFC 9110 §15.5.22), and every answer here ends the
    # connection.
    connection = ", ".join(
        [*(value for name, value in (headers or {}).items() if name.lower() == "connection"), "close"]
    )
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"Connection: {connection}",
        *(f"{name}: {value}" for name, value in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Refused(asyncio.Protocol):
    """A connection being answered with an error: what the client still sends is ignored."""

    __slots__ = ("_on_end",)

    def __init__(self, on_end: OnEnd | None) -> None:
        self._on_end = on_end

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_end is not None:
            self._on_end(exc)


def refuse(
    transport: asyncio.Transport,
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    on_end: OnEnd | None = None,
) -> None:
    """Take ``transport`` over, answer ``status`` with ``message`` and close the connection."""
    transport.set_protocol(_Refused(on_end))
    transport.write(response_bytes(status, message, headers))
    transport.close()


class FrontProtocol(asyncio.Protocol):
    """Reads a connection's first request line and decides who serves the connection."""

    __slots__ = (
        "_aiohttp",
        "_buffer",
        "_claimed",
        "_deadline",
        "_guard",
        "_max_head",
        "_path",
        "_scanned",
        "_timeout",
        "_transport",
        "_upgrades",
    )

    def __init__(
        self,
        upgrades: UpgradeHandler,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
        *,
        timeout: float,
        max_head: int,
    ) -> None:
        self._upgrades = upgrades
        self._aiohttp = aiohttp_protocol
        self._max_head = max_head
        self._timeout = timeout
        self._deadline = 0.0  # loop time by which the head must be in
        self._buffer = bytearray()
        # How far the buffer has been searched for the end of the line or head: a head trickled in byte by
        # byte must not be searched from its start each time.
        self._scanned = 0
        self._claimed = False
        self._path = ""  # the claimed request's
        self._transport: asyncio.Transport | None = None
        self._guard: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's or asyncio's)
        loop = asyncio.get_running_loop()
        self._guard = loop.call_later(self._timeout, self._expired)
        self._deadline = loop.time() + self._timeout

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buffer = self._buffer
        buffer += data
        if not self._claimed:
            decided = self._route(buffer, transport)
            if not decided:
                self._check_size(len(buffer), transport)
                return
            if not self._claimed:  # handed over to aiohttp
                return
        end = buffer.find(HEAD_END, max(0, self._scanned - len(HEAD_END) + 1))
        if end < 0:
            self._scanned = len(buffer)
            self._check_size(len(buffer), transport)
            return
        size = end + len(HEAD_END)
        if self._check_size(size, transport):
            return
        self._disarm()
        self._transport = None
        raw, rest = bytes(buffer[:size]), bytes(buffer[size:])
        if self._upgrades.recall(self._path, raw, transport, rest):
            return
        try:
            head = parse_request_head(raw)
        except HandshakeError as exc:
            log.info(
                "refused a malformed request head from %s: %d", peer_address(transport) or "-", exc.status
            )
            refuse(transport, exc.status, exc.message)
            return
        self._upgrades.accept(head, transport, rest, None)

    def _route(self, buffer: bytearray, transport: asyncio.Transport) -> bool:
        """Once the request line is in: claim the connection, or hand it to aiohttp. False until then."""
        start = 0
        while buffer.startswith(b"\r\n", start):  # RFC 9112 §2.2: empty lines before a request are ignored
            start += 2
        end = buffer.find(b"\r\n", max(start, self._scanned - 1))
        if end < 0:
            self._scanned = len(buffer)
            return False
        self._scanned = 0
        path = request_path(bytes(buffer[start:end]))
        if path is not None and self._upgrades.claims(path):
            self._claimed = True
            self._path = path
        else:
            self._hand_to_aiohttp(transport)
        return True

    def _hand_to_aiohttp(self, transport: asyncio.Transport) -> None:
        self._disarm()
        self._transport = None
        protocol = self._aiohttp()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        remaining = self._deadline - asyncio.get_running_loop().time()
        guard = getattr(protocol, "rearm_guard", None)
        if guard is not None:
            guard(max(0.0, remaining))  # the head's deadline counts from accept, not from the hand-over
        protocol.data_received(bytes(self._buffer))
        self._buffer = bytearray()

    def _check_size(self, size: int, transport: asyncio.Transport) -> bool:
        if size <= self._max_head:
            return False
        self._disarm()
        self._transport = None
        log.info(
            "refused a request head over %d bytes from %s: 431",
            self._max_head,
            peer_address(transport) or "-",
        )
        refuse(transport, 431, "431 Request Header Fields Too Large")
        return True

    def eof_received(self) -> bool:
        return False  # a client that stops sending before its head is complete is gone: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _expired(self) -> None:
        self._guard = None
        if self._transport is not None:
            log.debug("closing a connection that sent no complete request head in time")
            self._transport.abort()


class _TailCollector:
    """Stands in for aiohttp's WebSocket reader (``set_parser``) to collect bytes read past the head."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class _HandedOver(web.StreamResponse):
    """Returned by :func:`take_over` once the connection has ended: aiohttp has nothing left to send."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def head_size(request: web.BaseRequest) -> int:
    """The size of a parsed request head as sent: request line, fields with their separators, blank line."""
    line = len(request.method) + len(request.raw_path) + 12  # "GET " + target + " HTTP/1.1\r\n"
    return line + sum(len(name) + len(value) + 4 for name, value in request.raw_headers) + 2


async def take_over(request: web.Request, upgrades: Acceptor) -> web.StreamResponse:
    """Serve a request that aiohttp routed to a claimed path, as the front would have: the handler takes the
    connection, and this coroutine keeps aiohttp's accounting of it until it ends."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return _HandedOver()
    protocol = request.protocol
    fields = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers)
    head = RequestHead(
        method=request.method,
        target=request.raw_path,
        version=f"{request.version.major}.{request.version.minor}",
        fields=fields,
        headers=request.headers,
        size=head_size(request),
    )
    tail = _TailCollector()
    protocol.set_parser(tail)  # type: ignore[arg-type]  # duck-typed like aiohttp's WebSocketReader
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_end(exc: BaseException | None) -> None:
        if not ended.done():
            ended.set_result(None)
        protocol.connection_lost(exc)  # aiohttp's server stops counting the connection

    upgrades.accept(head, transport, tail.data, on_end)
    await ended
    return _HandedOver()
