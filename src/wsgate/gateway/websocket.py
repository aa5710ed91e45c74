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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wsgate.auth.origins import OriginPolicy
from wsgate.auth.tokens import mint_token
from wsgate.config import SUBJECT_PLACEHOLDER, GatewayLimits, Route
from wsgate.errors import AuthError, HandshakeError
from wsgate.front import OnEnd, peer_address, refuse
from wsgate.gateway.capacity import ConnectionSlots
from wsgate.gateway.memo import Answers, Plans, Switched, Unrecalled
from wsgate.gateway.metrics import GatewayMetrics
from wsgate.gateway.relay import ClientSide, Tunnel, UpstreamSide
from wsgate.gateway.resolver import Resolver
from wsgate.gateway.tls import upstream_ssl_context
from wsgate.gateway.upgrade import (
    ClientRequest,
    ResponseHead,
    ResponseHeadParser,
    UpstreamProtocolError,
    UpstreamTarget,
    WebSocketOffer,
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
from wsgate.http_head import RequestHead
from wsgate.logs import access_log

log = logging.getLogger("wsgate.gateway")


class UpstreamFailure(Exception):
    """The upstream could not be used; ``status`` is what the client is answered (502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answered:
    """The upstream's response head as parsed, the bytes that followed it, and what to remember it by once it
    has passed the checks (``None``: it can't be remembered; :mod:`wsgate.gateway.memo`)."""

    head: ResponseHead
    leftover: bytes
    seen: Unrecalled | None


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
        slots: ConnectionSlots | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.route = route
        self.slots = slots or ConnectionSlots(limits.max_connections)
        self.metrics = metrics or GatewayMetrics()
        self.origins = origins
        self.limits = limits
        self.scheme = scheme
        self.targets = {url: parse_upstream(url) for url in route.upstream}
        self.pool = UpstreamPool(route.upstream)
        self.resolver = resolver or Resolver()
        self.ssl_context: ssl.SSLContext | None = None
        if any(target.secure for target in self.targets.values()):
            self.ssl_context = upstream_ssl_context(route.tls, route=route.path)
        # Open tunnels and those whose upstream handshake is under way.
        self.tunnels: set[Tunnel] = set()
        # Looked up once: every tunnel's end counts in it.
        self._ended_tunnels = self.metrics.requests.labels(route.path, "101")
        # Handshakes that differ only in their key, answered from memory (wsgate.gateway.memo). A route that
        # mints a token per connection builds every upstream request afresh.
        self.plans: Plans | None = None if route.mint else Plans()
        self.answers = Answers()

    # --- the request --------------------------------------------------------------------------------

    def accept(
        self, head: RequestHead, transport: asyncio.Transport, data: bytes, on_end: OnEnd | None
    ) -> None:
        """Check an upgrade request and, if it passes, start the upstream handshake (see the module doc)."""
        started = time.monotonic()
        peer = peer_address(transport)
        refusal = self.slots.refusal()
        if refusal is not None:
            status, message, headers = refusal
            return self._refuse(transport, status, message, "capacity", peer, started, on_end, headers)
        try:
            requests, offer = self._upstream_requests(head, peer)
        except HandshakeError as exc:
            return self._refuse(transport, exc.status, exc.message, "bad_handshake", peer, started, on_end,
                                exc.headers)  # fmt: skip
        except AuthError as exc:
            return self._refuse(transport, exc.status, exc.message, exc.reason, peer, started, on_end)
        except ValueError as exc:  # HeaderInjectionError, or a bad minted subject; messages hold no values
            return self._refuse(transport, 400, str(exc), "bad_request", peer, started, on_end)
        self._start(transport, data, on_end, requests, offer, peer, started)

    def recall(self, raw: bytes, transport: asyncio.Transport, data: bytes) -> bool:
        """Serve the request head ``raw``, not parsed, if it differs from one already passed only in its key:
        with that one's upstream requests, the key put in (:mod:`wsgate.gateway.memo`). ``False`` otherwise,
        and nothing done: the head is then parsed and goes through :meth:`accept`."""
        if self.plans is None:
            return False
        started = time.monotonic()
        peer = peer_address(transport)
        recalled = self.plans.recall(raw, peer)
        if recalled is None:
            return False
        refusal = self.slots.refusal()
        if refusal is not None:
            status, message, headers = refusal
            self._refuse(transport, status, message, "capacity", peer, started, None, headers)
            return True
        requests, offer = recalled
        self._start(transport, data, None, requests, offer, peer, started)
        return True

    def _start(
        self,
        transport: asyncio.Transport,
        data: bytes,
        on_end: OnEnd | None,
        requests: dict[str, bytes],
        offer: WebSocketOffer,
        peer: str,
        started: float,
    ) -> None:
        """Take the client's connection over and start the upstream handshake."""
        tunnel = Tunnel(
            transport, idle_timeout=self.limits.idle_timeout, max_lifetime=self.limits.max_lifetime
        )
        side = ClientSide(tunnel, on_end)
        transport.set_protocol(side)
        if data:
            side.hold(data)
        self.slots.acquire()
        self.tunnels.add(tunnel)
        tunnel.done.add_done_callback(lambda _: self._ended(tunnel, started))
        tunnel.opening = tunnel.loop.create_task(self._open(tunnel, side, requests, offer, peer, started))

    def _upstream_requests(self, head: RequestHead, peer: str) -> tuple[dict[str, bytes], WebSocketOffer]:
        """The checks, then the request for each upstream URL and the client's offer; raises the refusal.
        A head that passes is remembered: the next one like it is served by :meth:`recall`."""
        check_upgrade(head.method, head.headers)
        self.origins.check(single_header(head.headers, "Origin"))
        host = head.headers.get("Host")
        client = ClientRequest(head.method, head.target, head.fields, peer, self.scheme, host)
        injected = self._injected_headers(head.target)
        requests = {
            url: build_websocket_request(self.route, target, client, injected=injected)
            for url, target in self.targets.items()
        }
        offer = websocket_offer(client)
        if self.plans is not None:  # (aiohttp's heads have no raw bytes: nothing to remember them by)
            self.plans.remember(head.raw, peer, requests, offer)
        return requests, offer

    async def _open(
        self,
        tunnel: Tunnel,
        client_side: ClientSide,
        requests: Mapping[str, bytes],
        offer: WebSocketOffer,
        peer: str,
        started: float,
    ) -> None:
        """The upstream handshake, then the hand-over to the relay or the client's answer."""
        client = tunnel.client
        try:
            upstream_url, side, upstream_transport, answer = await self._connect(requests, offer, tunnel)
        except UpstreamFailure as exc:
            tunnel.opening = None
            self._refuse(client, exc.status, exc.reason, "upstream", peer, started, client_side.on_end)
            tunnel.close("refused")
            return
        tunnel.opening = None
        if isinstance(answer, Switched):
            response, leftover = answer.response, answer.leftover
        else:
            head = answer.head
            if head.status != 101:
                upstream_transport.close()
                status = upstream_refusal_status(head)
                message = f"the upstream refused the connection ({head.status})"
                self._refuse(client, status, message, "upstream_refused", peer, started, client_side.on_end)
                tunnel.close("refused")
                return
            try:
                check_switching_protocols(head, offer.key, offer.protocols, offer.extensions)
            except UpstreamProtocolError:
                upstream_transport.close()
                log.warning("route %s: upstream %s answered 101 with an invalid handshake", self.route.path,
                            upstream_url)  # fmt: skip
                self._refuse(client, 502, "the upstream's handshake was invalid", "upstream", peer, started,
                             client_side.on_end)  # fmt: skip
                tunnel.close("refused")
                return
            response, leftover = client_switching_response(head), answer.leftover
            if answer.seen is not None:
                self.answers.remember(answer.seen, response)
        if tunnel.done.done() or client.is_closing():  # the client left meanwhile
            upstream_transport.close()
            tunnel.close("client_closed")
            return
        tunnel.upstream_url = upstream_url
        tunnel.join(upstream_transport)
        self.metrics.open_tunnels += 1
        client.write(response)
        leftover += side.relay()
        if leftover:
            tunnel.to_client(leftover)
        held = client_side.relay()
        if held:
            tunnel.to_upstream(held)
        if side.lost:  # the upstream hung up right behind its 101 (and what it sent with it)
            tunnel.close("upstream_closed")

    def _ended(self, tunnel: Tunnel, started: float) -> None:
        self.tunnels.discard(tunnel)
        self.slots.release()
        if not tunnel.joined:
            return
        metrics = self.metrics
        metrics.open_tunnels -= 1
        metrics.tunnel_bytes_up += tunnel.bytes_up
        metrics.tunnel_bytes_down += tunnel.bytes_down
        self._ended_tunnels.inc()
        access_log.info(
            "ws tunnel route=%s upstream=%s status=101 up=%d down=%d duration=%.1fs end=%s",
            self.route.path, tunnel.upstream_url, tunnel.bytes_up, tunnel.bytes_down,
            time.monotonic() - started, tunnel.done.result(),
        )  # fmt: skip

    def _injected_headers(self, target: str) -> dict[str, str]:
        route = self.route
        headers = {name: value.reveal() for name, value in route.headers.items()}
        mint = route.mint
        if mint is not None:
            subject = mint_subject(mint.subject, target)

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
        self, requests: Mapping[str, bytes], offer: WebSocketOffer, tunnel: Tunnel
    ) -> tuple[str, UpstreamSide, asyncio.Transport, Switched | Answered]:
        """Try the route's upstreams in the pool's order; the first that answers with a response head wins.
        All of them together get ``limits.upstream_timeout``."""
        loop = tunnel.loop
        # One timer for the whole attempt, cancelling this task when it fires: what asyncio.timeout does,
        # without its per-use objects (a proxied handshake is hot: docs/performance.md).
        task = asyncio.current_task(loop)
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_later(self.limits.upstream_timeout, expire)
        failure = UpstreamFailure(502, "no upstream could be reached")
        url = ""
        try:
            for url in self.pool.candidates():
                try:
                    side, transport, answer = await self._handshake(
                        self.targets[url], requests[url], offer, tunnel
                    )
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
                    return url, side, transport, answer
        except asyncio.CancelledError:
            if not expired:
                raise  # the tunnel ended (the client left, shutdown): nobody is waiting for an answer
            task.uncancel()
            self.pool.failed(url)
            raise UpstreamFailure(504, "the upstream did not answer in time") from None
        finally:
            timer.cancel()
        raise failure

    async def _handshake(
        self, target: UpstreamTarget, upgrade_request: bytes, offer: WebSocketOffer, tunnel: Tunnel
    ) -> tuple[UpstreamSide, asyncio.Transport, Switched | Answered]:
        loop = tunnel.loop
        parser = ResponseHeadParser(max_size=self.limits.max_header)
        head_ready: asyncio.Future[Switched | Answered] = loop.create_future()
        first = True
        seen: Unrecalled | None = None

        def on_head_data(data: bytes) -> bool:
            nonlocal first, seen
            if first:  # upstreams send their whole head at once: it may be one seen before
                first = False
                recalled = self.answers.recall(data, offer)
                if isinstance(recalled, Switched):
                    head_ready.set_result(recalled)
                    return True
                seen = recalled
            try:
                head = parser.feed(data)
            except UpstreamProtocolError as exc:
                head_ready.set_exception(exc)
                return True  # nothing more is read as a head
            if head is None:
                return False
            head_ready.set_result(Answered(head, parser.leftover, seen))
            return True

        def on_lost() -> None:
            if not head_ready.done():
                head_ready.set_exception(
                    ConnectionResetError("the upstream closed the connection before answering")
                )

        transport, side = await self._open_connection(
            loop, target, lambda: UpstreamSide(tunnel, on_head_data, on_lost)
        )
        # (uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check here.)
        try:
            transport.write(upgrade_request)
            answer = await head_ready
        except BaseException:
            transport.abort()
            raise
        return side, transport, answer

    async def _open_connection(
        self,
        loop: asyncio.AbstractEventLoop,
        target: UpstreamTarget,
        protocol: Callable[[], UpstreamSide],
    ) -> tuple[asyncio.Transport, UpstreamSide]:
        """A connection to ``target``: its addresses in turn (as ``loop.create_connection`` tries a name's),
        looked up through the shared resolver. TLS verifies the name, not the address."""
        resolver, host, port = self.resolver, target.host, target.port
        addresses = resolver.known(host, port) or await resolver.resolve(host, port)
        failure: OSError | None = None
        for address in addresses:
            try:
                return await loop.create_connection(
                    protocol,
                    address,
                    port,
                    ssl=self.ssl_context if target.secure else None,
                    server_hostname=host if target.secure else None,
                )
            except ssl.SSLCertVerificationError:
                raise  # every address serves the same certificate
            except OSError as exc:
                failure = exc
        resolver.forget(host, port)
        assert failure is not None  # resolve() returns at least one address
        raise failure

    def _refuse(
        self,
        transport: asyncio.Transport,
        status: int,
        message: str,
        reason: str,
        peer: str,
        started: float,
        on_end: OnEnd | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.metrics.refusals.labels(reason).inc()
        self.metrics.requests.labels(self.route.path, str(status)).inc()
        access_log.info(
            "ws refuse route=%s status=%d reason=%s peer=%s duration=%.3fs",
            self.route.path, status, reason, peer or "-", time.monotonic() - started,
        )  # fmt: skip
        refuse(transport, status, message, headers, on_end)
