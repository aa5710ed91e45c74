"""The gateway's sans-I/O upgrade core: the upstream request (allowlist, injection, Host, forwarding, query),
the upstream's response head (fed whole and byte by byte), the 101 checks and the answers to the client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
from aiohttp.http_parser import HttpRequestParserPy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsgate.config import MintConfig, Route
from wsgate.errors import HandshakeError, WsgateError
from wsgate.gateway.upgrade import (
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    ClientRequest,
    HeaderInjectionError,
    ResponseHead,
    ResponseHeadParser,
    UpstreamProtocolError,
    UpstreamTarget,
    WebSocketOffer,
    accept_key,
    build_websocket_request,
    check_switching_protocols,
    client_switching_response,
    mint_subject,
    parse_upstream,
    upstream_refusal_status,
    websocket_offer,
)
from wsgate.secret import Secret

# RFC 6455 §1.3: the worked example of the accept computation.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
ORIGIN = "https://kiosk.example.org"
UPSTREAM_URL = "wss://hub-1.internal:9000/ws"
UPSTREAM = parse_upstream(UPSTREAM_URL)
SECRET = "gateway-secret-0123456789abcdef"
CLIENT_TOKEN = "client-chosen-token-attack"
TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def make_route(**changes: Any) -> Route:
    return replace(Route(path="/ws", upstream=(UPSTREAM_URL,), websocket=True), **changes)


BROWSER_HEADERS: tuple[tuple[str, str], ...] = (
    ("Host", "kiosk.example.org"),
    ("Connection", "Upgrade"),
    ("Pragma", "no-cache"),
    ("Upgrade", "websocket"),
    ("Origin", ORIGIN),
    ("Sec-WebSocket-Version", "13"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
)


def make_client(
    *extra: tuple[str, str],
    drop: Sequence[str] = (),
    target: str = "/ws?kiosk=7",
    peer: str = "203.0.113.9",
    scheme: str = "https",
    host: str | None = "kiosk.example.org",
    method: str = "GET",
) -> ClientRequest:
    dropped = {name.lower() for name in drop}
    headers = [(n, v) for n, v in BROWSER_HEADERS if n.lower() not in dropped] + list(extra)
    return ClientRequest(method=method, target=target, headers=headers, peer=peer, scheme=scheme, host=host)


# ----------------------------------------------------------------------------------------------------------
# Two independent readers of a request head: a strict RFC 9112 one, and aiohttp's (what the hub runs).

_REQUEST_LINE = re.compile(rb"GET (/[\x21\x22\x24-\x7e]*) HTTP/1\.1")
_FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")


def parse_request(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    """Target and headers of a request head; AssertionError unless it is strictly valid HTTP/1.1."""
    assert data.endswith(b"\r\n\r\n")
    head = data[:-4]
    assert b"\r\n\r\n" not in head
    assert b"\x00" not in head
    lines = head.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    start = _REQUEST_LINE.fullmatch(lines[0])
    assert start is not None, lines[0]
    headers = []
    for line in lines[1:]:
        match = _FIELD_LINE.fullmatch(line)
        assert match is not None, line
        headers.append((match[1].decode("ascii"), match[2].decode("latin-1")))
    return start[1].decode("ascii"), headers


def aiohttp_parse(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParserPy(mock.Mock(), loop, 2**16)
        messages, upgraded, tail = parser.feed_data(data)
    finally:
        loop.close()
    assert len(messages) == 1
    assert upgraded
    assert tail == b""
    message = messages[0][0]
    assert message.method == "GET"
    assert message.upgrade
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in message.raw_headers]
    return message.path, headers


def build(route: Route | None = None, client: ClientRequest | None = None, **injected: str) -> bytes:
    return build_websocket_request(
        route or make_route(), UPSTREAM, client or make_client(), injected=dict(injected)
    )


def request_headers(data: bytes) -> list[tuple[str, str]]:
    target, headers = parse_request(data)
    assert aiohttp_parse(data) == (target, headers)
    return headers


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def names(headers: list[tuple[str, str]]) -> set[str]:
    return {key.lower() for key, _ in headers}


# ----------------------------------------------------------------------------------------------------------
# parse_upstream / UpstreamTarget


@pytest.mark.parametrize(
    ("url", "secure", "host", "port", "path", "host_header"),
    [
        ("wss://hub-1.internal:9000/ws", True, "hub-1.internal", 9000, "/ws", "hub-1.internal:9000"),
        ("ws://hub/ws", False, "hub", 80, "/ws", "hub"),
        ("wss://hub", True, "hub", 443, "/", "hub"),
        ("ws://hub:80/", False, "hub", 80, "/", "hub"),
        ("wss://hub:443/x", True, "hub", 443, "/x", "hub"),
        ("ws://hub:443/", False, "hub", 443, "/", "hub:443"),  # default for wss, not for ws
        ("wss://hub:80/", True, "hub", 80, "/", "hub:80"),
        ("https://Hub.Example:443/a/b?x=1&y", True, "hub.example", 443, "/a/b?x=1&y", "hub.example"),
        ("http://127.0.0.1:8001", False, "127.0.0.1", 8001, "/", "127.0.0.1:8001"),
        ("WS://hub/ws", False, "hub", 80, "/ws", "hub"),
        ("ws://[::1]:9000/ws", False, "::1", 9000, "/ws", "[::1]:9000"),
        ("wss://[2001:db8::1]/ws", True, "2001:db8::1", 443, "/ws", "[2001:db8::1]"),
        ("ws://hub?x=1", False, "hub", 80, "/?x=1", "hub"),
        ("ws://hub/ws?", False, "hub", 80, "/ws?", "hub"),
        ("ws://hub/a%20b//c/../d", False, "hub", 80, "/a%20b//c/../d", "hub"),  # as written, not normalised
        ("ws://xn--bcher-kva.example/ws", False, "xn--bcher-kva.example", 80, "/ws", "xn--bcher-kva.example"),
    ],
)
def test_parse_upstream(url: str, secure: bool, host: str, port: int, path: str, host_header: str) -> None:
    target = parse_upstream(url)
    assert target == UpstreamTarget(url=url, secure=secure, host=host, port=port, path=path)
    assert target.host_header == host_header


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://hub/",
        "hub:9000/ws",
        "ws:/hub/ws",
        "ws://",
        "ws:///ws",
        "ws://user:secretpw@hub/ws",
        "ws://hub/ws#frag",
        "ws://hub/ws x",
        "ws://hub/ws\r\nX-Evil: 1",
        "ws://hub\t/ws",
        "ws://hub/ws\x00",
        "ws://bücher.example/ws",
        "ws://hub/wä",
        "ws://hub:0/",
        "ws://hub:70000/",
        "ws://hub:x/",
        "ws://[fe80::1%25eth0]/",
        "ws://[zz::1]/",
        "ws://ho$t/",
        "ws://hub:9000:1/ws",
    ],
)
def test_parse_upstream_refuses(url: str) -> None:
    with pytest.raises(ValueError, match=r"upstream URL|IPv6") as info:
        parse_upstream(url)
    assert "secretpw" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# ClientRequest


def test_client_request_header_lookup_ignores_case_and_snapshots_headers() -> None:
    headers = [("Sec-WebSocket-Protocol", "a"), ("sec-websocket-protocol", "b"), ("X", "1")]
    client = ClientRequest("GET", "/ws", headers, "192.0.2.1", "http", None)
    headers.append(("X", "2"))
    assert client.get("SEC-WEBSOCKET-PROTOCOL") == "a"
    assert client.getall("Sec-Websocket-Protocol") == ["a", "b"]
    assert client.getall("x") == ["1"]
    assert client.get("Missing") is None
    assert client.get("Missing", "d") == "d"
    assert client.getall("Missing") == []
    assert isinstance(client.headers, tuple)
    hash(client)


def test_websocket_offer_keeps_protocol_case_and_order() -> None:
    client = make_client(
        ("Sec-WebSocket-Protocol", "MQTT, v2.chat"),
        ("Sec-WebSocket-Protocol", " graphql-ws ,"),
        drop=("Sec-WebSocket-Extensions",),
    )
    offer = websocket_offer(client)
    assert offer.key == KEY
    assert offer.protocols == ("MQTT", "v2.chat", "graphql-ws")
    assert offer.extensions is False
    assert websocket_offer(make_client()).extensions is True


# ----------------------------------------------------------------------------------------------------------
# build_websocket_request: the whole head


def test_a_browser_upgrade_becomes_this_exact_request() -> None:
    route = make_route(change_origin=True, headers={"token": Secret(SECRET)})
    data = build(route, make_client(("Cookie", "session=abc"), ("token", CLIENT_TOKEN)), token=SECRET)
    assert data == (
        b"GET /ws?kiosk=7 HTTP/1.1\r\n"
        b"Host: hub-1.internal:9000\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Origin: https://kiosk.example.org\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0\r\n"
        b"token: gateway-secret-0123456789abcdef\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: kiosk.example.org\r\n"
        b"\r\n"
    )
    request_headers(data)


def test_only_allowlisted_client_headers_reach_the_upstream() -> None:
    hostile = [
        ("token", CLIENT_TOKEN),
        ("Authorization", f"Bearer {CLIENT_TOKEN}"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Cookie", "session=stolen"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=127.0.0.1"),
        ("X-Real-IP", "127.0.0.1"),
        ("Via", "1.1 evil"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Sec-WebSocket-Accept", "forged"),
        ("X-Api-Key", CLIENT_TOKEN),
    ]
    data = build(make_route(forwarded="none"), make_client(*hostile))
    headers = request_headers(data)
    assert names(headers) == {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "origin",
        "user-agent",
    }
    for forbidden in (
        CLIENT_TOKEN.encode(),
        b"stolen",
        b"127.0.0.1",
        b"Zm9v",
        b"evil",
        b"forged",
        b"chunked",
    ):
        assert forbidden not in data


@pytest.mark.parametrize("spelling", ["token", "Token", "TOKEN", "tOkEn"])
def test_the_injected_header_wins_over_the_clients_whatever_its_case(spelling: str) -> None:
    route = make_route(headers={"token": Secret(SECRET)})
    data = build(route, make_client((spelling, CLIENT_TOKEN), (spelling, "second")), token=SECRET)
    headers = request_headers(data)
    assert values(headers, "token") == [SECRET]
    assert CLIENT_TOKEN.encode() not in data
    assert b"second" not in data


def test_a_client_token_header_is_dropped_even_when_nothing_is_injected() -> None:
    data = build(make_route(), make_client(("token", CLIENT_TOKEN)))
    assert CLIENT_TOKEN.encode() not in data
    assert "token" not in names(request_headers(data))


@pytest.mark.parametrize("pass_authorization", [False, True])
def test_client_authorization_passes_only_when_the_route_says_so(pass_authorization: bool) -> None:
    client = make_client(("Authorization", f"Bearer {CLIENT_TOKEN}"))
    headers = request_headers(build(make_route(pass_authorization=pass_authorization), client))
    assert values(headers, "Authorization") == ([f"Bearer {CLIENT_TOKEN}"] if pass_authorization else [])


def test_a_minted_authorization_replaces_a_passed_one() -> None:
    mint = MintConfig(key=Secret("k" * 32), subject="query:kiosk")
    route = make_route(pass_authorization=True, mint=mint)
    client = make_client(("authorization", f"Bearer {CLIENT_TOKEN}"))
    data = build(route, client, authorization="Bearer minted.jwt.value")
    assert values(request_headers(data), "Authorization") == ["Bearer minted.jwt.value"]
    assert CLIENT_TOKEN.encode() not in data


def test_proxy_authorization_never_passes() -> None:
    client = make_client(("Proxy-Authorization", "Basic Zm9vOmJhcg=="))
    data = build(make_route(pass_authorization=True, pass_cookies=True), client)
    assert b"Zm9v" not in data


@pytest.mark.parametrize("pass_cookies", [False, True])
def test_cookies_pass_only_when_the_route_says_so_joined_into_one_line(pass_cookies: bool) -> None:
    client = make_client(("Cookie", "a=1"), ("cookie", "b=2; c=3"))
    headers = request_headers(build(make_route(pass_cookies=pass_cookies), client))
    assert values(headers, "Cookie") == (["a=1; b=2; c=3"] if pass_cookies else [])


def test_an_injected_cookie_replaces_the_clients() -> None:
    data = build(make_route(pass_cookies=True), make_client(("Cookie", "a=1")), cookie="internal=1")
    assert values(request_headers(data), "Cookie") == ["internal=1"]


def test_an_injected_user_agent_replaces_the_clients() -> None:
    data = build(make_route(), make_client(), **{"user-agent": "wsgate"})
    assert values(request_headers(data), "User-Agent") == ["wsgate"]


@pytest.mark.parametrize(
    ("change_origin", "client_host", "expected"),
    [
        (True, "kiosk.example.org", "hub-1.internal:9000"),
        (False, "kiosk.example.org", "kiosk.example.org"),
        (False, "kiosk.example.org:8443", "kiosk.example.org:8443"),
        (False, None, "hub-1.internal:9000"),
        (False, "", "hub-1.internal:9000"),
        (True, None, "hub-1.internal:9000"),
    ],
)
def test_host_follows_change_origin(change_origin: bool, client_host: str | None, expected: str) -> None:
    client = make_client(host=client_host, drop=() if client_host else ("Host",))
    headers = request_headers(build(make_route(change_origin=change_origin), client))
    assert values(headers, "Host") == [expected]
    assert headers[0] == ("Host", expected)  # RFC 9112 §3.2: first after the request-line


@pytest.mark.parametrize("change_origin", [False, True])
def test_origin_is_passed_exactly_as_sent(change_origin: bool) -> None:
    origin = "https://Kiosk.Example.org:8443"
    client = make_client(("Origin", origin), drop=("Origin",))
    headers = request_headers(build(make_route(change_origin=change_origin), client))
    assert values(headers, "Origin") == [origin]


def test_no_origin_stays_no_origin() -> None:
    headers = request_headers(build(make_route(), make_client(drop=("Origin",))))
    assert "origin" not in names(headers)


def test_subprotocols_and_extensions_on_several_lines_become_one_each() -> None:
    client = make_client(
        ("Sec-WebSocket-Protocol", "v2.chat, MQTT"),
        ("Sec-WebSocket-Protocol", "graphql-ws"),
        ("Sec-WebSocket-Protocol", "  "),
        ("Sec-WebSocket-Extensions", "x-custom"),
    )
    headers = request_headers(build(make_route(), client))
    assert values(headers, "Sec-WebSocket-Protocol") == ["v2.chat, MQTT, graphql-ws"]
    assert values(headers, "Sec-WebSocket-Extensions") == [
        "permessage-deflate; client_max_window_bits, x-custom"
    ]


def test_the_key_is_forwarded_unchanged_so_the_client_can_check_the_accept() -> None:
    headers = request_headers(build())
    assert values(headers, "Sec-WebSocket-Key") == [KEY]
    assert values(headers, "Sec-WebSocket-Version") == ["13"]


# ----------------------------------------------------------------------------------------------------------
# Forwarding headers


def test_x_forwarded_for_is_the_peer_alone_never_the_clients_claim() -> None:
    client = make_client(("X-Forwarded-For", "127.0.0.1, 10.0.0.1"), ("x-forwarded-for", "::1"))
    headers = request_headers(build(make_route(), client))
    assert values(headers, "X-Forwarded-For") == ["203.0.113.9"]
    assert values(headers, "X-Forwarded-Proto") == ["https"]
    assert values(headers, "X-Forwarded-Host") == ["kiosk.example.org"]


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ],
)
def test_x_forwarded_for_spells_addresses_plainly(peer: str, expected: str) -> None:
    headers = request_headers(build(make_route(), make_client(peer=peer)))
    assert values(headers, "X-Forwarded-For") == [expected]


def test_x_forwarded_headers_are_left_out_when_unknown() -> None:
    client = make_client(peer="", host=None, scheme="http", drop=("Host",))
    headers = request_headers(build(make_route(), client))
    assert "x-forwarded-for" not in names(headers)
    assert "x-forwarded-host" not in names(headers)
    assert values(headers, "X-Forwarded-Proto") == ["http"]


@pytest.mark.parametrize(
    ("peer", "host", "scheme", "expected"),
    [
        ("203.0.113.9", "kiosk.example.org", "https", "for=203.0.113.9;proto=https;host=kiosk.example.org"),
        (
            "2001:db8::1",
            "kiosk.example.org",
            "https",
            'for="[2001:db8::1]";proto=https;host=kiosk.example.org',
        ),
        ("::ffff:192.0.2.7", None, "http", "for=192.0.2.7;proto=http"),
        ("", "kiosk.example.org:8443", "https", 'for=unknown;proto=https;host="kiosk.example.org:8443"'),
        ("192.0.2.1", "[2001:db8::5]:8443", "https", 'for=192.0.2.1;proto=https;host="[2001:db8::5]:8443"'),
        ("192.0.2.1", 'a"b\\c', "http", 'for=192.0.2.1;proto=http;host="a\\"b\\\\c"'),
    ],
)
def test_rfc7239_forwarded(peer: str, host: str | None, scheme: str, expected: str) -> None:
    client = make_client(("Forwarded", "for=127.0.0.1"), peer=peer, host=host, scheme=scheme)
    headers = request_headers(build(make_route(forwarded="rfc7239"), client))
    assert values(headers, "Forwarded") == [expected]
    assert not {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} & names(headers)


def test_forwarded_none_adds_nothing_and_passes_nothing() -> None:
    client = make_client(("X-Forwarded-For", "127.0.0.1"), ("Forwarded", "for=127.0.0.1"))
    headers = request_headers(build(make_route(forwarded="none"), client))
    assert not {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} & names(headers)


def test_an_injected_forwarding_header_replaces_the_generated_one() -> None:
    data = build(make_route(), make_client(), **{"x-forwarded-proto": "https-offloaded"})
    assert values(request_headers(data), "X-Forwarded-Proto") == ["https-offloaded"]


# ----------------------------------------------------------------------------------------------------------
# The request-target


@pytest.mark.parametrize(
    ("upstream_url", "client_target", "expected"),
    [
        ("ws://hub/ws", "/ws", "/ws"),
        ("ws://hub/ws", "/ws?kiosk=7", "/ws?kiosk=7"),
        ("ws://hub/ws?x=1", "/ws?kiosk=7", "/ws?x=1&kiosk=7"),
        ("ws://hub/ws?", "/ws?kiosk=7", "/ws?kiosk=7"),
        ("ws://hub/ws?x=1&", "/ws?kiosk=7", "/ws?x=1&kiosk=7"),
        ("ws://hub/ws?x=1", "/ws", "/ws?x=1"),
        ("ws://hub/ws", "/ws?", "/ws"),
        ("ws://hub/ws?", "/other", "/ws?"),
        ("ws://hub", "/deep/path?a=b&c", "/?a=b&c"),
        ("ws://hub/hub", "/ws/../admin?x=%2F%0D%0A", "/hub?x=%2F%0D%0A"),  # the client's path is not used
        ("ws://hub/ws", "/ws?a=1?b=2", "/ws?a=1?b=2"),
        ("ws://hub/ws", '/ws?q="quoted"', '/ws?q="quoted"'),
    ],
)
def test_request_target(upstream_url: str, client_target: str, expected: str) -> None:
    upstream = parse_upstream(upstream_url)
    data = build_websocket_request(make_route(), upstream, make_client(target=client_target), injected={})
    assert parse_request(data)[0] == expected
    assert data.startswith(f"GET {expected} HTTP/1.1\r\n".encode())


@pytest.mark.parametrize(
    "target",
    [
        "/ws?a=1 HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /admin",
        "/ws?a=1\r\nX-Evil: 1",
        "/ws?a=1\nX-Evil: 1",
        "/ws?a= b",
        "/ws?a=\x00",
        "/ws?a=\x7f",
        "/ws?a=é",
        "/ws?a=1#frag",
    ],
)
def test_a_query_that_cannot_be_sent_is_refused(target: str) -> None:
    with pytest.raises(HeaderInjectionError):
        build(client=make_client(target=target))


# ----------------------------------------------------------------------------------------------------------
# Injection attempts and malformed upgrades

BAD_VALUES = ["a\r\nX-Evil: 1", "a\nX-Evil: 1", "a\rb", "a\x00b", "a\x01b", "a\x7fb", "a\u2028b", "a€"]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize(
    "header", ["Origin", "User-Agent", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"]
)
def test_control_characters_in_forwarded_client_values_are_refused(header: str, value: str) -> None:
    client = make_client((header, value), drop=(header,))
    with pytest.raises(HeaderInjectionError) as info:
        build(client=client)
    assert info.value.header == header
    assert "Evil" not in str(info.value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_control_characters_in_passed_cookies_and_authorization_are_refused(value: str) -> None:
    route = make_route(pass_cookies=True, pass_authorization=True)
    for header in ("Cookie", "Authorization"):
        with pytest.raises(HeaderInjectionError):
            build(route, make_client((header, value)))


def test_control_characters_in_dropped_headers_do_not_matter() -> None:
    client = make_client(("Cookie", "a\r\nX-Evil: 1"), ("X\r\nEvil", "1"), ("token", "\x00"))
    data = build(make_route(), client)
    assert b"Evil" not in data
    request_headers(data)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize(
    ("change_origin", "forwarded"), [(False, "none"), (True, "x-forwarded"), (True, "rfc7239")]
)
def test_control_characters_in_the_client_host_are_refused(
    value: str, change_origin: bool, forwarded: str
) -> None:
    client = make_client(host=value)
    with pytest.raises(HeaderInjectionError):
        build(make_route(change_origin=change_origin, forwarded=forwarded), client)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_control_characters_in_injected_values_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(HeaderInjectionError) as info:
        build(token=value)
    assert info.value.header == "token"
    assert value not in str(info.value)
    assert "Evil" not in str(info.value)


@pytest.mark.parametrize("name", ["", "x bad", "x:y", "x\r\ny", "tök", "x\x00"])
def test_injected_names_must_be_tokens(name: str) -> None:
    with pytest.raises(HeaderInjectionError):
        build_websocket_request(make_route(), UPSTREAM, make_client(), injected={name: "v"})


@pytest.mark.parametrize(
    "name",
    [
        *("host", "Host", "origin", "connection", "upgrade", "content-length", "transfer-encoding", "te"),
        *("trailer", "keep-alive", "proxy-connection", "sec-websocket-key", "Sec-WebSocket-Protocol"),
    ],
)
def test_headers_the_gateway_owns_cannot_be_injected(name: str) -> None:
    with pytest.raises(HeaderInjectionError):
        build_websocket_request(make_route(), UPSTREAM, make_client(), injected={name: "v"})


def test_the_same_header_cannot_be_injected_twice() -> None:
    with pytest.raises(HeaderInjectionError):
        build_websocket_request(make_route(), UPSTREAM, make_client(), injected={"token": "a", "Token": "b"})


def test_header_injection_error_is_a_value_error_and_a_wsgate_error() -> None:
    assert issubclass(HeaderInjectionError, ValueError)
    assert issubclass(HeaderInjectionError, WsgateError)
    assert issubclass(UpstreamProtocolError, WsgateError)
    assert HeaderInjectionError("X", "bad").status == 400
    assert UpstreamProtocolError("bad").status == 502


@pytest.mark.parametrize(
    ("client", "status"),
    [
        (make_client(drop=("Upgrade",)), 426),
        (make_client(drop=("Connection",)), 426),
        (make_client(method="POST"), 400),
        (make_client(drop=("Sec-WebSocket-Key",)), 400),
        (make_client(("Sec-WebSocket-Version", "8"), drop=("Sec-WebSocket-Version",)), 426),
        (make_client(("Origin", "https://evil.example")), 400),
        (make_client(("host", "admin.internal")), 400),
        (make_client(("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")), 400),
        (make_client(("Sec-WebSocket-Version", "13")), 400),
        (make_client(("User-Agent", "second")), 400),
    ],
)
def test_requests_that_are_not_one_valid_upgrade_are_refused(client: ClientRequest, status: int) -> None:
    with pytest.raises(HandshakeError) as info:
        build(client=client)
    assert info.value.status == status


def test_repeated_authorization_matters_only_when_it_is_passed() -> None:
    client = make_client(("Authorization", "Bearer a"), ("Authorization", "Bearer b"))
    assert b"Bearer" not in build(make_route(), client)
    with pytest.raises(HandshakeError):
        build(make_route(pass_authorization=True), client)


def test_non_websocket_routes_and_unknown_schemes_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="not a WebSocket route"):
        build(make_route(websocket=False))
    with pytest.raises(ValueError, match="scheme"):
        build(client=make_client(scheme="ws"))
    with pytest.raises(ValueError, match="forwarded"):
        build(make_route(forwarded="x-real-ip"))


# ----------------------------------------------------------------------------------------------------------
# mint_subject


def test_a_literal_subject_is_used_as_is() -> None:
    assert mint_subject("gateway", "/ws?kiosk=7") == "gateway"
    assert mint_subject("gateway", "/ws") == "gateway"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ws?kiosk=kiosk-7", "kiosk-7"),
        ("/ws?a=1&kiosk=lobby.east@site:3&b", "lobby.east@site:3"),
        ("/ws?kiosk=first&kiosk=second", "first"),
        ("/ws?kiosk=kiosk%3A7", "kiosk:7"),
        ("/ws?k%69osk=7", "7"),
        ("/ws?kiosks=no&kiosk=yes", "yes"),
        ("/ws?kiosk=7#fragment", "7"),
        ("/ws?kiosk=" + "a" * 200, "a" * 200),
    ],
)
def test_a_query_subject(target: str, expected: str) -> None:
    assert mint_subject("query:kiosk", target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/ws",
        "/ws?",
        "/ws?other=1",
        "/ws?kiosk",
        "/ws?kiosk=",
        "/ws?kiosk=" + "a" * 201,
        "/ws?kiosk=a b",
        "/ws?kiosk=a+b",
        "/ws?kiosk=a%20b",
        "/ws?kiosk=%ZZ",
        "/ws?kiosk=%C3%A9",
        "/ws?kiosk=%FF",
        "/ws?kiosk=a%0D%0Ab",
        "/ws?kiosk=a/b",
        "/ws?kiosk=&kiosk=late",
    ],
)
def test_a_query_subject_that_is_missing_or_malformed_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="query parameter 'kiosk'"):
        mint_subject("query:kiosk", target)


def test_a_query_subject_needs_a_parameter_name() -> None:
    with pytest.raises(ValueError, match="names no query parameter"):
        mint_subject("query:", "/ws?=x")


# ----------------------------------------------------------------------------------------------------------
# ResponseHeadParser

Outcome = tuple[str, ResponseHead | None, bytes]


def parse_in_chunks(
    data: bytes, sizes: Sequence[int] | None = None, max_size: int = MAX_HEAD_SIZE
) -> Outcome:
    """Feed ``data`` in pieces of ``sizes`` (``None``: whole).

    Returns ("head", head, leftover), ("error", None, b"") or ("incomplete", None, b"").
    """
    parser = ResponseHeadParser(max_size=max_size)
    pieces: list[bytes] = []
    if sizes is None:
        pieces = [data]
    else:
        position = 0
        for size in sizes:
            pieces.append(data[position : position + size])
            position += size
        pieces.append(data[position:])
    try:
        for piece in pieces:
            head = parser.feed(piece)
            if head is not None:
                # Bytes of later pieces arrived after the head: they are leftover too.
                rest = b"".join(pieces[pieces.index(piece) + 1 :]) if sizes is not None else b""
                return ("head", head, parser.leftover + rest)
    except UpstreamProtocolError:
        return ("error", None, b"")
    return ("incomplete", None, b"")


def parse_bytewise(data: bytes, max_size: int = MAX_HEAD_SIZE) -> Outcome:
    parser = ResponseHeadParser(max_size=max_size)
    try:
        for index in range(len(data)):
            head = parser.feed(data[index : index + 1])
            if head is not None:
                assert parser.leftover == b""
                return ("head", head, data[index + 1 :])
    except UpstreamProtocolError:
        return ("error", None, b"")
    return ("incomplete", None, b"")


def parse_both(data: bytes, max_size: int = MAX_HEAD_SIZE) -> Outcome:
    """Parse whole and byte by byte; the two must agree (h11's habit)."""
    whole = parse_in_chunks(data, max_size=max_size)
    assert parse_bytewise(data, max_size=max_size) == whole
    return whole


SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)
FRAMES = b"\x81\x05hello\x81\x7e\x00\x7e" + bytes(range(126))


