"""RFC 6455 §4.2.1 upgrade validation (pure)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from wsgate.errors import HandshakeError
from wsgate.handshake import check_upgrade, single_header
from wsgate.hub.frames import close_frame, server_frame

GOOD = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def headers(**changes: str | None) -> CIMultiDict[str]:
    result = CIMultiDict(GOOD)
    for name, value in changes.items():
        name = name.replace("_", "-")
        result.popall(name, None)
        if value is not None:
            result[name] = value
    return result


def test_a_browser_handshake_passes() -> None:
    check_upgrade("GET", headers())


def test_firefox_connection_header_with_keep_alive_passes() -> None:
    check_upgrade("GET", headers(Connection="keep-alive, Upgrade"))
    check_upgrade("GET", headers(Upgrade="WebSocket", Connection="UPGRADE"))


@pytest.mark.parametrize(
    ("method", "changes", "status"),
    [
        ("GET", {"Upgrade": None}, 426),
        ("GET", {"Upgrade": "h2c"}, 426),
        ("GET", {"Connection": "keep-alive"}, 426),
        ("POST", {}, 400),
        ("GET", {"Sec-WebSocket-Version": "8"}, 426),
        ("GET", {"Sec-WebSocket-Version": None}, 426),
        ("GET", {"Sec-WebSocket-Key": None}, 400),
        ("GET", {"Sec-WebSocket-Key": "short"}, 400),
        ("GET", {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ"}, 400),
        ("GET", {"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}, 400),
    ],
)
def test_bad_upgrades_are_refused_with_the_right_status(
    method: str, changes: dict[str, str | None], status: int
) -> None:
    with pytest.raises(HandshakeError) as info:
        check_upgrade(method, headers(**changes))
    assert info.value.status == status


def test_a_repeated_origin_is_malformed_not_guessed_at() -> None:
    repeated = headers()
    repeated.add("Origin", "https://kiosk.example.org")
    repeated.add("Origin", "https://evil.example.com")
    with pytest.raises(HandshakeError) as info:
        single_header(repeated, "Origin")
    assert info.value.status == 400
    assert single_header(headers(), "Origin") is None
    assert single_header({"Origin": "https://a.example"}, "Origin") == "https://a.example"


def test_version_refusal_names_the_supported_version() -> None:
    with pytest.raises(HandshakeError) as info:
        check_upgrade("GET", headers(**{"Sec-WebSocket-Version": "8"}))
    assert info.value.headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65536, b"\x81\x7f" + (65536).to_bytes(8, "big")),
    ],
)
def test_server_frames_use_the_shortest_length_encoding(length: int, header: bytes) -> None:
    frame = server_frame(b"x" * length)
    assert frame[: len(header)] == header
    assert len(frame) == len(header) + length


def test_close_frame_carries_code_and_short_reason() -> None:
    frame = close_frame(1013, "slow consumer" * 20)
    assert frame[0] == 0x88
    assert frame[1] <= 125
    assert frame[2:4] == (1013).to_bytes(2, "big")
