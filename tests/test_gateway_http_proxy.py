"""The gateway's HTTP reverse proxy: the pure forwarding rules, then real servers on free loopback ports — an
echo upstream, the gateway served by wsgate's own Listener, real TLS, raw sockets for smuggling attempts."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import aiohttp
import aiohttp.web_protocol
import pytest
import trustme
from aiohttp import web
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import TIMEOUT, free_port, tls_server_context, wait_for
from wsgate.config import GatewayLimits, Route, UpstreamTls
from wsgate.gateway.forwarding import (
    RejectedRequest,
    check_framing,
    forwarded_for,
    request_headers,
    response_headers,
    upstream_target,
    upstream_url,
)
from wsgate.gateway.http_proxy import HttpProxy
from wsgate.gateway.upgrade import parse_upstream
from wsgate.http_server import Listener, handshake_guard
from wsgate.secret import Secret

NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")
SECRET = "injected-api-key-0123456789abcdef"
UPSTREAM = parse_upstream("http://127.0.0.1:8001")


def make_route(upstream: str | tuple[str, ...] = "http://127.0.0.1:8001", **overrides: Any) -> Route:
    upstreams = (upstream,) if isinstance(upstream, str) else upstream
    route = Route(path="/api", upstream=upstreams, headers=MappingProxyType({"x-api-key": Secret(SECRET)}))
    return replace(route, **overrides)


# ----------------------------------------------------------------------------------------------------------
# The request-target (pure).


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api", "/api"),
        ("/api/x?q=1", "/api/x?q=1"),
        ("/api/", "/api/"),
        ("/api/a%2Fb%20c?x=%2F&y=%zz", "/api/a%2Fb%20c?x=%2F&y=%zz"),  # percent-encoding byte for byte
        ("/api/x?", "/api/x?"),
        ("/api//x", "/api//x"),
        ("http://evil.example/api/x?q=1", "/api/x?q=1"),  # absolute-form: the authority chooses nothing
        ("http://evil.example/api", "/api"),
        ("/api/x?q=1#/../../admin", "/api/x?q=1"),  # a fragment never goes out
    ],
)
def test_the_path_is_kept_as_sent(raw: str, expected: str) -> None:
    assert upstream_target(raw, make_route(), UPSTREAM) == expected


@pytest.mark.parametrize(
    ("route_path", "rewrite", "raw", "expected"),
    [
        ("/api", "/", "/api/x", "/x"),
        ("/api", "/", "/api", "/"),
        ("/api", "/", "/api/", "/"),
        ("/api", "/", "/api/x/y?q=1", "/x/y?q=1"),
        ("/api", "/v1", "/api/x", "/v1/x"),
        ("/api", "/v1", "/api", "/v1"),
        ("/api", "/v1/", "/api", "/v1/"),
        ("/api", "/v1/", "/api/x", "/v1/x"),
        ("/api/", "/", "/api/x", "/x"),
        ("/", "/v1", "/x", "/v1/x"),
        ("/api", "/", "/api?q=1", "/?q=1"),
    ],
)
def test_rewrite_replaces_the_route_prefix(route_path: str, rewrite: str, raw: str, expected: str) -> None:
    route = make_route(path=route_path, rewrite=rewrite)
    assert upstream_target(raw, route, UPSTREAM) == expected


@pytest.mark.parametrize(
    ("upstream", "raw", "expected"),
    [
        ("http://h:1/base", "/api/x?q=1", "/base/api/x?q=1"),
        ("http://h:1/base/", "/api/x", "/base/api/x"),
        ("http://h:1/base?v=2", "/api/x?q=1", "/base/api/x?v=2&q=1"),
        ("http://h:1/?v=2", "/api/x", "/api/x?v=2"),
    ],
)
def test_the_upstream_url_path_and_query_come_first(upstream: str, raw: str, expected: str) -> None:
    assert upstream_target(raw, make_route(upstream), parse_upstream(upstream)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2e",
        "/api/./x",
        "/api/x/..",
        "/api/..;/admin",  # servlet containers drop ";…" before resolving
        "/api\\..\\admin",
        "/api/x%5c..%5cadmin",
        "/%61pi/x",  # the router matched the decoded path; the raw one is not under the prefix
        "/apix",
        "/other",
        "*",
        "evil.example:443",
    ],
)
def test_paths_that_could_leave_the_prefix_are_refused(raw: str) -> None:
    with pytest.raises(RejectedRequest) as info:
        upstream_target(raw, make_route(), UPSTREAM)
    assert info.value.status == 400


@given(st.text(alphabet="/\\a.%2e5cE;?=&#", max_size=30))
def test_an_accepted_path_is_forwarded_unchanged_and_has_no_dot_segment(suffix: str) -> None:
    raw = "/api/" + suffix
    try:
        target = upstream_target(raw, make_route(), UPSTREAM)
    except RejectedRequest:
        return
    assert target == raw.partition("#")[0]
    path = target.partition("?")[0]
    segments = unquote(path).replace("\\", "/").split("/")
    assert not {".", ".."} & {segment.partition(";")[0] for segment in segments}


def test_upstream_url_brackets_ipv6() -> None:
    assert upstream_url(parse_upstream("https://[::1]:8443"), "/api/x") == "https://[::1]:8443/api/x"
    assert upstream_url(parse_upstream("http://h.internal"), "/x?y") == "http://h.internal:80/x?y"


# ----------------------------------------------------------------------------------------------------------
# Framing checks (pure): the handler's own defence, whichever aiohttp parser is loaded.


@pytest.mark.parametrize(
    "fields",
    [
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "5"), ("Content-Length", "5")],
        [("Content-Length", "+5")],
        [("Content-Length", "0x5")],
        [("Content-Length", "5 5")],
        [("Transfer-Encoding", "chunked, identity")],
        [("Transfer-Encoding", "identity")],
        [("Transfer-Encoding", "xchunked")],
        [("Transfer-Encoding", "gzip, chunked")],
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        [("Host", "a"), ("Host", "b")],
    ],
)
def test_ambiguous_framing_is_refused(fields: list[tuple[str, str]]) -> None:
    with pytest.raises(RejectedRequest) as info:
        check_framing(fields)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "fields",
    [[], [("Content-Length", "5")], [("Transfer-Encoding", "Chunked")], [("Host", "a"), ("X", "y")]],
)
def test_clear_framing_passes(fields: list[tuple[str, str]]) -> None:
    check_framing(fields)


# ----------------------------------------------------------------------------------------------------------
# Header fields (pure).


def _build(fields: list[tuple[str, str]], **route: Any) -> list[tuple[str, str]]:
    return request_headers(
        fields, route=make_route(**route), upstream=UPSTREAM, peer="192.0.2.7", scheme="https"
    )


def _names(fields: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in fields]


def test_request_headers_strip_hop_by_hop_and_connection_named_fields() -> None:
    result = _build(
        [
            ("Host", "kiosk.example.org"),
            ("Connection", "keep-alive, X-Hop, cookie2"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
            ("Proxy-Anything", "x"),
            ("X-Hop", "only for this hop"),
            ("Cookie2", "$Version=1"),
            ("Expect", "100-continue"),
            ("Accept", "application/json"),
            ("X-CSRFToken", "abc"),
        ]
    )
    assert _names(result) == [
        "host",
        "accept",
        "x-csrftoken",
        "x-api-key",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ]


def test_cookies_and_authorization_pass_on_http_routes_even_when_the_websocket_flags_are_off() -> None:
    fields = [("Cookie", "sessionid=abc"), ("Cookie", "csrftoken=def"), ("Authorization", "Bearer user")]
    result = _build(fields, pass_cookies=False, pass_authorization=False)
    assert [pair for pair in result if pair[0] in ("Cookie", "Authorization")] == fields


def test_injected_fields_replace_every_client_copy() -> None:
    result = _build([("X-Api-Key", "forged"), ("x-api-key", "forged again"), ("X-Other", "1")])
    assert [value for name, value in result if name.lower() == "x-api-key"] == [SECRET]
    assert "forged" not in repr(result)


def test_host_is_the_clients_unless_change_origin() -> None:
    assert dict(_build([("Host", "kiosk.example.org")]))["Host"] == "kiosk.example.org"
    assert dict(_build([("Host", "kiosk.example.org")], change_origin=True))["Host"] == "127.0.0.1:8001"
    assert dict(_build([]))["Host"] == "127.0.0.1:8001"  # HTTP/1.0 without Host
    assert _names(_build([("Host", "a")])).count("host") == 1


def test_client_forwarding_fields_are_never_trusted() -> None:
    spoofed = [
        ("Host", "kiosk.example.org"),
        ("X-Forwarded-For", "203.0.113.66"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Port", "1"),
        ("X-Forwarded-Prefix", "/admin"),
        ("Forwarded", "for=203.0.113.66"),
        ("X-Real-IP", "203.0.113.66"),
    ]
    assert [pair for pair in _build(spoofed) if pair[0].lower().startswith(("x-f", "forw", "x-real"))] == [
        ("X-Forwarded-For", "192.0.2.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "kiosk.example.org"),
    ]
    rfc = _build(spoofed, forwarded="rfc7239")
    assert [pair for pair in rfc if pair[0].lower().startswith(("x-f", "forw", "x-real"))] == [
        ("Forwarded", "for=192.0.2.7;proto=https;host=kiosk.example.org")
    ]
    assert not [
        name for name in _names(_build(spoofed, forwarded="none")) if name.startswith(("x-f", "forw"))
    ]


def test_forwarded_element_quotes_what_is_not_a_token() -> None:
    result = request_headers(
        [("Host", "kiosk.example.org:8443")],
        route=make_route(forwarded="rfc7239"),
        upstream=UPSTREAM,
        peer="::1",
        scheme="http",
    )
    assert dict(result)["Forwarded"] == 'for="[::1]";proto=http;host="kiosk.example.org:8443"'
    unknown = request_headers(
        [], route=make_route(forwarded="rfc7239"), upstream=UPSTREAM, peer=None, scheme="http"
    )
    assert dict(unknown)["Forwarded"] == "for=unknown;proto=http"


def test_an_injected_forwarding_field_is_not_written_twice() -> None:
    route = make_route(headers=MappingProxyType({"x-forwarded-proto": Secret("https")}))
    result = request_headers([], route=route, upstream=UPSTREAM, peer="192.0.2.7", scheme="http")
    assert [pair for pair in result if pair[0].lower() == "x-forwarded-proto"] == [
        ("x-forwarded-proto", "https")
    ]


@pytest.mark.parametrize(
    ("peer", "expected"),
    [("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"), ("fe80::1%eth0", "fe80::1"), ("x", None)],
)
def test_forwarded_for_is_an_ip_address(peer: str, expected: str | None) -> None:
    assert forwarded_for(peer) == expected


def test_fields_that_cannot_be_written_back_unchanged_are_dropped() -> None:
    result = _build(
        [("X-Bad", "a\x00b"), ("X-Latin", "caf\udce9"), ("X-Good", "caf\u00e9"), ("Bad Name", "x")]
    )
    assert [name for name in _names(result) if name.startswith(("x-bad", "x-latin", "x-good", "bad"))] == [
        "x-good"
    ]


def test_response_headers_strip_hop_by_hop_and_keep_the_rest() -> None:
    fields = [
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"),  # meaningless next to Transfer-Encoding (RFC 9112 §6.3)
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Encoding", "gzip"),
    ]
    assert response_headers(fields) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Encoding", "gzip"),
    ]
    assert response_headers([("Content-Length", "12")]) == [("Content-Length", "12")]


# ----------------------------------------------------------------------------------------------------------
# Real servers.


@dataclass
class Seen:
    method: str
    path: str
    peer_port: int
    complete: bool = False


@dataclass
class Upstream:
    """An aiohttp app that echoes what it received as JSON, with per-path overrides."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return len({seen.peer_port for seen in self.seen})

    def paths(self, *, complete: bool = False) -> list[str]:
        return [seen.path for seen in self.seen if seen.complete or not complete]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(request.method, request.raw_path, peer[1] if peer else 0)
        self.seen.append(seen)
        override = self.routes.get(request.path)
        if override is not None:
            response = await override(request)
            seen.complete = True
            return response
        digest, length, head = hashlib.sha256(), 0, b""
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
            if len(head) < 4096:
                head += chunk[: 4096 - len(head)]
        seen.complete = True
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [[name, value] for name, value in request.headers.items()],
                "body": head.decode("latin-1"),
                "length": length,
                "sha256": digest.hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
            },
            headers={"X-Upstream": "echo"},
        )


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    runners: list[web.AppRunner] = []

    async def start(ssl_context: ssl.SSLContext | None = None) -> Upstream:
        upstream = Upstream()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", upstream.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        upstream.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return upstream

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def upstream(start_upstream: StartUpstream) -> Upstream:
    return await start_upstream()


