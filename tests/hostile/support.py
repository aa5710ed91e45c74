"""The harness for hostile-input tests: wsgate hub and gateway as real processes (so memory and file
descriptors can be read from /proc), upstreams for the gateway in a background thread, raw frames, and the
"bystander" — an ordinary client that must keep being served while an attacker works."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ORIGIN = "https://kiosk.example.org"
WS_TOKEN = "hostile-ws-token-0123456789abcdef"
PUBLISH_TOKEN = "hostile-publish-token-0123456789abcdef"

# The limits both processes run with (see hub_config / gateway_config): short, so that time-based limits are
# reached within a test's budget.
HANDSHAKE_TIMEOUT = 2.0
MAX_MESSAGE = 64 * 1024
SEND_QUEUE = 256 * 1024

# Generous bound on any single awaited event on a loaded 2-core machine.
TIMEOUT = 10.0


# ----------------------------------------------------------------------------------------------------------
# Processes.


def _status_kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@dataclass
class ServerProcess:
    """A `wsgate hub` or `wsgate gateway` subprocess, its port and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        return _status_kib(self.pid, "VmRSS")

    def peak_kib(self) -> int:
        """The resident-set high-water mark since start or since :meth:`reset_peak`."""
        return _status_kib(self.pid, "VmHWM")

    def reset_peak(self) -> None:
        # proc(5): writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current RSS.
        with open(f"/proc/{self.pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, since: int = 0) -> str:
        """The process's log (stderr), from byte offset ``since`` (a :meth:`log_size` taken earlier)."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit status (killed: -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_process(name: str, config: Path, env: dict[str, str], log_path: Path) -> ServerProcess:
    """Run ``wsgate <name> --config <config>`` and wait for its "listening on" log line."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsgate", name, "--config", str(config)],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    server = ServerProcess(name, proc, log_path)
    pattern = re.compile(rf"{name} listening on http://127\.0\.0\.1:(\d+)")
    deadline = time.monotonic() + 3 * TIMEOUT
    while (match := pattern.search(server.log())) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"wsgate {name} did not start:\n{server.log()}")
        time.sleep(0.02)  # polling a log file: there is no event to wait on
    server.port = int(match[1])
    return server


@dataclass
class Memory:
    """Resident memory of a server process around one hostile action, in KiB."""

    label: str
    baseline_kib: int
    peak_kib: int = 0

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.baseline_kib

    def __str__(self) -> str:
        return (
            f"{self.label}: RSS {self.baseline_kib / 1024:.1f} MiB before, "
            f"peak {self.peak_kib / 1024:.1f} MiB (+{self.growth_kib / 1024:.1f} MiB)"
        )


@contextlib.contextmanager
def measure(server: ServerProcess, label: str) -> Iterator[Memory]:
    """Record the peak RSS of ``server`` during the block (printed: run pytest with -s to see them)."""
    server.reset_peak()
    memory = Memory(f"{server.name} {label}", server.rss_kib())
    yield memory
    memory.peak_kib = server.peak_kib()
    print(f"\n[memory] {memory}")


# ----------------------------------------------------------------------------------------------------------
# Upstreams for the gateway, in a thread of their own so that one gateway process can front them for the
# whole package.


@dataclass
class Upstreams:
    """A permessage-deflate echo server that enforces ``MAX_MESSAGE`` on decompressed messages
    (python-websockets, not our code) and a recorder that keeps every request head it receives and answers
    ``200``."""

    deflate_port: int = 0
    recorder_port: int = 0
    heads: list[bytes] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _servers: list[asyncio.Server | Server] = field(default_factory=list)

    def start(self) -> Upstreams:
        self._thread = threading.Thread(target=self._loop.run_forever, name="upstreams", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(TIMEOUT)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(TIMEOUT)
        self._loop.close()

    async def _start(self) -> None:
        deflate = await serve(
            _echo, "127.0.0.1", 0, compression="deflate", max_size=MAX_MESSAGE, ping_interval=None
        )
        recorder = await asyncio.start_server(self._record, "127.0.0.1", 0, limit=256 * 1024)
        self._servers = [deflate, recorder]
        self.deflate_port = deflate.sockets[0].getsockname()[1]
        self.recorder_port = recorder.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _record(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        self.heads.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def _echo(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in connection:
            await connection.send(message)


# ----------------------------------------------------------------------------------------------------------
# Frames and raw connections.

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def masked(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3 masking, as one big-integer XOR (fast enough for megabytes)."""
    if not payload:
        return b""
    stream = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(payload), "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """A client frame; ``length`` declares a payload length other than ``len(payload)`` (a lie)."""
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        header = struct.pack("!BB", first, mask_bit | declared)
    elif declared < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + masked(payload, key)


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def new_channel(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def raw_exchange(port: int, request: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``request`` while reading the answer; returns what arrived before EOF or a reset.

    The server may answer and close before it has read everything (a 431 after the first 8 KiB of a 1 MiB
    header): the write then fails with a reset, which is expected and ignored.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))

        async def send() -> None:
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, request)

        sending = asyncio.create_task(send())
        received = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while chunk := await loop.sock_recv(sock, 65536):
                    received += chunk
        except ConnectionResetError:
            pass
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        return bytes(received)
    finally:
        sock.close()


async def hub_metric(hub: ServerProcess, sample: str) -> float:
    """The value of one sample (``name{labels}`` as printed) of the hub's /metrics; 0 when absent."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(hub.url + "/metrics", headers={"Connection": "close"}) as response,
    ):
        for line in (await response.text()).splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
    return 0.0


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), f"not an HTTP response: {response[:80]!r}"
    return int(response.split(b" ", 2)[1])


# ----------------------------------------------------------------------------------------------------------
# Targets and the bystander.


@dataclass(frozen=True)
class Target:
    """Where a WebSocket client connects: the hub directly, or the gateway's /ws route in front of it."""

    name: str
    server: ServerProcess
    headers: dict[str, str]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


async def bystander_roundtrip(target: Target, hub: ServerProcess) -> float:
    """Connect through ``target``, subscribe, publish over the hub's HTTP API and receive the message.

    Returns the time from publish to delivery; raises if anything fails within TIMEOUT.
    """
    channel = new_channel("bystander")
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.ws_connect(target.ws_url, headers=target.headers) as ws,
    ):
        await ws.send_json({"type": "subscribe", "channel": channel})
        subscribed = await ws.receive_json(timeout=TIMEOUT)
        assert subscribed["type"] == "subscribed", subscribed
        started = time.monotonic()
        async with http.post(
            hub.url + "/api/publish",
            json={"channel": channel, "data": {"hello": "bystander"}},
            headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"},
        ) as response:
            assert response.status == 200, await response.text()
        message = await ws.receive_json(timeout=TIMEOUT)
        assert message["type"] == "message", message
        assert message["data"] == {"hello": "bystander"}, message
        return time.monotonic() - started
