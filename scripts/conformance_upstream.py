"""The independent echo upstream of ``scripts/conformance``: python-websockets, not wsgate's code.

Every message comes back as it came; permessage-deflate is negotiated when offered. A ``token:`` header,
when sent (the gateway injects one), must equal ``$CONFORMANCE_TOKEN``; connections without one are admitted,
since the Autobahn client, which tests this server directly too, cannot send it.

Usage: ``python scripts/conformance_upstream.py --listen 127.0.0.1:PORT`` (runs until SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from http import HTTPStatus

# python-websockets >= 17 refuses a message of more than 4096 frames (1009 "too many fragments"); Autobahn's
# 9.3.*/9.4.* send 4 MiB in frames as small as 64 bytes (65,536 frames). Read at import: set it first.
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 17))

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

# Autobahn's largest message (9.1.6, 9.2.6) is 16 MiB; a bound above it, rather than none.
MAX_MESSAGE = 32 * 1024 * 1024


def _check_token(connection: ServerConnection, request: Request) -> Response | None:
    # Direct connections (wstest cannot send headers) come without one; the gateway's must be right.
    expected, sent = os.environ.get("CONFORMANCE_TOKEN"), request.headers.get("token")
    if expected is not None and sent is not None and sent != expected:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "token required\n")
    return None


async def _echo(connection: ServerConnection) -> None:
    try:
        async for message in connection:
            await connection.send(message)
    except ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with serve(
        _echo,
        host,
        port,
        process_request=_check_token,
        max_size=MAX_MESSAGE,
        compression="deflate",
    ):
        print(f"echo upstream listening on ws://{host}:{port}/", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(main(host, int(port)))
