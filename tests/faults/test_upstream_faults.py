"""The hub behind the gateway fails: killed outright (SIGKILL), or its connections cut while messages keep
being published. The gateway must end the affected tunnels at once and keep serving its other routes, and
clients must come back: with a `Resync` when the hub's memory is gone, with every message once and in order
when the history still holds them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import KEY_NEW, PUBLISH_TOKEN, TIMEOUT, StartHub, bearer, publish_http, wait_for
from tests.faults.support import (
    ORIGIN,
    Collector,
    WsgateProcess,
    gateway_client,
    gateway_config,
    ws_route,
    wsgate_process,
)
from wsgate.config import Route
from wsgate.gateway.server import GatewayServer
from wsgate.hub.server import HubServer

# How soon after the hub dies every affected browser connection must be closed by the gateway.
PROMPT_CLOSE = 1.0
CLIENTS = 3
ENDED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)

HUB_TOML = """
[hub]
listen = "127.0.0.1:0"
allowed_origins = ["https://kiosk.example.org"]
history = { size = 1000, ttl = "10m" }

[hub.signing]
keys = { "2026-11" = "${WSGATE_KEY}" }

[hub.publish_api]
tokens = ["${WSGATE_PUBLISH_TOKEN}"]
"""


@pytest.fixture
async def api_upstream() -> AsyncIterator[str]:
    """A small REST API behind the gateway's /api route."""

    async def offices(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/api/{tail:.*}", offices)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _hub_process(stack: AsyncExitStack, tmp_path: Path, port: int = 0) -> tuple[WsgateProcess, int]:
    config = tmp_path / "hub.toml"
    config.write_text(HUB_TOML)
    env = {"WSGATE_KEY": KEY_NEW, "WSGATE_PUBLISH_TOKEN": PUBLISH_TOKEN}
    hub = await stack.enter_async_context(
        wsgate_process("hub", "--config", str(config), "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
    )
    bound = int((await hub.wait_for_line(r"hub listening on http://127\.0\.0\.1:(\d+)"))[1])
    return hub, bound


async def _publish(http: aiohttp.ClientSession, base: str, data: object) -> int:
    async with http.post(
        base + "/api/publish", json={"channel": "kiosks", "data": data}, headers=bearer(PUBLISH_TOKEN)
    ) as response:
        assert response.status == 200, await response.text()
        offset: int = (await response.json())["offset"]
        return offset


async def test_a_killed_hub_process_closes_its_tunnels_at_once_and_clients_resync_on_its_successor(
    tmp_path: Path, api_upstream: str, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        hub, port = await _hub_process(stack, tmp_path)
        hub_http = f"http://127.0.0.1:{port}"
        api = Route(path="/api", upstream=(api_upstream,))
        gateway = GatewayServer(gateway_config(ws_route(f"ws://127.0.0.1:{port}/ws"), api))
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        gateway_ws = gateway.url.replace("http://", "ws://")

        # Kiosks on wsgate's client (they reconnect and recover), and plain WebSockets that show what a
        # browser sees when the hub dies.
        clients = [
            await stack.enter_async_context(gateway_client(gateway_ws, f"k{n}")) for n in range(CLIENTS)
        ]
        collectors = [Collector(client.subscribe("kiosks")) for client in clients]
        for collector in collectors:
            stack.push_async_callback(collector.stop)
            await collector.subscription.wait_subscribed()
        browsers = []
        for n in range(CLIENTS):
            ws = await http.ws_connect(f"{gateway_ws}/ws?kiosk=b{n}", headers={"Origin": ORIGIN})
            stack.push_async_callback(ws.close)
            await ws.send_json({"type": "subscribe", "channel": "kiosks"})
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "subscribed"
            browsers.append(ws)

        # Mid-stream: a publisher keeps publishing until the hub is gone.
        async def publish_forever() -> None:
            n = 0
            while True:
                n += 1
                await _publish(http, hub_http, n)

        publisher = asyncio.create_task(publish_forever())
        await wait_for(lambda: all(c.last_offset() >= 20 for c in collectors), what="messages flowing")

        async def closed_at(ws: aiohttp.ClientWebSocketResponse) -> float:
            while True:
                message = await ws.receive(timeout=TIMEOUT)
                if message.type in ENDED:
                    return time.monotonic()

        watchers = [asyncio.create_task(closed_at(ws)) for ws in browsers]
        killed = time.monotonic()
        hub.proc.kill()  # SIGKILL: no close frame, no drain; the kernel closes the hub's sockets
        closes = [moment - killed for moment in await asyncio.gather(*watchers)]
        await wait_for(lambda: gateway.gateway.tunnels() == 0, what="every tunnel closed")
        tunnels_gone = time.monotonic() - killed
        await wait_for(lambda: not any(client.connected for client in clients), what="clients disconnected")
        clients_noticed = time.monotonic() - killed
        assert await hub.wait() != 0
        with pytest.raises(aiohttp.ClientError):
            await publisher
        print(
            f"\nhub SIGKILL -> browsers see the close within {max(closes) * 1000:.1f} ms; gateway tunnels "
            f"all gone: {tunnels_gone * 1000:.1f} ms; wsgate clients: {clients_noticed * 1000:.1f} ms"
        )
        assert max(closes) < PROMPT_CLOSE
        # The gateway cannot write a close frame into a byte relay: the browser sees an abnormal closure.
        assert [ws.close_code for ws in browsers] == [1006] * CLIENTS

        # The other route does not care; the dead one answers 502 while no upstream is reachable.
        async with http.get(gateway.url + "/api/offices") as response:
            assert response.status == 200
            assert await response.json() == {"path": "/api/offices"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{gateway_ws}/ws?kiosk=late", headers={"Origin": ORIGIN})
        assert refused.value.status == 502

        # Before the kill: every offset once and in order, however far each client got.
        for collector in collectors:
            assert collector.offsets() == list(range(1, collector.last_offset() + 1))
            assert not collector.resyncs()
        old_epoch = collectors[0].subscription.position.epoch  # type: ignore[union-attr]

        # A new memory-broker hub on the same port has a new epoch: the history is gone, clients are told.
        await _hub_process(stack, tmp_path, port)
        await wait_for(lambda: all(c.resyncs() for c in collectors), what="a Resync on every client")
        for collector in collectors:
            (resync,) = collector.resyncs()
            assert resync.epoch != old_epoch
            assert resync.offset == 0
        assert await _publish(http, hub_http, "after") == 1
        await wait_for(lambda: all(c.events[-1].offset == 1 for c in collectors), what="live again")
        for collector in collectors:
            assert collector.messages()[-1].data == "after"


# --- connections cut, history kept -------------------------------------------------------------------------


@pytest.fixture
async def hub_and_gateway(start_hub: StartHub) -> AsyncIterator[tuple[HubServer, GatewayServer]]:
    hub = await start_hub()
    gateway = GatewayServer(gateway_config(ws_route(hub.url.replace("http://", "ws://") + "/ws")))
    await gateway.start()
    yield hub, gateway
    await gateway.stop()


def _cut(how: str, hub: HubServer, gateway: GatewayServer) -> None:
    if how == "hub closes with 1012":
        for session in list(hub.hub.sessions.values()):
            hub.hub.close_session_soon(session, 1012, "service restart")
    elif how == "hub resets its sockets":
        for session in list(hub.hub.sessions.values()):
            session.transport.abort()
    else:  # the gateway's connections to the hub fail
        for proxy in gateway.gateway.websocket_proxies:
            for tunnel in list(proxy.tunnels):
                assert tunnel.upstream is not None
                tunnel.upstream.abort()


CUTS = ["hub closes with 1012", "hub resets its sockets", "gateway upstream aborted"]


@pytest.mark.parametrize("how", CUTS)
async def test_cut_connections_recover_every_message_published_meanwhile_once_and_in_order(
    hub_and_gateway: tuple[HubServer, GatewayServer], http: aiohttp.ClientSession, how: str
) -> None:
    hub, gateway = hub_and_gateway
    gateway_ws = gateway.url.replace("http://", "ws://")
    total, cut_after = 60, 20
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(gateway_client(gateway_ws, f"k{n}")) for n in range(CLIENTS)
        ]
        collectors = [Collector(client.subscribe("kiosks")) for client in clients]
        for collector in collectors:
            stack.push_async_callback(collector.stop)
            await collector.subscription.wait_subscribed()
        for n in range(1, cut_after + 1):
            await publish_http(http, hub, "kiosks", n)
        await wait_for(lambda: all(c.last_offset() == cut_after for c in collectors), what="first messages")
        before = set(hub.hub.sessions)

        _cut(how, hub, gateway)
        for n in range(cut_after + 1, total + 1):  # while the clients are away, and as they come back
            await publish_http(http, hub, "kiosks", n)
        await wait_for(lambda: all(c.last_offset() == total for c in collectors), what="every message")

        assert not before & set(hub.hub.sessions), "every client reconnected"
        assert len(hub.hub.sessions) == CLIENTS
        for collector in collectors:
            assert not collector.resyncs()
            assert collector.offsets() == list(range(1, total + 1)), "none lost, none twice, in order"
            assert [message.data for message in collector.messages()] == list(range(1, total + 1))


@pytest.mark.parametrize("code", [1011, 1012, 1014])
async def test_close_codes_the_hub_sends_before_going_reach_the_browser_unchanged(
    hub_and_gateway: tuple[HubServer, GatewayServer], http: aiohttp.ClientSession, code: int
) -> None:
    hub, gateway = hub_and_gateway
    url = gateway.url.replace("http://", "ws://") + "/ws?kiosk=lobby"
    async with http.ws_connect(url, headers={"Origin": ORIGIN}) as ws:
        await ws.send_json({"type": "subscribe", "channel": "kiosks"})
        assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "subscribed"
        (session,) = hub.hub.sessions.values()
        hub.hub.close_session_soon(session, code, "going")
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert (message.data, message.extra) == (code, "going")
    await wait_for(lambda: gateway.gateway.tunnels() == 0, what="the tunnel to end")
