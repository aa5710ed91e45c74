"""Request heads read by wsgate itself (wsgate.http_head): strict, and nothing echoed back."""

from __future__ import annotations

import time
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wsgate.errors import HandshakeError
from wsgate.front import response_bytes
from wsgate.gateway.upgrade import MAX_HEAD_SIZE, MAX_HEADERS
from wsgate.http_head import (
    MAX_FIELDS,
    MAX_LINE,
    FieldLimitError,
    parse_field_block,
    parse_field_lines,
    parse_request_head,
    request_path,
)

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


# ----------------------------------------------------------------------------------------------------------
# parse_field_block (one regular-expression pass) gives what parse_field_lines (line by line) gives.

Outcome = tuple[str, object]


def outcome(parse: Callable[..., list[tuple[str, str]]], *args: object, **limits: int) -> Outcome:
    """``("fields", fields)`` or ``(exception type name, message)``."""
    try:
        return ("fields", parse(*args, **limits))
    except ValueError as exc:
        return (type(exc).__name__, str(exc))


def lines_of(block: bytes) -> list[bytes]:
    """The lines of a block in which each line ends in CRLF, as the reference parser takes them."""
    return block.removesuffix(b"\r\n").split(b"\r\n") if block else []


def assert_block_reads_as_its_lines(block: bytes, **limits: int) -> Outcome:
    expected = outcome(parse_field_lines, lines_of(block), **limits)
    assert outcome(parse_field_block, block, **limits) == expected
    return expected


@pytest.mark.parametrize(
    ("block", "kind"),
    [
        pytest.param(b"", "fields", id="no-fields"),
        pytest.param(b"Host: x\r\nUpgrade: websocket\r\n", "fields", id="plain"),
        pytest.param(b"X-Empty:\r\nX-Blank: \t \r\n", "fields", id="empty-values"),
        pytest.param(b"X:  \t a \t b\t \r\n", "fields", id="tabs-and-spaces-around-and-inside"),
        pytest.param(b"X: caf\xe9 \x80\xff\r\n", "fields", id="obs-text"),
        pytest.param(b"X: a:b: c\r\n", "fields", id="colons-in-value"),
        pytest.param(b"!#$%&'*+-.^_`|~09azAZ: v\r\n", "fields", id="every-tchar-kind"),
        pytest.param(b"X: y\r\n" * MAX_FIELDS, "fields", id="max-fields"),
        pytest.param(b"X: " + b"y" * (MAX_LINE - 5) + b"\r\n", "fields", id="block-of-max-line"),
        pytest.param(b"X: " + b"y" * (MAX_LINE - 3) + b"\r\n", "fields", id="line-of-max-line"),
        pytest.param(b"X: y\r\n" * (MAX_FIELDS + 1), "FieldLimitError", id="129-fields"),
        pytest.param(b"X: " + b"y" * 9000 + b"\r\n", "FieldLimitError", id="9000-byte-line"),
        pytest.param(b"X: y\r\n" * 1400 + b"X y\r\n", "FieldLimitError", id="too-many-and-malformed"),
        pytest.param(b"Host: x\r\n folded\r\n", "ValueError", id="obs-fold-space"),
        pytest.param(b"Host: x\r\n\tfolded\r\n", "ValueError", id="obs-fold-tab"),
        pytest.param(b" Host: x\r\n", "ValueError", id="space-first"),
        pytest.param(b"Host : x\r\n", "ValueError", id="space-before-colon"),
        pytest.param(b"Host\t: x\r\n", "ValueError", id="tab-before-colon"),
        pytest.param(b": x\r\n", "ValueError", id="empty-name"),
        pytest.param(b"No-Colon\r\n", "ValueError", id="no-colon"),
        pytest.param(b"Ho(st): x\r\n", "ValueError", id="name-not-a-token"),
        pytest.param(b"H\xe9: x\r\n", "ValueError", id="non-ascii-name"),
        pytest.param(b"X: y\r\n\r\n", "ValueError", id="empty-line"),
        pytest.param(b"X: a\rb\r\n", "ValueError", id="bare-cr"),
        pytest.param(b"X: a\r\r\n", "ValueError", id="cr-before-crlf"),
        pytest.param(b"X: a\nY: b\r\n", "ValueError", id="bare-lf"),
        pytest.param(b"X: a\x00b\r\n", "ValueError", id="nul"),
        pytest.param(b"X: a\x7f\r\n", "ValueError", id="del"),
        pytest.param(b"X: \x0b\r\n", "ValueError", id="vertical-tab"),
        pytest.param(b"X: ok\r\nY: a\x00\r\nZ : b\r\n", "ValueError", id="first-fault-named"),
        pytest.param(b"X: no final crlf", "fields", id="unterminated-last-line"),
    ],
)
def test_a_field_block_reads_as_its_lines_one_by_one(block: bytes, kind: str) -> None:
    assert assert_block_reads_as_its_lines(block)[0] == kind
    # The response head's limits (wsgate.gateway.upgrade) as well.
    assert_block_reads_as_its_lines(block, max_fields=MAX_HEADERS, max_line=MAX_HEAD_SIZE)


