"""The hub's side of the opening handshake on a real hub: the 101 it writes itself, frames that arrive with
the request head, and upgrades that reach /ws through aiohttp (a second request on a kept-alive connection,
a percent-encoded path) and are handed over all the same."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from tests.conftest import TIMEOUT, kiosk_headers
from tests.wsraw import RawWebSocket, client_frame, open_raw
from wsgate.handshake import accept_key
from wsgate.hub.server import HubServer


def upgrade_request(path: str, key: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {key}",
        *(f"{name}: {value}" for name, value in {**kiosk_headers(), **(extra or {})}.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def subscribed(ws: RawWebSocket) -> None:
    await ws.send_text(json.dumps({"type": "subscribe", "channel": "kiosks"}))
    opcode, payload = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
    assert (opcode, json.loads(payload)["type"]) == (0x1, "subscribed")


def test_accept_key_matches_rfc_6455() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # §1.3's example


async def test_the_101_selects_no_subprotocol_and_no_extension(hub: HubServer) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await open_raw("127.0.0.1", hub.port)
    offer = {"Sec-WebSocket-Protocol": "chat, v2", "Sec-WebSocket-Extensions": "permessage-deflate"}
    writer.write(upgrade_request("/ws", key, offer))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    fields = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    assert fields == {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-accept": accept_key(key),
    }
    await subscribed(RawWebSocket(reader, writer, 101, head))
    writer.close()


async def test_frames_sent_with_the_request_head_are_read(hub: HubServer) -> None:
    reader, writer = await open_raw("127.0.0.1", hub.port)
    subscribe = json.dumps({"type": "subscribe", "channel": "kiosks"}).encode()
    writer.write(
        upgrade_request("/ws", base64.b64encode(os.urandom(16)).decode()) + client_frame(0x1, subscribe)
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ")
    _, payload = await asyncio.wait_for(RawWebSocket(reader, writer, 101).read_frame(), TIMEOUT)
    assert json.loads(payload)["type"] == "subscribed"
    writer.close()


@pytest.mark.parametrize("path", ["/ws", "/%77s"])
async def test_an_upgrade_routed_by_aiohttp_is_served_by_the_same_endpoint(hub: HubServer, path: str) -> None:
    reader, writer = await open_raw("127.0.0.1", hub.port)
    if path == "/ws":  # a second request on a kept-alive connection: aiohttp reads it, not the front
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(
            next(
                v
                for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
                if k.lower() == b"content-length"
            )
        )
        await reader.readexactly(length)
    writer.write(upgrade_request(path, base64.b64encode(os.urandom(16)).decode()))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 "), head
    ws = RawWebSocket(reader, writer, 101, head)
    await subscribed(ws)
    assert len(hub.hub.sessions) == 1
    writer.write(client_frame(0x8, b"\x03\xe8"))
    code, _ = await asyncio.wait_for(ws.read_until_close(), TIMEOUT)
    assert code == 1000
    writer.close()
    async with asyncio.timeout(TIMEOUT):
        while hub.hub.sessions:
            await asyncio.sleep(0.01)
