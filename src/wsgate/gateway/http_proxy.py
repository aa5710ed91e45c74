"""The HTTP reverse proxy of one route (``/api`` → the REST API): streaming both ways, balanced over the
route's upstreams, every wait bounded.

What is forwarded — the request-target, the header fields each way, why ``Cookie`` and ``Authorization``
pass on HTTP routes — is decided by the pure functions in :mod:`wsgate.gateway.forwarding`; this module only
moves bytes and maps failures to statuses.

Lifecycle: ``await proxy.start()`` before the first request (the app's ``on_startup``), ``await
proxy.close()`` after the last (``on_cleanup``). ``start`` creates one :class:`aiohttp.ClientSession` per
proxy, unless one was passed in (then the caller closes it). A request arriving before ``start`` starts it;
one arriving after ``close`` is answered 503.

**Upstream choice.** :class:`~wsgate.gateway.upstreams.UpstreamPool` orders the candidates (round-robin,
benched ones last). A candidate that cannot be connected to — refused, unreachable, TLS failure, no
connection within ``limits.upstream_timeout`` (waiting for a free pooled connection included) — is benched
and the next one is tried: nothing of the request has been sent, nor read from the client. Once the request
has gone out the gateway never sends it again; aiohttp's client alone repeats an idempotent request (GET,
HEAD, OPTIONS, TRACE, PUT, DELETE) once, on a new connection, when the first fails before any response byte
and before any body byte was read from the client (RFC 9112 §9.3.1: a kept-alive connection the upstream
was closing).

**Statuses.** 400: framing or path the gateway will not forward (:func:`~wsgate.gateway.forwarding.
check_framing`, :func:`~wsgate.gateway.forwarding.upstream_target`), or a request body that breaks its own
framing midway. 408: the client stopped sending its body for ``CLIENT_IDLE_TIMEOUT``. 502: no upstream could
be connected to (each failure logged once on ``wsgate.gateway``; a certificate that does not verify is an
error line naming the upstream and "certificate verify failed"), or the upstream broke the exchange before
its response head. 504: connecting, or the response head after the request was sent, took longer than
``limits.upstream_timeout``, or the upstream stopped reading the request body for that long. Once the
response head has been passed on, a failure can only cut the connection: the client sees a truncated body
(a missing last chunk, or fewer bytes than ``Content-Length``), never a clean end.

**Timeouts** (all "idle" bounds, so a large transfer that keeps moving is never cut):
``limits.upstream_timeout`` for each connect attempt, for the response head once the request body is sent,
between two chunks of the response body, and for the upstream to accept each chunk of the request body;
``CLIENT_IDLE_TIMEOUT`` (``limits.idle_timeout`` when set) for the client to send each chunk of its body
and to accept each chunk of the response.

**Logs.** One line per request on ``wsgate.access``: peer, method, redacted request-target (credential query
parameters as ``[redacted]``), route, status, body bytes in and out, duration, upstream, and an error label
when the exchange failed. Never a header value.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from wsgate.config import GatewayLimits, Route
from wsgate.gateway.forwarding import (
    RejectedRequest,
    check_framing,
    request_headers,
    response_headers,
    upstream_target,
    upstream_url,
)
from wsgate.gateway.tls import upstream_ssl_context
from wsgate.gateway.upgrade import UpstreamTarget, parse_upstream
from wsgate.gateway.upstreams import UpstreamPool
from wsgate.logs import access_log, redact_url

__all__ = ["CLIENT_IDLE_TIMEOUT", "UPSTREAM_CONNECTIONS_PER_HOST", "UPSTREAM_KEEPALIVE", "HttpProxy"]

log = logging.getLogger("wsgate.gateway")

# Connections kept open to one upstream host at most; requests beyond it wait for a free one (within
# upstream_timeout). A Django deployment serves far fewer requests at once (gunicorn: 2-4 workers per core).
UPSTREAM_CONNECTIONS_PER_HOST: Final = 100
# How long an idle keep-alive connection to an upstream is kept. Below uvicorn's 5 s and nginx's 75 s, so the
# gateway usually closes first; a server closing sooner (gunicorn: 2 s) is seen closing before reuse, but for
# a request that races its FIN.
UPSTREAM_KEEPALIVE: Final = 4.0
# A client that neither sends a byte of its upload nor accepts a byte of its download for this long has gone
# away; nginx's client_body_timeout and send_timeout are 60 s too. limits.idle_timeout overrides it when set.
CLIENT_IDLE_TIMEOUT: Final = 60.0

# Headers aiohttp's client adds on its own; the gateway sends what the client sent, nothing more.
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class _ClientBodyFailed(Exception):
    """Raised into aiohttp's request writer when reading the client's body fails; not an OSError, so aiohttp
    does not mistake it for an upstream socket error. The cause is in :attr:`_RequestBody.failure`."""


@dataclass(slots=True)
class _Failure:
    """Why an exchange ended early: the status to answer (when nothing was sent yet) and a log label."""

    status: int
    label: str
    message: str


_CLIENT_GONE: Final = _Failure(499, "client-gone", "")  # nothing can be answered (nginx's 499)


class _Deadline:
    """An ``asyncio.Timeout`` that the request-body writer (another task) can push back or pause, and that
    ignores calls once the request has its response head (the ``async with`` has been left)."""

    def __init__(self, timeout: asyncio.Timeout, seconds: float) -> None:
        self._timeout = timeout
        self._seconds = seconds
        self.open = True

    def extend(self) -> None:
        if self.open:
            self._timeout.reschedule(asyncio.get_running_loop().time() + self._seconds)

    def pause(self) -> None:
        if self.open:
            self._timeout.reschedule(None)


class _RequestBody:
    """The client's request body as an async iterator of chunks, as they arrive (no buffering)."""

    def __init__(self, request: web.Request, client_idle: float) -> None:
        self._request = request
        self._client_idle = client_idle
        self.started = False
        self.sent = 0
        self.failure: _Failure | None = None

    async def chunks(self, deadline: _Deadline) -> AsyncIterator[bytes]:
        self.started = True
        content = self._request.content
        while True:
            deadline.pause()  # waiting for the client now, not the upstream
            try:
                async with asyncio.timeout(self._client_idle):
                    chunk = await content.readany()
            except TimeoutError:
                self.failure = _Failure(408, "client-body-timeout", "the request body stopped arriving\n")
                raise _ClientBodyFailed from None
            except (HttpProcessingError, OSError, aiohttp.ClientError) as exc:
                transport = self._request.transport
                if (
                    isinstance(exc, HttpProcessingError)
                    and transport is not None
                    and not transport.is_closing()
                ):
                    # A bad chunk size or the like (the parser's message quotes the client's bytes: not sent).
                    self.failure = _Failure(400, "client-body-invalid", "bad request: malformed body\n")
                else:
                    self.failure = _CLIENT_GONE  # the connection was lost, or closed short of Content-Length
                raise _ClientBodyFailed from None
            if not chunk:
                # aiohttp's sock_read timeout takes over for the response head once the body is written.
                deadline.pause()
                return
            self.sent += len(chunk)
            deadline.extend()  # the upstream must take this chunk within upstream_timeout
            yield chunk


