"""The gateway in front of the hub, as deployed: per-connection tokens minted from `?kiosk=`, the browser
never holding a secret, and the connection outliving its handshake token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from types import MappingProxyType

import aiohttp
import pytest

from tests.conftest import (
    KEY_NEW,
    PUBLISH_TOKEN,
    StartHub,
    bearer,
    make_hub_config,
    publish_http,
    receive_json,
    subscribe,
)
from wsgate.config import Address, GatewayConfig, GatewayLimits, MintConfig, Route
from wsgate.gateway.server import GatewayServer
from wsgate.hub.server import HubServer
from wsgate.secret import Secret

ORIGIN = "https://kiosk.example.org"


@pytest.fixture
async def hub(start_hub: StartHub) -> HubServer:
    return await start_hub(make_hub_config(auth_header="authorization"))


@pytest.fixture
async def gateway(hub: HubServer) -> AsyncIterator[GatewayServer]:
    mint = MintConfig(
        key=Secret(KEY_NEW),
        kid="2026-11",
        ttl=1.0,  # far shorter than the test's connection: the connection must outlive it
        subject="query:kiosk",
        subscribe=("kiosks", "kiosk:{subject}"),
    )
    route = Route(
        path="/ws",
        upstream=(hub.url.replace("http://", "ws://") + "/ws",),
        websocket=True,
        change_origin=True,
        mint=mint,
        headers=MappingProxyType({}),
    )
    config = GatewayConfig(
        listen=Address("127.0.0.1", 0), public_origins=(ORIGIN,), routes=(route,), limits=GatewayLimits()
    )
    server = GatewayServer(config)
    await server.start()
    yield server
    await server.stop()


async def test_a_kiosk_connects_through_the_gateway_with_a_minted_identity(
    hub: HubServer, gateway: GatewayServer, http: aiohttp.ClientSession
) -> None:
    url = gateway.url.replace("http://", "ws://") + "/ws?kiosk=lobby-7"
    async with http.ws_connect(url, headers={"Origin": ORIGIN}) as ws:
        await subscribe(ws, "kiosks")
        await subscribe(ws, "kiosk:lobby-7")
        await ws.send_json({"type": "subscribe", "channel": "kiosk:lobby-8"})  # another kiosk's channel
        assert (await receive_json(ws))["code"] == "forbidden"
        async with http.get(
            hub.url + "/api/presence", params={"channel": "kiosks"}, headers=bearer(PUBLISH_TOKEN)
        ) as response:
            clients = (await response.json())["clients"]
        assert [c["subject"] for c in clients] == ["lobby-7"]
        # The minted token opened the connection; it does not bound it (nobody could refresh it).
        (session,) = hub.hub.sessions.values()
        assert session.expiry is None

        await publish_http(http, hub, "kiosk:lobby-7", {"action": "reset"})
        assert (await receive_json(ws))["data"] == {"action": "reset"}


async def test_a_kiosk_id_that_is_not_a_plain_name_is_refused(
    gateway: GatewayServer, http: aiohttp.ClientSession
) -> None:
    url = gateway.url.replace("http://", "ws://") + "/ws?kiosk=a%20b"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers={"Origin": ORIGIN})
    assert refused.value.status == 400


async def test_the_hub_refuses_the_gateways_route_without_the_signing_key(
    start_hub: StartHub, gateway: GatewayServer, http: aiohttp.ClientSession
) -> None:
    base = make_hub_config()
    assert base.signing is not None
    # A hub that does not know the gateway's key answers 401, and the gateway relays it.
    stranger = await start_hub(replace(base, signing=None))
    route = replace(gateway.config.routes[0], upstream=(stranger.url.replace("http://", "ws://") + "/ws",))
    other = GatewayServer(replace(gateway.config, routes=(route,)))
    await other.start()
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                other.url.replace("http://", "ws://") + "/ws?kiosk=k1", headers={"Origin": ORIGIN}
            )
        assert refused.value.status == 401
    finally:
        await other.stop()
