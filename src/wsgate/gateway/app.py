"""The gateway's routes: configured routes (longest prefix first), then static files.

WebSocket routes are served from the connection's first request line on (:mod:`wsgate.front`, the
:class:`Gateway` is its upgrade handler); the rest is an aiohttp application. Every upstream comes from the
configuration; nothing in a request can choose where it is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from wsgate.auth.origins import OriginPolicy
from wsgate.config import GatewayConfig, Route
from wsgate.front import OnEnd, take_over
from wsgate.gateway.capacity import ConnectionSlots
from wsgate.gateway.http_proxy import HttpProxy
from wsgate.gateway.metrics import GatewayMetrics
from wsgate.gateway.resolver import Resolver
from wsgate.gateway.static import StaticFiles
from wsgate.gateway.websocket import WebSocketProxy
from wsgate.http_head import RequestHead
from wsgate.http_server import handshake_guard

log = logging.getLogger("wsgate.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """Routes, their proxies, and the connection count that bounds them."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.scheme = "https" if config.tls is not None else "http"
        self.websocket_proxies: list[WebSocketProxy] = []
        self.http_proxies: list[HttpProxy] = []
        self.slots = ConnectionSlots(config.limits.max_connections)
        self.resolver = Resolver()  # shared: routes often lead to the same upstream host
        self.metrics = GatewayMetrics()
        self.metrics.connections.set_function(lambda: self.slots.active)
        self.static = StaticFiles(config.static, spa=config.spa) if config.static is not None else None
        # Each route's path and the prefix its sub-paths start with, longest first, and the route's proxy
        # when it is a WebSocket route.
        self._routes: list[tuple[str, str, WebSocketProxy | None]] = []
        for route in config.routes:
            proxy = self._websocket_proxy(route) if route.websocket else None
            self._routes.append((route.path, route.path.rstrip("/") + "/", proxy))

    @property
    def draining(self) -> bool:
        return self.slots.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.slots.draining = value

    # --- the upgrade handler (wsgate.front) ------------------------------------------------------------

    def _route_for(self, path: str) -> WebSocketProxy | None:
        for exact, prefix, proxy in self._routes:
            if path == exact or path.startswith(prefix):
                return proxy
        return None

    def claims(self, path: str) -> bool:
        return self._route_for(path) is not None

    def recall(self, path: str, raw: bytes, transport: asyncio.Transport, data: bytes) -> bool:
        proxy = self._route_for(path)
        assert proxy is not None, "recall() is only called for claimed paths"
        return proxy.recall(raw, transport, data)

    def accept(
        self, head: RequestHead, transport: asyncio.Transport, data: bytes, on_end: OnEnd | None
    ) -> None:
        proxy = self._route_for(head.path)
        assert proxy is not None, "accept() is only called for claimed paths"
        proxy.accept(head, transport, data, on_end)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[handshake_guard, self._count_connections])
        for route in self.config.routes:  # already longest path first
            handler = self._route_handler(route)
            app.router.add_route("*", route.path, handler)
            app.router.add_route("*", route.path.rstrip("/") + "/{tail:.*}", handler)
        if self.static is not None:
            app.router.add_route("*", "/{path:.*}", self.static.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)
        return app

    def _route_handler(self, route: Route) -> Handler:
        if route.websocket:
            proxy = self._route_for(route.path)
            assert proxy is not None

            async def upgrade(request: web.Request) -> web.StreamResponse:
                # Reached only when aiohttp routes an upgrade the front did not claim (a second request on a
                # kept-alive connection, a percent-encoded path): served by the same proxy.
                return await take_over(request, proxy)

            upgrade.counts_itself = True  # type: ignore[attr-defined]  # see _count_connections
            return upgrade
        http_proxy = HttpProxy(route, limits=self.config.limits)
        self.http_proxies.append(http_proxy)
        return self._counted(route.path, http_proxy.handle)

    def _websocket_proxy(self, route: Route) -> WebSocketProxy:
        origins = OriginPolicy(
            self.config.public_origins,
            allow_missing=route.allow_missing_origin,
            config_key="gateway.public_origins",
        )
        proxy = WebSocketProxy(
            route,
            origins=origins,
            limits=self.config.limits,
            scheme=self.scheme,
            metrics=self.metrics,
            slots=self.slots,
            resolver=self.resolver,
        )
        self.websocket_proxies.append(proxy)
        return proxy

    def _counted(self, route_path: str, handler: Handler) -> Handler:
        requests = self.metrics.requests

        async def handle(request: web.Request) -> web.StreamResponse:
            response = await handler(request)
            requests.labels(route_path, str(response.status)).inc()
            return response

        return handle

    def build_admin_app(self) -> web.Application:
        """``/metrics`` and ``/healthz``, for the admin listener only."""
        app = web.Application(middlewares=[handshake_guard])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    @web.middleware
    async def _count_connections(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if getattr(request.match_info.handler, "counts_itself", False):
            return await handler(request)  # a WebSocket proxy takes its own slot
        refusal = self.slots.refusal()
        if refusal is not None:
            status, message, headers = refusal
            return web.Response(status=status, text=message + "\n", headers=headers)
        self.slots.acquire()
        try:
            return await handler(request)
        finally:
            self.slots.release()

    async def _start(self, app: web.Application) -> None:
        for proxy in self.http_proxies:
            await proxy.start()

    async def _close(self, app: web.Application) -> None:
        for proxy in self.http_proxies:
            await proxy.close()

    def tunnels(self) -> int:
        return sum(len(proxy.tunnels) for proxy in self.websocket_proxies)

    def abort_tunnels(self) -> None:
        for proxy in self.websocket_proxies:
            for tunnel in list(proxy.tunnels):
                tunnel.abort("shutdown")
