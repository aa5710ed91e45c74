"""A pub/sub broadcast server on python-websockets: the Python peer of the hub benchmark (``hub_fanout.py``).

It speaks the same minimum of the wsgate hub's protocol as ``ws_broadcast.js`` (see there): bearer-token
handshake (``SUB_TOKEN`` may subscribe, ``PUB_TOKEN`` may also publish, anything else gets 401),
``subscribe`` answered with ``subscribed`` and the channel's last offset, ``publish`` fanned out as a
``message`` with the next offset to every subscriber of the channel, in subscription order. The fan-out is
the library's own ``websockets.asyncio.server.broadcast()``, which writes without waiting for any connection
and frames the message once per connection.

    SUB_TOKEN=... PUB_TOKEN=... python py_broadcast.py PORT

Runs on uvloop when it is installed, as the wsgate hub does. Every other setting is websockets' default
(a keepalive ping every 20 s, as the hub's) except compression, off: the benchmark's clients do not offer it
anyway. Listens on 127.0.0.1 only; prints "listening PORT" once bound; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import sys
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response


class Channel:
    __slots__ = ("offset", "subscribers")

    def __init__(self) -> None:
        self.offset = 0
        # A dict, not a set: it iterates in subscription order, like the other targets' subscriber lists.
        self.subscribers: dict[ServerConnection, None] = {}


def right_of(authorization: str | None, sub_token: bytes, pub_token: bytes) -> str | None:
    """'publish', 'subscribe' or None (refused) for a handshake's Authorization header."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    given = authorization[7:].encode()
    if hmac.compare_digest(given, pub_token):
        return "publish"
    if hmac.compare_digest(given, sub_token):
        return "subscribe"
    return None


class BroadcastServer:
    def __init__(self, sub_token: bytes, pub_token: bytes) -> None:
        self.sub_token = sub_token
        self.pub_token = pub_token
        self.channels: dict[str, Channel] = {}
        self.rights: dict[ServerConnection, str] = {}

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake (401) unless it carries one of the two tokens."""
        right = right_of(request.headers.get("Authorization"), self.sub_token, self.pub_token)
        if right is None:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        self.rights[connection] = right
        return None

    async def handle(self, connection: ServerConnection) -> None:
        joined: list[Channel] = []
        try:
            async for raw in connection:
                if isinstance(raw, bytes):
                    await connection.close(1003, "text only")
                    return
                self.command(connection, joined, json.loads(raw))
        finally:
            for channel in joined:
                channel.subscribers.pop(connection, None)
            self.rights.pop(connection, None)

    def command(self, connection: ServerConnection, joined: list[Channel], command: dict[str, Any]) -> None:
        kind, name = command.get("type"), command.get("channel")
        if kind == "subscribe" and isinstance(name, str):
            channel = self.channels.setdefault(name, Channel())
            answer = {"type": "subscribed", "channel": name, "offset": channel.offset}
            # broadcast() to one connection is websockets' synchronous send: the answer is written before any
            # message of the channel can be, and the offset it names is the one the next message follows.
            broadcast([connection], json.dumps(answer, separators=(",", ":")))
            channel.subscribers[connection] = None
            joined.append(channel)
        elif kind == "publish" and isinstance(name, str) and self.rights.get(connection) == "publish":
            channel = self.channels.setdefault(name, Channel())
            channel.offset += 1
            data = json.dumps(command.get("data"), separators=(",", ":"), ensure_ascii=False)
            head = f'{{"type":"message","channel":{json.dumps(name)},"offset":{channel.offset},"data":'
            text = head + data + "}"
            broadcast(channel.subscribers, text)
        else:
            broadcast([connection], '{"type":"error","code":"bad_request","message":"unknown command"}')


async def main(port: int, sub_token: bytes, pub_token: bytes) -> None:
    server = BroadcastServer(sub_token, pub_token)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        server.handle,
        "127.0.0.1",
        port,
        process_request=server.process_request,
        compression=None,
        backlog=4096,
    ) as listening:
        bound = listening.sockets[0].getsockname()[1]
        print(f"listening {bound}", flush=True)
        await stop


if __name__ == "__main__":
    sub, pub = os.environ.get("SUB_TOKEN", "").encode(), os.environ.get("PUB_TOKEN", "").encode()
    if len(sys.argv) != 2 or not sys.argv[1].isdigit() or not sub or not pub:
        sys.exit("usage: SUB_TOKEN=... PUB_TOKEN=... python py_broadcast.py PORT")
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1]), sub, pub))
    else:
        uvloop.run(main(int(sys.argv[1]), sub, pub))
