"""Limits and liveness on a real hub: slow consumers, oversized messages, slow handshakes, dead peers,
and graceful shutdown."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import (
    TIMEOUT,
    Connect,
    StartHub,
    kiosk_headers,
    make_hub_config,
    publish_http,
    receive_json,
    subscribe,
    wait_for,
    ws_url,
)
from tests.wsraw import open_raw, raw_websocket
from wsgate.hub.server import HubServer


async def test_slow_consumer_is_closed_with_1013_while_others_keep_receiving(
    start_hub: StartHub, connect: Connect, http: aiohttp.ClientSession
) -> None:
    config = make_hub_config(limits={"send_queue": 64 * 1024})
    server = await start_hub(config)
    good = await connect(server)
    await subscribe(good, "kiosks")
    slow = await raw_websocket("127.0.0.1", server.port, kiosk_headers(), receive_buffer=4096)
    assert slow.status == 101
    await slow.send_text(json.dumps({"type": "subscribe", "channel": "kiosks"}))
    opcode, payload = await slow.read_frame()
    assert opcode == 0x1
    assert json.loads(payload)["type"] == "subscribed"
    # From here on the slow client reads nothing.

    received: list[int] = []

    async def drain_good() -> None:
        while True:
            received.append((await receive_json(good))["offset"])

    async def slow_consumers_dropped() -> bool:
        async with http.get(server.url + "/metrics") as response:
            return "wsgate_hub_slow_consumers_total 1.0" in await response.text()

    reader = asyncio.create_task(drain_good())
    payload_data = "x" * 16_000
    published = 0
    try:
        # Bounded: 16 kB x 1000 = 16 MB at most; kernel buffers plus 64 KiB fill long before.
        while published < 1000 and not (published % 10 == 0 and await slow_consumers_dropped()):
            published = (await publish_http(http, server, "kiosks", payload_data))["offset"]
        assert await slow_consumers_dropped(), "the slow consumer was never disconnected"
        await wait_for(lambda: len(received) == published, what="the good client to receive everything")
    finally:
        reader.cancel()
    assert received == list(range(1, published + 1))

    # The slow client, reading at last, finds the messages it was sent and then the reason: 1013.
    code, frames = await asyncio.wait_for(slow.read_until_close(), TIMEOUT)
    assert code == 1013
    assert [json.loads(payload)["offset"] for _, payload in frames] == list(range(1, len(frames) + 1))
    slow.close()
    await wait_for(lambda: len(server.hub.sessions) == 1, what="the slow consumer's slot to be freed")


async def test_oversized_message_is_closed_with_1009(start_hub: StartHub, connect: Connect) -> None:
    server = await start_hub(make_hub_config(limits={"max_message": 1024}))
    ws = await connect(server)
    await ws.send_str(json.dumps({"type": "publish", "channel": "kiosks", "data": "x" * 2000}))
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009
    # Others are unaffected.
    other = await connect(server)
    await subscribe(other, "kiosks")


async def test_a_client_that_never_completes_its_request_is_cut_off(start_hub: StartHub) -> None:
    server = await start_hub(make_hub_config(limits={"handshake_timeout": 0.5}))
    silent_reader, silent = await open_raw("127.0.0.1", server.port)
    trickle_reader, trickle = await open_raw("127.0.0.1", server.port)
    trickle.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # … and the rest never comes
    for reader in (silent_reader, trickle_reader):
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    silent.close()
    trickle.close()


async def test_dead_peer_is_detected_by_ping(start_hub: StartHub, connect: Connect) -> None:
    server = await start_hub(make_hub_config(limits={"ping_interval": 0.3}))
    alive = await connect(server)
    # aiohttp answers pings while a receive() is pending: keep one pending, waiting for our answer.
    answer = asyncio.create_task(receive_json(alive))
    mute = await raw_websocket("127.0.0.1", server.port, kiosk_headers())  # never answers
    assert mute.status == 101
    opcode, _ = await asyncio.wait_for(mute.read_frame(), TIMEOUT)
    assert opcode == 0x9  # ping
    await asyncio.wait_for(mute.read_until_close(), TIMEOUT)  # the hub hangs up
    await wait_for(lambda: len(server.hub.sessions) == 1, what="the mute peer to be dropped")
    await alive.send_json({"type": "subscribe", "channel": "kiosks"})
    assert (await answer)["type"] == "subscribed"
    mute.close()


async def test_graceful_shutdown_closes_with_1001_and_healthz_turns_503(
    connect: Connect, http: aiohttp.ClientSession
) -> None:
    server = HubServer(make_hub_config())
    await server.start()
    try:
        polite = await connect(server)
        await subscribe(polite, "kiosks")
        stubborn = await raw_websocket("127.0.0.1", server.port, kiosk_headers())  # ignores close frames

        closing = asyncio.create_task(polite.receive(timeout=TIMEOUT))  # a live client is always reading
        # Draining is the first half of stop(): the listener stays open so balancers can see /healthz.
        await asyncio.wait_for(server.hub.drain(deadline=5.0), TIMEOUT)
        message = await closing
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert polite.close_code == 1001
        code, _ = await asyncio.wait_for(stubborn.read_until_close(), TIMEOUT)
        assert code == 1001
        stubborn.close()

        async with http.get(server.url + "/healthz") as response:
            assert response.status == 503
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(server), headers=kiosk_headers())
        assert refused.value.status == 503
        await wait_for(lambda: not server.hub.sessions, what="every session to end")
    finally:
        await asyncio.wait_for(server.stop(), TIMEOUT)
