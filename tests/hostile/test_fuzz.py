"""Property-based fuzzing (hypothesis) of what parses untrusted input and had no such test yet, and of the two
running processes over the wire.

Already fuzzed elsewhere: hub message decoding (test_hub_protocol.py), Origin normalisation and policy
(test_origins.py), token parsing and verification (test_tokens.py), the upstream request builder and
response head parser (test_gateway_upgrade.py), the HTTP proxy's path handling (test_gateway_http_proxy.py),
static path resolution (test_gateway_static.py), durations and sizes round trips (test_units.py).

Added here: the WebSocket handshake check shared by hub and gateway, the credential extraction, ``${…}``
interpolation in the configuration, arbitrary text as a duration or size, arbitrary frame sequences against
the hub process, and mutated upgrade requests against the hub and the gateway processes."""

from __future__ import annotations

import base64
import contextlib
import math
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from tests.hostile.support import (
    OP_CLOSE,
    OP_TEXT,
    ORIGIN,
    WS_TOKEN,
    ServerProcess,
    close_code,
    frame,
)
from wsgate.auth.tokens import credential_from_headers
from wsgate.config import Config, parse_config
from wsgate.errors import ConfigError, CredentialError, HandshakeError
from wsgate.handshake import check_upgrade, header_tokens, single_header
from wsgate.units import parse_duration, parse_size

MARKER = "s3cr3t"  # drawn into values: no error message may repeat it

_E = TypeVar("_E", bound=BaseException)


def _outcome(call: Callable[[], object], errors: type[_E]) -> tuple[object, _E | None]:
    """Run ``call``: (its result, None), or (None, the error) when it raises one of ``errors`` — a property
    test's two legitimate outcomes, each then checked on its own."""
    try:
        return call(), None
    except errors as exc:
        return None, exc


# ----------------------------------------------------------------------------------------------------------
# The handshake check and the credential, on arbitrary header fields.

_latin1 = st.characters(codec="latin-1")
_NAMES = st.sampled_from(
    [
        *("Upgrade", "upgrade", "Connection", "CONNECTION", "Sec-WebSocket-Version", "Sec-WebSocket-Key"),
        *("Origin", "Authorization", "authorization", "token", "Token", "X-Api-Key"),
    ]
) | st.text(alphabet=_latin1, max_size=12)
_VALUES = st.sampled_from(
    [
        *("websocket", "WebSocket", "Upgrade", "keep-alive, Upgrade", "upgrade,", "13", " 13 ", "8", "13, 8"),
        *("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ", "AAAAAAAAAAAAAAAAAAAAAA==", ""),
        *("Bearer abc.def-ghi_~+/==", "bearer  x", "Bearer", "Bearer a b", "Basic Zm9vOmJhcg==", MARKER),
        *(f"Bearer {MARKER}", f" {MARKER} "),
    ]
) | st.text(alphabet=_latin1, max_size=40)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=10).map(CIMultiDict)
_METHODS = st.sampled_from(["GET", "POST", "get", "HEAD", "CONNECT"]) | st.text(max_size=8)


@given(method=_METHODS, headers=_HEADERS)
def test_check_upgrade_answers_400_or_426_and_only_passes_a_valid_upgrade(
    method: str, headers: CIMultiDict[str]
) -> None:
    _, error = _outcome(lambda: check_upgrade(method, headers), HandshakeError)
    if error is not None:
        assert error.status in (400, 426)
        assert MARKER not in error.message
        if error.status == 426:
            assert error.headers  # names what to send instead (Upgrade, or the version)
        return
    # Passed: every RFC 6455 §4.2.1 condition holds, read the way the check reads them (first value).
    assert method == "GET"
    assert "websocket" in header_tokens(headers.get("Upgrade"))
    assert "upgrade" in header_tokens(headers.get("Connection"))
    assert headers["Sec-WebSocket-Version"].strip() == "13"
    assert len(base64.b64decode(headers["Sec-WebSocket-Key"].strip(), validate=True)) == 16


