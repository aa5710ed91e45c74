"""One client connection: its grant, its subscriptions, and a bounded path for outgoing frames."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSMessage, web
from aiohttp.http import WS_CLOSED_MESSAGE

from wsgate.auth.tokens import Grant
from wsgate.hub import protocol
from wsgate.hub.frames import server_frame


class Session:
    """A connected client.

    Outgoing frames are written straight to the transport. The transport's write buffer is the send queue:
    when it grows past ``send_limit`` the peer is not keeping up, and instead of buffering without bound the
    session is closed with 1013 (DESIGN.md §4) and receives nothing more.
    """

    __slots__ = (
        "channels",
        "close_code",
        "close_reason",
        "closing",
        "connected_at",
        "expiry",
        "grant",
        "id",
        "on_overflow",
        "opened",
        "receiving",
        "send_limit",
        "transport",
        "ws",
    )

    def __init__(
        self,
        *,
        session_id: str,
        grant: Grant,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        send_limit: int,
        connected_at: str,
        opened: float,
        on_overflow: Callable[[Session], None],
    ) -> None:
        self.id = session_id
        self.grant = grant
        self.ws = ws
        self.transport = transport
        self.send_limit = send_limit
        self.connected_at = connected_at
        self.opened = opened
        self.on_overflow = on_overflow
        self.channels: set[str] = set()
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.expiry: asyncio.TimerHandle | None = None
        self.receiving: asyncio.Task[Any] | None = None

    async def receive(self) -> WSMessage | None:
        """The next message from the peer, or ``None`` when :meth:`wake` interrupted the wait."""
        self.receiving = asyncio.current_task()
        try:
            return await self.ws.receive()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Our own wake-up, not a cancellation from outside: swallow exactly that one.
            if self.close_code is None or task is None or task.cancelling() != 1:
                raise
            task.uncancel()
            return None
        except ConnectionError:
            # aiohttp answers a ping inside receive() and waits for the pong to drain; a peer that vanishes
            # meanwhile (one flooding pings and reading nothing) makes that wait raise. It is a lost
            # connection like any other: close our side (aiohttp records 1006) and say so.
            self.receiving = None  # a wake() must not cancel that close half-way
            await self.ws.close()
            return WS_CLOSED_MESSAGE
        finally:
            self.receiving = None

    def wake(self) -> None:
        """Interrupt a pending :meth:`receive`, so the session's task can act on ``close_code``.

        Only a task parked in ``receive`` is cancelled: one busy handling a message checks ``close_code``
        when it finishes, and is never cut off half-way through a state change.
        """
        if self.receiving is not None:
            self.receiving.cancel()

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
            self.on_overflow(self)

    def send_text(self, text: str) -> None:
        self.send(server_frame(text.encode()))

    def send_error(self, code: str, text: str) -> None:
        self.send_text(protocol.error(code, text))
