"""Gateway benchmark: one WebSocket echo server reached directly, through nginx, through express +
http-proxy-middleware (the seed's proxy) and through ``wsgate gateway``, side by side in one run.

The four targets are measured in alternation (direct, nginx, hpm, wsgate, direct, nginx, …) for ``--rounds``
rounds, so a slow drift of the machine falls on all of them alike. Each proxy is started afresh for its turn
and stopped after it; every proxy injects the shared secret as a ``token`` header, and the echo server
refuses (401) any handshake without exactly that header, so a proxy that fails to inject it is caught. The
direct client sends the token itself.

Per target and round, after a short warm-up:

1. idle tunnels (proxies only): RSS of the proxy's processes before and after opening ``--idle-connections``
   (5,000) WebSocket connections through it, divided by their number;
2. echo round trips at full speed: 50 connections, each with one 32-byte binary message in flight, for
   ``--seconds`` → round trips/s, p50/p99 latency, and the proxy's CPU time per relayed message (a round
   trip relays two: one each way);
3. the same at a fixed rate (``--paced-rate``, 10,000 round trips/s): the proxy's CPU per relayed message when
   every proxy does the same work at the same pace, neither saturated;
4. bulk: 64 KiB binary messages echoed over 4 connections with 4 messages in flight each → MB/s (10⁶ bytes
   echoed per second) and the proxy's CPU per MB relayed (both directions counted);
5. handshakes: connect, upgrade (token injected), 101, close handshake, TCP closed → per second, one at a time
   and 20 concurrently, and the proxy's CPU per handshake.

The clients of the full-speed echo, the bulk and stream windows (the echo server streaming 64 KiB messages
down 4 connections) and the handshakes are by default ``benchmarks/peers/ws_gateway_load.c``, one epoll loop
in C started for each window (``--client c``, compiled on first use into ``build/bench/``), so that the
clients cost little next to the proxy; ``--client python`` runs them as raw asyncio protocols on uvloop in
this process, as the warm-up, the paced echo and the idle tunnels always are.

CPU time is utime + stime from ``/proc/<pid>/stat`` (every thread, and for nginx the master and its worker)
over the measurement window (``benchmarks/procstat.py``). With two or more CPUs the proxy is pinned to the
first CPU and the load — this process (the clients), the C load generator when one runs and the echo server
— to the others, and every window says whether the proxy or the load was the limit (see ``verdict``).

Usage: ``benchmarks/setup-peers && .venv/bin/python benchmarks/gateway_bench.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

try:
    from benchmarks.procstat import (
        build_c,
        cpu_times,
        machine_busy,
        machine_description,
        maps_library,
        process_tree,
        rss_bytes,
        run_delay,
        source_version,
    )
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from procstat import (  # type: ignore[no-redef,import-not-found]
        build_c,
        cpu_times,
        machine_busy,
        machine_description,
        maps_library,
        process_tree,
        rss_bytes,
        run_delay,
        source_version,
    )

try:  # aiohttp's C (Cython) XOR, in place: ~1 µs per 64 KiB, where pure Python takes ~90 µs
    from aiohttp._websocket.helpers import websocket_mask as _websocket_mask
except ImportError:  # another aiohttp layout: fall back to big-integer XOR
    _websocket_mask = None  # type: ignore[assignment]

HOST = "127.0.0.1"
ORIGIN = "https://kiosk.example.org"  # in wsgate's public_origins; nginx and hpm pass any
PATH = "/ws"
PEERS = Path(__file__).resolve().parent / "peers"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

TARGETS = ("direct", "nginx", "hpm", "wsgate", "floor")
DEFAULT_TARGETS = ("direct", "nginx", "hpm", "wsgate")  # "floor" on request: benchmarks/peers/floor_relay.py
LABELS = {
    "direct": "direct",
    "nginx": "nginx",
    "hpm": "express+HPM",
    "wsgate": "wsgate",
    "floor": "floor relay",
}

ECHO_CONNECTIONS = 50
ECHO_SIZE = 32
BULK_SIZE = 64 * 1024
BULK_CONNECTIONS = 4
BULK_WINDOW = 4  # messages in flight per bulk connection: keeps every hop busy without deep queues
HANDSHAKE_CONCURRENCY = 20
IDLE_CONNECTIONS = 5000
PACED_RATE = 10_000  # round trips/s: well below what the slowest proxy reaches, so none is saturated
WARMUP = 0.5  # seconds of traffic before each window: connections and JIT (node) warm
HANDSHAKE_WARMUP = 0.3
WARMUP_HANDSHAKES = 200  # per target and round, before anything is measured
CONNECT_CONCURRENCY = 100  # handshakes in flight while opening the idle connections
STEP_TIMEOUT = 20.0  # any one awaited step: a handshake, a drain, a proxy start, closing connections
RUN_TIMEOUT = 570.0  # the whole run stays under ten minutes
MAX_HANDSHAKES = 100_000  # per handshake window: a bound on top of the time bound
FD_MARGIN = 512  # descriptors beyond those of the connections: listeners, logs, pipes, the runtimes' own
# CPUs the rest of the machine may use during a window before it is flagged as disturbed. On an idle machine
# the figure stays within ±0.12 (kernel work charged to no process, such as softirqs run by ksoftirqd, and
# the different rounding of /proc/stat and /proc/<pid>/stat); a test suite running alongside shows 0.3-1.9.
DISTURBED_CPUS = 0.2
MAX_HEAD = 16 * 1024  # largest HTTP head either side of this benchmark accepts

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
FIN = 0x80
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = (1000).to_bytes(2, "big")
STREAM_COMMAND = b"stream "  # a text message "stream N": the echo server then sends N-byte messages nonstop


class BenchError(Exception):
    """The benchmark could not run or its result would be wrong; the message says why."""


# --- WebSocket framing, just enough for an echo (RFC 6455 §5) ----------------------------------------------


def apply_mask(mask: bytes, data: bytearray) -> None:
    """XOR ``data`` in place with the 4-byte ``mask`` (RFC 6455 §5.3)."""
    if _websocket_mask is not None:
        _websocket_mask(mask, data)
        return
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    data[:] = (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def frame_head(first: int, length: int, masked: bool) -> bytes:
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes((first, bit | length))
    if length < 65536:
        return bytes((first, bit | 126)) + length.to_bytes(2, "big")
    return bytes((first, bit | 127)) + length.to_bytes(8, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A complete, masked client frame (clients must mask, RFC 6455 §5.1)."""
    mask = os.urandom(4)
    body = bytearray(payload)
    apply_mask(mask, body)
    return frame_head(FIN | opcode, len(body), True) + mask + body


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID, usedforsecurity=False).digest())


class FrameParser:
    """Incremental frame parser: ``feed`` bytes as they arrive; ``on_frame(first_byte, payload)`` is called
    for each complete frame, with the payload unmasked. Frames are not reassembled into messages: the echo
    server echoes frame by frame, and this benchmark's clients never fragment."""

    __slots__ = ("buffer", "on_frame")

    def __init__(self, on_frame: Callable[[int, bytearray], None]) -> None:
        self.buffer = bytearray()
        self.on_frame = on_frame

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            second = buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80:
                head += 4
            end = pos + head + length
            if end > size:
                break
            payload = buffer[pos + head : end]  # a copy: the buffer is trimmed below
            if second & 0x80:
                apply_mask(bytes(buffer[pos + head - 4 : pos + head]), payload)
            first = buffer[pos]
            pos = end
            self.on_frame(first, payload)
        if pos:
            del buffer[:pos]


