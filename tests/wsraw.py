"""A bare-bones WebSocket client over a raw socket, for behaviour a polite client library hides: not reading,
not answering pings, trickling bytes."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass


@dataclass
class RawWebSocket:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    head: bytes = b""
    """The server's response head, status line to the blank line."""

    async def send_text(self, text: str) -> None:
        self.writer.write(client_frame(0x1, text.encode()))
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; raises asyncio.IncompleteReadError at EOF."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def read_until_close(self) -> tuple[int | None, list[tuple[int, bytes]]]:
        """Read frames up to and including a close frame; returns its code (None at bare EOF) and the rest."""
        frames: list[tuple[int, bytes]] = []
        while True:
            try:
                opcode, payload = await self.read_frame()
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return None, frames
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None, frames
            frames.append((opcode, payload))

    def close(self) -> None:
        self.writer.close()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3: clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


async def open_raw(
    host: str, port: int, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        # Set before connecting so the advertised TCP window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    # A small StreamReader limit makes asyncio stop reading the socket soon after the test stops reading.
    return await asyncio.open_connection(sock=sock, limit=1024)


async def raw_websocket(
    host: str,
    port: int,
    headers: dict[str, str] | list[tuple[str, str]],
    *,
    path: str = "/ws",
    receive_buffer: int | None = None,
) -> RawWebSocket:
    """Open a WebSocket by hand; ``headers`` may be a list of pairs to send a header more than once."""
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    reader, writer = await open_raw(host, port, receive_buffer=receive_buffer)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        *(f"{name}: {value}" for name, value in pairs),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return RawWebSocket(reader, writer, status, head)