def test_a_101_is_parsed_whole_and_byte_by_byte_alike() -> None:
    kind, head, leftover = parse_both(SWITCH)
    assert kind == "head"
    assert leftover == b""
    assert head == ResponseHead(
        status=101,
        reason="Switching Protocols",
        headers=(("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", ACCEPT)),
        http_version="1.1",
    )


def test_bytes_after_the_head_are_kept_as_leftover() -> None:
    parser = ResponseHeadParser()
    head = parser.feed(SWITCH + FRAMES)
    assert head is not None
    assert parser.leftover == FRAMES
    assert parse_both(SWITCH + FRAMES)[2] == FRAMES


def test_leftover_containing_crlf_crlf_and_bare_lf_is_not_looked_at() -> None:
    tail = b"\n\r\n\r\n\x00\rHTTP/1.1 200 OK\r\n\r\n"
    kind, head, leftover = parse_both(SWITCH + tail)
    assert kind == "head"
    assert head is not None
    assert head.status == 101
    assert leftover == tail


def test_every_split_point_gives_the_same_result() -> None:
    data = SWITCH + FRAMES
    expected = parse_in_chunks(data)
    for first in range(len(data) + 1):
        assert parse_in_chunks(data, [first]) == expected
        for second in range(0, len(data) - first + 1, 7):
            assert parse_in_chunks(data, [first, second]) == expected


