"""The byte relay behind an accepted WebSocket upgrade.

After the 101 the gateway no longer speaks WebSocket: it moves bytes between two transports, as nginx and
http-proxy do, so subprotocols, extensions (permessage-deflate), fragmentation and close codes pass end to end
untouched, and a 64 MiB message costs no more memory than the transports' buffers.

Backpressure is asyncio's own: each transport calls ``pause_writing`` on its protocol when its write buffer
passes the high-water mark, and this module answers by pausing *reading* on the other side until
``resume_writing``. When either side ends, the other is closed after flushing what it was already given — for
at most ``FLUSH_GRACE``: a peer that reads nothing (it may itself be stuck writing to us, and a closing
transport reads no more) would otherwise hold the socket and its buffer forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("wsgate.gateway")

# Per direction, bytes a transport may buffer before the other side stops being read. Large enough to keep a
# loopback or LAN link busy, small enough that an idle tunnel and a slow peer both stay cheap.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# How long the surviving side of an ended tunnel may take to accept what it was already sent (a close frame
# behind a last message, at most HIGH_WATER bytes) before it is cut.
FLUSH_GRACE = 5.0


class Tunnel:
    """A client connection accepted for proxying and, once the upstream has answered 101, the upstream's.

    :attr:`done` resolves with the reason it ended; :attr:`opening` is the upstream handshake in progress,
    cancelled if the tunnel ends first (the client left, shutdown).
    """

    # Thousands of idle tunnels are the common case: every per-tunnel byte counts (docs/performance.md).
    __slots__ = (
        "_idle_timeout",
        "_last_activity",
        "_max_lifetime",
        "_timers",
        "bytes_down",
        "bytes_up",
        "client",
        "done",
        "loop",
        "opening",
        "started",
        "upstream",
        "upstream_url",
    )

    def __init__(
        self,
        client: asyncio.Transport,
        *,
        idle_timeout: float | None = None,
        max_lifetime: float | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[str] = self.loop.create_future()
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.upstream_url = ""
        self.opening: asyncio.Task[None] | None = None
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self.started = time.monotonic()
        self._last_activity = self.started
        self._idle_timeout = idle_timeout
        self._max_lifetime = max_lifetime
        self._timers: list[asyncio.TimerHandle] | None = None

    @property
    def joined(self) -> bool:
        return self.upstream is not None

    def join(self, upstream: asyncio.Transport) -> None:
        """Start relaying; the idle and lifetime clocks start now."""
        self.upstream = upstream
        self.opening = None
        for transport in (self.client, upstream):
            transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.started = self._last_activity = time.monotonic()
        if self._max_lifetime is not None:
            self._add_timer(self.loop.call_later(self._max_lifetime, self.close, "max_lifetime"))
        if self._idle_timeout is not None:
            self._add_timer(self.loop.call_later(self._idle_timeout, self._check_idle))

    def _add_timer(self, timer: asyncio.TimerHandle) -> None:
        if self._timers is None:
            self._timers = []
        self._timers.append(timer)

    # The two hot paths: every relayed chunk passes here. The clock is read only for an idle timeout.

    def to_upstream(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and not self.done.done():
            self.bytes_up += len(data)
            if self._idle_timeout is not None:
                self._last_activity = time.monotonic()
            upstream.write(data)

    def to_client(self, data: bytes) -> None:
        if not self.done.done():
            self.bytes_down += len(data)
            if self._idle_timeout is not None:
                self._last_activity = time.monotonic()
            self.client.write(data)

    def close(self, reason: str) -> None:
        """End the tunnel: both transports flush what they hold (within FLUSH_GRACE) and close."""
        if self.done.done():
            return
        self.done.set_result(reason)
        for timer in self._timers or ():
            timer.cancel()
        if self.opening is not None:
            self.opening.cancel()
            self.opening = None
        for transport in (self.client, self.upstream):
            if transport is not None and not transport.is_closing():
                transport.close()
                if transport.get_write_buffer_size():
                    self.loop.call_later(FLUSH_GRACE, transport.abort)  # a no-op once it has closed

    def abort(self, reason: str) -> None:
        """End the tunnel at once, discarding unsent bytes (shutdown deadline passed)."""
        self.close(reason)
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.abort()

    def _check_idle(self) -> None:
        assert self._idle_timeout is not None
        quiet = time.monotonic() - self._last_activity
        if quiet >= self._idle_timeout:
            self.close("idle_timeout")
        else:
            self._add_timer(self.loop.call_later(self._idle_timeout - quiet, self._check_idle))


def _nothing() -> None:
    pass


class _Side(asyncio.Protocol):
    """One end of a tunnel. ``forward`` sends what this side receives to the other; ``peer`` is the other
    side's transport, whose reading pauses while this side's write buffer is full."""

    __slots__ = ("tunnel",)
    name = "side"

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def _peer(self) -> asyncio.Transport | None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        peer = self._peer()
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self._peer()
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

    def eof_received(self) -> bool:
        # WebSocket has no half-close: the end of one side is the end of the tunnel.
        self.tunnel.close(f"{self.name}_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close(f"{self.name}_error" if exc else f"{self.name}_closed")


class ClientSide(_Side):
    """The client's connection, from the moment its upgrade request is accepted for proxying.

    Until :meth:`relay` (while the upstream handshake runs) it holds what the client sends — a client may
    send its first frames right behind its request — and stops reading once that passes HIGH_WATER.
    ``on_end``, when given, learns of the end of the connection (:func:`wsgate.front.take_over`).
    """

    __slots__ = ("_held", "on_end")
    name = "client"

    def __init__(self, tunnel: Tunnel, on_end: Callable[[BaseException | None], None] | None = None) -> None:
        super().__init__(tunnel)
        self.on_end = on_end
        self._held: bytearray | None = bytearray()

    def _peer(self) -> asyncio.Transport | None:
        return self.tunnel.upstream

    def hold(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self.tunnel.to_upstream(data)
            return
        held += data
        if len(held) > HIGH_WATER:
            self.tunnel.client.pause_reading()

    def relay(self) -> bytes:
        """Start relaying (the tunnel must be joined); returns the bytes held so far, to send upstream."""
        held = bytes(self._held or b"")
        self._held = None
        client = self.tunnel.client
        if len(held) > HIGH_WATER and not client.is_closing():
            client.resume_reading()
        return held

    def data_received(self, data: bytes) -> None:
        if self._held is None:
            self.tunnel.to_upstream(data)
        else:
            self.hold(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_end is not None:
            self.on_end(exc)


class UpstreamSide(_Side):
    """The gateway's connection to the upstream, in three phases: it feeds the upstream's response head to
    ``on_head_data`` (which returns true once the head is complete), then holds whatever follows (the first
    frames may come right behind the 101) until :meth:`relay`, then relays."""

    __slots__ = ("_held", "_on_head_data", "_on_lost", "lost", "transport")
    name = "upstream"

    def __init__(
        self, tunnel: Tunnel, on_head_data: Callable[[bytes], bool], on_lost: Callable[[], None]
    ) -> None:
        super().__init__(tunnel)
        self._on_head_data: Callable[[bytes], bool] | None = on_head_data
        self._on_lost = on_lost
        self._held: bytearray | None = None
        self.lost = False
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def _peer(self) -> asyncio.Transport | None:
        return self.tunnel.client if self.tunnel.joined else None

    def relay(self) -> bytes:
        """Start relaying (the tunnel must be joined); returns the bytes held since the head, to send."""
        held = bytes(self._held or b"")
        self._on_head_data = None
        self._on_lost = _nothing  # the handshake's callback holds its future and the response head
        self._held = None
        return held

    def data_received(self, data: bytes) -> None:
        if self._on_head_data is not None:
            if self._on_head_data(data):
                self._on_head_data = None
                self._held = bytearray()
        elif self._held is not None:
            # The head is read but the client is not joined yet (the parser kept its own leftover).
            self._held += data
        else:
            self.tunnel.to_client(data)

    # Before the tunnel is joined, the end of this connection is the handshake's business (it may try the
    # next upstream, or answer the client 502): only ``lost`` tells of it.

    def eof_received(self) -> bool:
        self._lose()
        return super().eof_received() if self.tunnel.upstream is self.transport else False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose()
        if self.tunnel.upstream is self.transport:
            super().connection_lost(exc)

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self._on_lost()