@dataclass
class Gateway:
    url: str
    port: int
    proxy: HttpProxy


StartGateway = Callable[..., Awaitable[Gateway]]
LIMITS = GatewayLimits(upstream_timeout=5.0, handshake_timeout=5.0)


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """The proxy mounted as the product mounts it, served by wsgate's Listener on a free port."""
    started: list[tuple[Listener, HttpProxy]] = []

    async def start(route: Route, limits: GatewayLimits = LIMITS) -> Gateway:
        proxy = HttpProxy(route, limits=limits)
        app = web.Application(middlewares=[handshake_guard])
        app.router.add_route("*", route.path, proxy.handle)
        app.router.add_route("*", route.path.rstrip("/") + "/{tail:.*}", proxy.handle)
        app.router.add_route("*", "/{tail:.*}", _not_proxied)
        listener = Listener(app, host="127.0.0.1", port=0, handshake_timeout=limits.handshake_timeout)
        await proxy.start()
        await listener.start()
        started.append((listener, proxy))
        return Gateway(f"http://127.0.0.1:{listener.port}", listener.port, proxy)

    yield start
    for listener, proxy in reversed(started):
        await listener.close()
        await proxy.close()


async def _not_proxied(request: web.Request) -> web.Response:
    return web.Response(status=404, text="not proxied\n")