def test_head_lookup_ignores_case_and_keeps_repeats() -> None:
    data = (
        b"HTTP/1.1 403 Forbidden\r\n"
        b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-Empty:\r\nX-Pad: \t v w \t\r\n"
        b"\r\n"
    )
    kind, head, _ = parse_both(data)
    assert kind == "head"
    assert head is not None
    assert head.getall("SET-COOKIE") == ["a=1", "b=2"]
    assert head.get("set-cookie") == "a=1"
    assert head.get("x-empty") == ""
    assert head.get("X-Pad") == "v w"
    assert head.get("missing") is None
    assert head.getall("missing") == []


@pytest.mark.parametrize(
    ("status_line", "status", "reason", "version"),
    [
        (b"HTTP/1.1 101 Switching Protocols", 101, "Switching Protocols", "1.1"),
        (b"HTTP/1.1 101", 101, "", "1.1"),
        (b"HTTP/1.1 101 ", 101, "", "1.1"),
        (b"HTTP/1.0 403 Forbidden", 403, "Forbidden", "1.0"),
        (b"HTTP/1.1 503 Service \tUnavailable ", 503, "Service \tUnavailable ", "1.1"),
        (b"HTTP/1.1 401 Nicht autorisiert \xe4", 401, "Nicht autorisiert ä", "1.1"),
        (b"HTTP/1.1 599 x", 599, "x", "1.1"),
        (b"HTTP/1.1 100 Continue", 100, "Continue", "1.1"),
    ],
)
def test_status_lines(status_line: bytes, status: int, reason: str, version: str) -> None:
    kind, head, _ = parse_both(status_line + b"\r\n\r\n")
    assert kind == "head"
    assert head is not None
    assert (head.status, head.reason, head.http_version, head.headers) == (status, reason, version, ())


