"""Shared fixtures: real hubs on free loopback ports, real HTTP/WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import trustme
import uvloop

from wsgate.config import (
    Address,
    HistoryConfig,
    HubConfig,
    HubLimits,
    PublishApiConfig,
    SigningConfig,
    StaticToken,
)
from wsgate.hub.broker import Broker
from wsgate.hub.server import HubServer
from wsgate.logs import access_log
from wsgate.secret import Secret

ORIGIN = "https://kiosk.example.org"
KIOSK_TOKEN = "kiosk-static-token-0123456789abcdef"
ADMIN_TOKEN = "admin-static-token-0123456789abcdef"
PUBLISH_TOKEN = "publish-api-token-0123456789abcdef"
KEY_NEW = "signing-key-2026-11-0123456789abcdef0123456789"
KEY_OLD = "signing-key-2026-10-0123456789abcdef0123456789"

# Generous upper bound on how long any single awaited event may take on a loaded 2-core machine.
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _access_lines_stay_in_their_test() -> Iterator[None]:
    """Access lines reach logging in batches (wsgate.logs.AccessLog): hand over what a test left behind
    when it ends (its servers stopped), not during the next test."""
    yield
    access_log.flush()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Tests run on uvloop, the loop `wsgate` itself runs on (its transports differ from asyncio's)."""
    return {"uvloop": uvloop.new_event_loop}


def make_hub_config(**overrides: Any) -> HubConfig:
    """A hub on a free loopback port with a kiosk token, an admin token, a publish token and two keys."""
    config = HubConfig(
        listen=Address("127.0.0.1", 0),
        allowed_origins=(ORIGIN, "https://*.example.net"),
        tokens=(
            StaticToken(name="kiosk", token=Secret(KIOSK_TOKEN), subscribe=("kiosks", "kiosk:*"), publish=()),
            StaticToken(name="admin", token=Secret(ADMIN_TOKEN), subscribe=("*",), publish=("*",)),
        ),
        signing=SigningConfig(keys={"2026-11": Secret(KEY_NEW), "2026-10": Secret(KEY_OLD)}),
        publish_api=PublishApiConfig(tokens=(Secret(PUBLISH_TOKEN),)),
        history=HistoryConfig(size=100, ttl=600.0),
        limits=HubLimits(),
    )
    limits = overrides.pop("limits", None)
    if limits is not None:
        config = replace(config, limits=replace(config.limits, **limits))
    return replace(config, **overrides)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority; servers get certificates for 127.0.0.1 from it."""
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server-side TLS context with a certificate for 127.0.0.1 issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


StartHub = Callable[..., Awaitable[HubServer]]


@pytest.fixture
async def start_hub() -> AsyncIterator[StartHub]:
    """Start hubs on free ports; each is stopped after the test, once its clients are closed."""
    servers: list[HubServer] = []

    async def start(config: HubConfig | None = None, broker: Broker | None = None) -> HubServer:
        server = HubServer(config or make_hub_config(), broker=broker)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def hub(start_hub: StartHub) -> HubServer:
    return await start_hub()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


def ws_url(server: HubServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def kiosk_headers(token: str = KIOSK_TOKEN, origin: str | None = ORIGIN) -> dict[str, str]:
    headers = bearer(token)
    if origin is not None:
        headers["Origin"] = origin
    return headers


Connect = Callable[..., Awaitable[aiohttp.ClientWebSocketResponse]]


@pytest.fixture
async def connect(http: aiohttp.ClientSession, start_hub: StartHub) -> AsyncIterator[Connect]:
    """Open a WebSocket to a hub; every socket is closed when the test ends."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_ws(
        server: HubServer, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        ws = await http.ws_connect(ws_url(server), headers=headers or kiosk_headers(), autoping=True)
        opened.append(ws)
        return ws

    yield open_ws
    for ws in opened:
        await ws.close()


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, f"expected a text message, got {message}"
    value = json.loads(message.data)
    assert isinstance(value, dict)
    return value


async def subscribe(
    ws: aiohttp.ClientWebSocketResponse, channel: str, since: dict[str, Any] | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if since is not None:
        request["since"] = since
    await ws.send_json(request)
    answer = await receive_json(ws)
    assert answer["type"] == "subscribed", answer
    return answer


async def publish_http(
    http: aiohttp.ClientSession, server: HubServer, channel: str, data: Any, token: str = PUBLISH_TOKEN
) -> dict[str, Any]:
    async with http.post(
        server.url + "/api/publish", json={"channel": channel, "data": data}, headers=bearer(token)
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
        assert isinstance(body, dict)
        return body


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll a cheap in-process condition until it holds (for state that has no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