class FrameCounter:
    """Incremental parser for the server's unmasked frames that counts the payload bytes of large data
    frames as they stream past, without buffering or copying them; control frames and small ones are
    collected and handed to ``on_frame`` whole."""

    __slots__ = ("collect", "first", "head", "on_bytes", "on_frame", "remaining")

    def __init__(
        self, on_frame: Callable[[int, bytearray], None], on_bytes: Callable[[int, bool], None]
    ) -> None:
        self.on_frame = on_frame
        self.on_bytes = on_bytes  # (payload bytes, the frame ends here)
        self.head = b""
        self.remaining = 0
        self.first = 0
        self.collect: bytearray | None = None

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self.remaining:
                take = min(self.remaining, size - pos)
                self.remaining -= take
                if self.collect is not None:
                    self.collect += data[pos : pos + take]
                    if not self.remaining:
                        self.on_frame(self.first, self.collect)
                else:
                    self.on_bytes(take, not self.remaining)
                pos += take
                continue
            head = self.head + data[pos : pos + 10]
            if len(head) < 2:
                self.head = head
                return
            length = head[1] & 0x7F
            needed = 2
            if length == 126:
                needed = 4
            elif length == 127:
                needed = 10
            if len(head) < needed:
                self.head = head
                return
            if needed == 4:
                length = int.from_bytes(head[2:4], "big")
            elif needed == 10:
                length = int.from_bytes(head[2:10], "big")
            pos += needed - len(self.head)
            self.head = b""
            self.first = head[0]
            self.remaining = length
            self.collect = bytearray() if self.first & 0x08 or length <= 1024 else None
            if not length:
                if self.collect is not None:
                    self.on_frame(self.first, self.collect)
                else:
                    self.on_bytes(0, True)


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The first line of an HTTP head and its fields (names lower case; a repeated name keeps the last)."""
    lines = head.split(b"\r\n")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields


# --- the echo server (its own process: ``--serve-echo``) -----------------------------------------------


class EchoServer(asyncio.Protocol):
    """A raw asyncio WebSocket echo server connection: it accepts an upgrade only when its ``token`` header
    is exactly the shared secret (401 otherwise), then echoes every data frame as it came (opcode and FIN
    kept), answers pings, and answers a close by echoing its code and closing TCP first (RFC 6455 §7.1.1)."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.parser: FrameParser | None = None
        self.closed = False
        self.stream_frame: bytes | None = None  # set by a "stream N" command: sent over and over
        self.paused = False
        self.fill_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            if not self.closed:
                self.parser.feed(data)
            return
        transport = self.transport
        assert transport is not None
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                transport.abort()
            return
        request_line, fields = parse_head(bytes(self.head[:end]))
        rest = bytes(self.head[end + 4 :])
        self.head = bytearray()
        given = fields.get(b"token")
        key = fields.get(b"sec-websocket-key")
        if given is None or not hmac.compare_digest(given, self.token):
            transport.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.close()
            return
        if key is None or not request_line.startswith(b"GET "):
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.close()
            return
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.parser = FrameParser(self.frame)
        if rest:
            self.parser.feed(rest)

    def frame(self, first: int, payload: bytearray) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        opcode = first & 0x0F
        if opcode == OP_CLOSE:
            self.closed = True
            self.stream_frame = None
            code = bytes(payload[:2])
            transport.write(frame_head(FIN | OP_CLOSE, len(code), False) + code)
            transport.close()
        elif opcode == OP_PING:
            transport.write(frame_head(FIN | OP_PONG, len(payload), False) + payload)
        elif opcode == OP_TEXT and payload.startswith(STREAM_COMMAND):
            size = int(payload[len(STREAM_COMMAND) :])
            self.stream_frame = frame_head(FIN | OP_BINARY, size, False) + os.urandom(size)
            self.fill()
        elif opcode != OP_PONG:
            transport.writelines((frame_head(first, len(payload), False), payload))

    def fill(self) -> None:
        """Stream mode: keep the transport's buffer full. A write that the socket takes at once does not
        pause us, so at most 16 frames are written per turn of the event loop."""
        self.fill_scheduled = False
        transport = self.transport
        if self.stream_frame is None or transport is None or transport.is_closing():
            return
        for _ in range(16):
            if self.paused:
                return
            transport.write(self.stream_frame)
        self.fill_scheduled = True
        asyncio.get_running_loop().call_soon(self.fill)

    def pause_writing(self) -> None:
        self.paused = True
        if self.stream_frame is None and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()  # echo: a client that does not read its echoes is not read either

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self.stream_frame is not None and not self.fill_scheduled:
            self.fill()


def serve_echo(ports: list[int]) -> int:
    """Entry point of the echo server process. Stops on SIGTERM/SIGINT, or when its standard input (a pipe
    from the benchmark) reaches end of file: it never outlives the benchmark that started it."""
    token = os.environ.get("WS_TOKEN", "").encode()
    if not token:
        print("gateway_bench --serve-echo: WS_TOKEN is not set", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(lambda: EchoServer(token), HOST, port, backlog=4096) for port in ports
        ]
        stop: asyncio.Future[None] = loop.create_future()

        def stopping() -> None:
            if not stop.done():
                stop.set_result(None)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping)
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):  # end of file: the benchmark is gone
                stopping()

        loop.add_reader(stdin, on_stdin)
        print("listening", flush=True)
        await stop
        for server in servers:
            server.close()

    run_loop(main())
    return 0


# --- clients ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where the clients connect, and the proxy process behind it (none for ``direct``)."""

    name: str
    port: int
    upstream_port: int
    client_token: str | None = None  # sent by the client itself: only when it talks to the echo server
    peer: Peer | None = None

    @property
    def label(self) -> str:
        return LABELS[self.name]


