"""The callback-driven connection (wsgate.hub.connection) over a recording transport: pings, the closing
handshake in its three forms, failures, and backpressure — no sockets, no sleeps but the close grace."""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.test_hub_frame_reader import CLOSE, PING, TEXT, client_frame
from wsgate.hub import connection as connection_module
from wsgate.hub.connection import WebSocketConnection
from wsgate.hub.frame_reader import FrameReader
from wsgate.hub.frames import OP_CLOSE, OP_PONG, close_frame, server_frame


class RecordingTransport:
    """What a connection may call on its transport, recorded."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Recorder(WebSocketConnection):
    __slots__ = ("ended", "texts")

    def __init__(self, transport: RecordingTransport, max_message: int = 1024) -> None:
        super().__init__(
            transport,  # type: ignore[arg-type]
            FrameReader(max_message),
            max_message=max_message,
            on_end=None,
        )
        self.texts: list[str] = []
        self.ended = 0

    def on_text(self, text: str) -> None:
        self.texts.append(text)

    def on_closed(self) -> None:
        self.ended += 1


def opened() -> tuple[Recorder, RecordingTransport]:
    transport = RecordingTransport()
    return Recorder(transport), transport


def close_of(data: bytes) -> int:
    assert data[0] == 0x80 | OP_CLOSE
    return int(struct.unpack("!H", data[2:4])[0])


async def test_pings_are_answered_with_their_payload() -> None:
    conn, transport = opened()
    conn.start(client_frame(PING, b"one") + client_frame(TEXT, b"hi") + client_frame(PING, b"two"))
    assert transport.written == [server_frame(b"one", OP_PONG), server_frame(b"two", OP_PONG)]
    assert conn.texts == ["hi"]


async def test_while_the_peer_reads_nothing_its_pings_stop_the_reading() -> None:
    conn, transport = opened()
    conn.pause_writing()
    assert transport.reading  # a peer that reads slowly is still read: its pongs are its liveness
    conn.data_received(b"".join(client_frame(PING, b"%d" % i) for i in range(1000)))
    assert transport.written == []
    assert not transport.reading  # a ping flood waits in TCP buffers
    conn.resume_writing()
    assert transport.written == [server_frame(b"999", OP_PONG)]  # the latest only: RFC 6455 §5.5.3
    assert transport.reading


async def test_a_peer_close_is_answered_and_the_server_closes_first() -> None:
    conn, transport = opened()
    conn.data_received(client_frame(CLOSE, struct.pack("!H", 4001) + b"bye") + client_frame(TEXT, b"late"))
    assert [close_of(data) for data in transport.written] == [1000]
    assert transport.closed
    assert not transport.aborted
    assert (conn.close_code, conn.close_reason, conn.ended) == (4001, "", 1)  # never the peer's reason
    assert conn.texts == []


async def test_our_close_waits_for_the_peers_close_frame() -> None:
    conn, transport = opened()
    conn.close(1001, "server shutting down")
    assert transport.written == [close_frame(1001, "server shutting down")]
    assert conn.closing
    assert not transport.closed
    conn.data_received(client_frame(TEXT, b"dropped") + client_frame(PING, b"unanswered"))
    assert conn.texts == []
    assert len(transport.written) == 1
    conn.data_received(client_frame(CLOSE, struct.pack("!H", 1001)))
    assert transport.closed
    assert (conn.close_code, conn.ended) == (1001, 1)


async def test_our_close_ends_after_the_grace_without_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "CLOSE_GRACE", 0.05)
    conn, transport = opened()
    conn.close(1008, "token expired")
    async with asyncio.timeout(5):
        while not transport.closed:
            await asyncio.sleep(0.01)
    assert conn.ended == 1


async def test_a_failure_sends_its_code_then_fin_and_drops_what_follows() -> None:
    conn, transport = opened()
    conn.data_received(client_frame(TEXT, b"ok") + client_frame(TEXT, b"\xff") + client_frame(TEXT, b"x"))
    assert conn.texts == ["ok"]
    assert [close_of(data) for data in transport.written] == [1007]
    assert transport.eof_written
    assert not transport.closed
    assert transport.reading
    conn.data_received(client_frame(CLOSE, struct.pack("!H", 1000)))  # the peer's answer: ignored
    assert len(transport.written) == 1
    assert conn.eof_received() is False  # the peer's FIN: the transport closes
    conn.connection_lost(None)
    assert (conn.close_code, conn.ended) == (1007, 1)


async def test_a_lost_connection_is_1006_and_ends_once() -> None:
    conn, transport = opened()
    conn.connection_lost(ConnectionResetError())
    conn.connection_lost(None)
    assert (conn.close_code, conn.ended) == (1006, 1)
    conn.close(1001)
    assert transport.written == []


async def test_input_waiting_behind_a_busy_subclass_is_bounded() -> None:
    class Busy(Recorder):
        __slots__ = ("busy",)

        def __init__(self, transport: RecordingTransport) -> None:
            super().__init__(transport, max_message=100)
            self.busy = False

        def can_read(self) -> bool:
            return not self.busy

    transport = RecordingTransport()
    conn = Busy(transport)
    conn.busy = True
    conn.data_received(client_frame(TEXT, b"a" * 60))
    assert transport.reading  # one frame may wait
    conn.data_received(client_frame(TEXT, b"b" * 60))
    assert not transport.reading
    assert conn.reading_paused
    conn.busy = False
    conn.process()
    assert conn.texts == ["a" * 60, "b" * 60]
    assert transport.reading
    assert not conn.reading_paused
