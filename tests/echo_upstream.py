"""An independent WebSocket upstream for gateway tests, built on python-websockets (not our code): it requires
the seed's `token:` header, records what each handshake carried, echoes messages, negotiates a subprotocol and
permessage-deflate, and closes with a chosen code on request."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

SUBPROTOCOLS = ["chat.v2", "chat.v1"]


def _select_subprotocol(connection: ServerConnection, offered: Sequence[str]) -> Subprotocol | None:
    # Unlike websockets' default, a client that offers no subprotocol is welcome too.
    for name in SUBPROTOCOLS:
        if name in offered:
            return Subprotocol(name)
    return None


@dataclass
class EchoUpstream:
    token: str | None
    ssl_context: ssl.SSLContext | None = None
    handshakes: list[Headers] = field(default_factory=list)
    """Headers of every handshake that reached the upstream, refused or not."""
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    """(code, reason) the client side sent when it closed, per connection."""
    server: Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/socket"

    async def start(self) -> EchoUpstream:
        self.server = await serve(
            self._echo,
            "127.0.0.1",
            0,
            ssl=self.ssl_context,
            select_subprotocol=_select_subprotocol,
            process_request=self._check_token,
            max_size=None,
            compression="deflate",
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _check_token(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(request.headers)
        if self.token is not None and request.headers.get("token") != self.token:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "token required\n")
        return None

    async def _echo(self, connection: ServerConnection) -> None:
        try:
            async for message in connection:
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await connection.close(int(code), reason)
                    break
                await connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            received = connection.protocol.close_rcvd
            self.closes.append((received.code, received.reason) if received else (None, None))
