"""Attacks on the listener every hub and gateway connection goes through (http_server.py): slowloris, a flood
of silent connections, oversized and countless header fields, a trickled request body. Each gets its status
or is cut at the configured deadline, the process stays up, others are served meanwhile, memory and file
descriptors stay bounded.

Related tests elsewhere: a request head left incomplete is cut (test_hub_limits.py,
test_gateway_websocket.py); the bytes of a malformed request are never echoed or logged (test_http_server.py);
request smuggling at the gateway (test_gateway_http_proxy.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.conftest import wait_for
from tests.hostile.support import (
    HANDSHAKE_TIMEOUT,
    PUBLISH_TOKEN,
    TIMEOUT,
    ServerProcess,
    Target,
    bystander_roundtrip,
    measure,
    raw_exchange,
    status_of,
)

# The head a slowloris client trickles: a complete one would be a valid WebSocket upgrade.
UPGRADE_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def _wait_for_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def test_slowloris_trickling_one_byte_a_second_is_cut_at_the_handshake_deadline(
    target: Target, hub_process: ServerProcess
) -> None:
    server = target.server
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    opened = time.monotonic()

    async def trickle() -> int:
        sent = 0
        with contextlib.suppress(ConnectionError):
            for byte in UPGRADE_HEAD:
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(1.0)  # the attack's own pace, not a wait for an event
        return sent

    trickling = asyncio.create_task(trickle())
    try:
        # Served meanwhile: a whole round trip while the slowloris connection is held open.
        latency = await bystander_roundtrip(target, hub_process)
        answer = await asyncio.wait_for(_wait_for_eof(reader), HANDSHAKE_TIMEOUT + TIMEOUT)
        held = time.monotonic() - opened
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickling
        writer.close()
    assert answer == b""  # cut, not answered: nothing complete was ever sent
    assert HANDSHAKE_TIMEOUT - 0.2 <= held <= HANDSHAKE_TIMEOUT + 2.0, held
    assert latency < 2.0
    assert server.alive()


async def test_trickled_publish_body_is_408_at_the_deadline(hub_process: ServerProcess) -> None:
    """The head arrives at once, the body one byte a second: the hub stops waiting for it."""
    body = b'{"channel":"kiosks","data":"%s"}' % (b"x" * 64)
    head = (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + PUBLISH_TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", hub_process.port)
    writer.write(head)
    opened = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)  # the attack's pace

    trickling = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANDSHAKE_TIMEOUT + TIMEOUT)
        held = time.monotonic() - opened
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickling
        writer.close()
    assert status_of(answer) == 408
    assert held <= HANDSHAKE_TIMEOUT + 2.0, held


FLOOD = 500
# Four 4 KB fields: an unfinished head just under the 16 KiB bound (aiohttp alone would let it reach ~1 MiB).
PAD_FIELDS = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 4000) for i in range(4))
PARTIAL_HEAD = b"GET /ws HTTP/1.1\r\nHost: x\r\n" + PAD_FIELDS


@pytest.mark.parametrize("preamble", [b"", PARTIAL_HEAD], ids=["silent", "15KiB-unfinished-head"])
async def test_a_flood_of_half_open_connections_is_cut_at_the_deadline_and_leaks_nothing(
    target: Target, hub_process: ServerProcess, preamble: bytes
) -> None:
    server = target.server
    baseline_fds = server.fds()
    with measure(server, f"{FLOOD} half-open connections sending {len(preamble)} bytes") as memory:
        opened = time.monotonic()
        connections = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", target.port) for _ in range(FLOOD))
        )
        try:
            for _, writer in connections:
                writer.write(preamble)
            # Served meanwhile. No wait for every socket to show in the server's fd table: on a loaded
            # machine the first ones reach their deadline before the last are accepted.
            latency = await bystander_roundtrip(target, hub_process)
            answers = await asyncio.wait_for(
                asyncio.gather(*(_wait_for_eof(reader) for reader, _ in connections)),
                HANDSHAKE_TIMEOUT + TIMEOUT,
            )
            held = time.monotonic() - opened
        finally:
            for _, writer in connections:
                writer.close()
    assert answers == [b""] * FLOOD  # cut without an answer: no request was ever complete
    # Generous margins: what is under test is "cut near the deadline" and "others served", not speed.
    assert held <= HANDSHAKE_TIMEOUT + 5.0, held
    assert latency < 5.0
    await wait_for(lambda: server.fds() <= baseline_fds, what="the server's file descriptors to return")
    assert memory.growth_kib < 32 * 1024, memory
    assert server.alive()


def _fields(count: int) -> bytes:
    return b"".join(b"X-Filler-%d: %d\r\n" % (i, i) for i in range(count))


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * (1 << 20) + b"\r\n\r\n", id="1MiB-field"
        ),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\nX" + b"a" * 65536 + b": 1\r\n\r\n", id="64KiB-name"),
        pytest.param(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="1MiB-target"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", id="9KB-field"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + _fields(129) + b"\r\n", id="129-fields"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + _fields(10_000) + b"\r\n", id="10000-fields"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + _fields(100_000) + b"\r\n", id="100000-fields"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + PAD_FIELDS * 25 + b"\r\n", id="1.6MB-of-8KB-lines"),
    ],
)
async def test_oversized_heads_and_thousands_of_fields_are_431(
    target: Target, hub_process: ServerProcess, request_bytes: bytes, request: pytest.FixtureRequest
) -> None:
    server = target.server
    with measure(server, f"10 x {request.node.callspec.id.split('-', 1)[1]}") as memory:
        answers = await asyncio.gather(*(raw_exchange(server.port, request_bytes) for _ in range(10)))
    assert [status_of(answer) for answer in answers] == [431] * 10
    # Refused once past 16 KiB, 8 KiB a line or 128 fields, whatever the client keeps sending.
    assert memory.growth_kib < 8 * 1024, memory
    assert server.alive()
    await bystander_roundtrip(target, hub_process)


MAX_HEAD = 16 * 1024  # limits.max_header (gateway default) and the hub's fixed bound


def _head_of_size(size: int) -> bytes:
    """A GET /healthz head of exactly ``size`` bytes, padded with fields under the 8 KiB line bound."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    fields = b""
    while len(start) + len(fields) + 2 < size:
        room = size - len(start) - len(fields) - 2
        name = b"X-Pad-%d: " % len(fields)
        fields += name + b"p" * max(0, min(8000, room - len(name) - 2)) + b"\r\n"
    head = start + fields + b"\r\n"
    assert len(head) == size, (len(head), size)
    return head