@given(headers=_HEADERS, name=_NAMES)
def test_single_header_returns_the_one_value_or_refuses_repeats(headers: CIMultiDict[str], name: str) -> None:
    values = headers.getall(name, [])
    value, error = _outcome(lambda: single_header(headers, name), HandshakeError)
    if error is not None:
        assert error.status == 400
        assert len(values) > 1
        assert MARKER not in error.message
        return
    assert value == (values[0] if values else None)
    assert len(values) <= 1


_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@given(headers=_HEADERS, auth_header=st.sampled_from(["authorization", "token", "x-api-key"]))
def test_credential_from_headers_is_one_clean_token_or_a_401(
    headers: CIMultiDict[str], auth_header: str
) -> None:
    values = headers.getall(auth_header, [])
    token, error = _outcome(lambda: credential_from_headers(headers, auth_header), CredentialError)
    if error is not None:
        assert (error.status, error.reason) == (401, "malformed")
        assert MARKER not in str(error)
        assert len(values) > 1 or auth_header == "authorization"
        return
    assert token is None or isinstance(token, str)
    assert len(values) <= 1
    if token is None:
        assert not values or (auth_header != "authorization" and not values[0].strip())
        return
    assert token
    if auth_header == "authorization":
        assert _B64TOKEN.fullmatch(token)
        assert values[0].strip(" \t").lower().startswith("bearer ")
    else:
        assert token == values[0].strip() == token.strip()


# ----------------------------------------------------------------------------------------------------------
# ${…} interpolation in the configuration, against a model of DESIGN.md §3.

_ENV = {"WS_TOKEN": "env-secret-one", "EMPTY": "", "NESTED": "${WS_TOKEN}", "DOLLAR": "$$", "_x1": "x"}
_FILES = {"token.txt": "  file-secret-two\n", "empty.txt": "\n", "latin1.bin": "caf\xe9"}


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("interpolation")
    for name, content in _FILES.items():
        (directory / name).write_bytes(content.encode("latin-1"))
    return directory


