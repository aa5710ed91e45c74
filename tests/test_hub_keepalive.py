"""Pings and pong deadlines (wsgate.hub.keepalive): silent peers are dropped, answering ones are not — even
when the hub's event loop is starved past the deadline, which is when a per-connection heartbeat timer fires
before the pong it waits for is read (docs/reliability.md, "Soak")."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import TIMEOUT, StartHub, kiosk_headers, make_hub_config, wait_for
from wsgate.hub.keepalive import Keepalive


class Peer(asyncio.Protocol):
    """A connection as the keepalive sees it, over one end of a socket pair: any byte read is liveness."""

    def __init__(self, on_ping: Callable[[Peer], None] | None = None) -> None:
        self.heard = True
        self.reading_paused = False
        self.pings = 0
        self.dropped = False
        self._on_ping = on_ping
        self.other: socket.socket | None = None

    @property
    def open(self) -> bool:
        return not self.dropped

    def ping(self) -> None:
        self.pings += 1
        if self._on_ping is not None:
            self._on_ping(self)

    def lost(self) -> None:
        self.dropped = True

    def data_received(self, data: bytes) -> None:
        self.heard = True

    def answer(self) -> None:
        """The peer's pong: bytes that reach our socket, to be read when the loop next polls."""
        assert self.other is not None
        self.other.send(b"pong")


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    opened: list[tuple[asyncio.BaseTransport, socket.socket]] = []

    async def connect(on_ping: Callable[[Peer], None] | None = None) -> Peer:
        ours, other = socket.socketpair()
        peer = Peer(on_ping)
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: peer, ours)
        peer.other = other
        opened.append((transport, other))
        return peer

    yield connect  # type: ignore[misc]
    for transport, other in opened:
        transport.close()
        other.close()


async def test_a_silent_peer_is_dropped_and_an_answering_one_is_not(peers: Callable[..., Peer]) -> None:
    silent = await peers()
    answering = await peers(lambda peer: asyncio.get_running_loop().call_later(0.01, peer.answer))
    keepalive = Keepalive(0.2)
    keepalive.add(silent)
    keepalive.add(answering)
    keepalive.start()
    try:
        await wait_for(lambda: silent.dropped, what="the silent peer to be dropped")
        await wait_for(lambda: answering.pings >= 3, what="three rounds")
    finally:
        keepalive.stop()
    assert silent.pings == 1  # dropped at its first deadline: interval + interval / 2
    assert not answering.dropped


async def test_a_pong_that_came_in_while_the_loop_stalled_counts(peers: Callable[..., Peer]) -> None:
    """The loop stalls across the deadline while the pong comes in."""
    interval = 1.0
    loop = asyncio.get_running_loop()

    def stall(peer: Peer) -> None:
        peer.answer()
        time.sleep(0.04)  # a busy loop: the deadline (0.02 s from now) passes meanwhile, the pong unread

    peer = await peers(lambda peer: loop.call_later(interval / 2 - 0.02, stall, peer))
    keepalive = Keepalive(interval)
    keepalive.add(peer)
    keepalive.start()
    try:
        await wait_for(lambda: peer.pings >= 2, what="a second round")
    finally:
        keepalive.stop()
    assert not peer.dropped


async def test_input_already_in_the_socket_is_read_before_the_verdict(peers: Callable[..., Peer]) -> None:
    """A deadline check that runs while the pong sits unread in the socket (as a loop that runs due timers
    before polling, libuv < 1.45, would run it after a stall) waits for the loop to poll once more."""
    answered, silent = await peers(), await peers()
    keepalive = Keepalive(10.0)
    keepalive.start()
    try:
        loop = asyncio.get_running_loop()
        answered.heard = silent.heard = False
        answered.answer()  # in the socket, not read: this coroutine has not yielded since
        keepalive._check(keepalive._round, [answered, silent], loop.time())
        await wait_for(lambda: silent.dropped, what="the silent peer to be dropped")
    finally:
        keepalive.stop()
    assert not answered.dropped


async def test_a_deadline_check_that_runs_late_gives_the_peer_the_time_the_loop_lost(
    peers: Callable[..., Peer],
) -> None:
    """A stall long past the deadline: the peer (as starved as we were) answers only after it. The check is
    postponed by its lateness instead of judging at once."""
    interval = 1.0
    loop = asyncio.get_running_loop()

    def stall(peer: Peer) -> None:
        time.sleep(0.3)  # the deadline passes 0.28 s before the loop runs again
        loop.call_later(0.1, peer.answer)  # and the answer comes after that

    peer = await peers(lambda peer: loop.call_later(interval / 2 - 0.02, stall, peer))
    keepalive = Keepalive(interval)
    keepalive.add(peer)
    keepalive.start()
    try:
        await wait_for(lambda: peer.pings >= 2, what="a second round")
    finally:
        keepalive.stop()
    assert not peer.dropped


async def test_a_peer_whose_reading_the_hub_paused_is_not_judged(peers: Callable[..., Peer]) -> None:
    peer = await peers()
    peer.reading_paused = True
    keepalive = Keepalive(0.2)
    keepalive.add(peer)
    keepalive.start()
    try:
        await wait_for(lambda: peer.pings >= 3, what="three rounds")
    finally:
        keepalive.stop()
    assert not peer.dropped


# --- on a real hub ------------------------------------------------------------------------------------------


class PongingClient(threading.Thread):
    """A WebSocket client in a thread of its own (so a stalled hub loop does not stall it): answers every
    ping; the first one only once ``hold`` is set."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.hold = threading.Event()
        self.first_ping = threading.Event()
        self.pings = 0
        self.ended: str | None = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {key}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""

    def _need(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def run(self) -> None:
        try:
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += self.sock.recv(4096)
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101 "):
                self.ended = head.split(b"\r\n")[0].decode()
                return
            while True:
                first, length = self._need(2)
                payload = self._need(length & 0x7F)  # the hub's pings and close frames are short
                opcode = first & 0x0F
                if opcode == 0x8:
                    self.ended = f"close frame {struct.unpack('!H', payload[:2])[0]}"
                    return
                if opcode == 0x9:
                    self.first_ping.set()
                    self.hold.wait()
                    mask = os.urandom(4)
                    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    self.sock.sendall(bytes((0x8A, 0x80 | len(payload))) + mask + masked)
                    self.pings += 1
        except (EOFError, OSError) as exc:
            self.ended = type(exc).__name__


async def test_a_starved_hub_keeps_a_connection_that_answers_its_pings(start_hub: StartHub) -> None:
    interval = 0.6
    server = await start_hub(make_hub_config(limits={"ping_interval": interval}))
    client = PongingClient(server.port, kiosk_headers())
    client.start()
    try:
        await wait_for(client.first_ping.is_set, what="the first ping")
        # The client answers while the hub's loop is blocked for longer than the pong deadline (and the next
        # ping's time): every timer of the hub fires late, with the pong waiting unread in its socket.
        client.hold.set()
        time.sleep(interval * 1.5)
        await wait_for(lambda: client.pings >= 4, what="three more pings answered")
        assert client.ended is None, client.ended
        assert len(server.hub.sessions) == 1
    finally:
        client.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's recv
        client.join(TIMEOUT)
        client.sock.close()