@pytest.mark.parametrize(
    "data",
    [
        # line endings (RFC 9112 §2.2: we accept CRLF only)
        b"HTTP/1.1 101 OK\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\n\r\n",
        b"HTTP/1.1 101 OK\n\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\n\n",
        b"HTTP/1.1 101 OK\rUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: web\rsocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\r\n\r\n",
        # header lines
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n continued\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\tcontinued\r\n\r\n",
        b"HTTP/1.1 101 OK\r\n Upgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade\t: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\n: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUp(grade): websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgr\xe4de: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX: a\x01b\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX: a\x7fb\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nX: a\x0bb\r\n\r\n",
        # status lines
        b"HTTP/2 101 OK\r\n\r\n",
        b"HTTP/1.2 101 OK\r\n\r\n",
        b"HTTP/2.0 101 OK\r\n\r\n",
        b"http/1.1 101 OK\r\n\r\n",
        b"HTTP/1.1  101 OK\r\n\r\n",
        b"HTTP/1.1 1010 OK\r\n\r\n",
        b"HTTP/1.1 10 OK\r\n\r\n",
        b"HTTP/1.1 099 OK\r\n\r\n",
        b"HTTP/1.1 600 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 101 O\x00K\r\n\r\n",
        b"HTTP/1.1 101OK\r\n\r\n",
        b" HTTP/1.1 101 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"\r\nHTTP/1.1 101 OK\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(data: bytes) -> None:
    assert parse_both(data)[0] == "error"


def test_a_bare_lf_fails_at_once_rather_than_waiting_for_a_crlf_crlf() -> None:
    with pytest.raises(UpstreamProtocolError):
        ResponseHeadParser().feed(b"HTTP/1.1 101 OK\n")
    parser = ResponseHeadParser()
    assert parser.feed(b"HTTP/1.1 101 OK\r") is None  # the CR's partner has not arrived yet
    with pytest.raises(UpstreamProtocolError):
        parser.feed(b"X")


def test_head_size_limit_counts_the_head_only() -> None:
    prefix = b"HTTP/1.1 101 OK\r\nX: "
    size = 1000

    def head_of(length: int) -> bytes:
        return prefix + b"a" * (length - len(prefix) - 4) + b"\r\n\r\n"

    assert len(head_of(size)) == size
    assert parse_both(head_of(size), max_size=size)[0] == "head"
    assert parse_both(head_of(size + 1), max_size=size)[0] == "error"
    # A head that never ends is refused as soon as it outgrows the limit.
    assert parse_bytewise(prefix + b"a" * size, max_size=size)[0] == "error"
    assert parse_both(prefix + b"a" * (size - len(prefix)), max_size=size)[0] == "incomplete"
    # Frames after the head do not count, however large.
    kind, _, leftover = parse_in_chunks(head_of(size) + b"\x82" * 100_000, max_size=size)
    assert kind == "head"
    assert len(leftover) == 100_000


def test_default_head_limit_is_16_kib() -> None:
    assert MAX_HEAD_SIZE == 16384
    big = b"HTTP/1.1 101 OK\r\nX: " + b"a" * MAX_HEAD_SIZE + b"\r\n\r\n"
    with pytest.raises(UpstreamProtocolError):
        ResponseHeadParser().feed(big)


def test_header_count_limit() -> None:
    def head_with(count: int) -> bytes:
        return b"HTTP/1.1 101 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(count)) + b"\r\n"

    kind, head, _ = parse_both(head_with(MAX_HEADERS))
    assert kind == "head"
    assert head is not None
    assert len(head.headers) == MAX_HEADERS
    assert parse_both(head_with(MAX_HEADERS + 1))[0] == "error"


def test_parser_states_after_the_head_after_an_error_and_at_eof() -> None:
    parser = ResponseHeadParser()
    assert parser.feed(b"") is None
    assert parser.head is None
    assert parser.leftover == b""
    with pytest.raises(UpstreamProtocolError):
        parser.feed_eof()

    parser = ResponseHeadParser()
    head = parser.feed(SWITCH)
    assert head is not None
    assert parser.head is head
    parser.feed_eof()  # nothing missing
    with pytest.raises(RuntimeError):
        parser.feed(b"more")

    parser = ResponseHeadParser()
    with pytest.raises(UpstreamProtocolError):
        parser.feed(b"NOT HTTP\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        parser.feed(SWITCH)  # a failed parser stays failed


@pytest.mark.parametrize("max_size", [0, -1, True, 1.5])
def test_max_size_must_be_a_positive_integer(max_size: Any) -> None:
    with pytest.raises(ValueError, match="max_size"):
        ResponseHeadParser(max_size=max_size)


# ----------------------------------------------------------------------------------------------------------
# check_switching_protocols


UPGRADE = ("Upgrade", "websocket")
CONNECTION = ("Connection", "Upgrade")
ACCEPTED = ("Sec-WebSocket-Accept", ACCEPT)


def response(*fields: tuple[str, str], status: int = 101, version: str = "1.1") -> ResponseHead:
    return ResponseHead(status, "Switching Protocols", fields, http_version=version)


def head(status: int = 101, *extra: tuple[str, str], version: str = "1.1") -> ResponseHead:
    """A valid 101 (or another status with the same headers) plus ``extra``."""
    return response(UPGRADE, CONNECTION, ACCEPTED, *extra, status=status, version=version)


def test_rfc_6455_accept_example() -> None:
    assert accept_key(KEY) == ACCEPT


@pytest.mark.parametrize(
    "upstream_head",
    [
        head(),
        response(("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade"), ACCEPTED),
        response(("Connection", "close"), ("Connection", "upgrade"), UPGRADE, ACCEPTED),
        head(101, ("Sec-WebSocket-Protocol", "v2.chat")),
        head(101, ("Sec-WebSocket-Extensions", "permessage-deflate")),
        head(101, ("Set-Cookie", "a=1"), ("Server", "hub")),
    ],
)
def test_valid_101s_pass(upstream_head: ResponseHead) -> None:
    check_switching_protocols(upstream_head, KEY, ["MQTT", "v2.chat"], True)


def test_the_key_may_carry_surrounding_whitespace() -> None:
    check_switching_protocols(head(), f" {KEY} ", [], False)


@pytest.mark.parametrize(
    ("upstream_head", "protocols", "extensions"),
    [
        (head(200), [], False),
        (head(403), [], False),
        (head(version="1.0"), [], False),
        (response(CONNECTION, ACCEPTED), [], False),
        (response(("Upgrade", "h2c"), CONNECTION, ACCEPTED), [], False),
        (response(("Upgrade", "websocket, h2c"), CONNECTION, ACCEPTED), [], False),
        (head(101, UPGRADE), [], False),
        (response(UPGRADE, ACCEPTED), [], False),
        (response(UPGRADE, ("Connection", "keep-alive"), ACCEPTED), [], False),
        (response(UPGRADE, CONNECTION), [], False),
        (response(UPGRADE, CONNECTION, ("Sec-WebSocket-Accept", "x" + ACCEPT[1:])), [], False),
        (head(101, ACCEPTED), [], False),
        (head(101, ("Sec-WebSocket-Protocol", "superchat")), ["chat"], False),
        (head(101, ("Sec-WebSocket-Protocol", "Chat")), ["chat"], False),
        (head(101, ("Sec-WebSocket-Protocol", "chat")), [], False),
        (head(101, ("Sec-WebSocket-Protocol", "")), ["chat"], False),
        (head(101, ("Sec-WebSocket-Protocol", "chat, mqtt")), ["chat", "mqtt"], False),
        (head(101, ("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "chat")), ["chat"], False),
        (head(101, ("Sec-WebSocket-Extensions", "permessage-deflate")), [], False),
    ],
)
def test_invalid_101s_are_refused(
    upstream_head: ResponseHead, protocols: list[str], extensions: bool
) -> None:
    with pytest.raises(UpstreamProtocolError):
        check_switching_protocols(upstream_head, KEY, protocols, extensions)


def test_the_accept_is_checked_against_the_clients_key() -> None:
    other_key = "AQIDBAUGBwgJCgsMDQ4PEA=="
    with pytest.raises(UpstreamProtocolError):
        check_switching_protocols(head(), other_key, [], False)
    check_switching_protocols(_with_accept(accept_key(other_key)), other_key, [], False)


def _with_accept(accept: str) -> ResponseHead:
    return response(UPGRADE, CONNECTION, ("Sec-WebSocket-Accept", accept))


def test_an_end_to_end_handshake_through_the_core() -> None:
    client = make_client(("Sec-WebSocket-Protocol", "v2.chat, MQTT"))
    request = build(make_route(change_origin=True), client, token=SECRET)
    offer = websocket_offer(client)
    [forwarded_key] = values(parse_request(request)[1], "Sec-WebSocket-Key")
    upstream_answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept_key(forwarded_key)}\r\n".encode()
        + b"Sec-WebSocket-Protocol: MQTT\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
        + b"Set-Cookie: upstream=1\r\n\r\n"
        + FRAMES
    )
    parser = ResponseHeadParser()
    answer = None
    for byte in range(len(upstream_answer)):
        answer = parser.feed(upstream_answer[byte : byte + 1])
        if answer is not None:
            leftover = upstream_answer[byte + 1 :]
            break
    assert answer is not None
    assert leftover == FRAMES
    check_switching_protocols(answer, offer.key, offer.protocols, offer.extensions)
    assert b"Sec-WebSocket-Protocol: MQTT\r\n" in client_switching_response(answer)


# ----------------------------------------------------------------------------------------------------------
# client_switching_response


def test_the_browser_gets_a_101_built_from_an_allowlist() -> None:
    response = head(
        101,
        ("Sec-WebSocket-Protocol", "v2.chat"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; server_no_context_takeover"),
        ("Sec-WebSocket-Extensions", "x-other"),
        ("Set-Cookie", "upstream-session=1"),
        ("Server", "hub/1.0"),
        ("X-Powered-By", "internal"),
        ("Date", "Mon, 01 Jan 2026 00:00:00 GMT"),
        ("Content-Length", "0"),
        ("token", SECRET),
    )
    assert client_switching_response(response) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: v2.chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover, x-other\r\n"
        b"\r\n"
    )


def test_a_minimal_101_for_the_browser() -> None:
    upstream_casing = ResponseHead(
        101, "OK", (("UPGRADE", "WebSocket"), ("connection", "upgrade"), ("sec-websocket-accept", ACCEPT))
    )
    assert client_switching_response(upstream_casing) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


def test_no_101_for_the_browser_from_a_refusal_or_without_an_accept() -> None:
    with pytest.raises(UpstreamProtocolError):
        client_switching_response(head(403))
    with pytest.raises(UpstreamProtocolError):
        client_switching_response(response(UPGRADE, CONNECTION))


# ----------------------------------------------------------------------------------------------------------
# upstream_refusal_status


@pytest.mark.parametrize(
    ("status", "expected"),
    [(s, s) for s in (400, 401, 403, 404, 410, 421, 426, 429, 431, 451, 499, 500, 502, 503, 504, 599)]
    + [(s, 502) for s in (407, 408, 505, 511)]
    + [(s, 502) for s in (100, 102, 103, 200, 204, 206, 299, 300, 301, 302, 303, 304, 307, 308)],
)
def test_refusal_status(status: int, expected: int) -> None:
    assert upstream_refusal_status(ResponseHead(status, "", ())) == expected


def test_a_101_is_no_refusal() -> None:
    with pytest.raises(ValueError, match="not a refusal"):
        upstream_refusal_status(head())


# ----------------------------------------------------------------------------------------------------------
# Properties


def mutate(data: bytes, position: int, byte: int, action: str) -> bytes:
    """One byte of ``data`` replaced, inserted or deleted."""
    position %= len(data) + 1
    if action == "replace":
        return data[:position] + bytes([byte]) + data[position + 1 :]
    if action == "insert":
        return data[:position] + bytes([byte]) + data[position:]
    return data[:position] + data[position + 1 :]


_NEAR_VALID = st.builds(
    mutate,
    st.sampled_from([SWITCH + FRAMES, b"HTTP/1.0 403 Forbidden\r\nSet-Cookie: a\r\n\r\nbody"]),
    st.integers(min_value=0, max_value=200),
    st.sampled_from([0x00, 0x09, 0x0A, 0x0D, 0x20, 0x3A, 0x7F, 0xE9, ord("a")]) | st.integers(0, 255),
    st.sampled_from(["replace", "insert", "delete"]),
)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        _NEAR_VALID,
        # Mostly-valid heads with one random mutation reach deeper into the parser than random bytes.
        st.builds(
            lambda prefix, noise, suffix: prefix + noise + suffix,
            st.sampled_from([b"", b"HTTP/1.1 101 OK\r\n", b"HTTP/1.0 4", SWITCH[:40], SWITCH]),
            st.binary(max_size=40),
            st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\n\n", b"\r\n\r\n" + FRAMES]),
        ),
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=50), max_size=6),
    max_size=st.sampled_from([16, 64, MAX_HEAD_SIZE]),
)
@example(data=SWITCH + FRAMES, cuts=[3, 0, 1], max_size=MAX_HEAD_SIZE)
def test_the_parser_raises_only_upstream_protocol_errors_and_ignores_chunking(
    data: bytes, cuts: list[int], max_size: int
) -> None:
    whole = parse_in_chunks(data, max_size=max_size)  # anything but UpstreamProtocolError escapes here
    assert parse_in_chunks(data, cuts, max_size=max_size) == whole
    assert parse_bytewise(data, max_size=max_size) == whole
    if whole[0] == "head":
        assert whole[1] is not None
        assert 100 <= whole[1].status <= 599
        assert data.endswith(whole[2])


_NAME = st.text(alphabet=TCHARS, min_size=1, max_size=12)
_VALUE = st.text(
    alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]) | st.sampled_from("\t"), max_size=20
)