def upgrade_request(target: Target, key: bytes) -> bytes:
    lines = [
        f"GET {PATH} HTTP/1.1",
        f"Host: {HOST}:{target.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {ORIGIN}",
        "User-Agent: wsgate-gateway-bench",
    ]
    if target.client_token is not None:
        lines.append(f"token: {target.client_token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Client(asyncio.Protocol):
    """One WebSocket client connection: sends the upgrade, checks the 101 and its Sec-WebSocket-Accept
    (RFC 6455 §4.1), then hands each message to :meth:`message`. ``opened`` resolves on a valid 101 (or fails
    with the status the client got), ``closed`` when the TCP connection has ended. A problem after the
    handshake is kept in ``problem`` for the measurement to report."""

    def __init__(self, request: bytes, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.accept = accept_key(key)
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.parser: FrameParser | FrameCounter | None = None
        self.closing = False
        self.problem: str | None = None

    def make_parser(self) -> FrameParser | FrameCounter:
        return FrameParser(self.frame)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                self.refused("the response head is too large")
            return
        status, fields = parse_head(bytes(self.head[:end]))
        rest = bytes(self.head[end + 4 :])
        self.head = bytearray()
        if not status.startswith(b"HTTP/1.1 101"):
            self.refused(f"handshake answered {status.decode('latin-1')!r}")
            return
        if fields.get(b"sec-websocket-accept") != self.accept:
            self.refused("the 101 carries a wrong Sec-WebSocket-Accept")
            return
        self.parser = self.make_parser()
        self.opened.set_result(None)
        self.on_open()
        if rest:
            self.parser.feed(rest)

    def on_open(self) -> None:
        """Called once the 101 is checked."""

    def refused(self, message: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError(message))
        if self.transport is not None:
            self.transport.abort()

    def frame(self, first: int, payload: bytearray) -> None:
        opcode = first & 0x0F
        if opcode == OP_CLOSE:
            if not self.closing:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.problem = self.problem or f"the server closed the connection with code {code}"
            return  # the server closes TCP next
        if opcode == OP_PING:
            self.send(client_frame(OP_PONG, bytes(payload)))
        elif opcode != OP_PONG:
            self.message(payload)

    def message(self, payload: bytearray) -> None:
        self.problem = self.problem or f"unexpected message of {len(payload)} bytes"

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def start_close(self) -> None:
        """Send a close frame; the server echoes it and closes the connection (RFC 6455 §7.1.1)."""
        if not self.closing:
            self.closing = True
            self.send(client_frame(OP_CLOSE, CLOSE_NORMAL))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError("the connection ended before the handshake completed"))
        elif not self.closing:
            self.problem = self.problem or "the connection was lost"
        if not self.closed.done():
            self.closed.set_result(None)


C = TypeVar("C", bound=Client)


async def connect(target: Target, factory: Callable[[bytes, bytes], C]) -> C:
    """Open one WebSocket connection to ``target`` and wait for its 101."""
    key = base64.b64encode(os.urandom(16))
    request = upgrade_request(target, key)
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(lambda: factory(request, key), HOST, target.port)
    try:
        await client.opened
    except BaseException:
        transport.abort()
        raise
    return client


async def open_many(
    target: Target, factory: Callable[[bytes, bytes], C], count: int, concurrency: int
) -> list[C]:
    """Open ``count`` connections, ``concurrency`` handshakes at a time; on failure abort those opened."""
    clients: list[C] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate, asyncio.timeout(STEP_TIMEOUT):
            clients.append(await connect(target, factory))

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(one())
    except* (OSError, BenchError, TimeoutError) as failed:
        abort_all(clients)
        first = failed.exceptions[0]
        raise BenchError(
            f"{target.label}: opening {count} connections failed after {len(clients)}: "
            f"{first.__class__.__name__}: {first}"
        ) from None
    return clients


def abort_all(clients: Iterable[Client]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


async def close_all(clients: Sequence[Client]) -> int:
    """Close every connection with a close handshake; abort those still open after STEP_TIMEOUT. Returns how
    many had to be aborted."""
    for client in clients:
        client.start_close()
    pending = [client.closed for client in clients if not client.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=STEP_TIMEOUT)
    stuck = [client for client in clients if not client.closed.done()]
    abort_all(stuck)
    return len(stuck)


def check_clients(target: Target, clients: Iterable[Client]) -> None:
    problems = [client.problem for client in clients if client.problem]
    if problems:
        raise BenchError(f"{target.label}: {len(problems)} connection(s) failed, first: {problems[0]}")


class EchoLoad:
    """The clients of one echo measurement and what they have counted. With ``interval`` None every client
    sends its next message as soon as the last has come back (closed loop, as fast as it goes); otherwise each
    sends one every ``interval`` seconds on a fixed schedule (paced)."""

    def __init__(self, window: int, interval: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.window = window
        self.interval = interval
        self.measuring = False
        self.stopping = False
        self.messages = 0
        self.bytes = 0
        self.latencies: list[float] = []
        self.in_flight = 0
        self.drained: asyncio.Future[None] = self.loop.create_future()

    def stop(self) -> None:
        self.stopping = True
        if self.in_flight == 0 and not self.drained.done():
            self.drained.set_result(None)


class EchoClient(Client):
    """Sends one message (``load.window`` for bulk) and each time its echo returns, the next; checks every
    echo against what was sent (bulk: the length, and the content of the first)."""

    def __init__(self, request: bytes, key: bytes, load: EchoLoad, payload: bytes, verify_all: bool) -> None:
        super().__init__(request, key)
        self.load = load
        self.payload = payload
        self.frame_bytes = client_frame(OP_BINARY, payload)
        self.verify_all = verify_all
        self.verified = False
        self.sent: list[float] = []  # send times of the messages in flight, oldest first
        self.due = 0.0

    def send_one(self) -> None:
        load = self.load
        if load.stopping or self.transport is None or self.transport.is_closing():
            return
        load.in_flight += 1
        self.sent.append(time.perf_counter())
        self.transport.write(self.frame_bytes)

    def message(self, payload: bytearray) -> None:
        now = time.perf_counter()
        load = self.load
        if not self.sent:
            self.problem = self.problem or "an echo arrived that was never sent"
            return
        sent = self.sent.pop(0)
        load.in_flight -= 1
        if self.verify_all or not self.verified:
            if payload != self.payload:
                self.problem = self.problem or f"an echo differs from its message ({len(payload)} bytes)"
            self.verified = True
        elif len(payload) != len(self.payload):
            self.problem = self.problem or f"an echo of {len(payload)} bytes for {len(self.payload)}"
        if load.measuring:
            load.messages += 1
            load.bytes += len(payload)
            load.latencies.append(now - sent)
        if load.stopping:
            if load.in_flight == 0 and not load.drained.done():
                load.drained.set_result(None)
        elif load.interval is None:
            self.send_one()
        else:
            self.due = max(self.due + load.interval, load.loop.time())
            load.loop.call_at(self.due, self.send_one)


class StreamClient(Client):
    """Asks the echo server for a nonstop stream of ``size``-byte messages and counts what arrives."""

    def __init__(self, request: bytes, key: bytes, load: EchoLoad, size: int) -> None:
        super().__init__(request, key)
        self.load = load
        self.size = size
        self.frame_bytes = 0

    def make_parser(self) -> FrameCounter:
        return FrameCounter(self.frame, self.count)

    def on_open(self) -> None:
        self.send(client_frame(OP_TEXT, STREAM_COMMAND + str(self.size).encode()))

    def count(self, size: int, ended: bool) -> None:
        self.frame_bytes += size
        if self.load.measuring:
            self.load.bytes += size
        if ended:
            if self.frame_bytes != self.size:
                self.problem = (
                    self.problem or f"a streamed message of {self.frame_bytes} bytes for {self.size}"
                )
            self.frame_bytes = 0
            if self.load.measuring:
                self.load.messages += 1


# --- measurement -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), as in hub_fanout.py."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass(frozen=True)
class Usage:
    """CPU time and run-queue wait of the processes a window is charged to, at one moment."""

    at: float
    proxy_user: float
    proxy_system: float
    proxy_wait: float
    load: float  # this process (the clients) + the echo server + the C load generator, if one runs
    machine: float  # every CPU of the machine, busy
    echo: float = 0.0  # the echo server alone (part of ``load``)


class Bench:
    """What every measurement needs: the options, the CPU split, the echo server."""

    def __init__(self, args: argparse.Namespace, pinned: dict[str, list[int]] | None, echo: Peer) -> None:
        self.args = args
        self.pinned = pinned
        self.echo = echo
        self.load_cpus = len(pinned["load"]) if pinned else len(os.sched_getaffinity(0))
        self.native: Path | None = getattr(args, "native", None)  # the C load generator, with --client c
        self.native_pids: list[int] = []  # those running now: their CPU time is the load's

    def usage(self, target: Target) -> Usage:
        user = system = wait = 0.0
        if target.peer is not None:
            for pid in target.peer.tree:
                u, s = cpu_times(pid)
                user, system, wait = user + u, system + s, wait + run_delay(pid)
        load = echo = 0.0
        for pid in (os.getpid(), *self.echo.tree, *self.native_pids):
            u, s = cpu_times(pid)
            load += u + s
            if pid in self.echo.tree:
                echo += u + s
        return Usage(time.monotonic(), user, system, wait, load, machine_busy(), echo)

    def window(self, target: Target, before: Usage, after: Usage) -> dict[str, Any]:
        """The window's elapsed time, the proxy's CPU use in it and who was the limit."""
        elapsed = after.at - before.at
        load_cpu = after.load - before.load
        user = after.proxy_user - before.proxy_user
        system = after.proxy_system - before.proxy_system
        # What the rest of the machine used meanwhile (other programs, and kernel work charged to no
        # process), in CPUs: a quiet machine stays near zero.
        others = (after.machine - before.machine - load_cpu - user - system) / elapsed
        load_busy = load_cpu / (elapsed * self.load_cpus)
        result: dict[str, Any] = {"elapsed_s": elapsed, "load_busy": load_busy, "others_cpus": others}
        # Which part of the load was busy, in CPUs: the echo server, and the clients (this process and the C
        # load generator). With the C clients the echo server may be what limits a window.
        echo_busy = (after.echo - before.echo) / elapsed
        result.update(echo_busy=echo_busy, clients_busy=load_cpu / elapsed - echo_busy)
        if target.peer is None:
            result.update(proxy_cpu_s=None, verdict=verdict(None, 0.0, load_busy, others))
            return result
        busy = (user + system) / elapsed
        wait = (after.proxy_wait - before.proxy_wait) / elapsed
        result.update(
            proxy_cpu_s=user + system,
            proxy_user_s=user,
            proxy_system_s=system,
            proxy_busy=busy,
            proxy_wait=wait,
            verdict=verdict(busy, wait, load_busy, others),
        )
        return result


def verdict(proxy_busy: float | None, proxy_wait: float, load_busy: float, others: float) -> str:
    """Who limited a window (``proxy_busy`` None: no proxy, the direct target).

    - ``disturbed``: other processes used a sizeable share of the machine (≥ DISTURBED_CPUS) during the
      window: its rates are suspect whatever else holds (CPU per unit stays meaningful).

    - ``proxy-bound``: the proxy kept its CPU busy (≥ 90 %): a faster load could not have made it go faster,
      so the rate is the proxy's. (Its threads may still wait for the CPU: node's garbage-collector threads
      share the one CPU it is pinned to with its main thread.)
    - ``proxy starved``: busy less than 90 %, but busy and waiting for a CPU together 90 % or more: another
      process had its CPU.
    - ``load-bound``: the clients and the echo server used ≥ 90 % of their CPUs while the proxy had time to
      spare: the rate understates the proxy.
    - ``not saturated``: neither side was (a paced window, or a closed loop limited by latency).
    """
    if others >= DISTURBED_CPUS:
        return "disturbed"
    if proxy_busy is None:
        return "load-bound" if load_busy >= 0.9 else "not saturated"
    if proxy_busy >= 0.9:
        return "proxy-bound"
    if proxy_busy + proxy_wait >= 0.9:
        return "proxy starved"
    if load_busy >= 0.9:
        return "load-bound"
    return "not saturated"


# --- the C load generator (``--client c``) ------------------------------------------------------------

NATIVE_SOURCE = PEERS / "ws_gateway_load.c"
NATIVE_BINARY = Path(__file__).resolve().parent.parent / "build" / "bench" / "ws_gateway_load"


def build_native_load() -> Path:
    """The C load generator (``benchmarks/peers/ws_gateway_load.c``), compiled when the binary is missing or
    older than its source; the binary lives in the git-ignored ``build/bench/``."""
    problem = build_c(NATIVE_SOURCE, NATIVE_BINARY)
    if problem is not None:
        raise BenchError(f"{problem} (or use --client python)")
    return NATIVE_BINARY


@dataclass(frozen=True)
class Mark:
    """A ``mark`` of the C load generator: what it completed since ``go`` (handshakes, round trips or
    streamed messages), their payload bytes, when (CLOCK_MONOTONIC, time.monotonic()'s clock) and its errors
    so far. The difference of two marks is a Mark too, its ``at`` the seconds between them."""

    count: int
    bytes: int
    at: float
    errors: int


class NativeLoad:
    """One window's C load generator (see ``ws_gateway_load.c``): started for the window, driven through its
    line protocol, stopped after it. It inherits this process's CPUs, the load's, and while it runs
    ``Bench.usage`` charges its CPU time to the load. Its first ``error`` line fails the measurement."""

    def __init__(self, bench: Bench, target: Target, argv: Sequence[str]) -> None:
        self.bench = bench
        self.target = target
        self.argv = argv
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> NativeLoad:
        assert self.bench.native is not None
        env = {name: value for name, value in os.environ.items() if name != "WS_TOKEN"}
        if self.target.client_token is not None:  # the direct target; in the environment, not on argv
            env["WS_TOKEN"] = self.target.client_token
        mode, *numbers = self.argv
        self.process = await asyncio.create_subprocess_exec(
            *(str(self.bench.native), "-p", PATH, "-o", ORIGIN, mode, str(self.target.port), *numbers),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.bench.native_pids.append(self.process.pid)
        try:
            await self.reply("ready")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        self.bench.native_pids.remove(process.pid)
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()  # end of file: it stops, drains and closes its connections
        try:
            await asyncio.wait_for(process.wait(), STEP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def send(self, command: str) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def reply(self, kind: str) -> list[str]:
        """The fields of its next line, which must be a ``kind`` one."""
        assert self.process is not None
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                line = (await self.process.stdout.readline()).decode().strip()
        except TimeoutError:
            line = f"(nothing within {STEP_TIMEOUT:.0f} s)"
        word, _, rest = line.partition(" ")
        if word == kind:
            return rest.split()
        what = f"error: {rest}" if word == "error" else f"{line!r} for {kind!r}" if line else "no answer"
        raise BenchError(f"{self.target.label}: the C load generator ({self.argv[0]}): {what}")

    async def mark(self) -> Mark:
        await self.send("mark")
        count, size, at, errors = await self.reply("mark")
        return Mark(int(count), int(size), float(at), int(errors))

    async def latency(self) -> dict[str, float]:
        """Percentiles (seconds) of what it recorded between the last two marks: round trips, time to 101."""
        await self.send("latency")
        count, p50, p99, most = await self.reply("latency")
        return {"count": int(count), "p50": float(p50), "p99": float(p99), "max": float(most)}

    async def stop(self) -> None:
        await self.send("stop")
        _, _, errors = await self.reply("summary")
        if int(errors):
            raise BenchError(f"{self.target.label}: the C load generator counted {errors} error(s)")


async def measure_native(
    bench: Bench, target: Target, argv: Sequence[str], warmup: float, seconds: float
) -> tuple[dict[str, Any], Mark, dict[str, float]]:
    """One window on the C load generator: ``go``, ``warmup`` seconds, a mark, ``seconds``, a mark, with
    ``Bench.usage`` right after each mark's reply. Returns the window, the difference of the two marks and
    the latencies recorded between them."""
    async with NativeLoad(bench, target, argv) as load:
        await load.send("go")
        await asyncio.sleep(warmup)
        first = await load.mark()
        before = bench.usage(target)
        await asyncio.sleep(seconds)
        last = await load.mark()
        after = bench.usage(target)
        latency = await load.latency()
        await load.stop()
    counted = Mark(last.count - first.count, last.bytes - first.bytes, last.at - first.at, last.errors)
    result = bench.window(target, before, after)
    result["client"] = "c"
    return result, counted, latency


async def measure_echo(
    bench: Bench, target: Target, *, connections: int, size: int, window: int, rate: float | None
) -> dict[str, Any]:
    """Echo traffic over ``connections`` connections with ``window`` messages of ``size`` bytes in flight on
    each, closed loop (``rate`` None) or paced at ``rate`` messages/s in total. The closed loop runs on the C
    load generator when there is one; the paced echo always on the Python clients (it needs a schedule)."""
    if bench.native is not None and rate is None:
        argv = ["echo", str(connections), str(size), str(window)]
        result, counted, latency = await measure_native(bench, target, argv, WARMUP, bench.args.seconds)
        messages, echoed, elapsed = counted.count, counted.bytes, counted.at
    else:
        result, messages, echoed, latency = await echo_python(
            bench, target, connections=connections, size=size, window=window, rate=rate
        )
        elapsed = result["elapsed_s"]
    relayed = 2 * messages  # every echo crosses the proxy twice: up and down
    ms = 1000.0
    result.update(
        connections=connections,
        message_bytes=size,
        in_flight_per_connection=window,
        requested_rate=rate,
        round_trips=messages,
        round_trips_per_s=messages / elapsed,
        mb_per_s=echoed / elapsed / 1e6,
        latency_ms={key: latency[key] * ms for key in ("p50", "p99", "max")},
    )
    if result["proxy_cpu_s"] is not None and messages:
        result["proxy_cpu_us_per_message"] = result["proxy_cpu_s"] / relayed * 1e6
        result["proxy_user_us_per_message"] = result["proxy_user_s"] / relayed * 1e6
        result["proxy_cpu_ms_per_mb"] = result["proxy_cpu_s"] / (2 * echoed / 1e6) * 1e3
    return result


async def echo_python(
    bench: Bench, target: Target, *, connections: int, size: int, window: int, rate: float | None
) -> tuple[dict[str, Any], int, int, dict[str, float]]:
    """The echo on the Python clients: the window, round trips, bytes echoed, latencies (seconds)."""
    interval = connections / rate if rate else None
    load = EchoLoad(window, interval)
    payload = os.urandom(size)
    verify_all = size <= 1024

    def factory(request: bytes, key: bytes) -> EchoClient:
        return EchoClient(request, key, load, payload, verify_all)

    clients = await open_many(target, factory, connections, CONNECT_CONCURRENCY)
    try:
        now = load.loop.time()
        for index, client in enumerate(clients):
            if interval is None:
                for _ in range(window):
                    client.send_one()
            else:  # staggered, so the sends spread evenly over each interval
                client.due = now + interval * index / connections
                load.loop.call_at(client.due, client.send_one)
        await asyncio.sleep(WARMUP)
        before = bench.usage(target)
        load.measuring = True
        await asyncio.sleep(bench.args.seconds)
        load.measuring = False
        after = bench.usage(target)
        load.stop()
        async with asyncio.timeout(STEP_TIMEOUT):
            await load.drained
        check_clients(target, clients)
    finally:
        await close_all(clients)
    latency = {
        "p50": percentile(load.latencies, 50),
        "p99": percentile(load.latencies, 99),
        "max": max(load.latencies),
    }
    return bench.window(target, before, after), load.messages, load.bytes, latency


async def measure_stream(bench: Bench, target: Target, *, connections: int, size: int) -> dict[str, Any]:
    """The echo server streams ``size``-byte messages down ``connections`` connections as fast as the path
    takes them (TCP backpressure): one-way throughput, the direction a hub's fan-out goes."""
    if bench.native is not None:
        argv = ["stream", str(connections), str(size)]
        result, counted, _ = await measure_native(bench, target, argv, WARMUP, bench.args.seconds)
        result.update(
            connections=connections,
            message_bytes=size,
            messages=counted.count,
            mb_per_s=counted.bytes / counted.at / 1e6,
        )
        if result["proxy_cpu_s"] is not None and counted.bytes:
            result["proxy_cpu_ms_per_mb"] = result["proxy_cpu_s"] / (counted.bytes / 1e6) * 1e3
        return result
    load = EchoLoad(1, None)

    def factory(request: bytes, key: bytes) -> StreamClient:
        return StreamClient(request, key, load, size)

    clients = await open_many(target, factory, connections, CONNECT_CONCURRENCY)
    try:
        await asyncio.sleep(WARMUP)
        before = bench.usage(target)
        load.measuring = True
        await asyncio.sleep(bench.args.seconds)
        load.measuring = False
        after = bench.usage(target)
        check_clients(target, clients)
    finally:
        await close_all(clients)
    result = bench.window(target, before, after)
    result.update(
        connections=connections,
        message_bytes=size,
        messages=load.messages,
        mb_per_s=load.bytes / result["elapsed_s"] / 1e6,
    )
    if result["proxy_cpu_s"] is not None and load.bytes:
        result["proxy_cpu_ms_per_mb"] = result["proxy_cpu_s"] / (load.bytes / 1e6) * 1e3
    return result


async def measure_handshakes(bench: Bench, target: Target, concurrency: int) -> dict[str, Any]:
    """Complete WebSocket connections (connect, upgrade, 101, close handshake, TCP closed), ``concurrency``
    at a time, for ``--handshake-seconds``."""
    if bench.native is not None:
        argv = ["handshakes", str(concurrency)]
        seconds = bench.args.handshake_seconds
        result, counted, latency = await measure_native(bench, target, argv, HANDSHAKE_WARMUP, seconds)
        return handshake_figures(result, concurrency, counted.count, counted.at, latency)
    measuring = False
    stopping = False
    done = 0
    to_101: list[float] = []

    async def worker() -> None:
        nonlocal done
        while not stopping and done < MAX_HANDSHAKES:
            started = time.perf_counter()
            async with asyncio.timeout(STEP_TIMEOUT):
                client = await connect(target, Client)
                opened = time.perf_counter()
                client.start_close()
                await client.closed
            if client.problem:
                raise BenchError(f"{target.label}: a handshake connection failed: {client.problem}")
            if measuring:
                done += 1
                to_101.append(opened - started)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
        await asyncio.sleep(HANDSHAKE_WARMUP)
        before = bench.usage(target)
        measuring = True
        await asyncio.sleep(bench.args.handshake_seconds)
        measuring = False
        after = bench.usage(target)
        stopping = True
    result = bench.window(target, before, after)
    latency = {"p50": percentile(to_101, 50), "p99": percentile(to_101, 99)}
    return handshake_figures(result, concurrency, done, result["elapsed_s"], latency)


def handshake_figures(
    result: dict[str, Any], concurrency: int, done: int, elapsed: float, to_101: dict[str, float]
) -> dict[str, Any]:
    result.update(
        concurrency=concurrency,
        handshakes=done,
        handshakes_per_s=done / elapsed,
        to_101_ms={"p50": to_101["p50"] * 1000, "p99": to_101["p99"] * 1000},
    )
    if result["proxy_cpu_s"] is not None and done:
        result["proxy_cpu_us_per_handshake"] = result["proxy_cpu_s"] / done * 1e6
        result["proxy_user_us_per_handshake"] = result["proxy_user_s"] / done * 1e6
    return result


def open_fds(pids: Iterable[int]) -> int | None:
    """Descriptors open in these processes; None when /proc does not let us look (another user's)."""
    try:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
    except OSError:
        return None


async def measure_idle(bench: Bench, target: Target) -> dict[str, Any]:
    """RSS of the proxy's processes before and after ``--idle-connections`` idle tunnels are open."""
    assert target.peer is not None
    pids = target.peer.tree
    n = bench.args.idle_connections
    rss_before = sum(rss_bytes(pid) for pid in pids)
    fds_before = open_fds(pids)
    started = time.monotonic()
    clients = await open_many(target, Client, n, CONNECT_CONCURRENCY)
    try:
        connect_s = time.monotonic() - started
        # Let the proxy finish what the handshakes left (its garbage collection, node's deferred frees).
        await asyncio.sleep(1.0)
        rss_after = sum(rss_bytes(pid) for pid in pids)
        fds_after = open_fds(pids)
        check_clients(target, clients)
    finally:
        aborted = await close_all(clients)
    # The proxy has closed both sides of every tunnel before the next measurement starts.
    deadline = time.monotonic() + STEP_TIMEOUT
    while fds_before is not None and time.monotonic() < deadline:
        now = open_fds(pids)
        if now is None or now <= fds_before + 16:
            break
        await asyncio.sleep(0.05)
    return {
        "connections": n,
        "connect_s": connect_s,
        "handshakes_per_s": n / connect_s,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_tunnel_bytes": (rss_after - rss_before) / n,
        "fds_per_tunnel": (fds_after - fds_before) / n
        if fds_after is not None and fds_before is not None
        else None,
        "aborted_at_close": aborted,
    }


async def warm_up(target: Target) -> None:
    """A few hundred handshakes and a second of echo, unmeasured: node compiles its hot paths, every proxy
    allocates its steady-state buffers, the kernel's socket caches fill."""
    for _ in range(WARMUP_HANDSHAKES // 20):
        clients = await open_many(target, Client, 20, 20)
        await close_all(clients)
    load = EchoLoad(1, None)
    payload = os.urandom(ECHO_SIZE)

    def factory(request: bytes, key: bytes) -> EchoClient:
        return EchoClient(request, key, load, payload, True)

    echo_clients = await open_many(target, factory, ECHO_CONNECTIONS, CONNECT_CONCURRENCY)
    try:
        for client in echo_clients:
            client.send_one()
        await asyncio.sleep(1.0)
        load.stop()
        async with asyncio.timeout(STEP_TIMEOUT):
            await load.drained
        check_clients(target, echo_clients)
    finally:
        await close_all(echo_clients)


async def run_target(bench: Bench, target: Target) -> dict[str, Any]:
    """Every measurement for one target in one round; a proxy is started before and stopped after."""
    args = bench.args
    result: dict[str, Any] = {}
    peer = target.peer
    try:
        if peer is not None:
            peer.start(bench.pinned["proxy"] if bench.pinned else None)
            await wait_ready(target)
            peer.tree = process_tree(peer.pid)
            result["pids"] = peer.tree
            if target.name == "wsgate":
                result["uvloop"] = maps_library(peer.pid, "uvloop/loop")
        await warm_up(target)
        wanted = args.scenarios
        if peer is not None and "idle" in wanted:
            result["idle"] = await measure_idle(bench, target)
        if "echo" in wanted:
            result["echo"] = await measure_echo(
                bench, target, connections=ECHO_CONNECTIONS, size=ECHO_SIZE, window=1, rate=None
            )
        if "paced" in wanted:
            result["paced"] = await measure_echo(
                bench, target, connections=ECHO_CONNECTIONS, size=ECHO_SIZE, window=1, rate=args.paced_rate
            )
        if "bulk" in wanted:
            result["bulk"] = await measure_echo(
                bench, target, connections=BULK_CONNECTIONS, size=BULK_SIZE, window=BULK_WINDOW, rate=None
            )
        if "stream" in wanted:
            result["stream"] = await measure_stream(
                bench, target, connections=BULK_CONNECTIONS, size=BULK_SIZE
            )
        if "handshake_seq" in wanted:
            result["handshake_seq"] = await measure_handshakes(bench, target, 1)
        if "handshake_conc" in wanted:
            result["handshake_conc"] = await measure_handshakes(bench, target, HANDSHAKE_CONCURRENCY)
    except BaseException:
        if peer is not None:
            print(f"--- {target.label} log (last lines) ---\n{peer.log_tail()}", file=sys.stderr)
        raise
    finally:
        if peer is not None:
            peer.stop()
    return result


# --- the processes ---------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """proc(5) field 22, the process's start time in clock ticks: tells a process from a later one that was
    given the same pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


class Peer:
    """A process this benchmark starts (the echo server or a proxy), with its log file. Only it and the
    processes it forked (``tree``: nginx's worker) are ever signalled, and only while they are still the
    processes that were started."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.tree: list[int] = []
        self._starts: dict[int, int | None] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, cpus: list[int] | None, stdin: int = subprocess.DEVNULL) -> None:
        """Start it, pinned to ``cpus`` from the first instruction on (threads and forked workers inherit)."""
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin,  # safe: this process starts no threads
            )
        self.tree = [self.process.pid]

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        tree = [(pid, start_time(pid)) for pid in process_tree(process.pid)]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid, started in tree[1:]:  # a worker that outlived its master, and is still that worker
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def wait_ready(target: Target) -> None:
    """Wait until a WebSocket handshake through ``target`` succeeds, the token injected by the proxy (the
    client sends none): the echo server answers 401 otherwise, and that fails the run at once."""
    assert target.peer is not None
    deadline = time.monotonic() + STEP_TIMEOUT
    last: str = "no answer"
    while time.monotonic() < deadline:
        target.peer.check_alive()
        try:
            async with asyncio.timeout(2.0):
                client = await connect(target, Client)
        except (OSError, TimeoutError) as exc:
            last = exc.__class__.__name__
            await asyncio.sleep(0.05)
            continue
        except BenchError as exc:
            raise BenchError(f"{target.label} is up but the handshake through it failed: {exc}") from None
        await close_all([client])
        return
    raise BenchError(
        f"{target.label} did not accept a WebSocket handshake within {STEP_TIMEOUT:.0f}s ({last})"
    )


async def wait_listening(peer: Peer, ports: list[int]) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    for port in ports:
        while True:
            peer.check_alive()
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{peer.name} is not listening on port {port}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wsgate_command() -> list[str]:
    script = Path(sys.executable).with_name("wsgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsgate"]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it holds the secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


WSGATE_CONFIG = """\
[gateway]
listen = "{host}:{port}"
public_origins = ["{origin}"]
limits = {{ max_connections = {max_connections} }}

[[gateway.routes]]
path = "{path}"
upstream = "ws://{host}:{upstream_port}{path}"
websocket = true
change_origin = true
headers = {{ token = "${{WS_TOKEN}}" }}
"""


def make_peer(
    name: str,
    workdir: Path,
    port: int,
    upstream_port: int,
    token: str,
    connections: int,
    wsgate_src: Path | None = None,
) -> Peer:
    """The proxy ``name`` listening on ``port`` in front of the echo server's ``upstream_port``; wsgate from
    ``wsgate_src`` when given (PYTHONPATH comes before the editable install)."""
    env = dict(os.environ, WS_TOKEN=token)
    if name == "wsgate" and wsgate_src is not None:
        env["PYTHONPATH"] = str(wsgate_src)
    log = workdir / f"{name}.log"
    if name == "nginx":
        prefix = workdir / "nginx"
        prefix.mkdir(mode=0o700)
        values = {
            "@PREFIX@": str(prefix),
            "@LISTEN@": f"{HOST}:{port}",
            "@UPSTREAM@": f"{HOST}:{upstream_port}",
            "@WS_TOKEN@": token,
            "@WORKER_CONNECTIONS@": str(2 * connections + FD_MARGIN),
            "@NOFILE@": str(2 * connections + 2 * FD_MARGIN),
        }
        config = (PEERS / "nginx.conf.template").read_text()
        for placeholder, value in values.items():
            config = config.replace(placeholder, value)
        write_private(prefix / "nginx.conf", config)
        binary = nginx_binary()
        assert binary is not None
        command = [
            binary,
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(prefix / "error.log"),
        ]
        return Peer("nginx", command, env, log)
    if name == "hpm":
        command = ["node", str(PEERS / "hpm_proxy.js"), str(port), f"http://{HOST}:{upstream_port}"]
        return Peer("express+HPM", command, env, log)
    if name == "floor":
        command = [sys.executable, str(PEERS / "floor_relay.py"), str(port), str(upstream_port)]
        return Peer(LABELS[name], command, env, log)
    if name == "wsgate":
        config_path = workdir / "gateway.toml"
        config_path.write_text(
            WSGATE_CONFIG.format(
                host=HOST,
                port=port,
                origin=ORIGIN,
                path=PATH,
                upstream_port=upstream_port,
                max_connections=connections + FD_MARGIN,
            )
        )
        return Peer("wsgate", [*wsgate_command(), "gateway", "--config", str(config_path)], env, log)
    raise ValueError(name)


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# --- running and reporting ---------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"RLIMIT_NOFILE hard limit is {hard}, the benchmark needs {needed} file descriptors per process: "
            f"raise it (e.g. `ulimit -Hn {needed}` as root, or LimitNOFILE= in systemd) or use fewer "
            f"--idle-connections"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard != resource.RLIM_INFINITY else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # inherited by every process started
        soft = target
    return int(soft)


def pin_cpus(enabled: bool) -> dict[str, list[int]] | None:
    """The first CPU for the proxy, the others for this process and the echo server (which inherits our
    affinity), so that the load cannot take the proxy's CPU time. Needs at least two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, cpus[1:])
    return {"proxy": cpus[:1], "load": cpus[1:]}


def version_of(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def npm_version(package: str) -> str:
    try:
        return str(json.loads((PEERS / "node_modules" / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def machine(wsgate_src: Path | None) -> dict[str, Any]:
    nginx = nginx_binary()
    return {
        "wsgate": source_version(wsgate_src or Path(__file__).resolve().parent.parent / "src"),
        **machine_description(),
        "nginx": version_of([nginx, "-v"]) if nginx else "not installed",
        "node": version_of(["node", "--version"]),
        "express": npm_version("express"),
        "http-proxy-middleware": npm_version("http-proxy-middleware"),
        "http-proxy": npm_version("http-proxy"),
        "ws": npm_version("ws"),
    }


def check_prerequisites(targets: Sequence[str], echo: str) -> None:
    missing = []
    if "nginx" in targets and nginx_binary() is None:
        missing.append("nginx")
    if ("hpm" in targets or echo == "node") and shutil.which("node") is None:
        missing.append("node")
    for package in ("express", "http-proxy-middleware") if "hpm" in targets else ():
        if npm_version(package) == "not installed":
            missing.append(f"npm package {package}")
    if echo == "node" and npm_version("ws") == "not installed":
        missing.append("npm package ws")
    if missing:
        raise BenchError(f"missing: {', '.join(missing)}; run benchmarks/setup-peers first")


SCENARIOS = ("echo", "paced", "bulk", "stream", "handshake_seq", "handshake_conc")


def progress(result: dict[str, Any]) -> str:
    """One turn's headline figures, for the line printed after it."""
    parts = []
    if "echo" in result:
        parts.append(f"{result['echo']['round_trips_per_s']:8,.0f} rt/s")
    streams = [f"{result[s]['mb_per_s']:,.0f}" for s in ("bulk", "stream") if s in result]
    if streams:
        parts.append(f"{'/'.join(streams):>12} MB/s")
    if "handshake_conc" in result:
        parts.append(f"{result['handshake_conc']['handshakes_per_s']:6,.0f} hs/s")
    return "  ".join(parts)


# The figures of the table: (key, label, unit, scenario, field, format). The value of a cell is the median of
# the rounds; its min–max follows on the line below.
METRICS: list[tuple[str, str, str, str, tuple[str, ...], str]] = [
    ("echo_rps", "echo round trips/s (50 conns, 32 B)", "/s", "echo", ("round_trips_per_s",), "{:,.0f}"),
    ("echo_p50", "  latency p50", "ms", "echo", ("latency_ms", "p50"), "{:.3f}"),
    ("echo_p99", "  latency p99", "ms", "echo", ("latency_ms", "p99"), "{:.3f}"),
    ("echo_cpu", "  proxy CPU per relayed message", "µs", "echo", ("proxy_cpu_us_per_message",), "{:.2f}"),
    ("echo_user", "    of which user space", "µs", "echo", ("proxy_user_us_per_message",), "{:.2f}"),
    ("paced_rps", "paced round trips/s (50 conns, 32 B)", "/s", "paced", ("round_trips_per_s",), "{:,.0f}"),
    ("paced_p50", "  latency p50", "ms", "paced", ("latency_ms", "p50"), "{:.3f}"),
    ("paced_p99", "  latency p99", "ms", "paced", ("latency_ms", "p99"), "{:.3f}"),
    ("paced_cpu", "  proxy CPU per relayed message", "µs", "paced", ("proxy_cpu_us_per_message",), "{:.2f}"),
    ("paced_user", "    of which user space", "µs", "paced", ("proxy_user_us_per_message",), "{:.2f}"),
    ("bulk_mbps", "MB/s echoed (64 KiB messages)", "MB/s", "bulk", ("mb_per_s",), "{:,.0f}"),
    ("bulk_cpu", "  proxy CPU per MB relayed", "ms", "bulk", ("proxy_cpu_ms_per_mb",), "{:.3f}"),
    ("stream_mbps", "MB/s streamed down (64 KiB messages)", "MB/s", "stream", ("mb_per_s",), "{:,.0f}"),
    ("stream_cpu", "  proxy CPU per MB relayed", "ms", "stream", ("proxy_cpu_ms_per_mb",), "{:.3f}"),
    ("hs_seq", "handshakes/s, sequential", "/s", "handshake_seq", ("handshakes_per_s",), "{:,.0f}"),
    (
        "hs_seq_cpu",
        "  proxy CPU per handshake",
        "µs",
        "handshake_seq",
        ("proxy_cpu_us_per_handshake",),
        "{:.0f}",
    ),
    ("hs_conc", "handshakes/s, 20 concurrent", "/s", "handshake_conc", ("handshakes_per_s",), "{:,.0f}"),
    (
        "hs_conc_cpu",
        "  proxy CPU per handshake",
        "µs",
        "handshake_conc",
        ("proxy_cpu_us_per_handshake",),
        "{:.0f}",
    ),
    (
        "hs_conc_user",
        "    of which user space",
        "µs",
        "handshake_conc",
        ("proxy_user_us_per_handshake",),
        "{:.0f}",
    ),
    ("idle_kib", "memory per idle tunnel (RSS)", "KiB", "idle", ("rss_per_tunnel_bytes",), "{:.1f}"),
]


def metric_values(rounds: list[dict[str, Any]], scenario: str, path: tuple[str, ...]) -> list[float]:
    values = []
    for result in rounds:
        value: Any = result.get(scenario)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return values


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float] | None]]:
    summary: dict[str, dict[str, dict[str, float] | None]] = {}
    for key, _, _, scenario, path, _ in METRICS:
        summary[key] = {}
        for target, rounds in results.items():
            values = metric_values(rounds, scenario, path)
            if key == "idle_kib":
                values = [v / 1024 for v in values]
            disturbed = sum(
                1 for result in rounds if (result.get(scenario) or {}).get("verdict") == "disturbed"
            )
            summary[key][target] = (
                {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                    "disturbed": disturbed,
                }
                if values
                else None
            )
    return summary


def goals(summary: dict[str, dict[str, dict[str, float] | None]]) -> list[dict[str, Any]]:
    """Issue 3's targets for wsgate, judged on the medians."""

    def median(key: str, target: str) -> float | None:
        cell = summary.get(key, {}).get(target)
        return cell["median"] if cell else None

    checks: list[dict[str, Any]] = []

    def ratio_check(label: str, key: str, other: str, limit: float, at_most: bool) -> None:
        ours, theirs = median(key, "wsgate"), median(key, other)
        if ours is None or theirs is None or theirs == 0:
            return
        ratio = ours / theirs
        met = ratio <= limit if at_most else ratio >= limit
        checks.append(
            {"goal": label, "key": key, "against": other, "ratio": ratio, "limit": limit, "met": met}
        )

    for key, what in (("echo_cpu", "full speed"), ("paced_cpu", "paced")):
        ratio_check(f"CPU per relayed message ({what}) ≤ 0.75× HPM's", key, "hpm", 0.75, True)
        ratio_check(f"CPU per relayed message ({what}) ≤ 1.3× nginx's", key, "nginx", 1.3, True)
    ratio_check("handshakes/s, sequential ≥ 1.5× HPM's", "hs_seq", "hpm", 1.5, False)
    ratio_check("handshakes/s, 20 concurrent ≥ 1.5× HPM's", "hs_conc", "hpm", 1.5, False)
    ratio_check("MB/s streamed ≥ 1.5× HPM's", "stream_mbps", "hpm", 1.5, False)
    ratio_check("MB/s echoed ≥ 1.5× HPM's", "bulk_mbps", "hpm", 1.5, False)
    idle = median("idle_kib", "wsgate")
    if idle is not None:
        checks.append(
            {"goal": "≤ 4 KiB per idle tunnel", "key": "idle_kib", "value": idle, "met": idle <= 4.0}
        )
    return checks


def render(
    args: argparse.Namespace,
    info: dict[str, Any],
    pinned: dict[str, list[int]] | None,
    results: dict[str, list[dict[str, Any]]],
    summary: dict[str, dict[str, dict[str, float] | None]],
    checks: list[dict[str, Any]],
) -> str:
    targets = list(results)
    width = 17

    def row(label: str, cells: Iterable[str]) -> str:
        return f"  {label:<44}" + "".join(f"{cell:>{width}}" for cell in cells)

    where = (
        f"proxy pinned to CPU {pinned['proxy'][0]}, clients + echo server on CPUs {pinned['load']}"
        if pinned
        else "not pinned"
    )
    lines = [
        f"wsgate gateway benchmark: {args.rounds} rounds, targets in alternation ({', '.join(targets)}), "
        f"over loopback ({HOST})",
        f"  upstream  {'Python raw-asyncio echo on uvloop' if args.echo == 'python' else 'Node ws echo'}, "
        f"checks the injected token header; {where}",
        "  clients   "
        + (
            "C (benchmarks/peers/ws_gateway_load.c, one epoll loop) for echo, bulk, stream and handshakes; "
            "Python for paced and idle"
            if args.client == "c"
            else "Python (raw asyncio protocols on uvloop) for every window"
        ),
        f"  wsgate    {info['wsgate']}",
        f"  machine   {info['nproc']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, "
        f"Python {info['python']}, uvloop {info['uvloop']}, aiohttp {info['aiohttp']}",
        f"  peers     {info['nginx']}; node {info['node']}, express {info['express']}, "
        f"http-proxy-middleware {info['http-proxy-middleware']} (http-proxy {info['http-proxy']})",
        f"  windows   {args.seconds:g} s per echo/bulk figure, {args.handshake_seconds:g} s per handshake "
        f"figure, {args.idle_connections if 'idle' in args.scenarios else 'no'} idle tunnels; "
        "median of the rounds, min–max below it",
        "",
        row("", [LABELS[t] for t in targets]),
    ]
    for key, label, unit, _, _, fmt in METRICS:
        cells = summary[key]
        if all(cells.get(t) is None for t in targets):
            continue
        lines.append(
            row(
                f"{label} ({unit})",
                [
                    fmt.format(c["median"]) + ("*" if c["disturbed"] else " ")
                    if (c := cells.get(t))
                    else "— "
                    for t in targets
                ],
            )
        )
        lines.append(
            row(
                "",
                [
                    f"{fmt.format(c['min'])}–{fmt.format(c['max'])} " if (c := cells.get(t)) else ""
                    for t in targets
                ],
            )
        )
    lines += [
        "",
        "who limited each window, per round: proxy busy / clients+echo busy / rest of the machine (CPUs)",
    ]
    disturbed = 0
    for target in targets:
        for scenario in SCENARIOS:
            parts = []
            for result in results[target]:
                window = result.get(scenario)
                if not window:
                    continue
                busy = f"{window['proxy_busy']:4.0%}/" if window.get("proxy_busy") is not None else "   -/"
                parts.append(
                    f"{busy}{window['load_busy']:4.0%}/{window['others_cpus']:4.2f} {window['verdict']:<13}"
                )
                disturbed += window["verdict"] == "disturbed"
            if parts:
                lines.append(f"  {LABELS[target]:<12} {scenario:<15}" + "  ".join(parts))
    if disturbed:
        lines.append(
            f"  WARNING: {disturbed} window(s) disturbed by other processes (≥ {DISTURBED_CPUS} CPUs), "
            "marked * in the table: their rates are suspect; run again on an idle machine"
        )
    if checks:
        lines += ["", "issue 3 targets for wsgate (on the medians):"]
        for check in checks:
            figure = f"{check['ratio']:.2f}×" if "ratio" in check else f"{check['value']:.1f} KiB"
            lines.append(f"  {check['goal']:<52} {figure:>10}   {'met' if check['met'] else 'NOT met'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B C D (default: 3)")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}, in alternation order (default: "
        f"{','.join(DEFAULT_TARGETS)}; floor is a bare uvloop relay without any check, the least a Python "
        "proxy can cost)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="echo and bulk windows (default: 3)")
    parser.add_argument("--handshake-seconds", type=float, default=2.0, help="handshake windows (default: 2)")
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=IDLE_CONNECTIONS,
        help=f"idle tunnels for the memory figure, 0 to skip (default: {IDLE_CONNECTIONS})",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=PACED_RATE,
        help=f"round trips/s of the paced echo, 0 to skip (default: {PACED_RATE})",
    )
    parser.add_argument(
        "--echo",
        choices=("python", "node"),
        default="python",
        help="upstream echo server: raw asyncio on uvloop (default) or Node ws (benchmarks/peers/ws_echo.js)",
    )
    parser.add_argument(
        "--client",
        choices=("c", "python"),
        default="c",
        help="the clients of the echo, bulk, stream and handshake windows: "
        "benchmarks/peers/ws_gateway_load.c on epoll (compiled on first use into build/bench/), or the "
        "Python protocols on uvloop (default: %(default)s). The paced echo and the idle tunnels always use "
        "the Python clients: pacing needs a schedule, and the idle figure is the proxy's memory only",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not give the proxy a CPU of its own (by default it gets the first, the load the others)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each target's turn, wait up to S seconds for other processes to leave the machine "
        "idle (default: 0); the wait counts towards the 570 s limit of the run",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="measure a turn again, up to N times, when other processes disturbed one of its windows and "
        "the time limit allows (default: 1); the discarded turns are kept in the JSON",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(("idle", *SCENARIOS)),
        help=f"comma-separated subset of idle,{','.join(SCENARIOS)} (default: all; --idle-connections 0 "
        "and --paced-rate 0 leave out idle and paced too)",
    )
    parser.add_argument(
        "--wsgate-src",
        type=Path,
        metavar="DIR",
        help="run wsgate from the package in DIR (e.g. the src/ of a `git worktree` of another commit) "
        "instead of the installed one: before/after figures for a change, each against the same peers",
    )
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    parser.add_argument("--serve-echo", metavar="PORTS", help=argparse.SUPPRESS)  # the echo server process
    args = parser.parse_args(argv)
    if args.serve_echo:
        return args
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if (
        not args.targets
        or any(t not in TARGETS for t in args.targets)
        or len(set(args.targets)) < len(args.targets)
    ):
        parser.error(f"--targets: a comma-separated subset of {','.join(TARGETS)}")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 0.5 <= args.seconds <= 30 or not 0.5 <= args.handshake_seconds <= 30:
        parser.error("--seconds and --handshake-seconds must be between 0.5 and 30")
    if not 0 <= args.idle_connections <= 20_000:
        parser.error("--idle-connections must be between 0 and 20000")
    if not 0 <= args.wait_quiet <= 300 or not 0 <= args.retries <= 5:
        parser.error("--wait-quiet must be between 0 and 300 and --retries between 0 and 5")
    if not 0 <= args.paced_rate <= 100_000:
        parser.error("--paced-rate must be between 0 and 100000")
    choices = ("idle", *SCENARIOS)
    scenarios = {name.strip() for name in args.scenarios.split(",") if name.strip()}
    if not scenarios or not scenarios <= set(choices):
        parser.error(f"--scenarios: a comma-separated subset of {','.join(choices)}")
    if not args.idle_connections:
        scenarios.discard("idle")
    if not args.paced_rate:
        scenarios.discard("paced")
    args.scenarios = scenarios
    if args.wsgate_src is not None:
        args.wsgate_src = args.wsgate_src.resolve()
        if not (args.wsgate_src / "wsgate" / "__init__.py").is_file():
            parser.error(f"--wsgate-src {args.wsgate_src} holds no wsgate package")
    return args


@dataclass
class Run:
    """Everything started by one run, so that it can all be stopped."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    echo: Peer | None = None
    targets: list[Target] = field(default_factory=list)

    def stop(self) -> None:
        for target in self.targets:
            if target.peer is not None:
                target.peer.stop()
        if self.echo is not None:
            self.echo.stop()


async def measure(args: argparse.Namespace, run: Run, pinned: dict[str, list[int]] | None) -> dict[str, Any]:
    assert run.echo is not None
    await wait_listening(run.echo, [t.upstream_port for t in run.targets])
    run.echo.tree = process_tree(run.echo.pid)
    bench = Bench(args, pinned, run.echo)

    # The echo server really checks the token: without it, and with a wrong one, the answer is 401.
    for token in (None, run.token[:-1] + ("A" if run.token[-1] != "A" else "B")):
        probe = Target("direct", run.targets[0].upstream_port, run.targets[0].upstream_port, token)
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                client = await connect(probe, Client)
        except BenchError as exc:
            if "401" not in str(exc):
                raise
        else:
            await close_all([client])
            raise BenchError("the echo server accepted a handshake without the right token")

    results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in run.targets}
    discarded: dict[str, list[dict[str, Any]]] = {t.name: [] for t in run.targets}
    started = time.monotonic()
    turns = args.rounds * len(run.targets)
    durations: list[float] = []
    for round_index in range(args.rounds):
        for target in run.targets:
            for attempt in range(args.retries + 1):
                others = await wait_quiet(bench, args.wait_quiet)
                step = time.monotonic()
                result = await run_target(bench, target)
                durations.append(time.monotonic() - step)
                result.update(round=round_index + 1, attempt=attempt + 1, others_cpus_before=others)
                disturbed = [s for s in SCENARIOS if s in result and result[s]["verdict"] == "disturbed"]
                print(
                    f"round {round_index + 1}/{args.rounds} {target.label:<12} {durations[-1]:5.1f} s  "
                    + progress(result)
                    + (f"  disturbed: {', '.join(disturbed)}" if disturbed else ""),
                    file=sys.stderr,
                    flush=True,
                )
                # Measure a disturbed turn again, once the machine is quiet, if the time limit allows the
                # turns still to come plus this one again.
                turns_left = turns - sum(map(len, results.values())) - 1
                spare = RUN_TIMEOUT - (time.monotonic() - started) - 30.0
                needed = statistics.mean(durations) * (turns_left + 1) + args.wait_quiet
                if not disturbed or attempt == args.retries or spare < needed:
                    break
                discarded[target.name].append(result)
            results[target.name].append(result)
    return {"results": results, "discarded": discarded, "elapsed_s": time.monotonic() - started}


async def wait_quiet(bench: Bench, limit: float) -> float:
    """CPUs the rest of the machine used over one second while this benchmark was idle, measured again each
    second for up to ``limit`` seconds until it falls below DISTURBED_CPUS."""
    deadline = time.monotonic() + limit
    nobody = Target("direct", 0, 0)
    while True:
        before = bench.usage(nobody)
        await asyncio.sleep(1.0)
        others = bench.window(nobody, before, bench.usage(nobody))["others_cpus"]
        if others < DISTURBED_CPUS or time.monotonic() >= deadline:
            return float(others)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo:
        return serve_echo([int(p) for p in args.serve_echo.split(",")])
    try:
        check_prerequisites(args.targets, args.echo)
        args.native = build_native_load() if args.client == "c" else None
        fd_limit = raise_fd_limit(2 * args.idle_connections + 2 * FD_MARGIN)
    except BenchError as exc:
        print(f"gateway_bench: {exc}", file=sys.stderr)
        return 2
    info = machine(args.wsgate_src)
    pinned = pin_cpus(args.pin)
    if pinned is None:
        print(
            "gateway_bench: not pinned (one CPU, or --no-pin): the load competes with the proxy",
            file=sys.stderr,
        )

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the finally below stops every process this run started

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="wsgate-gateway-bench-") as tmp:
        run = Run(Path(tmp))
        connections = args.idle_connections + FD_MARGIN
        for name in args.targets:
            port, upstream_port = free_port(), free_port()
            if name == "direct":
                run.targets.append(Target(name, upstream_port, upstream_port, client_token=run.token))
            else:
                peer = make_peer(
                    name, run.workdir, port, upstream_port, run.token, connections, args.wsgate_src
                )
                run.targets.append(Target(name, port, upstream_port, peer=peer))
        ports = ",".join(str(t.upstream_port) for t in run.targets)
        env = dict(os.environ, WS_TOKEN=run.token)
        if args.echo == "python":
            command = [sys.executable, str(Path(__file__).resolve()), "--serve-echo", ports]
        else:
            command = ["node", str(PEERS / "ws_echo.js"), *ports.split(",")]
        run.echo = Peer("echo server", command, env, run.workdir / "echo.log")
        try:
            run.echo.start(None, stdin=subprocess.PIPE)  # inherits our (load) CPUs; ends when the pipe does

            async def body() -> dict[str, Any]:
                async with asyncio.timeout(RUN_TIMEOUT):
                    return await measure(args, run, pinned)

            outcome = run_loop(body())
        except (BenchError, TimeoutError, OSError) as exc:
            text = str(exc) or f"the run took longer than {RUN_TIMEOUT:.0f}s"
            print(f"gateway_bench: {exc.__class__.__name__}: {text}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("gateway_bench: interrupted", file=sys.stderr)
            return 1
        finally:
            run.stop()

    results = outcome["results"]
    summary = summarise(results)
    checks = goals(summary)
    print(render(args, info, pinned, results, summary, checks))
    report = {
        "benchmark": "gateway_bench",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "rounds": args.rounds,
        "targets": args.targets,
        "echo_server": args.echo,
        "client": args.client,
        "window_s": args.seconds,
        "handshake_window_s": args.handshake_seconds,
        "idle_connections": args.idle_connections,
        "paced_rate": args.paced_rate,
        "scenarios": sorted(args.scenarios),
        "wsgate_src": str(args.wsgate_src) if args.wsgate_src else None,
        "fd_limit": fd_limit,
        "cpu_pinning": pinned,
        "machine": info,
        "elapsed_s": outcome["elapsed_s"],
        "discarded_as_disturbed": outcome["discarded"],
        "summary": summary,
        "issue3_targets": checks,
        "results": results,
    }
    path = args.json or RESULTS_DIR / f"gateway_bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
