"""The hub's frame reader (wsgate.hub.frame_reader) and permessage-deflate for /echo (wsgate.hub.deflate), fed
bytes directly: whole, byte by byte, and split anywhere (hypothesis)."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.errors import FrameError
from wsgate.hub import frame_reader
from wsgate.hub.deflate import Inflater, accept_offer
from wsgate.hub.frame_reader import (
    BinaryMessage,
    Close,
    Event,
    Failure,
    FrameReader,
    Ping,
    Pong,
    TextMessage,
    parse_close,
)

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MAX = 1024


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = b"\x01\x02\x03\x04",
    length: int | None = None,
    width: int | None = None,
) -> bytes:
    """A client frame; ``key=None`` leaves it unmasked, ``length`` declares another length, ``width`` forces
    the length encoding (7, 16 or 64 bits)."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if key is not None else 0
    width = width or (7 if declared < 126 else 16 if declared < 1 << 16 else 64)
    if width == 7:
        header = struct.pack("!BB", first, mask_bit | declared)
    elif width == 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if key is None:
        return header + payload
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_all(data: bytes, *, max_message: int = MAX, pieces: list[int] | None = None) -> list[Event]:
    """Feed ``data`` whole, or cut at the given sizes, reading events after each piece."""
    reader = FrameReader(max_message)
    events: list[Event] = []
    start = 0
    for size in [*(pieces or []), len(data)]:
        reader.feed(data[start : start + size])
        start += size
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


# --- what a client may send ---------------------------------------------------------------------------------


def test_messages_and_control_frames() -> None:
    data = (
        client_frame(TEXT, b'{"type":"subscribe"}')
        + client_frame(BINARY, b"\x00\xff")
        + client_frame(PING, b"are you there")
        + client_frame(PONG, b"")
        + client_frame(CLOSE, struct.pack("!H", 1001) + "adiós".encode())
    )
    assert read_all(data) == [
        TextMessage('{"type":"subscribe"}'),
        BinaryMessage(b"\x00\xff"),
        Ping(b"are you there"),
        Pong(b""),
        Close(1001, "adiós"),
    ]


def test_every_length_encoding_and_the_bound_itself() -> None:
    for size in (0, 125, 126, 65535, 65536):
        payload = os.urandom(size)
        assert only(read_all(client_frame(BINARY, payload), max_message=65536)) == BinaryMessage(payload)
    # A 16-bit length for a short payload is not minimal (§5.2), and accepted: refusing gains nothing.
    assert only(read_all(client_frame(TEXT, b"hi", width=16))) == TextMessage("hi")


def test_fragments_are_joined_and_control_frames_may_come_between() -> None:
    data = (
        client_frame(TEXT, b"h\xc3", fin=False)  # "é" cut in the middle
        + client_frame(PING, b"1")
        + client_frame(CONTINUATION, b"\xa9", fin=False)
        + client_frame(CONTINUATION, b"llo")
        + client_frame(BINARY, b"a", fin=False)
        + client_frame(CONTINUATION, b"b")
    )
    assert read_all(data) == [Ping(b"1"), TextMessage("héllo"), BinaryMessage(b"ab")]


def test_a_close_frame_without_a_payload_has_no_code() -> None:
    assert only(read_all(client_frame(CLOSE))) == Close(None, "")


def test_a_frame_arriving_byte_by_byte_is_read_once_complete() -> None:
    data = client_frame(TEXT, b"x" * 300) + client_frame(PING, b"p")
    reader = FrameReader(MAX)
    events: list[Event] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        while (event := reader.next_event()) is not None:
            events.append(event)
        if i < 307:  # 2 + 2 (16-bit length) + 4 (key) + 300
            assert events == []
    assert events == [TextMessage("x" * 300), Ping(b"p")]
    assert reader.buffered == 0


