"""The WebSocket proxy of one route: the checks before anything reaches the upstream, the upstream handshake,
and the hand-over to the byte relay.

In order (DESIGN.md §3): a real upgrade (400/426), an allowed Origin (403, upstream never contacted), then
the upstream request built from an allowlist with the credential injected, sent over TCP or verified TLS (502
unreachable, 504 too slow), the upstream's refusal relayed as its status, and on 101 the relay.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from wsgate.auth.origins import OriginPolicy
from wsgate.auth.tokens import mint_token
from wsgate.config import SUBJECT_PLACEHOLDER, GatewayLimits, Route
from wsgate.errors import AuthError, HandshakeError
from wsgate.gateway.metrics import GatewayMetrics
from wsgate.gateway.relay import ClientSide, Tunnel, UpstreamSide
from wsgate.gateway.tls import upstream_ssl_context
from wsgate.gateway.upgrade import (
    ClientRequest,
    ResponseHead,
    ResponseHeadParser,
    UpstreamProtocolError,
    UpstreamTarget,
    build_websocket_request,
    check_switching_protocols,
    client_switching_response,
    mint_subject,
    parse_upstream,
    upstream_refusal_status,
    websocket_offer,
)
from wsgate.gateway.upstreams import UpstreamPool
from wsgate.handshake import check_upgrade, single_header

log = logging.getLogger("wsgate.gateway")
access_log = logging.getLogger("wsgate.access")


class UpstreamFailure(Exception):
    """The upstream could not be used; ``status`` is what the client is answered (502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _TailCollector:
    """Receives the bytes aiohttp read past the upgrade request (a client may send its first frame before
    our 101); stands in for aiohttp's WebSocket reader in ``set_parser``."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class WebSocketProxy:
    """Proxies WebSocket upgrades on one route to its upstreams."""

    def __init__(
        self,
        route: Route,
        *,
        origins: OriginPolicy,
        limits: GatewayLimits,
        scheme: str,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.route = route
        self.metrics = metrics or GatewayMetrics()
        self.origins = origins
        self.limits = limits
        self.scheme = scheme
        self.targets = {url: parse_upstream(url) for url in route.upstream}
        self.pool = UpstreamPool(route.upstream)
        self.ssl_context: ssl.SSLContext | None = None
        if any(target.secure for target in self.targets.values()):
            self.ssl_context = upstream_ssl_context(route.tls, route=route.path)
        self.tunnels: set[Tunnel] = set()

    # --- the request --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        raw_headers = request.raw_headers
        client = ClientRequest(
            method=request.method,
            target=request.raw_path,
            # Header bytes are ISO-8859-1 on the wire (RFC 9110 §5.5); latin-1 maps them one to one.
            headers=tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers),
            peer=request.remote or "",
            scheme=self.scheme,
            host=request.headers.get("Host"),
        )
        try:
            check_upgrade(request.method, request.headers)
            self.origins.check(single_header(request.headers, "Origin"))
        except HandshakeError as exc:
            return self._refuse(request, exc.status, exc.message, "bad_handshake", started, exc.headers)
        except AuthError as exc:
            return self._refuse(request, exc.status, exc.message, exc.reason, started)
        try:
            injected = self._injected_headers(request)
            requests = {
                url: build_websocket_request(self.route, target, client, injected=injected)
                for url, target in self.targets.items()
            }
        except HandshakeError as exc:
            return self._refuse(request, exc.status, exc.message, "bad_handshake", started, exc.headers)
        except ValueError as exc:  # HeaderInjectionError, or a bad minted subject; messages hold no values
            return self._refuse(request, 400, str(exc), "bad_request", started)

        tunnel = Tunnel(idle_timeout=self.limits.idle_timeout, max_lifetime=self.limits.max_lifetime)
        try:
            upstream_url, side, upstream_transport, head, leftover = await self._connect(requests, tunnel)
        except UpstreamFailure as exc:
            return self._refuse(request, exc.status, exc.reason, "upstream", started)

        if head.status != 101:
            upstream_transport.close()
            status = upstream_refusal_status(head)
            return self._refuse(request, status, f"the upstream refused the connection ({head.status})",
                                "upstream_refused", started)  # fmt: skip
        offer = websocket_offer(client)
        try:
            check_switching_protocols(head, offer.key, offer.protocols, offer.extensions)
        except UpstreamProtocolError:
            upstream_transport.close()
            log.warning("route %s: upstream %s answered 101 with an invalid handshake", self.route.path,
                        upstream_url)  # fmt: skip
            return self._refuse(request, 502, "the upstream's handshake was invalid", "upstream", started)

        client_transport = request.transport
        if client_transport is None or client_transport.is_closing():  # the client left meanwhile
            upstream_transport.close()
            return _TunnelResponse()
        return await self._relay(request, client_transport, tunnel, side, upstream_transport, head, leftover,
                                 upstream_url, started)  # fmt: skip

    def _injected_headers(self, request: web.Request) -> dict[str, str]:
        route = self.route
        headers = {name: value.reveal() for name, value in route.headers.items()}
        mint = route.mint
        if mint is not None:
            subject = mint_subject(mint.subject, request.raw_path)

            def own(patterns: tuple[str, ...]) -> list[str]:
                return [pattern.replace(SUBJECT_PLACEHOLDER, subject) for pattern in patterns]

            token = mint_token(
                key=mint.key,
                kid=mint.kid or "default",
                subject=subject,
                ttl=mint.ttl,
                subscribe=own(mint.subscribe),
                publish=own(mint.publish),
                audience=mint.audience,
                # The browser behind this relay could never refresh the token: it opens the connection,
                # and the connection outlives it.
                handshake_only=True,
            )
            headers[mint.header] = f"Bearer {token}" if mint.header == "authorization" else token
        return headers

    # --- the upstream handshake ---------------------------------------------------------------------

    async def _connect(
        self, requests: Mapping[str, bytes], tunnel: Tunnel
    ) -> tuple[str, UpstreamSide, asyncio.Transport, ResponseHead, bytes]:
        """Try the route's upstreams in the pool's order; the first that answers with a response head wins."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.upstream_timeout
        failure = UpstreamFailure(502, "no upstream could be reached")
        for url in self.pool.candidates():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamFailure(504, "the upstream did not answer in time")
            try:
                side, transport, head, leftover = await asyncio.wait_for(
                    self._handshake(self.targets[url], requests[url], tunnel), remaining
                )
            except TimeoutError:
                self.pool.failed(url)
                raise UpstreamFailure(504, "the upstream did not answer in time") from None
            except ssl.SSLCertVerificationError as exc:
                log.error("route %s: upstream %s: certificate verify failed (%s)", self.route.path, url,
                          exc.verify_message)  # fmt: skip
                self.pool.failed(url)
                failure = UpstreamFailure(502, "the upstream's certificate could not be verified")
            except (OSError, UpstreamProtocolError) as exc:
                log.warning("route %s: upstream %s failed: %s", self.route.path, url, type(exc).__name__)
                self.pool.failed(url)
            else:
                self.pool.succeeded(url)
                return url, side, transport, head, leftover
        raise failure

    async def _handshake(
        self, target: UpstreamTarget, upgrade_request: bytes, tunnel: Tunnel
    ) -> tuple[UpstreamSide, asyncio.Transport, ResponseHead, bytes]:
        loop = asyncio.get_running_loop()
        parser = ResponseHeadParser(max_size=self.limits.max_header)
        head_ready: asyncio.Future[ResponseHead] = loop.create_future()

        def on_head_data(data: bytes) -> bool:
            try:
                head = parser.feed(data)
            except UpstreamProtocolError as exc:
                head_ready.set_exception(exc)
                return True  # nothing more is read as a head
            if head is None:
                return False
            head_ready.set_result(head)
            return True

        transport, side = await loop.create_connection(
            lambda: UpstreamSide(tunnel, on_head_data),
            target.host,
            target.port,
            ssl=self.ssl_context if target.secure else None,
            server_hostname=target.host if target.secure else None,
        )
        # (uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check here.)
        try:
            transport.write(upgrade_request)
            waiters: set[asyncio.Future[Any]] = {head_ready, side.lost}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not head_ready.done():
                raise ConnectionResetError("the upstream closed the connection before answering")
            head = head_ready.result()
        except BaseException:
            transport.abort()
            raise
        return side, transport, head, parser.leftover

    # --- after the 101 ------------------------------------------------------------------------------

    async def _relay(
        self,
        request: web.Request,
        client_transport: asyncio.Transport,
        tunnel: Tunnel,
        side: UpstreamSide,
        upstream_transport: asyncio.Transport,
        head: ResponseHead,
        leftover: bytes,
        upstream_url: str,
        started: float,
    ) -> web.StreamResponse:
        protocol = request.protocol
        tail = _TailCollector()
        protocol.set_parser(tail)  # type: ignore[arg-type]  # duck-typed like aiohttp's WebSocketReader
        client_transport.set_protocol(ClientSide(tunnel, protocol.connection_lost))
        tunnel.join(client_transport, upstream_transport)
        client_transport.write(client_switching_response(head))
        leftover += side.relay()
        if leftover:
            tunnel.to_client(leftover)
        if tail.data:
            tunnel.to_upstream(tail.data)
        self.tunnels.add(tunnel)
        self.metrics.tunnels.inc()
        try:
            reason = await tunnel.done
        finally:
            self.tunnels.discard(tunnel)
            self.metrics.tunnels.dec()
            self.metrics.tunnel_bytes.labels("up").inc(tunnel.bytes_up)
            self.metrics.tunnel_bytes.labels("down").inc(tunnel.bytes_down)
        access_log.info(
            "ws tunnel route=%s upstream=%s status=101 up=%d down=%d duration=%.1fs end=%s",
            self.route.path, upstream_url, tunnel.bytes_up, tunnel.bytes_down,
            time.monotonic() - started, reason,
        )  # fmt: skip
        return _TunnelResponse()

    def _refuse(
        self,
        request: web.Request,
        status: int,
        message: str,
        reason: str,
        started: float,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        self.metrics.refusals.labels(reason).inc()
        access_log.info(
            "ws refuse route=%s status=%d reason=%s peer=%s duration=%.3fs",
            self.route.path, status, reason, request.remote or "-", time.monotonic() - started,
        )  # fmt: skip
        return web.Response(status=status, text=message + "\n", headers=dict(headers or {}))


class _TunnelResponse(web.StreamResponse):
    """What the handler returns once a tunnel has ended: the connection was handed over, nothing to send."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
