"""The kiosk system of ``wsgate up``, wired in one process.

::

    browser ──▶ gateway (HOST:PORT) ──┬─ /        kiosk page (static)
                                      ├─ /api     ──▶ demo REST API     (loopback, own port)
                                      ├─ /admin   ──▶ admin app         (loopback, own port)
                                      └─ /ws      ──▶ hub /ws           (loopback, own port)
                                                     a token minted per connection, subject = ?kiosk=

Every secret (the signing key, the hub's publish token, the admin session key) is generated at start and lives
only in this process; the browser holds none. The admin password comes from ``WSGATE_ADMIN_PASSWORD`` or is
generated.
"""

from __future__ import annotations

import logging
import secrets
import socket
from types import MappingProxyType

from wsgate.config import (
    Address,
    GatewayConfig,
    HubConfig,
    MintConfig,
    PublishApiConfig,
    Route,
    SigningConfig,
)
from wsgate.demo.api import build_demo_api
from wsgate.gateway.server import GatewayServer
from wsgate.http_server import Listener
from wsgate.hub.protocol import encode_json
from wsgate.hub.server import HubServer
from wsgate.secret import Secret
from wsgate.web import STATIC

log = logging.getLogger("wsgate.up")

KID = "up"
# Short: a minted token only has to survive the hub handshake, and a leaked one is useless soon after.
MINT_TTL = 60.0
LOOPBACK = "127.0.0.1"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def own_origins(host: str, port: int) -> tuple[str, ...]:
    """The Origins of the pages this system serves: exactly its own address, never "any localhost"."""
    shown = f"[{host}]" if ":" in host else host
    origins = [f"http://{shown}:{port}"]
    if host == LOOPBACK:
        origins.append(f"http://localhost:{port}")
    return tuple(origins)


class KioskSystem:
    def __init__(self, *, host: str = LOOPBACK, port: int = 8000, admin_password: str | None = None) -> None:
        self.host = host
        # The allowed Origins name the port, so it must be known before anything starts.
        self.port = port or free_port(host)
        self.origins = own_origins(host, self.port)
        self.admin_password = admin_password or secrets.token_urlsafe(12)
        self.password_generated = admin_password is None
        self._signing_key = Secret(secrets.token_urlsafe(32))
        self._publish_token = Secret(secrets.token_urlsafe(32))
        self.hub = HubServer(
            HubConfig(
                listen=Address(LOOPBACK, 0),
                allowed_origins=self.origins,
                signing=SigningConfig(keys=MappingProxyType({KID: self._signing_key})),
                publish_api=PublishApiConfig(tokens=(self._publish_token,)),
            )
        )
        self.api = Listener(build_demo_api(), host=LOOPBACK, port=0, handshake_timeout=10.0)
        self.admin: Listener | None = None
        self.gateway: GatewayServer | None = None

    @property
    def url(self) -> str:
        return self.origins[0]

    async def start(self) -> None:
        from wsgate.demo.admin import build_admin_app

        await self.hub.start()
        await self.api.start()
        admin_app = build_admin_app(
            hub_url=self.hub.url,
            publish_token=self._publish_token,
            password=Secret(self.admin_password),
            session_key=secrets.token_bytes(32),
            public_origins=self.origins,
        )
        self.admin = Listener(admin_app, host=LOOPBACK, port=0, handshake_timeout=10.0)
        await self.admin.start()
        self.gateway = GatewayServer(self._gateway_config(self.admin.port))
        await self.gateway.start()
        log.info("kiosk system running at %s", self.url)

    def _gateway_config(self, admin_port: int) -> GatewayConfig:
        hub_ws = self.hub.url.replace("http://", "ws://") + "/ws"
        mint = MintConfig(
            key=self._signing_key,
            kid=KID,
            ttl=MINT_TTL,
            subject="query:kiosk",
            subscribe=("kiosks", "kiosk:{subject}"),  # each kiosk its own channel, and no other's
        )
        routes = (
            Route(path="/ws", upstream=(hub_ws,), websocket=True, change_origin=True, mint=mint),
            Route(path="/api", upstream=(f"http://{LOOPBACK}:{self.api.port}",)),
            Route(path="/admin", upstream=(f"http://{LOOPBACK}:{admin_port}",)),
        )
        return GatewayConfig(
            listen=Address(self.host, self.port),
            public_origins=self.origins,
            static=STATIC,
            routes=tuple(sorted(routes, key=lambda route: len(route.path), reverse=True)),
        )

    async def stop(self) -> None:
        # The hub first: its 1001 close frames travel through the gateway's tunnels, which then end by
        # themselves, so the gateway has nothing left to wait for.
        await self.hub.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.admin is not None:
            await self.admin.close()
        await self.api.close()
        log.info("kiosk system stopped")

    async def publish(self, channel: str, data: object) -> int:
        """Publish as the admin page does (for tests and scripts in this process)."""
        published = await self.hub.hub.publish(channel, encode_json(data), via="http")
        return published.offset