def test_the_reader_keeps_nothing_once_a_read_is_consumed() -> None:
    reader = FrameReader(MAX)
    reader.feed(client_frame(TEXT, b"{}") + client_frame(TEXT, b"[]")[:3])
    assert reader.next_event() == TextMessage("{}")
    assert reader.next_event() is None
    assert reader.buffered == 3  # the start of the next frame, waiting for the rest
    reader.feed(client_frame(TEXT, b"[]", key=b"\x01\x02\x03\x04")[3:])
    assert reader.next_event() == TextMessage("[]")
    assert reader.buffered == 0


# --- what it refuses ----------------------------------------------------------------------------------------

VIOLATIONS = {
    "unmasked": (client_frame(TEXT, b"{}", key=None), 1002),
    "rsv1-no-extension": (client_frame(TEXT, b"{}", rsv=0b100), 1002),
    "rsv2": (client_frame(TEXT, b"{}", rsv=0b010), 1002),
    "rsv3": (client_frame(BINARY, b"{}", rsv=0b001), 1002),
    **{f"opcode-{op:#x}": (client_frame(op), 1002) for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)},
    "fragmented-ping": (client_frame(PING, b"a", fin=False), 1002),
    "fragmented-close": (client_frame(CLOSE, struct.pack("!H", 1000), fin=False), 1002),
    "ping-126": (client_frame(PING, b"p" * 126), 1002),
    "pong-64KiB": (client_frame(PONG, b"p" * 65535), 1002),
    "close-126": (client_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124), 1002),
    "continuation-of-nothing": (client_frame(CONTINUATION, b"{}"), 1002),
    "text-inside-text": (client_frame(TEXT, b"{", fin=False) + client_frame(TEXT, b"}"), 1002),
    "binary-inside-text": (client_frame(TEXT, b"{", fin=False) + client_frame(BINARY, b"}"), 1002),
    "length-msb-set": (client_frame(BINARY, length=2**63, width=64), 1002),
    "over-max": (client_frame(TEXT, length=MAX + 1), 1009),
    "2GiB": (client_frame(BINARY, length=2**31), 1009),
    "fragments-over-max": (
        client_frame(TEXT, b" " * 1000, fin=False) + client_frame(CONTINUATION, length=25),
        1009,
    ),
    "text-not-utf8": (client_frame(TEXT, b"\xff"), 1007),
    "encoded-surrogate": (client_frame(TEXT, b"\xed\xa0\x80"), 1007),
    "overlong": (client_frame(TEXT, b"\xc0\xaf"), 1007),
    "above-U+10FFFF": (client_frame(TEXT, b"\xf4\x90\x80\x80"), 1007),
    "truncated-at-the-end": (
        client_frame(TEXT, b"\xe2\x82", fin=False) + client_frame(CONTINUATION, b""),
        1007,
    ),
    "close-1-byte": (client_frame(CLOSE, b"\x03"), 1002),
    **{
        f"close-{code}": (client_frame(CLOSE, struct.pack("!H", code)), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    },
    "close-reason-not-utf8": (client_frame(CLOSE, struct.pack("!H", 1000) + b"bye \xff"), 1007),
}


