"""Request heads read by wsgate itself (wsgate.http_head): strict, and nothing echoed back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.errors import HandshakeError
from wsgate.front import response_bytes
from wsgate.http_head import MAX_FIELDS, MAX_LINE, parse_request_head, request_path

GOOD = (
    b"GET /ws?kiosk=lobby HTTP/1.1\r\nHost: example.org\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nX-Empty:\r\nOrigin:   https://example.org  \r\n\r\n"
)


def test_a_request_head_is_parsed_with_fields_in_order_and_case() -> None:
    head = parse_request_head(GOOD)
    assert (head.method, head.target, head.path, head.version) == ("GET", "/ws?kiosk=lobby", "/ws", "1.1")
    assert head.fields[:2] == (("Host", "example.org"), ("Upgrade", "websocket"))
    assert head.headers["origin"] == "https://example.org"  # surrounding whitespace is not the value
    assert head.headers["X-EMPTY"] == ""
    assert head.size == len(GOOD)


def test_empty_lines_before_the_request_line_are_skipped() -> None:
    head = parse_request_head(b"\r\n\r\n" + GOOD)
    assert head.method == "GET"
    assert head.size == len(GOOD)


def test_latin1_bytes_in_values_map_one_to_one() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n")
    assert head.headers["X-Name"] == "caf\xe9"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n", 400, id="incomplete"),
        pytest.param(b"GET /ws HTTP/2.0\r\n\r\n", 400, id="http2-line"),
        pytest.param(b"GET  /ws HTTP/1.1\r\n\r\n", 400, id="double-space"),
        pytest.param(b"GET /w s HTTP/1.1\r\n\r\n", 400, id="space-in-target"),
        pytest.param(b"G(T /ws HTTP/1.1\r\n\r\n", 400, id="method-not-a-token"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost : x\r\n\r\n", 400, id="space-before-colon"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, id="obs-fold"),
        pytest.param(b"GET /ws HTTP/1.1\r\nNo-Colon\r\n\r\n", 400, id="no-colon"),
        pytest.param(b"GET /ws HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, id="bare-cr"),
        pytest.param(b"GET /ws HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400, id="bare-lf"),
        pytest.param(b"GET /ws HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400, id="nul"),
        pytest.param(b"GET /ws HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_FIELDS + 1) + b"\r\n", 431, id="too-many"),
        pytest.param(b"GET /ws HTTP/1.1\r\nX: " + b"y" * MAX_LINE + b"\r\n\r\n", 431, id="long-field"),
        pytest.param(b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n", 431, id="long-target"),
    ],
)
def test_malformed_or_oversized_heads_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request_head(raw)
    assert caught.value.status == status


def test_the_refusal_quotes_nothing_of_the_request() -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request_head(b"GET /ws HTTP/1.1\r\nAuthorization : Bearer s3cret\r\n\r\n")
    assert "s3cret" not in caught.value.message
    assert "Authorization" not in caught.value.message


def test_request_path_reads_the_path_of_a_request_line() -> None:
    assert request_path(b"GET /ws/lobby?token=x HTTP/1.1") == "/ws/lobby"
    assert request_path(b"not a request line") is None


@given(st.binary(max_size=600))
def test_any_bytes_either_parse_or_are_refused_with_400_or_431(raw: bytes) -> None:
    status = None
    try:
        head = parse_request_head(raw + b"\r\n\r\n")
    except HandshakeError as exc:
        status = exc.status
    if status is not None:
        assert status in (400, 431)
        return
    for name, value in head.fields:
        assert not set(value) & {"\r", "\n", "\x00"}
        assert name
        assert ":" not in name


def test_a_refusal_has_one_connection_header_that_ends_the_connection() -> None:
    answer = response_bytes(426, "send an upgrade", {"Upgrade": "websocket", "Connection": "Upgrade"})
    head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 426 Upgrade Required"
    connection = [line for line in head if line.lower().startswith(b"connection:")]
    assert connection == [b"Connection: Upgrade, close"]
    assert b"Upgrade: websocket" in head
    assert answer.endswith(b"\r\n\r\nsend an upgrade\n")
