"""The gateway's aiohttp application: configured routes (longest prefix first), then static files.

Every upstream comes from the configuration; nothing in a request can choose where it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from wsgate.auth.origins import OriginPolicy
from wsgate.config import GatewayConfig, Route
from wsgate.gateway.http_proxy import HttpProxy
from wsgate.gateway.metrics import GatewayMetrics
from wsgate.gateway.static import StaticFiles
from wsgate.gateway.websocket import WebSocketProxy
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
        self.active = 0
        self.draining = False
        self.metrics = GatewayMetrics()
        self.metrics.connections.set_function(lambda: self.active)
        self.static = StaticFiles(config.static, spa=config.spa) if config.static is not None else None

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[handshake_guard, self._count_connections])
        for route in self.config.routes:  # already longest path first
            handler = self._counted(route.path, self._route_handler(route))
            app.router.add_route("*", route.path, handler)
            app.router.add_route("*", route.path.rstrip("/") + "/{tail:.*}", handler)
        if self.static is not None:
            app.router.add_route("*", "/{path:.*}", self.static.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)
        return app

    def _route_handler(self, route: Route) -> Handler:
        if route.websocket:
            origins = OriginPolicy(
                self.config.public_origins,
                allow_missing=route.allow_missing_origin,
                config_key="gateway.public_origins",
            )
            ws_proxy = WebSocketProxy(
                route, origins=origins, limits=self.config.limits, scheme=self.scheme, metrics=self.metrics
            )
            self.websocket_proxies.append(ws_proxy)
            return ws_proxy.handle
        http_proxy = HttpProxy(route, limits=self.config.limits)
        self.http_proxies.append(http_proxy)
        return http_proxy.handle

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
        if self.draining:
            return web.Response(status=503, text="the gateway is shutting down\n")
        if self.active >= self.config.limits.max_connections:
            return web.Response(
                status=503, text="too many connections; retry later\n", headers={"Retry-After": "5"}
            )
        self.active += 1
        try:
            return await handler(request)
        finally:
            self.active -= 1

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
