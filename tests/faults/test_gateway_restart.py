"""`wsgate gateway` stopped with SIGTERM and started again: it drains within `limits.shutdown_timeout` (a
tunnel still open at the deadline is cut, the process exits 0 right after), refuses new connections meanwhile,
and clients behind it recover every message published while it was down."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import KEY_NEW, TIMEOUT, StartHub, publish_http, wait_for
from tests.faults.support import ORIGIN, Collector, WsgateProcess, gateway_client, wsgate_process
from wsgate.hub.server import HubServer

DEADLINE = 1.0  # the gateway's limits.shutdown_timeout in these tests
# Exit is due at the deadline; this covers the interpreter's own exit and a loaded machine.
EXIT_MARGIN = 2.0

GATEWAY_TOML = """
[gateway]
listen = "127.0.0.1:0"
public_origins = ["https://kiosk.example.org"]
limits = {{ shutdown_timeout = "{deadline}s" }}

[[gateway.routes]]
path = "/ws"
upstream = "{upstream}"
websocket = true
change_origin = true
mint = {{ key = "${{WSGATE_KEY}}", kid = "2026-11", subject = "query:kiosk", subscribe = ["kiosks"] }}
"""


async def _gateway_process(
    stack: AsyncExitStack, tmp_path: Path, hub: HubServer, *, port: int = 0, deadline: float = DEADLINE
) -> tuple[WsgateProcess, int]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        GATEWAY_TOML.format(deadline=deadline, upstream=hub.url.replace("http://", "ws://") + "/ws")
    )
    args = ("gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}")
    gateway = await stack.enter_async_context(
        wsgate_process(*args, env={"WSGATE_KEY": KEY_NEW}, cwd=tmp_path)
    )
    bound = int((await gateway.wait_for_line(r"gateway listening on http://127\.0\.0\.1:(\d+)"))[1])
    return gateway, bound


async def test_sigterm_cuts_open_tunnels_at_the_deadline_and_a_restart_loses_nothing(
    tmp_path: Path, start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    hub = await start_hub()
    async with AsyncExitStack() as stack:
        gateway, port = await _gateway_process(stack, tmp_path, hub)
        gateway_ws = f"ws://127.0.0.1:{port}"
        client = await stack.enter_async_context(gateway_client(gateway_ws, "lobby"))
        collector = Collector(client.subscribe("kiosks"))
        stack.push_async_callback(collector.stop)
        await collector.subscription.wait_subscribed()
        browser = await http.ws_connect(f"{gateway_ws}/ws?kiosk=browser", headers={"Origin": ORIGIN})
        stack.push_async_callback(browser.close)
        await publish_http(http, hub, "kiosks", 1)
        await wait_for(lambda: collector.offsets() == [1], what="the first message")

        closing = asyncio.create_task(browser.receive(timeout=TIMEOUT))
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        await gateway.wait_for_line(r"waiting for 2 tunnel\(s\) to finish")
        # Draining: the listener is closed, so a new connection is refused outright.
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.ws_connect(f"{gateway_ws}/ws?kiosk=late", headers={"Origin": ORIGIN})
        await closing
        cut = time.monotonic() - signalled
        exit_code = await gateway.wait(DEADLINE + EXIT_MARGIN)
        exited = time.monotonic() - signalled
        print(f"\ngateway SIGTERM, deadline {DEADLINE:g}s: tunnel cut at {cut:.2f}s, exit at {exited:.2f}s")
        assert exit_code == 0
        # Open tunnels ran until the deadline, not a moment less, and were cut at it.
        assert DEADLINE * 0.9 <= cut < DEADLINE + EXIT_MARGIN
        assert exited < DEADLINE + EXIT_MARGIN
        assert browser.close_code == 1006  # a byte relay cannot write a close frame
        assert "closing 2 tunnel(s) at the shutdown deadline" in gateway.log()

        # While the gateway is down the hub keeps publishing into its history ...
        for n in (2, 3):
            await publish_http(http, hub, "kiosks", n)
        # ... and a new gateway on the same port lets the client recover all of it.
        await _gateway_process(stack, tmp_path, hub, port=port)
        await wait_for(lambda: collector.last_offset() == 3, what="recovery through the new gateway")
        await publish_http(http, hub, "kiosks", 4)
        await wait_for(lambda: collector.last_offset() == 4, what="live again")
        assert collector.offsets() == [1, 2, 3, 4]
        assert not collector.resyncs()


async def test_sigterm_exits_as_soon_as_the_last_tunnel_ends(
    tmp_path: Path, start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    hub = await start_hub()
    long_deadline = 30.0
    async with AsyncExitStack() as stack:
        gateway, port = await _gateway_process(stack, tmp_path, hub, deadline=long_deadline)
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws?kiosk=lobby", headers={"Origin": ORIGIN})
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        await gateway.wait_for_line(r"waiting for 1 tunnel\(s\) to finish")
        await ws.close()  # the tunnel ends on its own: nothing left to wait for
        assert await gateway.wait(EXIT_MARGIN + 3) == 0
        assert time.monotonic() - signalled < long_deadline / 3
        assert "at the shutdown deadline" not in gateway.log()
