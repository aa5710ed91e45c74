"""Running a hub node: bind, serve, and shut down gracefully."""

from __future__ import annotations

import asyncio
import logging

from wsgate.config import HubConfig
from wsgate.http_server import Listener
from wsgate.hub.app import HubUpgrades, build_app
from wsgate.hub.broker import Broker
from wsgate.hub.core import Hub
from wsgate.logs import access_log

log = logging.getLogger("wsgate.hub")


class HubServer:
    """A hub bound to its configured address (port 0 picks a free port; read :attr:`port` after start)."""

    def __init__(self, config: HubConfig, *, broker: Broker | None = None) -> None:
        self.config = config
        self.hub = Hub(config, broker=broker)
        self._stopped = False
        self.upgrades = HubUpgrades(self.hub)
        self.listener = Listener(
            build_app(self.hub, self.upgrades),
            host=config.listen.host,
            port=config.listen.port,
            handshake_timeout=config.limits.handshake_timeout,
            shutdown_timeout=config.limits.shutdown_timeout,
            upgrades=self.upgrades,
        )

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def url(self) -> str:
        return self.listener.url("http")

    async def start(self) -> None:
        await self.hub.start()
        try:
            await self.listener.start()
        except BaseException:
            await self.hub.close()
            raise
        log.info("hub listening on %s (WebSocket at /ws)", self.url)
        if self.config.echo:
            log.warning(
                "ECHO MODE IS ON: %s/echo echoes every message WITHOUT a credential. It is for conformance "
                "testing only: set [hub] echo = false (the default) anywhere else",
                self.url.replace("http", "ws", 1),
            )

    async def stop(self) -> None:
        """Drain: /healthz and new handshakes answer 503 while open connections close with 1001.

        Stopping a stopped server does nothing."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self.config.limits.shutdown_timeout
        echo = self.upgrades.echo
        if echo is None:
            await self.hub.drain(deadline)
        else:
            await asyncio.gather(self.hub.drain(deadline), echo.drain(deadline))
        await self.listener.close()
        await self.hub.close()
        access_log.flush()  # the last connections' lines before the line that says it stopped
        log.info("hub stopped")