async def echo(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.status == 200, await response.text()
    body = await response.json()
    assert isinstance(body, dict)
    return body


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echoed["headers"] if key.lower() == name.lower()]


async def test_path_query_and_method_are_kept(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    raw = "/api/a%2Fb%20c/d?x=%2F&y=1&y=2"
    async with http.request("PATCH", URL(gateway.url + raw, encoded=True), data=b"hi") as resp:
        echoed = await echo(resp)
    assert (echoed["method"], echoed["path"], echoed["body"]) == ("PATCH", raw, "hi")
    assert header_values(echoed, "content-type") == ["application/octet-stream"]  # the client's, passed on
    async with http.get(gateway.url + "/api") as resp:
        assert (await echo(resp))["path"] == "/api"
    absolute = b"GET http://evil.example/api/x?q=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    statuses, rest = await raw_request(gateway.port, absolute)
    assert statuses == [200]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["path"] == "/api/x?q=%2F"
    assert [seen.path for seen in upstream.seen] == [raw, "/api", "/api/x?q=%2F"]


async def test_rewrite_replaces_the_prefix_end_to_end(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url, rewrite="/"))
    async with http.get(gateway.url + "/api/x/y?q=1") as resp:
        assert (await echo(resp))["path"] == "/x/y?q=1"
    async with http.get(gateway.url + "/api") as resp:
        assert (await echo(resp))["path"] == "/"


