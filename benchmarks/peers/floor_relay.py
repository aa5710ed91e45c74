"""The floor: the least a Python WebSocket proxy on uvloop can do (the gateway benchmark's ``floor`` target).

    WS_TOKEN=... python floor_relay.py PORT UPSTREAM_PORT

It reads the client's head up to its blank line, copies only the Sec-WebSocket-Key into a fixed upstream
request that carries the token, passes the upstream's answer back unread, and then relays bytes both ways
with backpressure. No Origin check, no parsing or validation, no header allowlist, no limits, no timeouts,
no logs or metrics: it is *not* a proxy to deploy (it is the seed's hole and worse), only a measure of what
uvloop's transports, the system calls and CPython's per-connection work cost before any proxy logic runs.
Listens on 127.0.0.1 only; prints "listening PORT" once bound; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import uvloop

KEY = re.compile(rb"\r\nsec-websocket-key:[ \t]*([^\r]*)", re.IGNORECASE)
HEAD_END = b"\r\n\r\n"


class Side(asyncio.Protocol):
    """One end of a tunnel; ``other`` is the other end's transport once both exist."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None:
            self.other.close()


class Upstream(Side):
    def __init__(self, client: Client) -> None:
        super().__init__()
        self.other = client.transport

    def data_received(self, data: bytes) -> None:
        assert self.other is not None
        self.other.write(data)  # the 101 head and everything after it, unread


class Client(Side):
    def __init__(self, port: int, token: bytes) -> None:
        super().__init__()
        self.port = port
        self.token = token
        self.head = b""

    def data_received(self, data: bytes) -> None:
        if self.other is not None:
            self.other.write(data)
            return
        self.head += data
        if HEAD_END in self.head:
            found = KEY.search(self.head)
            key = found[1] if found else b""
            request = (
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                b"token: " + self.token + b"\r\n\r\n"
            )
            # Bytes behind the head would be the client's first frames; the benchmark sends none so early.
            asyncio.get_running_loop().create_task(self.connect(request))

    async def connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", self.port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.other = transport
        transport.write(request)


async def main(port: int, upstream_port: int, token: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(upstream_port, token), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or "WS_TOKEN" not in os.environ:
        sys.exit("usage: WS_TOKEN=secret python floor_relay.py PORT UPSTREAM_PORT")
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), os.environ["WS_TOKEN"].encode()))
