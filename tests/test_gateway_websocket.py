"""The gateway's WebSocket proxy against an independent upstream (python-websockets) that requires the seed's
`token:` header: injection, stripping, Origin, transparency after the 101, failures, TLS, shutdown."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
import trustme

import wsgate.front as front_module
import wsgate.gateway.websocket as websocket_module
from tests.conftest import TIMEOUT, free_port, tls_server_context, wait_for
from tests.echo_upstream import EchoUpstream
from tests.wsraw import client_frame
from wsgate.auth.tokens import mint_token
from wsgate.config import Address, GatewayConfig, GatewayLimits, MintConfig, Route, UpstreamTls
from wsgate.gateway.resolver import AddressInfo, Resolver, look_up
from wsgate.gateway.server import GatewayServer
from wsgate.gateway.upgrade import accept_key
from wsgate.http_head import RequestHead, parse_request_head
from wsgate.hub.frames import server_frame
from wsgate.secret import Secret

ORIGIN = "https://kiosk.example.org"
SECRET = "seed-ws-token-0123456789abcdef"


def ws_route(upstream: str | tuple[str, ...], **changes: object) -> Route:
    upstreams = (upstream,) if isinstance(upstream, str) else upstream
    route = Route(
        path="/ws",
        upstream=upstreams,
        websocket=True,
        change_origin=True,
        headers=MappingProxyType({"token": Secret(SECRET)}),
    )
    return replace(route, **changes)  # type: ignore[arg-type]


def gateway_config(*routes: Route, **limits: object) -> GatewayConfig:
    return GatewayConfig(
        listen=Address("127.0.0.1", 0),
        public_origins=(ORIGIN,),
        routes=routes,
        limits=replace(GatewayLimits(upstream_timeout=2.0), **limits),  # type: ignore[arg-type]
    )


StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    server = await EchoUpstream(token=SECRET).start()
    yield server
    await server.stop()


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    servers: list[GatewayServer] = []

    async def start(*routes: Route, **limits: object) -> GatewayServer:
        server = GatewayServer(gateway_config(*routes, **limits))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


def url(gateway: GatewayServer) -> str:
    return gateway.url.replace("http://", "ws://") + "/ws"


async def status_of(http: aiohttp.ClientSession, gateway: GatewayServer, headers: dict[str, str]) -> int:
    try:
        ws = await http.ws_connect(url(gateway), headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_the_seed_scenario_end_to_end(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    async with http.ws_connect(url(gateway), headers={"Origin": ORIGIN}) as ws:
        await ws.send_str("hello kiosk")
        assert (await ws.receive(timeout=TIMEOUT)).data == "hello kiosk"
    (seen,) = upstream.handshakes
    assert seen["token"] == SECRET
    assert seen["Origin"] == ORIGIN  # never rewritten
    assert seen["Host"] == f"127.0.0.1:{upstream.port}"  # change_origin


async def test_a_client_cannot_change_what_the_upstream_sees(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    forged = {
        "Origin": ORIGIN,
        "token": "forged-by-the-client",
        "Authorization": "Bearer forged",
        "Cookie": "session=stolen",
        "X-Forwarded-For": "10.9.9.9",
    }
    async with http.ws_connect(url(gateway), headers=forged) as ws:
        await ws.send_str("x")
        await ws.receive(timeout=TIMEOUT)
    (seen,) = upstream.handshakes
    assert seen.get_all("token") == [SECRET]
    assert "Authorization" not in seen
    assert "Cookie" not in seen
    assert seen["X-Forwarded-For"] == "127.0.0.1"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "null",
        "https://kiosk.example.org.evil.com",
        "http://kiosk.example.org",
        "https://kiosk.example.org:8443",
        None,
    ],
)
async def test_foreign_origins_are_403_and_the_upstream_never_hears_of_them(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession, origin: str | None
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    headers = {} if origin is None else {"Origin": origin}
    assert await status_of(http, gateway, headers) == 403
    assert upstream.handshakes == []


async def test_missing_origin_is_allowed_only_when_the_route_says_so(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url, allow_missing_origin=True))
    assert await status_of(http, gateway, {}) == 101


async def test_not_an_upgrade_is_426(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    async with http.get(gateway.url + "/ws", headers={"Origin": ORIGIN}) as response:
        assert response.status == 426
    assert upstream.handshakes == []


async def test_subprotocol_and_permessage_deflate_are_negotiated_end_to_end(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    async with http.ws_connect(
        url(gateway), headers={"Origin": ORIGIN}, protocols=("chat.v1",), compress=15
    ) as ws:
        assert ws.protocol == "chat.v1"
        # The upstream agreed to permessage-deflate through the gateway (and chose its window size).
        assert ws.compress > 0
        text = "compressible " * 1000
        await ws.send_str(text)
        assert (await ws.receive(timeout=TIMEOUT)).data == text
    (seen,) = upstream.handshakes
    assert "permessage-deflate" in seen["Sec-WebSocket-Extensions"]


async def test_a_16_mib_binary_message_round_trips_intact(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    payload = os.urandom(16 * 1024 * 1024)
    async with http.ws_connect(url(gateway), headers={"Origin": ORIGIN}, max_msg_size=0) as ws:
        await ws.send_bytes(payload)
        echoed = await ws.receive(timeout=30)
        assert echoed.type is aiohttp.WSMsgType.BINARY
        assert echoed.data == payload


async def test_close_codes_pass_both_ways(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    ws = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN})
    await ws.send_str("close:4001:bye from upstream")
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert (message.data, message.extra) == (4001, "bye from upstream")
    await ws.close()

    ws = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN})
    await ws.close(code=4002, message=b"bye from client")
    await wait_for(lambda: len(upstream.closes) == 2, what="both upstream connections to end")
    assert (4002, "bye from client") in upstream.closes


async def test_bytes_either_side_sends_right_at_the_handshake_are_not_lost(
    start_gateway: StartGateway,
) -> None:
    """An upstream may send its first frame in the same packet as its 101, and a client may send its first
    frame before it has read the 101; the gateway must keep both."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def eager_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
            + server_frame(b"hello from upstream")
        )
        received.set_result(await reader.readexactly(len(client_frame(0x1, b"early bird"))))
        await reader.read()

    eager = await asyncio.start_server(eager_upstream, "127.0.0.1", 0)
    try:
        port = eager.sockets[0].getsockname()[1]
        gateway = await start_gateway(ws_route(f"ws://127.0.0.1:{port}/ws"))
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nOrigin: {ORIGIN}\r\n\r\n".encode()
            + client_frame(0x1, b"early bird")
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101")
        frame = await asyncio.wait_for(reader.readexactly(2 + len(b"hello from upstream")), TIMEOUT)
        assert frame[2:] == b"hello from upstream"
        masked = await asyncio.wait_for(received, TIMEOUT)
        mask, payload = masked[2:6], masked[6:]
        assert masked[0] == 0x81  # the client's frame reached the upstream intact
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) == b"early bird"
        writer.close()
    finally:
        eager.close()