@pytest.mark.parametrize(("data", "code"), VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_violations_fail_with_their_code_whole_and_byte_by_byte(data: bytes, code: int) -> None:
    for pieces in (None, [1] * len(data)):
        events = read_all(data, pieces=pieces)
        assert isinstance(events[-1], Failure), events
        assert events[-1].code == code
        assert not any(isinstance(event, TextMessage | BinaryMessage) for event in events)


def test_a_declared_length_is_refused_from_the_header_before_any_payload() -> None:
    reader = FrameReader(MAX)
    header = client_frame(BINARY, length=2**31)  # 2 + 8 + 4 bytes, the payload never sent
    reader.feed(header[:10])  # the length is known before the mask key arrives
    event = reader.next_event()
    assert isinstance(event, Failure)
    assert event.code == 1009
    assert reader.buffered == 0


def test_invalid_utf8_fails_at_the_fragment_that_carries_it() -> None:
    reader = FrameReader(MAX)
    reader.feed(client_frame(TEXT, b"valid ", fin=False) + client_frame(CONTINUATION, b"\xff", fin=False))
    event = reader.next_event()
    assert isinstance(event, Failure)
    assert event.code == 1007  # without waiting for the final fragment


def test_nothing_is_read_after_a_close_or_a_failure() -> None:
    for first in (client_frame(CLOSE, struct.pack("!H", 1000)), client_frame(TEXT, b"\xff")):
        reader = FrameReader(MAX)
        reader.feed(first + client_frame(TEXT, b"after"))
        assert isinstance(reader.next_event(), Close | Failure)
        assert reader.next_event() is None
        reader.feed(client_frame(TEXT, b"more"))
        assert reader.next_event() is None
        assert reader.buffered == 0


def test_parse_close() -> None:
    assert parse_close(b"") == Close(None, "")
    assert parse_close(struct.pack("!H", 4000)) == Close(4000, "")
    for bad in (b"\x03", struct.pack("!H", 1006), struct.pack("!H", 1000) + b"\xc3"):
        with pytest.raises(FrameError):
            parse_close(bad)


# --- properties ---------------------------------------------------------------------------------------------

_KEYS = st.binary(min_size=4, max_size=4)
_PAYLOADS = st.binary(max_size=300)
_TEXTS = st.text(max_size=100)
_CONTROL = st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125))


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """Valid frames — messages in 1-4 fragments with control frames between them — and the events they are."""
    data = b""
    expected: list[Event] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "binary", "control"]))
        if kind == "control":
            opcode, payload = draw(_CONTROL)
            data += client_frame(opcode, payload, key=draw(_KEYS))
            expected.append(Ping(payload) if opcode == PING else Pong(payload))
            continue
        event: Event
        if kind == "text":
            text = draw(_TEXTS)
            body, event = text.encode(), TextMessage(text)
        else:
            body = draw(_PAYLOADS)
            event = BinaryMessage(body)
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        controls: list[Event] = []
        for i, part in enumerate(parts):
            opcode = (TEXT if kind == "text" else BINARY) if i == 0 else CONTINUATION
            data += client_frame(opcode, part, fin=i == len(parts) - 1, key=draw(_KEYS))
            if i < len(parts) - 1 and draw(st.booleans()):
                control_opcode, payload = draw(_CONTROL)
                data += client_frame(control_opcode, payload, key=draw(_KEYS))
                controls.append(Ping(payload) if control_opcode == PING else Pong(payload))
        expected += [*controls, event]
    return data, expected


@settings(max_examples=300, deadline=None)
@given(conversation=conversations(), cuts=st.lists(st.integers(1, 64), max_size=40))
def test_any_valid_conversation_split_anywhere_reads_the_same(
    conversation: tuple[bytes, list[Event]], cuts: list[int]
) -> None:
    data, expected = conversation
    assert read_all(data) == expected
    assert read_all(data, pieces=cuts) == expected


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(1, 50), max_size=10))
def test_arbitrary_bytes_give_events_or_one_failure_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    reader = FrameReader(64)
    start = 0
    failures = 0
    for size in [*cuts, len(data)]:
        reader.feed(data[start : start + size])
        start += size
        while (event := reader.next_event()) is not None:
            if isinstance(event, Failure):
                assert event.code in (1002, 1007, 1009)
                failures += 1
            if isinstance(event, TextMessage | BinaryMessage):
                assert len(event.text if isinstance(event, TextMessage) else event.data) <= 64 * 4
        # Never more than one frame of at most max_message bytes waits, plus the header.
        assert reader.buffered <= 64 + 14 + size
    assert failures <= 1


@settings(max_examples=200, deadline=None)
@given(key=_KEYS, payload=st.binary(max_size=5000))
def test_the_pure_python_unmasking_matches_the_c_one(key: bytes, payload: bytes) -> None:
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    fast = bytearray(payload)
    frame_reader.unmask(key, fast)
    slow = bytearray(payload)
    frame_reader._mask_python(key, slow)
    assert bytes(fast) == bytes(slow) == expected


