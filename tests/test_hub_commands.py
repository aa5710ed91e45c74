"""Client commands on a real hub: handled one at a time, in the order sent, even when one waits for the broker
— and what waits behind it is bounded."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    TIMEOUT,
    Connect,
    StartHub,
    kiosk_headers,
    make_hub_config,
    receive_json,
    wait_for,
)
from tests.test_hub_recovery_race import SlowRecoveryBroker
from tests.wsraw import client_frame, raw_websocket
from wsgate.hub.broker.base import Published
from wsgate.hub.server import HubServer


async def test_a_publish_and_an_unsubscribe_never_overtake_a_subscribe_that_waits(
    start_hub: StartHub, connect: Connect
) -> None:
    broker = SlowRecoveryBroker()
    server = await start_hub(make_hub_config(), broker=broker)
    ws = await connect(server, kiosk_headers(token=ADMIN_TOKEN))
    await ws.send_json({"type": "subscribe", "channel": "kiosks"})
    await ws.send_json({"type": "publish", "channel": "kiosks", "data": "mine"})
    await ws.send_json({"type": "unsubscribe", "channel": "kiosks"})
    await ws.send_json({"type": "unsubscribe", "channel": "kiosks"})  # now an error: not subscribed
    await asyncio.wait_for(broker.snapshot_taken.wait(), TIMEOUT)
    broker.gate.set()
    subscribed = await receive_json(ws)
    assert (subscribed["type"], subscribed["offset"]) == ("subscribed", 0)  # the publish came after
    message = await receive_json(ws)
    assert (message["type"], message["offset"], message["data"]) == ("message", 1, "mine")
    error = await receive_json(ws)
    assert (error["type"], error["code"]) == ("error", "bad_request")  # only the second unsubscribe failed
    await ws.send_json({"type": "subscribe", "channel": "kiosks"})
    assert (await receive_json(ws))["offset"] == 1


async def test_commands_piling_up_behind_a_waiting_one_stop_the_reading_then_all_run_in_order(
    start_hub: StartHub,
) -> None:
    broker = SlowRecoveryBroker()
    server = await start_hub(make_hub_config(limits={"max_message": 1024}), broker=broker)
    ws = await raw_websocket("127.0.0.1", server.port, kiosk_headers(token=ADMIN_TOKEN))
    assert ws.status == 101
    await ws.send_text(json.dumps({"type": "subscribe", "channel": "kiosks"}))
    await asyncio.wait_for(broker.snapshot_taken.wait(), TIMEOUT)
    (session,) = server.hub.sessions.values()
    publishes = [json.dumps({"type": "publish", "channel": "kiosks", "data": n}) for n in range(1, 301)]
    ws.writer.write(b"".join(client_frame(0x1, text.encode()) for text in publishes))  # ~17 KB
    await wait_for(lambda: session.reading_paused, what="the hub to stop reading")
    assert session._reader.buffered <= 1024 + 14 + 256 * 1024  # one read past the bound at most
    broker.gate.set()
    _, payload = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
    assert json.loads(payload)["type"] == "subscribed"
    offsets = []
    for _ in publishes:
        _, payload = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
        offsets.append(json.loads(payload)["offset"])
    assert offsets == list(range(1, 301))
    assert not session.reading_paused
    ws.close()


async def test_a_binary_frame_is_answered_with_bad_request_and_the_connection_stays(
    hub: HubServer, connect: Connect
) -> None:
    ws = await connect(hub)
    await ws.send_bytes(b'{"type":"subscribe","channel":"kiosks"}')
    error = await receive_json(ws)
    assert (error["type"], error["code"]) == ("error", "bad_request")
    await ws.send_json({"type": "subscribe", "channel": "kiosks"})
    assert (await receive_json(ws))["type"] == "subscribed"


async def test_a_ping_waits_for_the_command_before_it(start_hub: StartHub) -> None:
    broker = SlowRecoveryBroker()
    server = await start_hub(make_hub_config(), broker=broker)
    ws = await raw_websocket("127.0.0.1", server.port, kiosk_headers())
    await ws.send_text(json.dumps({"type": "subscribe", "channel": "kiosks"}))
    ws.writer.write(client_frame(0x9, b"after"))
    await asyncio.wait_for(broker.snapshot_taken.wait(), TIMEOUT)
    broker.gate.set()
    first = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
    second = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
    assert first[0] == 0x1
    assert json.loads(first[1])["type"] == "subscribed"
    assert second == (0xA, b"after")
    ws.close()


class FailingBroker(SlowRecoveryBroker):
    async def publish(self, channel: str, data: str) -> Published:
        raise ConnectionError("the broker is gone")


async def test_a_command_the_hub_fails_to_handle_closes_with_1011(
    start_hub: StartHub, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FailingBroker()
    broker.gate.set()
    server = await start_hub(make_hub_config(), broker=broker)
    ws = await connect(server, kiosk_headers(token=ADMIN_TOKEN))
    await ws.send_json({"type": "publish", "channel": "kiosks", "data": 1})
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1011
    await wait_for(lambda: not server.hub.sessions, what="the session to end")
    assert any("error handling a message" in record.getMessage() for record in caplog.records)