async def test_the_head_bound_holds_to_the_byte(target: Target, hub_process: ServerProcess) -> None:
    expected = 200 if target.name == "hub" else 404  # the gateway has no /healthz and no static root
    assert status_of(await raw_exchange(target.port, _head_of_size(MAX_HEAD))) == expected
    assert status_of(await raw_exchange(target.port, _head_of_size(MAX_HEAD + 1))) == 431
    # A head that arrives whole behind another request's is measured once parsed: 431 too.
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + _head_of_size(MAX_HEAD + 100)
    answer = await raw_exchange(target.port, pipelined)
    first, _, rest = answer.partition(b"\r\n")
    assert status_of(first) == expected
    assert b"HTTP/1.1 431 " in rest


async def test_a_body_never_counts_as_a_head_on_a_kept_alive_connection(hub_process: ServerProcess) -> None:
    """A 40 KB publish body (well over the 16 KiB head bound) and then another request on the same connection,
    once sequentially and once pipelined: both answered, neither refused as an oversized head."""
    body = b'{"channel":"keepalive","data":"%s"}' % (b"x" * 40_000)
    publish = (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + PUBLISH_TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", hub_process.port)
    try:
        writer.write(publish)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        length = int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(healthz)
        second = await asyncio.wait_for(_wait_for_eof(reader), TIMEOUT)
    finally:
        writer.close()
    assert status_of(first) == 200
    assert status_of(second) == 200
    pipelined = await raw_exchange(hub_process.port, publish + healthz)
    assert pipelined.count(b"HTTP/1.1 200 OK\r\n") == 2, pipelined[:300]