@dataclass(slots=True)
class _Exchange:
    """What the access log line says about one request."""

    started: float
    target: str
    status: int = 0
    upstream: str = "-"
    bytes_in: int = 0
    bytes_out: int = 0
    error: str = ""


class HttpProxy:
    """Forwards the requests of one HTTP route to its upstreams. ``handle`` is the aiohttp handler; mount it
    at ``route.path`` and ``route.path.rstrip("/") + "/{tail:.*}"``."""

    def __init__(
        self, route: Route, *, limits: GatewayLimits, session: aiohttp.ClientSession | None = None
    ) -> None:
        if route.websocket:
            raise ValueError(f"route {route.path!r} is a WebSocket route")
        if session is not None and not isinstance(session.cookie_jar, aiohttp.DummyCookieJar):
            # A real jar would store one client's Set-Cookie and send it with everybody's requests.
            raise ValueError("the proxy's ClientSession must use aiohttp.DummyCookieJar()")
        self.route = route
        self.limits = limits
        self.pool = UpstreamPool(route.upstream)
        self.targets: dict[str, UpstreamTarget] = {url: parse_upstream(url) for url in route.upstream}
        self.ssl_context: ssl.SSLContext | None = None
        if any(target.secure for target in self.targets.values()):
            self.ssl_context = upstream_ssl_context(route.tls, route=route.path)
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._client_idle = limits.idle_timeout or CLIENT_IDLE_TIMEOUT
        # connect: waiting for a pooled connection, TCP and TLS; sock_read: the response head once the body is
        # written (aiohttp starts it then), and each read of the response body after it.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=limits.upstream_timeout, sock_read=limits.upstream_timeout
        )

    async def start(self) -> None:
        """Create the client session (one connection pool for the route's upstreams), unless given one."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=0,  # per host instead:
            limit_per_host=UPSTREAM_CONNECTIONS_PER_HOST,
            keepalive_timeout=UPSTREAM_KEEPALIVE,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,  # never route through an HTTP(S)_PROXY from the environment
            timeout=self._timeout,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        """Close the session if the proxy created it; later requests are answered 503."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        exchange = _Exchange(started=time.monotonic(), target=request.raw_path)
        try:
            response = await self._forward(request, exchange)
            exchange.status = response.status
            return response
        finally:
            self._log_access(request, exchange)

    # --- one exchange -------------------------------------------------------------------------------------

    async def _forward(self, request: web.Request, exchange: _Exchange) -> web.StreamResponse:
        if self._closed:
            return await _error(_Failure(503, "closed", "the gateway is shutting down\n"), exchange, request)
        if self._session is None:
            await self.start()
        session = self._session
        assert session is not None
        fields = list(request.headers.items())
        try:
            check_framing(fields)
            targets = {
                url: upstream_target(request.raw_path, self.route, t) for url, t in self.targets.items()
            }
        except RejectedRequest as exc:
            return await _error(
                _Failure(exc.status, "rejected", f"bad request: {exc.message}\n"), exchange, request
            )

        body = _RequestBody(request, self._client_idle) if request.body_exists else None
        failure = _Failure(502, "upstream-unreachable", "no upstream could be reached\n")
        for url in self.pool.candidates():
            target = self.targets[url]
            exchange.upstream = url
            headers = request_headers(
                fields, route=self.route, upstream=target, peer=request.remote, scheme=request.scheme
            )
            outcome = await self._send(
                session, request, url, upstream_url(target, targets[url]), headers, body
            )
            if isinstance(outcome, aiohttp.ClientResponse):
                self.pool.succeeded(url)
                return await self._relay(request, outcome, exchange, body)
            failure, retry = outcome
            if not retry or (body is not None and body.started):
                break
        if body is not None:
            exchange.bytes_in = body.sent
        return await _error(failure, exchange, request)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        request: web.Request,
        url: str,
        full_url: str,
        headers: list[tuple[str, str]],
        body: _RequestBody | None,
    ) -> aiohttp.ClientResponse | tuple[_Failure, bool]:
        """The upstream's response, its head read; or the failure, and whether to try the next candidate."""
        target = self.targets[url]
        route = self.route.path
        try:
            async with asyncio.timeout(None) as timeout:
                deadline = _Deadline(timeout, self.limits.upstream_timeout)
                try:
                    return await session.request(
                        request.method,
                        URL(full_url, encoded=True),  # encoded: the raw path goes out byte for byte
                        headers=CIMultiDict(headers),
                        data=None if body is None else body.chunks(deadline),
                        allow_redirects=False,
                        auto_decompress=False,
                        timeout=self._timeout,
                        ssl=self.ssl_context if target.secure and self.ssl_context is not None else True,
                        skip_auto_headers=_NO_AUTO_HEADERS,
                        # The bound the gateway puts on request heads holds for response heads too.
                        max_line_size=self.limits.max_header,
                        max_field_size=self.limits.max_header,
                    )
                finally:
                    deadline.open = False
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = getattr(exc.certificate_error, "verify_message", "") or str(exc.certificate_error)
            log.error(
                "route %s: upstream %s: certificate verify failed (%s); trust its CA with the route's tls.ca",
                route,
                url,
                reason,
            )
            self.pool.failed(url)
            return _Failure(502, "upstream-certificate", "no upstream could be reached\n"), True
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS, TLS handshake
            log.warning("route %s: upstream %s unreachable: %s", route, url, _os_reason(exc.os_error))
            self.pool.failed(url)
            return _Failure(502, "upstream-unreachable", "no upstream could be reached\n"), True
        except aiohttp.ConnectionTimeoutError:
            log.warning(
                "route %s: upstream %s: no connection within %gs", route, url, self.limits.upstream_timeout
            )
            self.pool.failed(url)
            return _Failure(504, "upstream-connect-timeout", "the upstream did not answer in time\n"), True
        except (aiohttp.ClientError, OSError) as exc:
            # The request (or part of it) went out: never sent again. TimeoutError is an OSError: either our
            # deadline on the request body, or aiohttp's sock_read on the response head.
            if body is not None and body.failure is not None:
                return body.failure, False
            if request.transport is None or request.transport.is_closing():
                return _CLIENT_GONE, False
            if isinstance(exc, TimeoutError):
                log.warning(
                    "route %s: upstream %s did not answer within %gs",
                    route,
                    url,
                    self.limits.upstream_timeout,
                )
                return _Failure(504, "upstream-timeout", "the upstream did not answer in time\n"), False
            log.warning("route %s: upstream %s failed before answering: %s", route, url, type(exc).__name__)
            return _Failure(502, "upstream-failed", "the upstream failed to answer\n"), False

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        exchange: _Exchange,
        body: _RequestBody | None,
    ) -> web.StreamResponse:
        """Pass the upstream's response on, its body chunk by chunk as it arrives."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in response_headers(list(upstream.headers.items())):
            response.headers.add(name, value)
        exchange.status = upstream.status
        complete = False
        side = "client"
        try:
            await response.prepare(request)
            while True:
                side = "upstream"
                chunk = await upstream.content.readany()  # bounded by sock_read
                if not chunk:
                    break
                side = "client"
                async with asyncio.timeout(self._client_idle):
                    await response.write(chunk)
                exchange.bytes_out += len(chunk)
            await response.write_eof()
            complete = True
        except (aiohttp.ClientError, OSError) as exc:
            if side == "upstream" and not (request.transport is None or request.transport.is_closing()):
                exchange.error = "upstream-body-timeout" if isinstance(exc, TimeoutError) else "upstream-body"
                log.warning(
                    "route %s: upstream %s: response body cut (%s)", self.route.path, exchange.upstream,
                    type(exc).__name__,
                )  # fmt: skip
            else:
                exchange.error = "client-gone"
            # Cut the connection so the client cannot take what it got for the whole body.
            response.force_close()
            if request.transport is not None:
                request.transport.abort()
        finally:
            if body is not None:
                exchange.bytes_in = body.sent
            if complete:
                upstream.release()  # back to the pool for the next request
            else:
                upstream.close()
        return response

    def _log_access(self, request: web.Request, exchange: _Exchange) -> None:
        access_log.info(
            "http peer=%s method=%s target=%s route=%s status=%s in=%d out=%d duration=%.3fs upstream=%s%s",
            request.remote or "-",
            request.method,
            redact_url(exchange.target),
            self.route.path,
            exchange.status or "-",
            exchange.bytes_in,
            exchange.bytes_out,
            time.monotonic() - exchange.started,
            exchange.upstream,
            f" error={exchange.error}" if exchange.error else "",
        )


async def _error(failure: _Failure, exchange: _Exchange, request: web.Request) -> web.StreamResponse:
    """The response for an exchange that ended before the upstream's response head was passed on."""
    exchange.status = failure.status
    exchange.error = failure.label
    transport = request.transport
    if failure is _CLIENT_GONE:
        if transport is not None:
            transport.abort()  # nothing can be answered; the status only goes to the access log
        return web.Response(status=failure.status)
    response = web.Response(status=failure.status, text=failure.message)
    if failure.status in (400, 408) and not request.content.is_eof():
        # The request body is refused or unfinished: its framing cannot be trusted to find a next request, and
        # aiohttp would otherwise linger reading it. Answer, then close.
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        if transport is not None:
            transport.close()
    return response


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
