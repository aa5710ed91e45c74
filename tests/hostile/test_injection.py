"""CR, LF and NUL smuggled into request header values, sent through the gateway on a raw socket to both route
kinds (a WebSocket route and an HTTP route), in front of an upstream that records the raw request heads it
receives: no byte of the client's can start a header line of its own upstream.

Related tests elsewhere: configured header values with CR/LF are refused when the configuration is read
(test_config.py, test_bad_header_secret_*); the sans-I/O request builders refuse CR/LF/NUL values
(test_gateway_upgrade.py, test_gateway_http_proxy.py); request smuggling with CL/TE
(test_gateway_http_proxy.py::test_smuggling_in_the_head_is_refused_and_never_reaches_the_upstream)."""

from __future__ import annotations

import re

import pytest

from tests.hostile.support import ORIGIN, ServerProcess, Upstreams, raw_exchange, status_of

WS_HEAD = (
    b"GET /recorded-ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: " + ORIGIN.encode()
    + b"\r\n"
)  # fmt: skip
HTTP_HEAD = b"GET /api/notes HTTP/1.1\r\nHost: 127.0.0.1\r\n"

# Each puts "X-Injected: 1" after a line break inside one header value; the header is one the route forwards
# (User-Agent and Host on the WebSocket route, which builds its request from an allowlist; any end-to-end
# field on the HTTP route).
HOSTILE_FIELDS = {
    "bare-LF": b"User-Agent: kiosk\nX-Injected: 1\r\n",
    "bare-CR": b"User-Agent: kiosk\rX-Injected: 1\r\n",
    "CR-CR-LF": b"User-Agent: kiosk\r\rX-Injected: 1\r\n",
    "obs-fold": b"User-Agent: kiosk\r\n X-Injected: 1\r\n",
    "obs-fold-tab": b"User-Agent: kiosk\r\n\tX-Injected: 1\r\n",
    "NUL": b"User-Agent: kiosk\x00X-Injected: 1\r\n",
    "LF-in-host": b"X-Note: n\r\nHost2: x\nX-Injected: 1\r\n",
    "LF-in-name": b"X-Note\nX-Injected: 1\r\n",
    "space-before-colon": b"X-Injected : 1\r\n",
    "NEL-U+0085": "User-Agent: kiosk\x85X-Injected: 1\r\n".encode(),
    "LS-U+2028": "User-Agent: kiosk\u2028X-Injected: 1\r\n".encode(),
}


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def assert_clean(head: bytes) -> None:
    """Every line of a head the upstream received is CRLF-terminated, free of bare CR, LF and NUL, and none
    is a field the client tried to inject."""
    for line in _lines(head):
        assert not re.search(rb"[\r\n\x00]", line), line
        assert not line.lower().startswith(b"x-injected"), head
        assert not line.startswith((b" ", b"\t")), head  # no obs-fold continuation either


@pytest.mark.parametrize("route", ["websocket", "http"])
@pytest.mark.parametrize("field", HOSTILE_FIELDS.values(), ids=HOSTILE_FIELDS.keys())
async def test_line_breaks_in_header_values_never_reach_the_upstream(
    gateway_process: ServerProcess, upstreams: Upstreams, route: str, field: bytes
) -> None:
    seen = len(upstreams.heads)
    head = WS_HEAD if route == "websocket" else HTTP_HEAD
    answer = await raw_exchange(gateway_process.port, head + field + b"Connection: close\r\n\r\n")
    status = status_of(answer)
    if b"\xc2" in field or b"\xe2" in field:
        # Unicode line separators are no line break in HTTP/1.1, only obs-text octets: passed as they are.
        assert status in (200, 502), answer[:200]  # 502: the recorder does not speak WebSocket
    else:
        assert status == 400, answer[:200]  # refused by the gateway's parser: nothing forwarded
        assert len(upstreams.heads) == seen
    for received in upstreams.heads[seen:]:
        assert_clean(received)
    assert b"X-Injected" not in answer  # nothing echoed back either
    assert gateway_process.alive()


@pytest.mark.parametrize(
    "target",
    [
        b"/api/x%0d%0aX-Injected:%201",
        b"/api/x?q=%0D%0AX-Injected:%201",
        b"/recorded-ws?a=%0d%0aX-Injected:%201",
    ],
)
async def test_percent_encoded_line_breaks_stay_encoded(
    gateway_process: ServerProcess, upstreams: Upstreams, target: bytes
) -> None:
    """The request-target is passed byte for byte: %0d%0a is never decoded into a line break upstream. (A
    decoded line break in the path matches no route: 404, nothing forwarded.)"""
    seen = len(upstreams.heads)
    head = WS_HEAD if target.startswith(b"/recorded-ws") else HTTP_HEAD
    head = (
        head.replace(b"/recorded-ws", target, 1) if head is WS_HEAD else head.replace(b"/api/notes", target)
    )
    answer = await raw_exchange(gateway_process.port, head + b"Connection: close\r\n\r\n")
    assert status_of(answer) in (200, 404, 502), answer[:200]  # 502: the recorder does not speak WebSocket
    for received in upstreams.heads[seen:]:
        assert_clean(received)
        assert _lines(received)[0] == b"GET " + target + b" HTTP/1.1"
