"""Running a gateway: bind (optionally with TLS), serve, reload the certificate on SIGHUP, shut down
gracefully."""

from __future__ import annotations

import asyncio
import logging

from wsgate.config import GatewayConfig
from wsgate.gateway.app import Gateway
from wsgate.gateway.tls import load_certificate, server_ssl_context
from wsgate.http_server import Listener
from wsgate.logs import access_log

log = logging.getLogger("wsgate.gateway")


class GatewayServer:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.gateway = Gateway(config)
        self.ssl_context = server_ssl_context(config.tls) if config.tls is not None else None
        self.listener = Listener(
            self.gateway.build_app(),
            host=config.listen.host,
            port=config.listen.port,
            handshake_timeout=config.limits.handshake_timeout,
            ssl_context=self.ssl_context,
            shutdown_timeout=config.limits.shutdown_timeout,
            max_head=config.limits.max_header,
            upgrades=self.gateway,
        )
        self.admin: Listener | None = None
        if config.admin_listen is not None:
            self.admin = Listener(
                self.gateway.build_admin_app(),
                host=config.admin_listen.host,
                port=config.admin_listen.port,
                handshake_timeout=config.limits.handshake_timeout,
            )
        self._stopped = False

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def url(self) -> str:
        return self.listener.url(self.gateway.scheme)

    async def start(self) -> None:
        await self.listener.start()
        log.info("gateway listening on %s with %d route(s)", self.url, len(self.config.routes))
        if self.admin is not None:
            await self.admin.start()
            log.info("gateway admin (/metrics, /healthz) on %s", self.admin.url("http"))

    def reload_certificate(self) -> None:
        """Load the certificate files again: new connections use them, open ones are untouched."""
        if self.config.tls is None or self.ssl_context is None:
            return
        try:
            load_certificate(self.ssl_context, self.config.tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("certificate reload failed, keeping the previous one: %s", exc)
        else:
            log.info("certificate reloaded from %s", self.config.tls.cert)

    async def stop(self) -> None:
        """Stop accepting, let open tunnels finish within limits.shutdown_timeout, then cut the rest."""
        if self._stopped:
            return
        self._stopped = True
        self.gateway.draining = True
        await self.listener.stop_accepting()
        pending = [t.done for proxy in self.gateway.websocket_proxies for t in proxy.tunnels]
        if pending:
            log.info("waiting for %d tunnel(s) to finish", len(pending))
            await asyncio.wait(pending, timeout=self.config.limits.shutdown_timeout)
            if self.gateway.tunnels():
                log.warning("closing %d tunnel(s) at the shutdown deadline", self.gateway.tunnels())
                self.gateway.abort_tunnels()
        await self.listener.close()
        if self.admin is not None:
            await self.admin.close()
        access_log.flush()  # the last tunnels' lines before the line that says it stopped
        log.info("gateway stopped")