@settings(deadline=None)
@given(
    status=st.integers(min_value=100, max_value=599),
    reason=st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=20),
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=12),
    leftover=st.binary(max_size=40),
)
def test_well_formed_heads_round_trip(
    status: int, reason: str, headers: list[tuple[str, str]], leftover: bytes
) -> None:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{n}: {v}" for n, v in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + leftover
    kind, parsed, rest = parse_both(data)
    assert kind == "head"
    assert parsed is not None
    assert parsed.status == status
    assert parsed.reason == reason
    assert rest == leftover
    assert parsed.headers == tuple((n, v.strip(" \t")) for n, v in headers)


# Names a client might send, the dangerous ones over-represented; values that are sometimes hostile.
_CLIENT_NAMES = st.one_of(
    st.sampled_from(
        [
            *("token", "Token", "Authorization", "Proxy-Authorization", "Cookie", "X-Forwarded-For"),
            *("Forwarded", "X-Forwarded-Host", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"),
            *(
                "User-Agent",
                "Via",
                "Content-Length",
                "Transfer-Encoding",
                "X-Api-Key",
                "Sec-WebSocket-Accept",
            ),
            "Keep-Alive",
        ]
    ),
    _NAME,
)
_HOSTILE_VALUE = st.one_of(_VALUE, st.text(max_size=12), st.sampled_from(["a\r\nX-Evil: 1", "\x00", "é€"]))
_INJECTED_NAMES = st.sampled_from(
    ["token", "authorization", "cookie", "x-api-key", "x-forwarded-for", "user-agent"]
)
_PEERS = st.one_of(
    st.ip_addresses().map(str), st.sampled_from(["", "unix", "::ffff:192.0.2.1", "fe80::1%eth0"])
)
_TARGETS = st.one_of(
    st.sampled_from(["/ws", "/ws?", "/ws?kiosk=7", "/x/y?a=1&b=%20"]),
    st.text(max_size=20).map(lambda query: "/ws?" + query),
)
_ROUTES = st.builds(
    make_route,
    change_origin=st.booleans(),
    pass_cookies=st.booleans(),
    pass_authorization=st.booleans(),
    forwarded=st.sampled_from(["x-forwarded", "rfc7239", "none"]),
)
_UPSTREAMS = st.sampled_from(
    ["wss://hub-1.internal:9000/ws", "ws://[::1]/ws?x=1", "ws://hub", "https://h:443/a?"]
).map(parse_upstream)


def allowed_names(route: Route, injected: Mapping[str, str]) -> set[str]:
    allowed = {"host", "upgrade", "connection", "origin", "user-agent"}
    allowed |= {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    }
    allowed |= {"cookie"} if route.pass_cookies else set()
    allowed |= {"authorization"} if route.pass_authorization else set()
    allowed |= {name.lower() for name in injected}
    if route.forwarded == "x-forwarded":
        allowed |= {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    elif route.forwarded == "rfc7239":
        allowed |= {"forwarded"}
    return allowed


def check_request(
    data: bytes, route: Route, upstream: UpstreamTarget, client: ClientRequest, injected: Mapping[str, str]
) -> None:
    target, headers = parse_request(data)
    assert aiohttp_parse(data) == (target, headers)
    assert target.split("?")[0] == upstream.path.split("?")[0]
    assert names(headers) <= allowed_names(route, injected)
    for name, value in injected.items():
        assert values(headers, name) == [value.strip(" \t")]
    for name in names(headers):
        if name not in ("sec-websocket-protocol", "sec-websocket-extensions", "cookie"):
            assert len(values(headers, name)) == 1, name
    assert values(headers, "Upgrade") == ["websocket"]
    assert values(headers, "Connection") == ["Upgrade"]
    if route.forwarded == "x-forwarded" and "x-forwarded-for" not in injected:
        # Whatever the client claimed, X-Forwarded-For is the peer or absent.
        assert len(values(headers, "X-Forwarded-For")) <= 1
        assert all(
            value in client.peer or "::ffff:" in client.peer for value in values(headers, "X-Forwarded-For")
        )


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=_ROUTES,
    upstream=_UPSTREAMS,
    extra=st.lists(st.tuples(_CLIENT_NAMES, _HOSTILE_VALUE), max_size=8),
    injected=st.dictionaries(_INJECTED_NAMES, _HOSTILE_VALUE, max_size=3),
    peer=_PEERS,
    target=_TARGETS,
    host=st.one_of(st.none(), st.sampled_from(["kiosk.example.org", "[::1]:8443"]), _HOSTILE_VALUE),
    scheme=st.sampled_from(["http", "https"]),
)
def test_the_upstream_request_is_valid_and_holds_nothing_outside_the_allowlist(
    route: Route,
    upstream: UpstreamTarget,
    extra: list[tuple[str, str]],
    injected: dict[str, str],
    peer: str,
    target: str,
    host: str | None,
    scheme: str,
) -> None:
    client = make_client(*extra, target=target, peer=peer, scheme=scheme, host=host)
    try:
        data = build_websocket_request(route, upstream, client, injected=injected)
    except (HeaderInjectionError, HandshakeError):
        return
    check_request(data, route, upstream, client, injected)


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=_ROUTES,
    upstream=_UPSTREAMS,
    extra=st.lists(st.tuples(_CLIENT_NAMES, _VALUE), max_size=8),
    injected=st.dictionaries(_INJECTED_NAMES, _VALUE, max_size=3),
    peer=_PEERS,
    query=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=20
    ),
    scheme=st.sampled_from(["http", "https"]),
)
def test_clean_input_is_never_refused(
    route: Route,
    upstream: UpstreamTarget,
    extra: list[tuple[str, str]],
    injected: dict[str, str],
    peer: str,
    query: str,
    scheme: str,
) -> None:
    # Singleton headers once only, so that the request is a valid upgrade.
    singletons = {
        "host",
        "origin",
        "user-agent",
        "sec-websocket-key",
        "sec-websocket-version",
        "authorization",
    }
    extra = [(name, value) for name, value in extra if name.lower() not in singletons]
    client = make_client(*extra, target=f"/ws?{query}", peer=peer, scheme=scheme)
    data = build_websocket_request(route, upstream, client, injected=injected)
    check_request(data, route, upstream, client, injected)