async def test_upstream_refusal_is_relayed_as_its_status(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    picky = await EchoUpstream(token="a-token-the-gateway-does-not-have").start()
    try:
        gateway = await start_gateway(ws_route(picky.url))
        assert await status_of(http, gateway, {"Origin": ORIGIN}) == 401
    finally:
        await picky.stop()


async def test_upstream_down_is_502(start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(ws_route(f"ws://127.0.0.1:{free_port()}/ws"))
    assert await status_of(http, gateway, {"Origin": ORIGIN}) == 502


async def test_upstream_that_never_answers_is_504(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the upgrade request and never answers

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        port = silent.sockets[0].getsockname()[1]
        gateway = await start_gateway(ws_route(f"ws://127.0.0.1:{port}/ws"), upstream_timeout=0.5)
        assert await status_of(http, gateway, {"Origin": ORIGIN}) == 504
    finally:
        silent.close()


async def test_an_upstream_that_timed_out_is_benched_so_the_next_client_reaches_another(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    """The upstream timeout covers the whole attempt (504), and the upstream that used it up is tried last."""
    accepted = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # reads the upgrade request and never answers

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        port = silent.sockets[0].getsockname()[1]
        route = ws_route((f"ws://127.0.0.1:{port}/ws", upstream.url))
        gateway = await start_gateway(route, upstream_timeout=0.5)
        assert await status_of(http, gateway, {"Origin": ORIGIN}) == 504
        assert accepted.is_set()
        assert not upstream.handshakes
        for _ in range(3):  # round robin alone would send the second of these to the silent one again
            assert await status_of(http, gateway, {"Origin": ORIGIN}) == 101
        assert len(upstream.handshakes) == 3
    finally:
        silent.close()


async def test_one_upstream_down_among_several(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    gateway = await start_gateway(ws_route((dead, upstream.url)))
    for _ in range(4):
        assert await status_of(http, gateway, {"Origin": ORIGIN}) == 101
    assert len(upstream.handshakes) == 4


async def test_a_named_upstream_is_reached_through_the_resolver(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    """The usual deployment names its upstream (ws://hub:9000); the gateway looks the name up once
    (wsgate.gateway.resolver) and connects to its address."""
    named = upstream.url.replace("127.0.0.1", "localhost")
    gateway = await start_gateway(ws_route(named))
    for message in ("first", "second"):
        async with http.ws_connect(url(gateway), headers={"Origin": ORIGIN}) as ws:
            await ws.send_str(message)
            assert (await ws.receive(timeout=TIMEOUT)).data == message
    assert len(upstream.handshakes) == 2
    assert upstream.handshakes[0]["Host"] == f"localhost:{upstream.port}"  # change_origin: the name


async def test_a_named_upstream_that_refuses_is_looked_up_again_next_time(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    """None of a name's addresses took the connection: the upstream may have moved, so the next handshake
    looks the name up again instead of trusting the cache."""
    hosts: list[str] = []

    async def counted(host: str, port: int) -> Sequence[AddressInfo]:
        hosts.append(host)
        return await look_up(host, port)

    gateway = await start_gateway(ws_route(f"ws://localhost:{free_port()}/ws"))
    for proxy in gateway.gateway.websocket_proxies:
        proxy.resolver = Resolver(lookup=counted)
    assert await status_of(http, gateway, {"Origin": ORIGIN}) == 502
    assert await status_of(http, gateway, {"Origin": ORIGIN}) == 502
    assert hosts == ["localhost", "localhost"]


async def test_wss_upstream_verified_with_the_configured_ca(
    ca: trustme.CA, tmp_path: Path, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    secure = await EchoUpstream(token=SECRET, ssl_context=tls_server_context(ca)).start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        gateway = await start_gateway(ws_route(secure.url, tls=UpstreamTls(ca=ca_file)))
        async with http.ws_connect(url(gateway), headers={"Origin": ORIGIN}) as ws:
            await ws.send_str("over tls")
            assert (await ws.receive(timeout=TIMEOUT)).data == "over tls"
    finally:
        await secure.stop()


async def test_untrusted_upstream_certificate_is_refused_with_a_clear_log_line(
    ca: trustme.CA,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secure = await EchoUpstream(token=SECRET, ssl_context=tls_server_context(ca)).start()
    try:
        gateway = await start_gateway(ws_route(secure.url))  # system roots do not know the test CA
        with caplog.at_level(logging.INFO, logger="wsgate"):
            assert await status_of(http, gateway, {"Origin": ORIGIN}) == 502
        assert "certificate verify failed" in caplog.text
        assert secure.handshakes == []
        assert SECRET not in caplog.text
    finally:
        await secure.stop()


async def test_shutdown_lets_tunnels_finish_then_cuts_them_at_the_deadline(
    upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = GatewayServer(gateway_config(ws_route(upstream.url), shutdown_timeout=1.0))
    await gateway.start()
    ws = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN})
    await ws.send_str("still here")
    assert (await ws.receive(timeout=TIMEOUT)).data == "still here"
    stopping = asyncio.create_task(gateway.stop())
    await ws.send_str("during drain")  # the tunnel keeps working until the deadline
    assert (await ws.receive(timeout=TIMEOUT)).data == "during drain"
    await asyncio.wait_for(stopping, TIMEOUT)
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_the_secret_never_reaches_the_logs(
    upstream: EchoUpstream,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="wsgate"):
        gateway = await start_gateway(ws_route(upstream.url))
        async with http.ws_connect(url(gateway) + "?token=query-secret", headers={"Origin": ORIGIN}) as ws:
            await ws.send_str("x")
            await ws.receive(timeout=TIMEOUT)
        await status_of(http, gateway, {"Origin": "https://evil.example.com", "token": "client-secret"})
        # Access lines reach logging in batches, within wsgate.logs.access_log.delay.
        await wait_for(lambda: "ws tunnel" in caplog.text and "ws refuse" in caplog.text, what="access lines")
    for secret in (SECRET, "query-secret", "client-secret"):
        assert secret not in caplog.text


async def test_idle_tunnels_are_closed_after_idle_timeout(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url), idle_timeout=1.0)
    ws = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN}, autoping=False, heartbeat=None)
    for _ in range(3):  # traffic keeps it open past the timeout …
        await ws.send_str("busy")
        assert (await ws.receive(timeout=TIMEOUT)).data == "busy"
        await asyncio.sleep(0.1)
    message = await ws.receive(timeout=TIMEOUT)  # … silence closes it
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_tunnels_are_closed_at_max_lifetime(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url), max_lifetime=0.3)
    ws = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN})
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_connections_beyond_the_limit_get_503(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url), max_connections=2)
    first = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN})
    second = await http.ws_connect(url(gateway), headers={"Origin": ORIGIN})
    assert await status_of(http, gateway, {"Origin": ORIGIN}) == 503
    await first.close()
    await wait_for(lambda: gateway.gateway.slots.active < 2, what="a slot to free up")
    assert await status_of(http, gateway, {"Origin": ORIGIN}) == 101
    await second.close()


