"""A WebSocket connection after the 101, served by callbacks: the transport calls :meth:`data_received`, the
:class:`~wsgate.hub.frame_reader.FrameReader` turns bytes into events, and this class acts on them.

No task, no coroutine and no aiohttp object lives as long as the connection: an idle connection costs its
transport, this object, its reader and what the hub keeps about it (docs/performance.md). Subclasses
(:class:`~wsgate.hub.session.Session` for ``/ws``, the echo connection) receive whole messages; this class
answers pings, runs the closing handshake (RFC 6455 §7) and fails the connection on a protocol violation.

Closing, three ways:

- **the peer closes**: its close frame is answered (1000, :func:`~wsgate.hub.frames.close_reply_code`) and the
  TCP connection closed at once — the server closes first (§7.1.1);
- **we close** (:meth:`close`: shutdown, expired token, slow consumer): a close frame goes out behind what is
  already queued; the peer's close frame, or ``CLOSE_GRACE`` without one, ends the connection;
- **we fail it** (:meth:`fail`, a :class:`~wsgate.hub.frame_reader.Failure`): a close frame with the code,
  then our half of TCP is shut (FIN), so a peer that answers with its own close frame and waits for us to go
  finds us gone. What it still sends is read and dropped rather than left unread: closing a socket with
  unread input makes the kernel answer with RST, which can destroy the close frame before the peer reads it.

Liveness is the hub's :class:`~wsgate.hub.keepalive.Keepalive`: one timer for all connections, which reads and
clears :attr:`heard` (set by any byte received) and calls :meth:`ping` and :meth:`lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from wsgate.hub.frame_reader import (
    MAX_HEADER,
    BinaryMessage,
    Close,
    Failure,
    FrameReader,
    Ping,
    Pong,
    TextMessage,
)
from wsgate.hub.frames import (
    ABNORMAL_CLOSURE,
    NO_STATUS,
    OP_PING,
    OP_PONG,
    close_frame,
    close_reply_code,
    server_frame,
)

log = logging.getLogger("wsgate.hub")

# How long we wait for the peer's close frame after sending ours: a peer that does not answer must not hold
# its slot forever.
CLOSE_GRACE: Final = 2.0
# How long a closed connection's unread output (at most limits.send_queue) may wait for the peer to read it.
UNREAD_GRACE: Final = 10.0

PING_FRAME: Final = server_frame(b"", OP_PING)

OnEnd = Callable[[BaseException | None], None]

# Connection states. Ordered: a connection only moves forward.
_OPEN: Final = 0
_CLOSING: Final = 1  # our close frame is out; waiting for the peer's
_FAILED: Final = 2  # failed: our close frame and FIN are out; input is dropped until the peer goes
_CLOSED: Final = 3  # the transport is closing or gone


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket connection; set as the transport's protocol once the 101 is written.

    ``read_limit`` bounds the received bytes kept while a subclass does not take events (:meth:`can_read`
    false) before the transport stops being read; ``on_end`` is called once when the connection is lost
    (:func:`wsgate.front.take_over` passes one).
    """

    __slots__ = (
        "_close_timer",
        "_on_end",
        "_pong",
        "_read_limit",
        "_reader",
        "_state",
        "_writing_paused",
        "close_code",
        "close_reason",
        "closing",
        "heard",
        "reading_paused",
        "transport",
    )

    def __init__(
        self, transport: asyncio.Transport, reader: FrameReader, *, max_message: int, on_end: OnEnd | None
    ) -> None:
        self.transport = transport
        self._reader = reader
        self._on_end = on_end
        self._read_limit = max_message + MAX_HEADER
        self._state = _OPEN
        self.closing = False  # no more messages go out: set as soon as a close begins
        self.close_code: int | None = None
        self.close_reason = ""
        self.heard = True  # any byte received since the keepalive last looked
        self.reading_paused = False
        self._writing_paused = False
        self._pong: bytes | None = None  # a ping to answer once the transport takes writes again
        self._close_timer: asyncio.TimerHandle | None = None

    # --- what subclasses provide ---------------------------------------------------------------------------

    def on_text(self, text: str) -> None:
        """A text message, decoded."""

    def on_binary(self, data: bytes) -> None:
        """A binary message."""

    def on_closed(self) -> None:
        """Called once, when the connection has ended or is being closed by us; the bookkeeping goes here."""

    def can_read(self) -> bool:
        """Whether to act on the next event now; when false, frames wait in the reader, in order, until
        :meth:`process` is called again."""
        return True

    def wants_input(self) -> bool:
        """Whether the transport should be read; false stops reading until :meth:`update_reading`.

        Not while a pong waits for the peer to read what we sent (the peer pings and does not read: more
        input would only ask for more output), nor while more than a message waits unread in the reader.
        """
        return self._pong is None and self._reader.buffered <= self._read_limit

    # --- the transport's callbacks ------------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        """Begin, once the transport's protocol is set and the 101 written; ``data`` came with the head."""
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        if self._state >= _FAILED:
            return  # failed or closed: what the peer still sends is dropped
        self._reader.feed(data)
        self.process()

    def process(self) -> None:
        """Act on the events received so far, in order, for as long as :meth:`can_read` allows."""
        reader = self._reader
        while self._state == _CLOSING or (self._state == _OPEN and self.can_read()):
            event = reader.next_event()
            if event is None:
                break
            if isinstance(event, TextMessage):
                if self._state == _OPEN:  # after our close frame, messages are dropped (§5.5.1)
                    self.on_text(event.text)
            elif isinstance(event, Pong):
                pass  # liveness is any byte received (heard)
            elif isinstance(event, Ping):
                if self._state == _OPEN:
                    self._answer_ping(event.payload)
            elif isinstance(event, Close):
                self._peer_closed(event)
            elif isinstance(event, BinaryMessage):
                if self._state == _OPEN:
                    self.on_binary(event.data)
            elif isinstance(event, Failure):
                self.fail(event.code, event.reason)
        self.update_reading()

    def update_reading(self) -> None:
        """Pause or resume reading the transport as :meth:`wants_input` says."""
        if self._state == _CLOSED:
            return
        wanted = self._state == _FAILED or self.wants_input()  # a failed connection's input is drained
        if wanted == (not self.reading_paused):
            return
        self.reading_paused = not wanted
        with contextlib.suppress(RuntimeError):  # uvloop: the transport closed meanwhile
            if wanted:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._pong is not None:
            pong, self._pong = self._pong, None
            if self._state == _OPEN:
                self.transport.write(server_frame(pong, OP_PONG))
        self.update_reading()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    def eof_received(self) -> bool:
        return False  # WebSocket has no half-close: the peer's FIN ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state != _CLOSED:
            if self._state == _OPEN:
                self.close_code = ABNORMAL_CLOSURE
            self._end()
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end(exc)

    # --- acting on the peer ---------------------------------------------------------------------------------

    def _answer_ping(self, payload: bytes) -> None:
        if self._writing_paused:
            # The peer is not reading what we send: answer once it does, and read nothing more meanwhile, so
            # a ping flood from a client that never reads waits in TCP buffers, not in ours. §5.5.3 lets us
            # answer only the latest of the pings already read.
            self._pong = payload
        else:
            self.transport.write(server_frame(payload, OP_PONG))

    def _peer_closed(self, close: Close) -> None:
        if self._state == _OPEN:
            # The peer's code goes to the log, never its reason (untrusted text).
            self.close_code = NO_STATUS if close.code is None else close.code
            self.transport.write(close_frame(close_reply_code(close.code or 0)))
        self._shutdown()

    # --- closing --------------------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    def ping(self) -> None:
        """Send a ping (the keepalive's round)."""
        if self._state == _OPEN:
            self.transport.write(PING_FRAME)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with ``code``; does nothing once a close has begun."""
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        self.transport.write(close_frame(code, reason))
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, self._shutdown)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (§7.1.7): a close frame with ``code``, then FIN; see the module docstring."""
        if self._state >= _FAILED:
            return
        if self._state == _CLOSING:  # the peer broke the protocol while we waited for its close frame
            self._shutdown()
            return
        self._state = _FAILED
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        self._pong = None
        transport = self.transport
        transport.write(close_frame(code, reason))
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if transport.can_write_eof():
                transport.write_eof()
        self.update_reading()  # input is dropped from now on: never hold it back
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, self._shutdown)

    def lost(self) -> None:
        """The peer is gone (the keepalive had no answer): drop the connection without a close frame."""
        if self._state == _CLOSED:
            return
        self.close_code = ABNORMAL_CLOSURE
        self.close_reason = "no answer to ping"
        self._end()
        self.transport.abort()

    def abort(self) -> None:
        """Drop the connection at once (a shutdown deadline passed), keeping the close code already set."""
        if self._state != _CLOSED:
            if self._state == _OPEN:
                self.close_code = ABNORMAL_CLOSURE
            self._end()
        self.transport.abort()

    def _shutdown(self) -> None:
        """End the connection from our side: unsent output (at most the send queue) may drain for a while."""
        if self._state == _CLOSED:
            return
        self._end()
        transport = self.transport
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(UNREAD_GRACE, transport.abort)  # a no-op once closed

    def _end(self) -> None:
        self._state = _CLOSED
        self.closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._pong = None
        try:
            self.on_closed()
        except Exception:
            log.exception("error while closing a connection")