# ----------------------------------------------------------------------------------------------------------
# Single-pass checks give what the step-by-step ones give: the same head, or the same refusal naming the same
# header or fault.

# RFC 9110 §5.5: what a field value may not hold.
_UNSENDABLE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_BAD = "a\r\nX-Evil: 1"
_VALUE_PROBLEM = "the value holds CR, LF, NUL or another character that cannot be sent in a header"


@pytest.mark.parametrize(
    ("route", "client", "injected", "first"),
    [
        (make_route(), make_client(("Origin", _BAD), ("User-Agent", _BAD), drop=("Origin", "User-Agent")), {},
         "Origin"),
        (make_route(), make_client(("User-Agent", "\x00"), drop=("User-Agent",)), {"token": _BAD},
         "User-Agent"),
        (make_route(change_origin=True), make_client(host=_BAD), {"token": "\x7f"}, "token"),
        (make_route(change_origin=False), make_client(("Origin", _BAD), drop=("Origin",), host="\x00"), {},
         "Host"),
        (make_route(), make_client(("Sec-WebSocket-Protocol", "€"), ("Origin", _BAD), drop=("Origin",)), {},
         "Sec-WebSocket-Protocol"),
        # check_upgrade strips every kind of whitespace from the key; the head keeps all but SP and HTAB.
        (make_route(), make_client(("Sec-WebSocket-Key", KEY + "\x0b"), ("Origin", _BAD),
                                   drop=("Sec-WebSocket-Key", "Origin")), {}, "Sec-WebSocket-Key"),
        (make_route(), make_client(), {"x-api-key": "\n", "token": _BAD}, "x-api-key"),
        (make_route(forwarded="rfc7239", change_origin=True), make_client(host="\x00"), {}, "Forwarded"),
        (make_route(pass_cookies=True), make_client(("Cookie", "\r"), ("Origin", " \x00 "), drop=("Origin",)),
         {}, "Origin"),
    ],
)  # fmt: skip
def test_a_refusal_names_the_first_header_in_the_head_that_cannot_be_sent(
    route: Route, client: ClientRequest, injected: dict[str, str], first: str
) -> None:
    with pytest.raises(HeaderInjectionError) as info:
        build_websocket_request(route, UPSTREAM, client, injected=injected)
    assert (info.value.header, info.value.problem) == (first, _VALUE_PROBLEM)