async def test_a_client_that_trickles_its_request_head_is_cut_off(
    upstream: EchoUpstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(ws_route(upstream.url), handshake_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    assert upstream.handshakes == []


async def test_metrics_are_served_on_the_admin_listener_only(
    upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    config = replace(gateway_config(ws_route(upstream.url)), admin_listen=Address("127.0.0.1", 0))
    gateway = GatewayServer(config)
    await gateway.start()
    try:
        assert gateway.admin is not None
        admin = f"http://127.0.0.1:{gateway.admin.port}"

        async def metrics() -> str:
            async with http.get(admin + "/metrics") as response:
                return await response.text()

        def value(text: str, series: str) -> float:
            match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
            assert match is not None, f"{series} is missing"
            return float(match[1])

        async with http.ws_connect(url(gateway), headers={"Origin": ORIGIN}) as ws:
            await ws.send_str("counted")
            await ws.receive(timeout=TIMEOUT)
            assert value(await metrics(), "wsgate_gateway_tunnels") == 1
        assert await status_of(http, gateway, {"Origin": "https://evil.example.com"}) == 403
        await wait_for(lambda: not gateway.gateway.tunnels(), what="the tunnel to end")
        text = await metrics()
        assert value(text, "wsgate_gateway_tunnels") == 0
        assert value(text, 'wsgate_gateway_requests_total{route="/ws",status="101"}') == 1
        assert value(text, 'wsgate_gateway_requests_total{route="/ws",status="403"}') == 1
        assert value(text, 'wsgate_gateway_refusals_total{reason="origin"}') == 1
        # "counted" went up masked (6 + 7 bytes) and came back unmasked (2 + 7), close frames aside.
        assert value(text, 'wsgate_gateway_tunnel_bytes_total{direction="up"}') >= 13
        assert value(text, 'wsgate_gateway_tunnel_bytes_total{direction="down"}') >= 9
        async with http.get(admin + "/healthz") as response:
            assert response.status == 200
        async with http.get(gateway.url + "/metrics") as response:
            assert response.status == 404  # never on the public listener
    finally:
        await gateway.stop()


# --- how connections reach the proxy (wsgate.front) ---------------------------------------------------------


def upgrade_head(path: str = "/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nOrigin: {ORIGIN}\r\n\r\n"
    ).encode()


async def echo_through(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes) -> bytes:
    writer.write(client_frame(0x1, text))
    header = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    return await asyncio.wait_for(reader.readexactly(header[1] & 0x7F), TIMEOUT)


async def test_an_upgrade_on_a_kept_alive_connection_is_proxied_the_same_way(
    upstream: EchoUpstream, start_gateway: StartGateway
) -> None:
    """The first request goes to aiohttp (no route: 404, connection kept); the upgrade behind it must still
    get the Origin check, the injected token and the byte relay."""
    gateway = await start_gateway(ws_route(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 404")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
    )
    await reader.readexactly(length)
    writer.write(upgrade_head())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    assert await echo_through(reader, writer, b"second request") == b"second request"
    (seen,) = upstream.handshakes
    assert seen["token"] == SECRET
    writer.close()
    await wait_for(lambda: gateway.gateway.slots.active == 0, what="the tunnel's slot to be released")


async def test_a_foreign_origin_on_a_kept_alive_connection_is_403(
    upstream: EchoUpstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.write(upgrade_head().replace(ORIGIN.encode(), b"https://evil.example.com"))
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # read to the end: the 404's body, then the 403
    assert b"HTTP/1.1 403" in answer
    assert upstream.handshakes == []
    writer.close()


async def test_a_percent_encoded_route_path_reaches_the_same_proxy(
    upstream: EchoUpstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(upgrade_head("/w%73"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    assert await echo_through(reader, writer, b"encoded") == b"encoded"
    assert upstream.handshakes[0]["token"] == SECRET
    writer.close()


async def test_a_client_leaving_during_the_upstream_handshake_frees_its_slot_and_the_upstream(
    start_gateway: StartGateway,
) -> None:
    upstream_closed = asyncio.Event()
    request_seen = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        request_seen.set()
        await reader.read()  # never answers; returns when the gateway hangs up
        upstream_closed.set()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gateway = await start_gateway(ws_route(f"ws://127.0.0.1:{port}/ws"), upstream_timeout=30.0)
        _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(upgrade_head())
        await asyncio.wait_for(request_seen.wait(), TIMEOUT)
        assert gateway.gateway.slots.active == 1
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), TIMEOUT)
        await wait_for(lambda: gateway.gateway.slots.active == 0, what="the slot to be released")
        assert gateway.gateway.tunnels() == 0
    finally:
        server.close()


async def test_other_paths_still_get_their_whole_handshake_deadline_once(
    upstream: EchoUpstream, start_gateway: StartGateway
) -> None:
    """The deadline counts from accept: a request line that took most of it leaves aiohttp only the rest."""
    gateway = await start_gateway(ws_route(upstream.url), handshake_timeout=0.6)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET /api")
    await asyncio.sleep(0.4)
    writer.write(b" HTTP/1.1\r\nHost: x\r\n")  # the request line is in: aiohttp's from here
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    assert loop.time() - started < 1.0  # not 0.4 + a fresh 0.6
    writer.close()


async def test_a_head_that_arrives_a_byte_at_a_time_is_assembled(
    upstream: EchoUpstream, start_gateway: StartGateway
) -> None:
    """Each byte its own segment (TCP_NODELAY, a drain per byte): line ends split across reads, and leading
    empty lines (RFC 9112 §2.2), still make one head."""
    import socket

    gateway = await start_gateway(ws_route(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in b"\r\n" + upgrade_head():
        writer.write(bytes([byte]))
        await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    assert await echo_through(reader, writer, b"trickled") == b"trickled"
    writer.close()


# --- handshakes answered from memory (wsgate.gateway.memo) ---------------------------------------------


async def test_a_repeated_handshake_is_answered_from_memory_exactly_as_the_first(
    upstream: EchoUpstream,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconnecting client sends the same head with a new key: the gateway replays what it built for the
    first (upstream request, client 101) with the new key, without parsing the head again, and the upstream
    sees the same request."""
    parsed: list[bytes] = []

    def counting_parse(raw: bytes) -> RequestHead:
        parsed.append(raw)
        return parse_request_head(raw)

    monkeypatch.setattr(front_module, "parse_request_head", counting_parse)
    gateway = await start_gateway(ws_route(upstream.url))
    (proxy,) = gateway.gateway.websocket_proxies
    for attempt in range(3):
        # aiohttp checks the 101's Sec-WebSocket-Accept against the key it sent.
        async with http.ws_connect(url(gateway), headers={"Origin": ORIGIN}, protocols=["chat.v1"]) as ws:
            assert ws.protocol == "chat.v1"
            await ws.send_str(f"hello {attempt}")
            assert (await ws.receive(timeout=TIMEOUT)).data == f"hello {attempt}"
    assert proxy.plans is not None
    assert (len(proxy.plans), len(proxy.answers)) == (1, 1)
    assert len(parsed) == 1
    keys = [seen["Sec-WebSocket-Key"] for seen in upstream.handshakes]
    assert len(set(keys)) == 3  # each connection's own key went upstream
    without_key = [
        [(name, value) for name, value in seen.raw_items() if name.lower() != "sec-websocket-key"]
        for seen in upstream.handshakes
    ]
    assert without_key[0] == without_key[1] == without_key[2]
    assert ("token", SECRET) in without_key[0]


async def test_a_remembered_head_with_another_origin_is_checked_afresh(
    upstream: EchoUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(ws_route(upstream.url))
    assert await status_of(http, gateway, {"Origin": ORIGIN}) == 101
    assert await status_of(http, gateway, {"Origin": "https://evil.example.com"}) == 403
    assert len(upstream.handshakes) == 1


async def test_a_remembered_101_whose_accept_is_wrong_next_time_is_refused(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    """The upstream's answer is recalled by its shape, without its accept; the accept itself is checked
    against each connection's key every time, so an upstream replaying an earlier 101 is refused (502)."""
    first_accept: list[str] = []

    async def replaying_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = re.search(rb"(?i)\r\nsec-websocket-key: *([^\r]*)", head)
        assert key is not None
        if not first_accept:
            first_accept.append(accept_key(key[1].decode()))
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {first_accept[0]}\r\n\r\n".encode()
        )
        await reader.read()
        writer.close()

    server = await asyncio.start_server(replaying_upstream, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gateway = await start_gateway(ws_route(f"ws://127.0.0.1:{port}/ws"))
        (proxy,) = gateway.gateway.websocket_proxies
        assert await status_of(http, gateway, {"Origin": ORIGIN}) == 101
        assert len(proxy.answers) == 1
        assert await status_of(http, gateway, {"Origin": ORIGIN}) == 502
    finally:
        server.close()


async def test_a_route_that_mints_tokens_builds_every_upstream_request_afresh(
    start_gateway: StartGateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minted token expires: a remembered upstream request would carry a stale one."""
    minted: list[str] = []

    def counting_mint(**claims: Any) -> str:
        token = mint_token(**claims)
        minted.append(token)
        return token

    monkeypatch.setattr(websocket_module, "mint_token", counting_mint)
    anyone = await EchoUpstream(token=None).start()
    try:
        gateway = await start_gateway(ws_route(anyone.url, mint=MintConfig(key=Secret("k" * 32))))
        for _ in range(3):
            assert await status_of(http, gateway, {"Origin": ORIGIN}) == 101
        assert len(minted) == 3
        sent = [seen["Authorization"] for seen in anyone.handshakes]
        assert sent == [f"Bearer {token}" for token in minted]
    finally:
        await anyone.stop()
