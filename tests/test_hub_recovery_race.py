"""Recovery while messages keep arriving: a broker whose history read takes time (as Redis's does) must not
make a client miss or repeat a message."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import (
    Connect,
    StartHub,
    make_hub_config,
    publish_http,
    receive_json,
    subscribe,
    wait_for,
)
from wsgate.hub.broker.base import Recovery
from wsgate.hub.broker.memory import MemoryBroker
from wsgate.hub.protocol import Since


class SlowRecoveryBroker(MemoryBroker):
    """Takes its history snapshot, then waits for the test to open the gate before answering."""

    def __init__(self) -> None:
        super().__init__(history_size=100, history_ttl=600.0)
        self.snapshot_taken = asyncio.Event()
        self.gate = asyncio.Event()
        self.listening: set[str] = set()

    async def recover(self, channel: str, since: Since | None) -> Recovery:
        recovery = await super().recover(channel, since)
        self.snapshot_taken.set()
        await self.gate.wait()
        return recovery

    async def listen(self, channel: str) -> None:
        await super().listen(channel)
        self.listening.add(channel)

    async def unlisten(self, channel: str) -> None:
        await super().unlisten(channel)
        self.listening.discard(channel)


async def test_messages_published_during_recovery_follow_the_replay_once_each(
    start_hub: StartHub, connect: Connect, http: aiohttp.ClientSession
) -> None:
    broker = SlowRecoveryBroker()
    broker.gate.set()
    server = await start_hub(make_hub_config(), broker=broker)
    first = await publish_http(http, server, "kiosks", 1)
    await publish_http(http, server, "kiosks", 2)
    broker.gate.clear()
    broker.snapshot_taken.clear()

    ws = await connect(server)
    await ws.send_json(
        {"type": "subscribe", "channel": "kiosks", "since": {"epoch": first["epoch"], "offset": 1}}
    )
    await asyncio.wait_for(broker.snapshot_taken.wait(), 10)
    await publish_http(http, server, "kiosks", 3)  # arrives while the history read is in flight
    await publish_http(http, server, "kiosks", 4)
    broker.gate.set()

    answer = await receive_json(ws)
    assert (answer["type"], answer["recovered"], answer["offset"]) == ("subscribed", True, 2)
    assert [(await receive_json(ws))["data"] for _ in range(3)] == [2, 3, 4]
    await publish_http(http, server, "kiosks", 5)
    assert (await receive_json(ws))["data"] == 5


async def test_a_connection_that_ends_during_recovery_leaves_no_listener_behind(
    start_hub: StartHub, connect: Connect
) -> None:
    broker = SlowRecoveryBroker()
    server = await start_hub(make_hub_config(), broker=broker)
    ws = await connect(server)
    await ws.send_json({"type": "subscribe", "channel": "kiosks"})
    await asyncio.wait_for(broker.snapshot_taken.wait(), 10)
    assert broker.listening == {"kiosks"}
    closing = asyncio.create_task(ws.close())
    broker.gate.set()
    await closing
    await wait_for(lambda: not server.hub.sessions, what="the session to end")
    assert not broker.listening

    other = await connect(server)
    await subscribe(other, "kiosks")
    assert broker.listening == {"kiosks"}


async def test_a_burst_published_in_one_loop_iteration_arrives_in_order_once(
    start_hub: StartHub, connect: Connect, http: aiohttp.ClientSession
) -> None:
    broker = SlowRecoveryBroker()
    broker.gate.set()
    server = await start_hub(make_hub_config(), broker=broker)
    early = await connect(server)
    await subscribe(early, "kiosks")
    broker.gate.clear()
    late = await connect(server)
    await late.send_json({"type": "subscribe", "channel": "kiosks"})
    await asyncio.wait_for(broker.snapshot_taken.wait(), 10)

    # Frames of one iteration are joined in the outbox; the late subscriber holds them while it recovers.
    await asyncio.gather(*(server.hub.publish("kiosks", str(i), via="http") for i in range(1, 51)))
    broker.gate.set()

    assert [(await receive_json(early))["offset"] for _ in range(50)] == list(range(1, 51))
    assert (await receive_json(late))["type"] == "subscribed"
    assert [(await receive_json(late))["offset"] for _ in range(50)] == list(range(1, 51))
    await publish_http(http, server, "kiosks", 51)
    assert (await receive_json(early))["offset"] == 51
    assert (await receive_json(late))["offset"] == 51
