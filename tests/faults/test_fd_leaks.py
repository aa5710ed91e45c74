"""No file descriptor outlives its connection: 1,000 connect/disconnect cycles through a gateway to a hub, and
1,000 straight to a hub, ending every way a connection ends - a clean close, a reset, a FIN without a close
frame, a refused handshake - leave the process with the descriptors it started with. Client, gateway and hub
all live in this process, so `/proc/self/fd` counts every side."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.conftest import KIOSK_TOKEN, TIMEOUT, StartHub, wait_for
from tests.faults.support import ORIGIN, gateway_config, ws_route
from tests.wsraw import client_frame, raw_websocket
from wsgate.gateway.server import GatewayServer
from wsgate.hub.server import HubServer

CYCLES = 1000
CONCURRENCY = 20
# Descriptors the event loop, resolver or logging may open lazily on first use, not per connection.
TOLERANCE = 5
SUBSCRIBE = b'{"type":"subscribe","channel":"kiosks"}'


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive pool: a descriptor the client keeps for reuse would look like a leak (or hide one).
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


Cycle = Callable[[int], Awaitable[None]]


def cycles(http: aiohttp.ClientSession, port: int, path: str, headers: dict[str, str]) -> Cycle:
    url = f"ws://127.0.0.1:{port}{path}"

    async def cycle(n: int) -> None:
        kind = n % 4
        if kind == 0:  # subscribe, then a clean close handshake
            async with http.ws_connect(url, headers=headers) as ws:
                await ws.send_str(SUBSCRIBE.decode())
                assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "subscribed"
        elif kind in (1, 2):
            raw = await raw_websocket("127.0.0.1", port, headers, path=path)
            assert raw.status == 101
            raw.writer.write(client_frame(0x1, SUBSCRIBE))
            await raw.writer.drain()
            await raw.read_frame()  # subscribed
            if kind == 1:  # a reset: no close frame, no FIN
                raw.writer.transport.abort()
            else:  # a FIN without a close frame
                raw.writer.close()
                await raw.writer.wait_closed()
        else:  # refused before any upgrade: a foreign Origin
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers={**headers, "Origin": "https://evil.example"})
            assert refused.value.status == 403

    return cycle


async def run_cycles(cycle: Cycle, count: int) -> tuple[float, int]:
    """``count`` cycles, CONCURRENCY at a time: the seconds they took and the most descriptors seen."""
    started = time.monotonic()
    queue = iter(range(count))
    peak = 0

    async def worker() -> None:
        nonlocal peak
        for n in queue:
            await cycle(n)
            if n % 50 == 0:  # the other workers' connections are open right now
                peak = max(peak, open_fds())

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.monotonic() - started, peak


async def assert_no_leak(what: str, cycle: Cycle, settled: Callable[[], bool]) -> None:
    await run_cycles(cycle, CONCURRENCY * 2)  # warm up: lazily created descriptors are not leaks
    await wait_for(settled, what="every connection closed")
    before = open_fds()
    seconds, peak = await run_cycles(cycle, CYCLES)
    await wait_for(settled, what="every connection closed")
    after = open_fds()
    print(f"\n{what}: {CYCLES} cycles in {seconds:.1f}s, open fds {before} -> {after} (peak {peak})")
    assert peak > before + CONCURRENCY, "the cycles ran concurrently"
    assert after - before <= TOLERANCE, f"{after - before} file descriptors leaked in {CYCLES} cycles"


async def test_no_descriptor_leaks_across_1000_cycles_through_the_gateway(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    hub = await start_hub()
    gateway = GatewayServer(gateway_config(ws_route(hub.url.replace("http://", "ws://") + "/ws")))
    await gateway.start()
    try:

        def settled() -> bool:
            return (
                not hub.hub.sessions and gateway.gateway.tunnels() == 0 and gateway.gateway.slots.active == 0
            )

        cycle = cycles(http, gateway.port, "/ws?kiosk=cycle", {"Origin": ORIGIN})
        await assert_no_leak("through the gateway", cycle, settled)
    finally:
        await gateway.stop()


async def test_no_descriptor_leaks_across_1000_cycles_straight_to_the_hub(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    headers = {"Origin": ORIGIN, "Authorization": f"Bearer {KIOSK_TOKEN}"}
    cycle = cycles(http, hub.port, "/ws", headers)
    await assert_no_leak("straight to the hub", cycle, lambda: not hub.hub.sessions)