async def test_a_path_escaping_the_prefix_is_refused_without_contacting_the_upstream(
    upstream: Upstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    for target in ("/api/%2e%2e/admin", "/api/..%2Fadmin", "/api/x/..;/admin"):
        message = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _ = await raw_request(gateway.port, message.encode())
        assert status == [400], target
    assert upstream.seen == []


async def test_headers_injected_stripped_and_forwarded(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    headers = [
        ("Host", "kiosk.example.org"),
        ("X-Api-Key", "forged-by-the-browser"),
        ("Cookie", "sessionid=abc"),
        ("Authorization", "Bearer user-token"),
        ("X-Forwarded-For", "203.0.113.66"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=203.0.113.66"),
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("Connection", "X-Hop"),
        ("X-Hop", "1"),
        ("X-CSRFToken", "csrf"),
    ]
    # No User-Agent, Accept or Accept-Encoding from this client: the gateway must not add its own either.
    async with http.get(
        gateway.url + "/api/x", headers=CIMultiDict(headers), skip_auto_headers=NO_AUTO_HEADERS
    ) as resp:
        assert SECRET not in repr(resp.headers)
        echoed = await echo(resp)
    assert header_values(echoed, "x-api-key") == [SECRET]
    assert header_values(echoed, "cookie") == ["sessionid=abc"]
    assert header_values(echoed, "authorization") == ["Bearer user-token"]
    assert header_values(echoed, "x-csrftoken") == ["csrf"]
    assert header_values(echoed, "host") == ["kiosk.example.org"]
    assert header_values(echoed, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(echoed, "x-forwarded-host") == ["kiosk.example.org"]
    assert header_values(echoed, "x-forwarded-proto") == ["http"]
    for name in ("forwarded", "proxy-authorization", "x-hop", "user-agent", "accept", "accept-encoding"):
        assert header_values(echoed, name) == [], name


async def test_change_origin_sends_the_upstreams_host(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url, change_origin=True, forwarded="rfc7239"))
    async with http.get(gateway.url + "/api/x", headers={"Host": "kiosk.example.org"}) as resp:
        echoed = await echo(resp)
    assert header_values(echoed, "host") == [upstream.url.removeprefix("http://")]
    assert header_values(echoed, "forwarded") == ["for=127.0.0.1;proto=http;host=kiosk.example.org"]
    assert header_values(echoed, "x-forwarded-for") == []


async def test_response_hop_by_hop_fields_are_stripped_and_the_rest_passed(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    head = (
        b"HTTP/1.1 201 Created\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"X-End: 1\r\nContent-Length: 2\r\n\r\nok"
    )
    async with raw_upstream(answer=head) as port:
        gateway = await start_gateway(make_route(f"http://127.0.0.1:{port}"))
        async with http.get(gateway.url + "/api/x") as resp:
            assert resp.status == 201
            assert resp.reason == "Created"
            assert await resp.read() == b"ok"
            assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert resp.headers["X-End"] == "1"
            for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
                assert name not in resp.headers, name


async def test_compressed_bodies_pass_through_untouched(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    payload = gzip.compress(b"x" * 10000)

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    upstream.routes["/api/gz"] = gzipped
    gateway = await start_gateway(make_route(upstream.url))
    async with http.get(gateway.url + "/api/gz", auto_decompress=False) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(payload))
        assert await resp.read() == payload


async def test_head_and_no_content_responses(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    upstream.routes["/api/empty"] = empty
    gateway = await start_gateway(make_route(upstream.url))
    async with http.head(gateway.url + "/api/x") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 0
        assert await resp.read() == b""
    async with http.delete(gateway.url + "/api/empty") as resp:
        assert resp.status == 204
    async with http.get(gateway.url + "/api/x") as resp:  # the connection is still in sync
        assert (await echo(resp))["method"] == "GET"


async def test_chunked_upload_of_several_megabytes_is_streamed(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    block = bytes(range(256)) * 256  # 64 KiB
    total = 8 * 1024 * 1024
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(block)):
            digest.update(block)
            yield block

    async with http.post(gateway.url + "/api/upload", data=body()) as resp:
        echoed = await echo(resp)
    assert echoed["length"] == total
    assert echoed["sha256"] == digest.hexdigest()
    assert echoed["chunked"]  # re-framed by the gateway, but still streamed: no Content-Length was known


async def test_upload_reaches_the_upstream_before_the_client_has_sent_it_all(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    first_arrived = asyncio.Event()

    async def watch(request: web.Request) -> web.Response:
        received = await request.content.readany()
        first_arrived.set()
        received += await request.content.read()
        return web.Response(text=received.decode())

    upstream.routes["/api/watch"] = watch
    gateway = await start_gateway(make_route(upstream.url))

    async def body() -> AsyncIterator[bytes]:
        yield b"first,"
        await asyncio.wait_for(first_arrived.wait(), TIMEOUT)  # not before the upstream got the first part
        yield b"last"

    async with http.post(gateway.url + "/api/watch", data=body()) as resp:
        assert resp.status == 200
        assert await resp.text() == "first,last"


async def test_slow_download_reaches_the_client_incrementally(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    client_has_first = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first chunk;")
        await asyncio.wait_for(client_has_first.wait(), TIMEOUT)
        await response.write(b"last chunk")
        await response.write_eof()
        return response

    upstream.routes["/api/slow"] = slow
    gateway = await start_gateway(make_route(upstream.url))
    async with http.get(gateway.url + "/api/slow") as resp:
        first = await asyncio.wait_for(resp.content.readany(), TIMEOUT)
        assert first == b"first chunk;"
        client_has_first.set()
        assert await resp.content.read() == b"last chunk"


async def test_keep_alive_connections_to_the_upstream_are_reused(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    for index in range(10):
        async with http.post(gateway.url + f"/api/{index}", data=b"x" * index) as resp:
            await echo(resp)
    assert len(upstream.seen) == 10
    assert upstream.connections == 1


async def test_502_when_nothing_listens(
    start_gateway: StartGateway, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsgate")
    gateway = await start_gateway(make_route(f"http://127.0.0.1:{free_port()}"))
    async with http.post(gateway.url + "/api/x?token=abc", data=b"body") as resp:
        assert resp.status == 502
        assert "reached" in await resp.text()
    access = await access_lines(caplog, 1)
    assert len(access) == 1
    assert "status=502" in access[0]
    assert "token=[redacted]" in access[0]
    assert "abc" not in caplog.text


async def test_504_when_the_upstream_never_answers(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async with raw_upstream(answer=None) as port:
        gateway = await start_gateway(
            make_route(f"http://127.0.0.1:{port}"), GatewayLimits(upstream_timeout=0.3)
        )
        async with http.get(gateway.url + "/api/x") as resp:
            assert resp.status == 504
        async with http.post(gateway.url + "/api/x", data=b"body") as resp:
            assert resp.status == 504


async def test_504_when_the_response_body_stalls_cuts_the_client_connection(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"x" * 10)
        await release.wait()
        return response

    upstream.routes["/api/stall"] = stall
    gateway = await start_gateway(make_route(upstream.url), GatewayLimits(upstream_timeout=0.3))
    try:
        async with http.get(gateway.url + "/api/stall") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    finally:
        release.set()


async def test_a_dead_upstream_is_benched_and_every_request_succeeds(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = await start_gateway(make_route((dead, upstream.url)))
    for _ in range(6):
        async with http.post(gateway.url + "/api/x", data=b"payload") as resp:
            assert (await echo(resp))["body"] == "payload"
    assert gateway.proxy.pool.is_benched(dead)
    assert not gateway.proxy.pool.is_benched(upstream.url)
    assert len(upstream.seen) == 6


async def test_a_slow_upload_is_not_cut_while_it_keeps_moving(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url), GatewayLimits(upstream_timeout=0.3))

    async def body() -> AsyncIterator[bytes]:
        for _ in range(6):  # 0.6 s in all, twice upstream_timeout: only the gap between chunks is bounded
            yield b"x" * 1000
            await asyncio.sleep(0.1)

    async with http.post(gateway.url + "/api/slow-upload", data=body()) as resp:
        assert (await echo(resp))["length"] == 6000


async def test_504_when_the_upstream_stops_reading_the_upload(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsgate")
    async with raw_upstream(answer=None, read_body=False) as port:
        gateway = await start_gateway(
            make_route(f"http://127.0.0.1:{port}"), GatewayLimits(upstream_timeout=0.3)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /api/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

        async def pump() -> None:
            while True:  # far more than the socket buffers hold; each write() queues one whole chunk
                writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                await writer.drain()

        pumping = asyncio.create_task(pump())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        finally:
            pumping.cancel()
        assert head.startswith(b"HTTP/1.1 504 ")
        # End the body (the gateway reads what is left and discards it): the connection is still in step.
        writer.write(b"0\r\n\r\nGET /api/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
    assert b"HTTP/1.1 504 " in rest
    await wait_for(lambda: caplog.text.count("error=upstream-timeout") == 2, what="both access lines")


async def test_408_when_the_client_stops_sending_its_body(
    upstream: Upstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(make_route(upstream.url), replace(LIMITS, idle_timeout=0.3))
    statuses, _ = await raw_request(
        gateway.port, b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"y" * 10
    )
    assert statuses == [408]
    assert upstream.paths(complete=True) == []


@pytest.mark.parametrize(
    ("answer", "method"),
    [
        (b"", "POST"),  # closes without answering
        (b"", "GET"),  # aiohttp repeats an idempotent request once on a fresh connection, then gives up
        (b"garbage\r\n\r\n", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "GET"),
    ],
)
async def test_502_when_the_upstream_breaks_the_exchange(
    answer: bytes, method: str, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async with raw_upstream(answer=answer) as port:
        gateway = await start_gateway(make_route(f"http://127.0.0.1:{port}"))
        async with http.request(method, gateway.url + "/api/x") as resp:
            assert resp.status == 502


async def test_http_1_0_client_without_host(upstream: Upstream, start_gateway: StartGateway) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    statuses, rest = await raw_request(gateway.port, b"GET /api/old HTTP/1.0\r\n\r\n")
    assert statuses == [200]
    echoed = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert header_values(echoed, "host") == [upstream.url.removeprefix("http://")]
    assert header_values(echoed, "x-forwarded-host") == []


async def test_upstream_cookies_are_never_shared_between_clients(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.set_cookie("sessionid", "for-the-first-client")
        return response

    upstream.routes["/api/login"] = login
    gateway = await start_gateway(make_route(upstream.url))
    async with http.post(gateway.url + "/api/login") as resp:
        assert "sessionid=for-the-first-client" in resp.headers["Set-Cookie"]
    async with aiohttp.ClientSession() as other, other.get(gateway.url + "/api/x") as resp:
        assert header_values(await echo(resp), "cookie") == []


async def test_redirects_are_passed_not_followed(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/api/elsewhere")

    upstream.routes["/api/moved"] = moved
    gateway = await start_gateway(make_route(upstream.url))
    async with http.get(gateway.url + "/api/moved", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/api/elsewhere"
    assert upstream.paths() == ["/api/moved"]


async def test_expect_100_continue_is_answered_by_the_gateway(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    async with http.put(gateway.url + "/api/x", data=b"after 100", expect100=True) as resp:
        echoed = await echo(resp)
    assert echoed["body"] == "after 100"
    assert header_values(echoed, "expect") == []


async def test_access_log_line(
    upstream: Upstream,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsgate.access")
    gateway = await start_gateway(make_route(upstream.url))
    async with http.post(
        gateway.url + "/api/x?ticket=t1&page=2", data=b"four", headers={"Cookie": "c=v"}
    ) as resp:
        size = len(await resp.read())
    [line] = await access_lines(caplog, 1)
    assert line.startswith(
        "http peer=127.0.0.1 method=POST target=/api/x?ticket=[redacted]&page=2 route=/api "
    )
    assert f" status=200 in=4 out={size} duration=" in line
    assert line.endswith(f"s upstream={upstream.url}")
    assert "t1" not in line
    assert "c=v" not in line


async def test_lifecycle(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    await gateway.proxy.close()
    async with http.get(gateway.url + "/api/x") as resp:
        assert resp.status == 503
    with pytest.raises(ValueError, match="DummyCookieJar"):
        HttpProxy(make_route(upstream.url), limits=LIMITS, session=http)
    with pytest.raises(ValueError, match="WebSocket"):
        HttpProxy(make_route("ws://127.0.0.1:1/ws", websocket=True), limits=LIMITS)


async def test_a_given_session_is_used_and_left_open(upstream: Upstream, start_gateway: StartGateway) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        proxy = HttpProxy(make_route(upstream.url), limits=LIMITS, session=session)
        app = web.Application()
        app.router.add_route("*", "/api/{tail:.*}", proxy.handle)
        listener = Listener(app, host="127.0.0.1", port=0, handshake_timeout=5)
        await proxy.start()
        await listener.start()
        try:
            async with session.get(f"http://127.0.0.1:{listener.port}/api/x", headers={"Host": "h"}) as resp:
                assert header_values(await echo(resp), "host") == ["h"]
        finally:
            await listener.close()
            await proxy.close()
        assert not session.closed


# ----------------------------------------------------------------------------------------------------------
# TLS upstreams.


async def test_https_upstream_verified_with_the_configured_ca(
    ca: trustme.CA, tmp_path: Path, start_upstream: StartUpstream, start_gateway: StartGateway,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    upstream = await start_upstream(tls_server_context(ca))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    gateway = await start_gateway(make_route(upstream.url, tls=UpstreamTls(ca=ca_file)))
    for _ in range(3):
        async with http.get(gateway.url + "/api/tls") as resp:
            assert header_values(await echo(resp), "x-api-key") == [SECRET]
    assert upstream.connections == 1


async def test_an_untrusted_certificate_is_a_502_and_one_clear_log_line(
    start_upstream: StartUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    upstream = await start_upstream(tls_server_context(trustme.CA()))  # a CA nobody trusts
    gateway = await start_gateway(make_route(upstream.url))
    caplog.set_level(logging.DEBUG, logger="wsgate")
    async with http.get(gateway.url + "/api/x", headers={"Cookie": "sessionid=abc"}) as resp:
        assert resp.status == 502
    lines = [
        r
        for r in caplog.records
        if r.name == "wsgate.gateway" and "certificate verify failed" in r.getMessage()
    ]
    assert len(lines) == 1
    assert upstream.url in lines[0].getMessage()
    assert lines[0].levelno == logging.ERROR
    assert upstream.seen == []
    assert SECRET not in caplog.text
    assert "sessionid" not in caplog.text


async def test_verification_off_only_when_configured(
    start_upstream: StartUpstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    upstream = await start_upstream(tls_server_context(trustme.CA()))
    gateway = await start_gateway(make_route(upstream.url, tls=UpstreamTls(verify=False)))
    async with http.get(gateway.url + "/api/x") as resp:
        await echo(resp)


# ----------------------------------------------------------------------------------------------------------
# Request smuggling, on raw sockets, against both of aiohttp's request parsers.


@pytest.fixture(params=["llhttp", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's request parser: llhttp (the C extension, what runs in production) or aiohttp's
    pure-Python one (AIOHTTP_NO_EXTENSIONS=1, or a platform without the extension)."""
    chosen = HttpRequestParserC if request.param == "llhttp" else HttpRequestParserPy
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", chosen)
    return str(request.param)


SMUGGLED = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
# To a reader that believes Transfer-Encoding: an empty body, then a second request of the attacker's.
SMUGGLING_BODY = b"0\r\n\r\n" + SMUGGLED
N = b"%d" % len(SMUGGLING_BODY)


def post(fields: bytes, body: bytes = SMUGGLING_BODY) -> bytes:
    return b"POST /api/a HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" + body


HEAD_SMUGGLING = {
    "CL.TE": post(b"Content-Length: " + N + b"\r\nTransfer-Encoding: chunked\r\n"),
    "TE.CL": post(b"Transfer-Encoding: chunked\r\nContent-Length: " + N + b"\r\n"),
    "CL.CL": post(b"Content-Length: 0\r\nContent-Length: " + N + b"\r\n"),
    "chunked, identity + CL": post(b"Transfer-Encoding: chunked, identity\r\nContent-Length: " + N + b"\r\n"),
    "chunked, identity": post(b"Transfer-Encoding: chunked, identity\r\n"),
    "space before colon": post(b"Transfer-Encoding : chunked\r\nContent-Length: " + N + b"\r\n"),
    "xchunked": post(b"Transfer-Encoding: xchunked\r\n"),
    "tab before colon": post(b"Transfer-Encoding\t: chunked\r\n"),
    "vertical tab": post(b"Transfer-Encoding:\x0bchunked\r\n"),
    "obs-fold": post(b"X-Pad: 1\r\n\tTransfer-Encoding: chunked\r\nContent-Length: " + N + b"\r\n"),
    "two TE lines": post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
    "CL with sign": post(b"Content-Length: +" + N + b"\r\n"),
    "bare LF": post(b"X-Pad: 1\nTransfer-Encoding: chunked\r\nContent-Length: " + N + b"\r\n"),
    "two Hosts": b"GET /api/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
}

BODY_SMUGGLING = {
    "size not hex": b"zz\r\n",
    "negative size": b"-1\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "overflowing size": b"10000000000000000\r\n",
    "data longer than size": b"5\r\nhelloXX\r\n0\r\n\r\n",
    "space inside size": b"5 5\r\nhello\r\n0\r\n\r\n",
}


async def test_smuggling_in_the_head_is_refused_and_never_reaches_the_upstream(
    parser: str, upstream: Upstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    for index, (name, attack) in enumerate(HEAD_SMUGGLING.items()):
        legit = b"GET /api/legit?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % index
        statuses, _ = await raw_request(gateway.port, legit, attack)
        assert statuses == [200, 400], f"{parser}: {name}: {statuses}"
    assert upstream.paths() == [f"/api/legit?n={index}" for index in range(len(HEAD_SMUGGLING))]


async def test_bad_chunks_are_refused_and_nothing_smuggled_reaches_the_upstream(
    parser: str, upstream: Upstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(make_route(upstream.url), replace(LIMITS, idle_timeout=0.5))
    for index, (name, chunk) in enumerate(BODY_SMUGGLING.items()):
        legit = b"GET /api/legit?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % index
        attack = (
            b"POST /api/post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + SMUGGLED
        )
        statuses, _ = await raw_request(gateway.port, legit, attack)
        # The pure-Python parser takes any number of hex digits as a size: it then waits for that much data,
        # which swallows the "smuggled" request as body bytes, until the client idle timeout (408).
        expected = 408 if (parser, name) == ("python", "overflowing size") else 400
        assert statuses == [200, expected], f"{parser}: {name}: {statuses}"
    # Only the legitimate requests completed upstream; a POST head may have gone out before its body broke.
    assert upstream.paths(complete=True) == [f"/api/legit?n={index}" for index in range(len(BODY_SMUGGLING))]
    assert "/api/smuggled" not in upstream.paths()


async def test_a_body_that_breaks_its_framing_midway_is_refused_and_abandoned_upstream(
    parser: str, upstream: Upstream, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(make_route(upstream.url), replace(LIMITS, idle_timeout=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(
            b"POST /api/post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await wait_for(lambda: upstream.paths() == ["/api/post"], what="the request to start upstream")
        writer.write(b"zz\r\n" + SMUGGLED)
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    # The pure-Python parser fails the body stream (400). llhttp's parser drops the in-flight body stream
    # without failing it, so the proxy only sees the body stop: 408 after the client idle timeout.
    expected = b"HTTP/1.1 400 " if parser == "python" else b"HTTP/1.1 408 "
    assert answer.startswith(expected), answer
    assert upstream.paths(complete=True) == []
    assert upstream.paths() == ["/api/post"]


async def test_a_truncated_upload_does_not_poison_pooled_connections(
    upstream: Upstream, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(make_route(upstream.url))
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /api/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
    await writer.drain()
    await wait_for(lambda: upstream.paths() == ["/api/cut"], what="the upload to start upstream")
    writer.close()
    for index in range(3):
        async with http.post(gateway.url + f"/api/after?n={index}", data=b"z" * 500) as resp:
            echoed = await echo(resp)
            assert (echoed["path"], echoed["body"]) == (f"/api/after?n={index}", "z" * 500)
    assert upstream.paths(complete=True) == [f"/api/after?n={index}" for index in range(3)]


async def test_the_secret_never_reaches_a_log(
    upstream: Upstream,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway(make_route(upstream.url))
    async with http.get(gateway.url + "/api/x?token=abc", headers={"X-Api-Key": "forged"}) as resp:
        await echo(resp)
    dead = await start_gateway(make_route(f"http://127.0.0.1:{free_port()}"))
    async with http.get(dead.url + "/api/x") as resp:
        assert resp.status == 502
    assert len(await access_lines(caplog, 2)) == 2
    for text in (SECRET, "forged", "abc"):
        assert text not in caplog.text


async def access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    """The wsgate.access lines, once there are ``count``: they reach logging in batches
    (wsgate.logs.access_log.delay after their event)."""

    def lines() -> list[str]:
        return [record.getMessage() for record in caplog.records if record.name == "wsgate.access"]

    await wait_for(lambda: len(lines()) >= count, what=f"{count} access line(s)")
    return lines()


# ----------------------------------------------------------------------------------------------------------
# Helpers: raw sockets.


async def raw_request(port: int, *messages: bytes) -> tuple[list[int], bytes]:
    """Send each message as is on one connection, waiting for one response to each but the last, then read
    until the gateway closes. Returns the statuses of every response read, and the bytes after the last
    complete one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses: list[int] = []
    try:
        for message in messages[:-1]:
            writer.write(message)
            statuses.append(await asyncio.wait_for(read_response(reader), TIMEOUT))
        writer.write(messages[-1])
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    statuses += [int(line.split()[1]) for line in rest.split(b"\r\n") if line.startswith(b"HTTP/1.")]
    return statuses, rest


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response with a Content-Length body; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


@contextlib.asynccontextmanager
async def raw_upstream(answer: bytes | None, *, read_body: bool = True) -> AsyncIterator[int]:
    """A TCP server that reads each request head and sends ``answer``: ``None`` never answers, ``b""`` closes
    the connection. With ``read_body=False`` it stops reading after the first head."""
    connections: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if answer == b"":
                    writer.close()
                    return
                if answer is not None:
                    writer.write(answer)
                if not read_body:
                    await stop.wait()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        stop.set()
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()