def marked(value: str) -> str:
    return _UNSENDABLE.sub("~unsendable~", value)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=_ROUTES,
    extra=st.lists(st.tuples(_CLIENT_NAMES, _HOSTILE_VALUE), max_size=8),
    injected=st.dictionaries(_INJECTED_NAMES, _HOSTILE_VALUE, max_size=3),
    host=st.one_of(st.none(), _HOSTILE_VALUE),
)
def test_a_refusal_names_the_header_a_line_by_line_check_names(
    route: Route, extra: list[tuple[str, str]], injected: dict[str, str], host: str | None
) -> None:
    client = make_client(*extra, host=host)
    try:
        build_websocket_request(route, UPSTREAM, client, injected=injected)
    except HeaderInjectionError as exc:
        refusal = exc
    except HandshakeError:
        return
    else:
        return
    # The same request with every character that cannot be sent replaced by a visible mark goes through; a
    # line-by-line check refuses the first line of that head that holds a mark.
    clean_client = replace(
        client,
        headers=[(name, marked(value)) for name, value in client.headers],
        host=None if client.host is None else marked(client.host),
    )
    clean_injected = {name: marked(value) for name, value in injected.items()}
    data = build_websocket_request(route, UPSTREAM, clean_client, injected=clean_injected)
    first = next(line for line in data.decode("latin-1").split("\r\n") if "~unsendable~" in line)
    assert (refusal.header, refusal.problem) == (first.partition(":")[0], _VALUE_PROBLEM)


