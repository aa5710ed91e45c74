"""One client connection on ``/ws``: its grant, its subscriptions, a bounded path for outgoing frames, and its
commands handled one at a time, in the order they were sent."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from wsgate.auth.tokens import Grant
from wsgate.hub import protocol
from wsgate.hub.connection import OnEnd, WebSocketConnection
from wsgate.hub.frame_reader import FrameReader
from wsgate.hub.frames import server_frame

if TYPE_CHECKING:
    from wsgate.hub.core import Hub


class Session(WebSocketConnection):
    """A connected client.

    Outgoing frames are written straight to the transport. The transport's write buffer is the send queue:
    when it grows past ``send_limit`` the peer is not keeping up, and instead of buffering without bound the
    session is closed with 1013 (DESIGN.md §4) and receives nothing more.

    Commands run as they arrive, one at a time. One that has to wait (a broker call, a history read) goes on
    in a short task, and while it does the frames behind it wait in the reader — up to
    ``limits.max_message``, then the socket is not read — so a publish sent after a subscribe never overtakes
    it, and pings are answered in turn. An idle session has no task.
    """

    __slots__ = (
        "_command",
        "_ended",
        "channels",
        "connected_at",
        "expiry",
        "grant",
        "hub",
        "id",
        "opened",
        "send_limit",
    )

    def __init__(
        self,
        hub: Hub,
        transport: asyncio.Transport,
        grant: Grant,
        *,
        session_id: str,
        connected_at: str,
        opened: float,
        on_end: OnEnd | None = None,
    ) -> None:
        limits = hub.config.limits
        super().__init__(
            transport, FrameReader(limits.max_message), max_message=limits.max_message, on_end=on_end
        )
        self.hub = hub
        self.id = session_id
        self.grant = grant
        self.send_limit = limits.send_queue
        self.connected_at = connected_at
        self.opened = opened
        self.channels: set[str] = set()
        self.expiry: asyncio.TimerHandle | None = None
        self._command: asyncio.Task[None] | None = None  # a command that is waiting for the broker
        self._ended = False

    def send(self, frame: bytes) -> None:
        """Queue an encoded frame; the hot path of fan-out, so it does as little as possible."""
        if self.closing:
            return
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(frame)
        if transport.get_write_buffer_size() > self.send_limit:
            self.closing = True
            self.hub.slow_consumer(self)

    def send_text(self, text: str) -> None:
        self.send(server_frame(text.encode()))

    def send_error(self, code: str, text: str) -> None:
        self.send_text(protocol.error(code, text))

    # --- messages from the client -----------------------------------------------------------------------

    def can_read(self) -> bool:
        return self._command is None

    def on_text(self, text: str) -> None:
        self._command = self.hub.run_command(self, text)

    def on_binary(self, data: bytes) -> None:
        self.send_error("bad_request", "binary frames are not part of the protocol; send JSON text")

    def command_done(self) -> None:
        """The running command has finished: go on with the frames that waited, or forget the session."""
        self._command = None
        if self._ended:
            self.hub.end_session_soon(self)
        else:
            self.process()

    def on_closed(self) -> None:
        self._ended = True
        self.hub.session_closed(self)
        if self._command is None:
            self.hub.end_session_soon(self)
        # else command_done does, once the running command has finished: it may be adding a subscription
        # that the end must then remove.
