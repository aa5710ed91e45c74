"""Floods and bombs: pings every millisecond, pings from a client that never reads, subscribers that never
read, and permessage-deflate bombs — against the hub, which does not negotiate compression at all, and
through the gateway to an upstream that does (the gateway relays bytes, so the upstream enforces its limit).
Memory is read from /proc of the server processes; other clients must keep being served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib

import aiohttp

from tests.conftest import wait_for
from tests.hostile.support import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ORIGIN,
    PUBLISH_TOKEN,
    SEND_QUEUE,
    TIMEOUT,
    ServerProcess,
    Target,
    Upstreams,
    bystander_roundtrip,
    frame,
    hub_metric,
    measure,
    new_channel,
)
from tests.wsraw import raw_websocket
from wsgate.gateway.relay import FLUSH_GRACE


async def test_pings_every_millisecond_for_a_second_are_all_answered_and_others_are_served(
    target: Target, hub_process: ServerProcess
) -> None:
    ws = await raw_websocket("127.0.0.1", target.port, target.headers)
    pongs: list[bytes] = []

    async def read_pongs() -> None:
        while True:
            opcode, payload = await ws.read_frame()
            if opcode == OP_PONG:
                pongs.append(payload)

    reading = asyncio.create_task(read_pongs())
    latencies: list[float] = []

    async def bystanders() -> None:
        while True:
            latencies.append(await bystander_roundtrip(target, hub_process))

    serving = asyncio.create_task(bystanders())
    sent = 0
    try:
        with measure(target.server, "ping every ms for 1 s") as memory:
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.0
            while loop.time() < end:
                ws.writer.write(frame(OP_PING, b"%08d" % sent))
                sent += 1
                await asyncio.sleep(0.001)  # the attack's pace: one ping a millisecond
            await wait_for(lambda: len(pongs) == sent, what="every ping to be answered")
    finally:
        serving.cancel()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        ws.close()
    print(f"\n[flood] {target.name}: {sent} pings in 1 s, slowest bystander {max(latencies):.3f} s")
    assert sent > 100  # the loop did flood (timer granularity and a busy machine keep it below 1000)
    assert pongs == [b"%08d" % i for i in range(sent)]  # each answered, in order, with its payload
    assert latencies, "no bystander round trip completed during the flood"
    assert max(latencies) < 1.0, latencies
    assert memory.growth_kib < 8 * 1024, memory


async def test_a_ping_flood_from_a_client_that_never_reads_is_held_back_by_tcp(
    target: Target, hub_process: ServerProcess
) -> None:
    """Maximal pings (125 bytes) as fast as the socket takes them, pongs never read: the server stops reading
    when its pongs cannot be written, so the flood ends up in kernel buffers, not in the server's memory."""
    log_start = hub_process.log_size()
    connections = await hub_metric(hub_process, "wsgate_hub_connections")
    fds = target.server.fds()
    ws = await raw_websocket("127.0.0.1", target.port, target.headers, receive_buffer=4096)
    ping = frame(OP_PING, b"p" * 125)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:
            ws.writer.write(ping * 64)
            await ws.writer.drain()
            sent += 64

    try:
        with measure(target.server, "unread ping flood for 1 s") as memory:
            flooding = asyncio.create_task(flood())
            done, _ = await asyncio.wait({flooding}, timeout=1.0)
            assert not done, flooding.exception()  # the server kept the connection
            latency = await bystander_roundtrip(target, hub_process)
            flooding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flooding
    finally:
        ws.writer.transport.abort()  # gone while the hub's pongs are stuck: an ordinary lost connection
    print(f"\n[flood] {target.name}: {sent} pings of 125 bytes accepted by the socket in 1 s")
    assert latency < 2.0
    assert memory.growth_kib < 8 * 1024, memory
    assert target.server.alive()
    # Through the gateway, the tunnel's upstream side still holds pings the hub is not reading (it is stuck
    # writing pongs nobody reads): the gateway cuts it FLUSH_GRACE after the client left.
    for _ in range(int((FLUSH_GRACE + TIMEOUT) / 0.05)):
        if await hub_metric(hub_process, "wsgate_hub_connections") <= connections:
            break
        await asyncio.sleep(0.05)  # polling a gauge: there is no event to wait on
    else:
        raise AssertionError("the hub never noticed the flooder was gone")
    await wait_for(lambda: target.server.fds() <= fds, what="the flooder's sockets to be released")
    log = hub_process.log(since=log_start)
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


