"""Frames that break RFC 6455, sent to the hub directly and through the gateway's byte relay in front of it:
each ends the connection with the close code the RFC names, at once, without memory growing, while a
bystander keeps being served. (The Autobahn suite in docs/reliability.md "Conformance" covers the protocol
exhaustively; these pin the hostile cases to a running process and its memory.)"""

from __future__ import annotations

import asyncio
import json
import struct
import time

import pytest

from tests.hostile.support import (
    MAX_MESSAGE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    ServerProcess,
    Target,
    bystander_roundtrip,
    close_code,
    frame,
    measure,
)
from tests.wsraw import raw_websocket


async def close_after(target: Target, data: bytes) -> tuple[int | None, list[tuple[int, bytes]], float]:
    """Open a WebSocket through ``target``, send ``data``; the close code, the frames before it, the delay."""
    ws = await raw_websocket("127.0.0.1", target.port, target.headers)
    assert ws.status == 101, ws.head
    try:
        started = time.monotonic()
        ws.writer.write(data)
        await ws.writer.drain()
        code, frames = await asyncio.wait_for(ws.read_until_close(), TIMEOUT)
        return code, frames, time.monotonic() - started
    finally:
        ws.close()


def subscribe_to(channel: bytes) -> bytes:
    return b'{"type":"subscribe","channel":"' + channel + b'"}'


# RFC 3629 §3-4 and RFC 6455 §8.1: each is not UTF-8, so the connection fails with 1007.
INVALID_UTF8 = {
    "lone-continuation-byte": frame(OP_TEXT, subscribe_to(b"\x80")),
    "0xff": frame(OP_TEXT, subscribe_to(b"kiosk\xff")),
    "overlong-slash": frame(OP_TEXT, subscribe_to(b"\xc0\xaf")),
    "encoded-surrogate": frame(OP_TEXT, subscribe_to(b"\xed\xa0\x80")),
    "above-U+10FFFF": frame(OP_TEXT, subscribe_to(b"\xf4\x90\x80\x80")),
    "truncated-sequence": frame(OP_TEXT, subscribe_to(b"\xe2\x82")),
    "bad-across-fragments": frame(OP_TEXT, b'{"type":"subscribe","channel":"\xe2\x82', fin=False)
    + frame(OP_CONTINUATION, b'\x28"}'),
    "utf-16": frame(OP_TEXT, '{"type":"subscribe","channel":"kiosks"}'.encode("utf-16")),
    "close-reason": frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye \xff"),
}


@pytest.mark.parametrize("data", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
async def test_invalid_utf8_is_closed_with_1007(
    target: Target, hub_process: ServerProcess, data: bytes
) -> None:
    code, frames, _ = await close_after(target, data)
    assert (code, frames) == (1007, [])
    await bystander_roundtrip(target, hub_process)


async def test_utf8_split_across_fragments_is_reassembled_not_refused(target: Target) -> None:
    euro = "€".encode()  # three bytes, cut after the second
    data = frame(OP_TEXT, b'{"type":"subscribe","channel":"' + euro[:2], fin=False) + frame(
        OP_CONTINUATION, euro[2:] + b'"}'
    )
    ws = await raw_websocket("127.0.0.1", target.port, target.headers)
    try:
        ws.writer.write(data)
        opcode, payload = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
    finally:
        ws.close()
    # Decoded, then refused by the protocol (channel alphabet), with the connection left open.
    assert opcode == OP_TEXT
    assert json.loads(payload)["code"] == "bad_request"


# RFC 6455 §5.2, §5.4, §5.5, §7.4: each fails the connection with 1002 (protocol error).
PROTOCOL_ERRORS = {
    "fragmented-ping": frame(OP_PING, b"abc", fin=False),
    "fragmented-close": frame(OP_CLOSE, struct.pack("!H", 1000), fin=False),
    "ping-126-bytes": frame(OP_PING, b"p" * 126),
    "pong-64KiB": frame(OP_PONG, b"p" * 65535),
    "close-126-bytes": frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124),
    "ping-inside-fragmented-ping": frame(OP_PING, b"a", fin=False) + frame(OP_CONTINUATION, b"b"),
    "rsv1-without-extension": frame(OP_TEXT, b"{}", rsv=0b100),
    "rsv2": frame(OP_TEXT, b"{}", rsv=0b010),
    "rsv3": frame(OP_BINARY, b"{}", rsv=0b001),
    "reserved-data-opcode-3": frame(0x3),
    "reserved-control-opcode-0xB": frame(0xB),
    "continuation-of-nothing": frame(OP_CONTINUATION, b"{}"),
    "text-inside-fragmented-text": frame(OP_TEXT, b"{", fin=False) + frame(OP_TEXT, b"}"),
    "close-1-byte-payload": frame(OP_CLOSE, b"\x03"),
    "close-code-999": frame(OP_CLOSE, struct.pack("!H", 999)),
    "close-code-1005": frame(OP_CLOSE, struct.pack("!H", 1005)),
    "close-code-1006": frame(OP_CLOSE, struct.pack("!H", 1006)),
    "close-code-5000": frame(OP_CLOSE, struct.pack("!H", 5000)),
    # §5.2: the 64-bit length's most significant bit MUST be 0 — a framing error, whatever the size limit.
    "length-msb-set": frame(OP_BINARY, length=2**64 - 1),
}


@pytest.mark.parametrize("data", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_protocol_violations_are_closed_with_1002(
    target: Target, hub_process: ServerProcess, data: bytes
) -> None:
    code, frames, _ = await close_after(target, data)
    assert (code, frames) == (1002, [])
    await bystander_roundtrip(target, hub_process)


async def test_an_unmasked_client_frame_is_closed_with_1002(target: Target) -> None:
    # RFC 6455 §5.1: a server MUST close the connection on an unmasked client frame. (The gateway relays
    # bytes; the hub behind it refuses.)
    ws = await raw_websocket("127.0.0.1", target.port, target.headers)
    try:
        ws.writer.write(frame(OP_TEXT, subscribe_to(b"kiosks"), mask=False))
        opcode, payload = await asyncio.wait_for(ws.read_frame(), TIMEOUT)
    finally:
        ws.close()
    assert (opcode, close_code(payload)) == (OP_CLOSE, 1002)


# Lengths declared in the frame header, with no payload sent: the hub must refuse from the header alone.
DECLARED_LENGTHS = {
    "binary-2GiB": frame(OP_BINARY, length=2**31),
    "text-2GiB": frame(OP_TEXT, length=2**31),
    "binary-2^63-1": frame(OP_BINARY, length=2**63 - 1),
    "text-max_message+1": frame(OP_TEXT, length=MAX_MESSAGE + 1),
    "fragment-pushing-the-message-over": frame(OP_TEXT, b" " * (MAX_MESSAGE - 10), fin=False)
    + frame(OP_CONTINUATION, length=2**31),
}


@pytest.mark.parametrize("data", DECLARED_LENGTHS.values(), ids=DECLARED_LENGTHS.keys())
async def test_a_declared_length_over_max_message_is_closed_with_1009_before_any_payload(
    target: Target, hub_process: ServerProcess, data: bytes, request: pytest.FixtureRequest
) -> None:
    with measure(target.server, request.node.callspec.id.split("-", 1)[1]) as memory:
        code, frames, delay = await close_after(target, data)
    assert (code, frames) == (1009, [])
    assert delay < 1.0, delay  # decided from the header: nothing more was sent
    assert memory.growth_kib < 4 * 1024, memory
    await bystander_roundtrip(target, hub_process)