# --- permessage-deflate, /echo only -------------------------------------------------------------------------


def deflated(data: bytes) -> bytes:
    """A permessage-deflate payload: raw DEFLATE ending in a sync flush, minus its 00 00 ff ff (RFC 7692)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize(
    ("offers", "response"),
    [
        (["permessage-deflate"], "permessage-deflate"),
        (["permessage-deflate; client_max_window_bits"], "permessage-deflate"),
        (["permessage-deflate; client_max_window_bits=10"], "permessage-deflate"),
        (
            ["permessage-deflate; server_no_context_takeover; server_max_window_bits=9"],
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
        ),
        (
            ["permessage-deflate; client_no_context_takeover"],
            "permessage-deflate; client_no_context_takeover",
        ),
        # Unknown or malformed offers are declined and the next one is taken.
        (
            ["permessage-deflate; x=1, permessage-deflate; server_max_window_bits=15"],
            "permessage-deflate; server_max_window_bits=15",
        ),
        (["permessage-deflate; server_max_window_bits"], None),
        (["permessage-deflate; server_max_window_bits=16"], None),
        (["permessage-deflate; client_max_window_bits=7"], None),
        (["permessage-deflate; server_no_context_takeover=1"], None),
        (["permessage-deflate; client_no_context_takeover; client_no_context_takeover"], None),
        (["x-webkit-deflate-frame"], None),
        ([], None),
    ],
)
def test_accepting_a_deflate_offer(offers: list[str], response: str | None) -> None:
    agreement = accept_offer(offers)
    assert (agreement.response if agreement else None) == response


def test_compressed_messages_are_inflated_when_negotiated() -> None:
    reader = FrameReader(MAX, Inflater(client_no_context_takeover=False))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)

    def message(text: bytes) -> bytes:  # with context takeover: one stream across messages
        return (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

    first, second = message(b"hello hello hello"), message(b"hello again")
    cut = len(second) // 2
    reader.feed(
        client_frame(TEXT, first, rsv=0b100)
        + client_frame(BINARY, b"plain")  # RSV1 clear: not compressed (§6)
        + client_frame(TEXT, second[:cut], rsv=0b100, fin=False)
        + client_frame(CONTINUATION, second[cut:])
    )
    events = [reader.next_event() for _ in range(3)]
    assert events == [TextMessage("hello hello hello"), BinaryMessage(b"plain"), TextMessage("hello again")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # RSV1 belongs on a message's first frame only (RFC 7692 §6.1), never on control frames.
        (
            client_frame(TEXT, deflated(b"ab"), rsv=0b100, fin=False)
            + client_frame(CONTINUATION, b"", rsv=0b100),
            1002,
        ),
        (client_frame(PING, b"", rsv=0b100), 1002),
        # A 60 MiB bomb in a few KiB: refused once the budget is passed, never inflated whole.
        (client_frame(BINARY, deflated(b"\0" * (60 << 20)), rsv=0b100), 1009),
        (client_frame(TEXT, deflated("é".encode() * 100)[:-3] + b"\xff\xff\xff", rsv=0b100), 1007),
        (client_frame(TEXT, deflated(b"\xff"), rsv=0b100), 1007),
    ],
    ids=["rsv1-on-continuation", "rsv1-on-ping", "bomb", "corrupt", "not-utf8"],
)
def test_compressed_violations(data: bytes, code: int) -> None:
    reader = FrameReader(MAX, Inflater(client_no_context_takeover=True))
    reader.feed(data)
    event = reader.next_event()
    assert isinstance(event, Failure), event
    assert event.code == code


def test_the_inflater_stops_at_its_budget() -> None:
    inflater = Inflater(client_no_context_takeover=True)
    assert inflater.inflate(deflated(b"x" * 100), final=True, budget=100) == b"x" * 100
    with pytest.raises(FrameError) as exc:
        inflater.inflate(deflated(b"x" * 101), final=True, budget=100)
    assert exc.value.code == 1009