async def test_subscribers_that_never_read_cost_at_most_their_send_queue(hub_process: ServerProcess) -> None:
    """20 subscribers stop reading; publishing continues until the hub has closed every one with 1013. The
    hub holds at most limits.send_queue (256 KiB here) for each; a reading subscriber receives everything."""
    channel = new_channel("firehose")
    headers = {"token": "hostile-ws-token-0123456789abcdef", "Origin": ORIGIN}
    slow = [
        await raw_websocket("127.0.0.1", hub_process.port, headers, receive_buffer=4096) for _ in range(20)
    ]
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
    ) as http:
        good = await http.ws_connect(f"ws://127.0.0.1:{hub_process.port}/ws", headers=headers)
        await good.send_json({"type": "subscribe", "channel": channel})
        assert (await good.receive_json(timeout=TIMEOUT))["type"] == "subscribed"
        for ws in slow:
            await ws.send_text(json.dumps({"type": "subscribe", "channel": channel}))
            _, payload = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
            assert json.loads(payload)["type"] == "subscribed"
        received: list[int] = []

        async def drain_good() -> None:
            while True:
                received.append((await good.receive_json())["offset"])

        async def slow_consumers_dropped() -> float:
            async with http.get(hub_process.url + "/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("wsgate_hub_slow_consumers_total "):
                        return float(line.split()[1])
            return 0.0

        dropped_before = await slow_consumers_dropped()
        reading = asyncio.create_task(drain_good())
        data = "x" * 16_000
        offset = 0
        try:
            with measure(hub_process, "20 subscribers that never read") as memory:
                # Bounded: 2000 x 16 kB; the send queues (256 KiB) and kernel buffers fill long before.
                while offset < 2000:
                    async with http.post(
                        hub_process.url + "/api/publish",
                        json={"channel": channel, "data": data},
                        headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"},
                    ) as response:
                        offset = (await response.json())["offset"]
                    if offset % 20 == 0 and await slow_consumers_dropped() == dropped_before + len(slow):
                        break
                assert await slow_consumers_dropped() == dropped_before + len(slow)
                await wait_for(
                    lambda: len(received) == offset, what="the reading subscriber to get everything"
                )
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await good.close()
    assert received == list(range(1, offset + 1))
    for ws in slow:
        code, _ = await asyncio.wait_for(ws.read_until_close(), TIMEOUT)
        assert code == 1013
        ws.close()
    print(f"\n[slow consumers] {offset} messages of 16 kB published before all 20 were dropped")
    # Python's allocator keeps some of what it frees; the bound is the send queues plus a margin.
    assert memory.growth_kib < (len(slow) * SEND_QUEUE) // 1024 + 16 * 1024, memory


def deflate_blocks(mebibytes: int) -> bytes:
    """Raw DEFLATE of ``mebibytes`` MiB of zeros, ending in a sync flush (00 00 ff ff): about 1 KiB on the
    wire per MiB inflated, and concatenations of it are one valid stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(b"\0" * (1 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)) * mebibytes


def deflate_bomb(mebibytes: int) -> bytes:
    """A permessage-deflate message payload: the stream without its final 00 00 ff ff (RFC 7692 §7.2.1)."""
    return deflate_blocks(mebibytes)[:-4]


OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


async def test_the_hub_never_negotiates_permessage_deflate_and_refuses_compressed_frames(
    target: Target, hub_process: ServerProcess
) -> None:
    ws = await raw_websocket("127.0.0.1", target.port, {**target.headers, **OFFER})
    try:
        assert ws.status == 101
        assert b"sec-websocket-extensions" not in ws.head.lower()  # declined: no compression on this socket
        with measure(target.server, "60 MiB deflate bomb, not negotiated") as memory:
            ws.writer.write(frame(OP_TEXT, deflate_bomb(60), rsv=0b100))  # RSV1: "compressed"
            code, frames = await asyncio.wait_for(ws.read_until_close(), TIMEOUT)
    finally:
        ws.close()
    assert (code, frames) == (1002, [])  # RSV1 without a negotiated extension (RFC 6455 §5.2)
    assert memory.growth_kib < 4 * 1024, memory
    await bystander_roundtrip(target, hub_process)


async def test_a_deflate_bomb_through_the_gateway_is_refused_by_the_upstream_and_costs_the_gateway_nothing(
    gateway_target: Target, upstreams: Upstreams, hub_process: ServerProcess
) -> None:
    gateway = gateway_target.server
    bombs = {
        # One frame under the upstream's max_size (64 KiB) on the wire, 60 MiB inflated.
        "60 MiB in one frame": frame(OP_BINARY, deflate_bomb(60), rsv=0b100),
        # 1 GiB in 32 fragments of ~32 KiB; the first one inflated already passes the limit.
        "1 GiB in fragments": b"".join(
            frame(
                OP_BINARY if i == 0 else OP_CONTINUATION,
                deflate_blocks(32) if i < 31 else deflate_bomb(32),
                fin=i == 31,
                rsv=0b100 if i == 0 else 0,  # RSV1 on the first frame only (RFC 7692 §6.1)
            )
            for i in range(32)
        ),
    }
    for name, bomb in bombs.items():
        ws = await raw_websocket("127.0.0.1", gateway.port, {"Origin": ORIGIN, **OFFER}, path="/deflate")
        try:
            assert ws.status == 101
            assert b"permessage-deflate" in ws.head  # negotiated end to end with the upstream
            # Compression works for honest messages through the relay.
            honest = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = honest.compress(b"hello " * 100) + honest.flush(zlib.Z_SYNC_FLUSH)
            ws.writer.write(frame(OP_BINARY, payload[:-4], rsv=0b100))
            opcode, _ = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
            assert opcode == OP_BINARY
            with measure(gateway, f"deflate bomb, {name}") as memory:
                ws.writer.write(bomb)
                code, frames = await asyncio.wait_for(ws.read_until_close(), TIMEOUT)
        finally:
            ws.close()
        assert (code, frames) == (1009, []), name  # the upstream's "message too big", relayed as sent
        assert memory.growth_kib < 8 * 1024, memory
    await bystander_roundtrip(gateway_target, hub_process)
