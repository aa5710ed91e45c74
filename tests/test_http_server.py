"""The listener shared by hub and gateway: malformed and oversized requests are refused without echoing or
logging their bytes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import TIMEOUT, StartHub

SECRET = "Bearer do-not-echo-0123456789"


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    return response


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + SECRET.encode()
            + b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: " + SECRET.encode() + b"\x01\r\n\r\n", b"400"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + SECRET.encode() + b"x" * 9000 + b"\r\n\r\n",
            b"431",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, SECRET.encode()) for i in range(200))
            + b"\r\n",
            b"431",
        ),
    ],
    ids=["cl-and-te", "control-char", "long-header", "too-many-headers"],
)
async def test_bad_requests_are_refused_without_echo_or_log(
    start_hub: StartHub, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: bytes
) -> None:
    server = await start_hub()
    with caplog.at_level(logging.DEBUG):
        response = await exchange(server.port, request_bytes)
    assert response.split(b" ", 2)[1] == status
    assert b"do-not-echo" not in response
    assert "do-not-echo" not in caplog.text
    # The server is still serving.
    assert (
        await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ).startswith(b"HTTP/1.1 200")