@pytest.mark.parametrize(
    ("fields", "first"),
    [
        ((("Sec-WebSocket-Accept", "a\rb"), ("Sec-WebSocket-Protocol", "\x00")), "Sec-WebSocket-Accept"),
        ((ACCEPTED, ("Sec-WebSocket-Protocol", "\n"), ("Sec-WebSocket-Extensions", "\x00")),
         "Sec-WebSocket-Protocol"),
        ((ACCEPTED, ("Sec-WebSocket-Extensions", "x"), ("Sec-WebSocket-Extensions", "y\x7f")),
         "Sec-WebSocket-Extensions"),
    ],
)  # fmt: skip
def test_the_browsers_101_refuses_naming_the_first_header_that_cannot_be_sent(
    fields: tuple[tuple[str, str], ...], first: str
) -> None:
    with pytest.raises(HeaderInjectionError) as info:
        client_switching_response(response(UPGRADE, CONNECTION, *fields))
    assert (info.value.header, info.value.problem) == (first, _VALUE_PROBLEM)


def line_ending_fault(data: bytes) -> str | None:
    """The parser's line-ending rule stated as a pattern: the first CR without its LF or LF without its CR,
    in the head (up to the first CRLF CRLF) or, while there is none, in everything received - except a CR
    that is the last byte received, which still waits for its LF."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 4]
    fault = re.search(rb"\r(?!\n)|(?<!\r)\n", head)
    if fault is None or (end < 0 and fault[0] == b"\r" and fault.start() == len(data) - 1):
        return None
    return "bare CR" if fault[0] == b"\r" else "bare LF line ending"


def refusal_message(pieces: Sequence[bytes]) -> str | None:
    parser = ResponseHeadParser()
    try:
        for piece in pieces:
            if parser.feed(piece) is not None:
                return None
    except UpstreamProtocolError as exc:
        return exc.message
    return None


@settings(deadline=None, max_examples=300)
@given(
    data=st.lists(
        st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"X: a", b" ", b"HTTP/1.1 101 OK"]), max_size=24
    ).map(b"".join),
    cut=st.integers(min_value=0, max_value=60),
)
@example(data=b"HTTP/1.1 101 OK\r\nX: a\r", cut=0)
@example(data=b"HTTP/1.1 101 OK\r\r\n\r\n", cut=0)
@example(data=b"\n\r\n", cut=1)
def test_line_endings_are_judged_as_the_pattern_says_however_the_bytes_arrive(data: bytes, cut: int) -> None:
    fault = line_ending_fault(data)
    for pieces in ([data], [data[:cut], data[cut:]], [data[i : i + 1] for i in range(len(data))]):
        message = refusal_message(pieces)
        if fault is not None:
            assert message == f"the upstream's response head has a {fault}"
        else:
            assert message is None or "bare" not in message


_NASTY_NAMES = st.one_of(
    _CLIENT_NAMES,
    st.sampled_from(["sec-websocket-protocol", "SEC-WEBSOCKET-EXTENSIONS", "Sec-WebSocket-\u212aey"]),
    st.sampled_from(["\u017fec-websocket-key", "Sec-WebSocket-Protoco\u0130", "Sec-WebSocket-Key"]),
)


@settings(deadline=None)
@given(extra=st.lists(st.tuples(_NASTY_NAMES, _HOSTILE_VALUE), max_size=6))
def test_the_offer_reads_the_headers_as_client_get_does(extra: list[tuple[str, str]]) -> None:
    client = make_client(*extra, drop=("Sec-WebSocket-Key", "Sec-WebSocket-Extensions"))
    assert websocket_offer(client) == WebSocketOffer(
        key=(client.get("Sec-WebSocket-Key") or "").strip(),
        protocols=tuple(
            item.strip()
            for value in client.getall("Sec-WebSocket-Protocol")
            for item in value.split(",")
            if item.strip()
        ),
        extensions=any(
            item.strip() for value in client.getall("Sec-WebSocket-Extensions") for item in value.split(",")
        ),
    )


# ClientRequest and ResponseHead look headers up through a multidict; names compare as str.lower() makes
# them, whatever the multidict version folds with (older ones used str.title()).
_HEADER_NAMES = st.one_of(
    st.sampled_from(
        ["Upgrade", "UPGRADE", "sec-websocket-key", "Sec-WebSocket-\u212aey", "\u017fec-websocket-key"]
    ),
    st.sampled_from(["Stra\u00dfe", "STRASSE", "\u0130", "i\u0307", "\u01c5", "\u01c4", "\u01c6"]),
    st.text(max_size=6),
)


@given(fields=st.lists(st.tuples(_HEADER_NAMES, st.text(max_size=3)), max_size=8), name=_HEADER_NAMES)
def test_header_lookups_ignore_case_as_str_lower_does(fields: list[tuple[str, str]], name: str) -> None:
    client = ClientRequest("GET", "/", fields, "", "http", None)
    head = ResponseHead(101, "Switching Protocols", tuple(fields))
    for looked_up in (name, "Upgrade", "Connection", "Sec-WebSocket-Key", "Strasse"):
        expected = [value for key, value in fields if key.lower() == looked_up.lower()]
        for record in (client, head):
            assert record.getall(looked_up) == expected
            assert record.get(looked_up) == next(iter(expected), None)