def _model_expand(text: str, env: dict[str, str], base: Path) -> str:
    """``$$`` → ``$``; ``${NAME}`` → env; ``${file:PATH}`` → the file's UTF-8 text, stripped; once, left to
    right. Raises ValueError where the configuration must be refused."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise ValueError("unterminated")
            body = text[i + 2 : end]
            if body.startswith("file:"):
                path = base / body[5:]
                if not body[5:] or not path.is_file():
                    raise ValueError("no such file")
                out.append(path.read_bytes().decode("utf-8").strip())  # UnicodeDecodeError is a ValueError
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", body) and body in env:
                out.append(env[body])
            else:
                raise ValueError("bad or unset name")
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_PIECES = st.sampled_from(
    [
        *(
            "$",
            "$$",
            "${",
            "}",
            "{",
            "${WS_TOKEN}",
            "${EMPTY}",
            "${NESTED}",
            "${DOLLAR}",
            "${_x1}",
            "${UNSET}",
        ),
        *(
            "${1BAD}",
            "${}",
            "${file:token.txt}",
            "${file:empty.txt}",
            "${file:latin1.bin}",
            "${file:missing}",
        ),
        *("${file:}", "${WS_TOKEN", "abc", " ", "\t", "\n", "\r\n", "\x00", "é", "\u3000"),
    ]
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(_PIECES | st.text(max_size=4), max_size=8))
def test_interpolation_matches_the_model_and_never_leaks_a_secret(
    config_dir: Path, pieces: list[str]
) -> None:
    text = "".join(pieces)
    data = {"hub": {"auth_header": "token", "tokens": [{"name": "t", "token": text, "subscribe": ["k"]}]}}
    try:
        expected: str | None = _model_expand(text, _ENV, config_dir)
    except ValueError:
        expected = None
    config, error = _outcome(lambda: parse_config(data, env=_ENV, base_dir=config_dir), ConfigError)
    if error is not None:
        message = str(error)
        assert error.key == "hub.tokens[0].token", message
        for secret in ("env-secret-one", "file-secret-two"):
            assert secret not in message
        if expected is not None:
            # Expanded fine; refused as a header value: empty, a control character, or edge whitespace.
            assert (
                not expected
                or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", expected)
                or expected != expected.strip()
            )
        return
    assert isinstance(config, Config)
    assert config.hub is not None
    assert config.hub.tokens[0].token.reveal() == expected


# ----------------------------------------------------------------------------------------------------------
# Durations and sizes from arbitrary text.


@given(
    st.text(max_size=30)
    | st.from_regex(r"\s*-?[0-9]{1,30}(\.[0-9]{0,30})?\s*[A-Za-z]{0,4}\s*", fullmatch=True)
)
def test_arbitrary_text_is_a_duration_or_a_value_error(text: str) -> None:
    seconds, error = _outcome(lambda: parse_duration(text), ValueError)
    if error is None:
        assert isinstance(seconds, float)
        assert math.isfinite(seconds)
        assert seconds >= 0


@given(
    st.text(max_size=30)
    | st.from_regex(r"\s*-?[0-9]{1,30}(\.[0-9]{0,30})?\s*[A-Za-z]{0,4}\s*", fullmatch=True)
)
def test_arbitrary_text_is_a_size_or_a_value_error(text: str) -> None:
    size, error = _outcome(lambda: parse_size(text), ValueError)
    if error is None:
        assert isinstance(size, int)
        assert size >= 0


# ----------------------------------------------------------------------------------------------------------
# Over the wire: the hub and the gateway processes of this package.

UPGRADE_LINES = [
    b"GET /ws HTTP/1.1",
    b"Host: 127.0.0.1",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Origin: " + ORIGIN.encode(),
    b"token: " + WS_TOKEN.encode(),
]


def _open(port: int, head: bytes, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """Send a request head on a blocking socket; the response head (b"" when the server just closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with contextlib.suppress(OSError):  # refused before it was all sent: the answer is still read below
        sock.sendall(head)
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    return sock, received


def _read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    def need(count: int) -> None:
        while len(buffer) < count:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buffer.extend(chunk)

    need(2)
    opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length == 126:
        need(4)
        (length,) = struct.unpack("!H", buffer[2:4])
        offset = 4
    elif length == 127:
        need(10)
        (length,) = struct.unpack("!Q", buffer[2:10])
        offset = 10
    need(offset + length)
    payload = bytes(buffer[offset : offset + length])
    del buffer[: offset + length]
    return opcode, payload


_PAYLOADS = st.one_of(
    st.sampled_from(
        [
            *(b'{"type":"subscribe","channel":"kiosks"}', b'{"type":"unsubscribe","channel":"kiosks"}'),
            *(b'{"type":"publish","channel":"fuzz","data":[1,{"a":null}]}', b"{}", b"[]", b'"\xff"', b""),
            *(struct.pack("!H", 1000), struct.pack("!H", 1006), struct.pack("!H", 4000) + b"bye"),
        ]
    ),
    st.binary(max_size=160),
    st.text(max_size=40).map(str.encode),
)
_SHORT = st.binary(max_size=125)
# Mostly frames a client may send, so that sequences reach deep states; some that break RFC 6455 anywhere.
_VALID_FRAMES = st.one_of(
    st.tuples(st.just(OP_TEXT), st.just(True), st.just(0), _PAYLOADS),
    st.tuples(st.sampled_from([0x2, 0x9, 0xA]), st.just(True), st.just(0), _SHORT),
    # A message in two fragments.
    _PAYLOADS.map(lambda p: (OP_TEXT, False, 0, p[: len(p) // 2], p[len(p) // 2 :])),
)
_ANY_FRAME = st.tuples(
    st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]),
    st.booleans(),
    st.sampled_from([0, 0, 0, 0b100, 0b010, 0b001]),
    _PAYLOADS,
)
_FRAMES = st.one_of(_VALID_FRAMES, _VALID_FRAMES, _ANY_FRAME)


def _encode(spec: tuple[Any, ...]) -> bytes:
    if len(spec) == 5:  # fragmented text message
        _, _, _, first, rest = spec
        return frame(OP_TEXT, first, fin=False) + frame(0x0, rest)
    opcode, fin, rsv, payload = spec
    return frame(opcode, payload, fin=fin, rsv=rsv)


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(_FRAMES, min_size=1, max_size=5), serial=st.integers(0, 10**9))
def test_any_frame_sequence_gets_a_proper_close_or_an_answer(
    hub_process: ServerProcess, frames: list[tuple[Any, ...]], serial: int
) -> None:
    """Whatever frames come first, the hub either fails the connection with a close frame carrying 1000,
    1002, 1007 or 1009, or goes on to answer a subscribe sent behind them; it never hangs or just drops."""
    head = b"\r\n".join(UPGRADE_LINES) + b"\r\n\r\n"
    sock, response = _open(hub_process.port, head)
    try:
        assert response.startswith(b"HTTP/1.1 101 "), response
        probe = f"probe-{serial}".encode()
        sock.sendall(
            b"".join(_encode(spec) for spec in frames)
            + frame(OP_TEXT, b'{"type":"subscribe","channel":"' + probe + b'"}')
        )
        buffer = bytearray(response.partition(b"\r\n\r\n")[2])
        while True:
            try:
                opcode, payload = _read_frame(sock, buffer)
            except (EOFError, ConnectionResetError):
                raise AssertionError("the hub dropped the connection without a close frame") from None
            if opcode == OP_CLOSE:
                assert close_code(payload) in (1000, 1002, 1007, 1009), payload
                event(f"closed with {close_code(payload)}")
                break
            if opcode == OP_TEXT and b'"subscribed"' in payload and probe in payload:
                event("answered")
                break
    finally:
        sock.close()
    assert hub_process.alive()


@st.composite
def mutated_upgrades(draw: Callable[..., Any]) -> bytes:
    lines = list(UPGRADE_LINES)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["drop", "repeat", "value", "insert", "method", "target", "version"]))
        index = draw(st.integers(1, len(lines) - 1)) if len(lines) > 1 else 0
        if kind == "drop" and len(lines) > 1:
            del lines[index]
        elif kind == "repeat":
            lines.insert(index, lines[index])
        elif kind == "value" and index:
            name = lines[index].split(b":", 1)[0]
            value = draw(st.binary(max_size=30).filter(lambda v: b"\r" not in v and b"\n" not in v))
            lines[index] = name + b": " + value
        elif kind == "insert":
            name = draw(st.sampled_from([b"Origin", b"Host", b"token", b"Authorization", b"Upgrade", b"X-Y"]))
            lines.insert(index, name + b": " + draw(st.binary(max_size=20).filter(lambda v: b"\n" not in v)))
        elif kind == "method":
            lines[0] = draw(st.sampled_from([b"POST", b"get", b"HEAD", b"G\x00T", b""])) + lines[0][3:]
        elif kind == "target":
            target = draw(
                st.sampled_from([b"/ws?x=1", b"/ws/../ws", b"/%2e%2e/ws", b"*", b"/", b"//ws", b"/ws#f"])
            )
            lines[0] = lines[0].replace(b"/ws", target, 1)
        elif kind == "version":
            lines[0] = (
                lines[0].rsplit(b" ", 1)[0]
                + b" "
                + draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1x"]))
            )
    return b"\r\n".join(lines) + b"\r\n\r\n"


@settings(max_examples=100, deadline=None)
@given(request=mutated_upgrades())
def test_mutated_upgrade_requests_get_a_status_never_a_500(
    hub_process: ServerProcess, gateway_process: ServerProcess, request: bytes
) -> None:
    for server in (hub_process, gateway_process):
        sock, response = _open(server.port, request)
        sock.close()
        if not response:
            event(f"{server.name} cut")
        else:  # b"": cut, a head the server could not even parse as one (e.g. a body it waits for)
            status_line = response.split(b"\r\n", 1)[0]
            assert re.fullmatch(rb"HTTP/1\.[01] [1-5][0-9]{2}( .*)?", status_line), response[:200]
            status = int(status_line.split(b" ")[1])
            event(f"{server.name} {status}")
            assert status not in (500, 501, 503), response[:300]
            assert WS_TOKEN.encode() not in response
        assert server.alive()