_LINE_PIECES = st.sampled_from(
    [
        b"X",
        b"Host",
        b"a",
        b"-",
        b":",
        b": ",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\x00",
        b"\x7f",
        b"\xe9",
        b"\xff",
        b"(",
    ]
)
_LINES = st.lists(st.lists(_LINE_PIECES, max_size=8).map(b"".join), max_size=12)


@given(lines=_LINES, max_fields=st.integers(0, 13), max_line=st.integers(0, 40))
@example(lines=[b"X:" + b" " * 30 + b"\x00"], max_fields=5, max_line=100)
def test_any_field_block_reads_as_its_lines_one_by_one(
    lines: list[bytes], max_fields: int, max_line: int
) -> None:
    block = b"".join(line + b"\r\n" for line in lines)
    assert_block_reads_as_its_lines(block, max_fields=max_fields, max_line=max_line)
    assert_block_reads_as_its_lines(block)


@given(st.binary(max_size=300))
def test_any_bytes_as_a_field_block_read_as_their_lines(data: bytes) -> None:
    assert_block_reads_as_its_lines(data + b"\r\n")


def test_a_valid_block_takes_the_single_pass_only() -> None:
    block = b"Host: x\r\nX-Empty:\r\nX:  \t caf\xe9 \t\r\n" + b"Y: z\r\n" * (MAX_FIELDS - 3)
    with mock.patch("wsgate.http_head.parse_field_lines", side_effect=AssertionError("slow path")):
        fields = parse_field_block(block)
    assert fields[:3] == [("Host", "x"), ("X-Empty", ""), ("X", "caf\xe9")]
    assert len(fields) == MAX_FIELDS


def test_a_long_whitespace_run_before_a_bad_byte_costs_linear_time() -> None:
    # A complexity guard, not a speed test: linear, this takes ~5 ms; were the whitespace runs given back one
    # space at a time (quadratic: 50,000 spaces took 2 s), it would take ~30 s. The bound sits far from both,
    # so a busy machine cannot fail it and a quadratic pattern cannot pass it.
    block = b"X:" + b" " * 200_000 + b"\x00\r\n"
    started = time.perf_counter()
    with pytest.raises(ValueError, match="control character"):
        parse_field_block(block, max_line=len(block))
    assert time.perf_counter() - started < 5


_HEAD_PIECES = st.sampled_from([b"\r\n", b"GET / HTTP/1.1", b"X: y", b"X y", b" ", b"\r", b"\n", b"Host: h"])


@given(st.lists(_HEAD_PIECES, max_size=12).map(b"".join))
@example(b"")
@example(b"\r\n")
@example(b"GET / HTTP/1.1\r")
@example(b"GET / HTTP/1.1\r\n")
def test_a_request_head_reads_as_its_lines_one_by_one(body: bytes) -> None:
    raw = body + b"\r\n\r\n"
    # The reference: after empty lines, split the head without its CRLF CRLF into lines.
    start = 0
    while raw.startswith(b"\r\n", start):
        start += 2
    request_line, *lines = raw[start:-4].split(b"\r\n")
    try:
        head = parse_request_head(raw)
    except HandshakeError as exc:
        refusal = exc
    else:
        assert head.fields == tuple(parse_field_lines(lines))
        assert head.method == request_line.split(b" ")[0].decode()
        return
    if refusal.message.startswith("the request head has "):
        kind, message = outcome(parse_field_lines, lines)
        assert refusal.message == f"the request head has {message}"
        assert refusal.status == (431 if kind == FieldLimitError.__name__ else 400)
