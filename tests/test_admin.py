"""The admin page of `wsgate up`: the pure parts (sessions, CSRF, rate limit, presence, rendering) directly,
then the app on a free port in front of a real hub with real kiosk WebSocket clients, driven by an aiohttp
client with a cookie jar the way a browser would drive it."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import (
    KEY_NEW,
    ORIGIN,
    PUBLISH_TOKEN,
    TIMEOUT,
    Connect,
    StartHub,
    free_port,
    kiosk_headers,
    receive_json,
    subscribe,
)
from wsgate.auth.origins import OriginPolicy
from wsgate.auth.tokens import mint_token
from wsgate.demo import admin
from wsgate.demo.admin import (
    COOKIE_NAME,
    SECURITY_HEADERS,
    Kiosk,
    LoginLimiter,
    SessionCodec,
    build_admin_app,
    client_address,
    from_own_page,
    group_presence,
    is_kiosk_id,
    render_dashboard,
    render_kiosk_row,
    render_login,
)
from wsgate.hub.server import HubServer
from wsgate.secret import Secret

PASSWORD = "correct horse battery staple 42"
SESSION_KEY = bytes(range(32))
# The gateway's own origins in `wsgate up`: the page the admin's browser shows is served from there.
ADMIN_ORIGIN = "http://127.0.0.1:8000"
EVIL_ID = "<img src=x onerror=alert(1)>"
WEB_ADMIN = Path(admin.__file__).parent.parent / "web" / "admin"

# ----------------------------------------------------------------------------------------------------------
# Pure parts.


def test_session_cookie_round_trip() -> None:
    codec = SessionCodec(SESSION_KEY, ttl=60)
    session, cookie = codec.issue(now=1000.0)
    assert session.expires == 1060
    assert codec.verify(cookie, now=1059.9) == session
    assert codec.verify(cookie, now=1060.0) is None  # expired
    assert SessionCodec(bytes(32), ttl=60).verify(cookie, now=1000.0) is None  # another key
    other, other_cookie = codec.issue(now=1000.0)
    assert other.id != session.id
    assert other_cookie != cookie


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def test_tampered_cookies_are_refused() -> None:
    codec = SessionCodec(SESSION_KEY)
    _, cookie = codec.issue(now=1000.0)
    expiry, session_id, mac = cookie.split(".")
    forged = [
        f"{int(expiry) + 3600}.{session_id}.{mac}",  # a longer life
        f"0{expiry}.{session_id}.{mac}",  # the same number, spelled differently
        f"{expiry}.{_flip(session_id, 0)}.{mac}",
        f"{expiry}.{session_id}.{_flip(mac, 5)}",
        f"{expiry}.{session_id}.",
        f"{expiry}.{session_id}",
        cookie + ".x",
        cookie + "=",
        " " + cookie,
        "",
        "x" * 5000,
        "é" * 10,
    ]
    for value in forged:
        assert codec.verify(value, now=1000.0) is None, value
    assert codec.verify(None) is None


def test_revoked_session_is_refused_and_forgotten_once_expired() -> None:
    codec = SessionCodec(SESSION_KEY, ttl=60)
    session, cookie = codec.issue(now=1000.0)
    codec.revoke(session, now=1001.0)
    assert codec.verify(cookie, now=1002.0) is None
    later, later_cookie = codec.issue(now=2000.0)
    codec.revoke(later, now=2000.0)  # the first revocation has expired: it is dropped
    assert list(codec._revoked) == [later.id]
    assert codec.verify(later_cookie, now=2001.0) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    codec = SessionCodec(SESSION_KEY)
    one, cookie = codec.issue()
    two, _ = codec.issue()
    token = codec.csrf_token(one)
    assert codec.check_csrf(one, token)
    assert not codec.check_csrf(two, token)
    assert not codec.check_csrf(one, None)
    assert not codec.check_csrf(one, "")
    assert not codec.check_csrf(one, token[:-1])
    assert not codec.check_csrf(one, token + "é")
    # Neither is derivable from the other: the cookie's MAC is not the CSRF token.
    assert token not in cookie


def test_session_codec_refuses_short_keys_and_bad_ttls() -> None:
    with pytest.raises(ValueError, match="32"):
        SessionCodec(b"short")
    with pytest.raises(ValueError, match="ttl"):
        SessionCodec(SESSION_KEY, ttl=0)


def test_session_tag_is_not_part_of_the_cookie() -> None:
    session, cookie = SessionCodec(SESSION_KEY).issue()
    assert re.fullmatch(r"[0-9a-f]{8}", session.tag)
    assert session.tag not in cookie


def test_login_limiter_sliding_window() -> None:
    limiter = LoginLimiter(max_failures=3, window=60)
    for now in (0.0, 10.0, 20.0):
        assert limiter.retry_after("a", now) == 0
        limiter.record_failure("a", now)
    assert limiter.retry_after("a", 20.0) == pytest.approx(40.0)
    assert limiter.retry_after("b", 20.0) == 0  # per client
    assert limiter.retry_after("a", 59.9) > 0
    assert limiter.retry_after("a", 60.0) == 0  # the first failure left the window
    limiter.record_failure("a", 60.0)
    assert limiter.retry_after("a", 60.0) == pytest.approx(10.0)  # 10, 20, 60 are within the window
    limiter.record_success("a")
    assert limiter.retry_after("a", 60.0) == 0


def test_login_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(max_failures=2, window=60, max_clients=3)
    for client in ("a", "b", "c"):
        limiter.record_failure(client, 0.0)
    limiter.record_failure("a", 1.0)  # "a" failed most recently, "b" least
    limiter.record_failure("d", 2.0)
    assert len(limiter) == 3
    assert limiter.retry_after("a", 2.0) > 0
    limiter.record_failure("b", 3.0)  # "b" was forgotten: this is its first counted failure again
    assert limiter.retry_after("b", 3.0) == 0


@pytest.mark.parametrize(
    ("forwarded", "peer", "expected"),
    [
        (None, "127.0.0.1", "127.0.0.1"),
        ("203.0.113.7", "127.0.0.1", "203.0.113.7"),
        ("10.0.0.1, 203.0.113.7", "127.0.0.1", "203.0.113.7"),
        ("2001:db8::1", "127.0.0.1", "2001:db8::1"),
        ("not an address", "127.0.0.1", "127.0.0.1"),
        ("", None, "unknown"),
    ],
)
def test_client_address(forwarded: str | None, peer: str | None, expected: str) -> None:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    assert client_address(headers, peer) == expected


@pytest.mark.parametrize(
    ("origins", "fetch_site", "allowed"),
    [
        ([], None, True),  # not a browser: the session and the CSRF token still apply
        ([ADMIN_ORIGIN], None, True),
        ([ADMIN_ORIGIN], "same-origin", True),
        (["http://LOCALHOST:8000"], "same-origin", True),
        ([ADMIN_ORIGIN], "none", True),
        # A plain form post under Referrer-Policy: no-referrer carries Origin: null.
        (["null"], "same-origin", True),
        (["null"], None, False),
        (["null"], "cross-site", False),
        (["null"], "same-site", False),
        ([ADMIN_ORIGIN], "cross-site", False),
        ([ADMIN_ORIGIN], "same-site", False),
        ([], "cross-site", False),
        (["https://evil.example"], None, False),
        (["https://evil.example"], "same-origin", False),
        ([ADMIN_ORIGIN, ADMIN_ORIGIN], "same-origin", False),
        (["http://127.0.0.1:8000.evil.example"], None, False),
    ],
)
def test_from_own_page(origins: list[str], fetch_site: str | None, allowed: bool) -> None:
    policy = OriginPolicy((ADMIN_ORIGIN, "http://localhost:8000"), allow_missing=True)
    assert from_own_page(origins, fetch_site, policy) is allowed


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("kiosk-7", True),
        ("a", True),
        ("Lobby_2.east:door@city-hall", True),
        ("x" * 200, True),
        ("x" * 201, False),
        ("", False),
        ("a/b", False),
        ("a b", False),
        ("kiosk\n", False),
        ("kiosk-é", False),
        (EVIL_ID, False),
        (None, False),
        (b"kiosk", False),
    ],
)
def test_kiosk_ids(value: object, valid: bool) -> None:
    assert is_kiosk_id(value) is valid


def test_presence_is_grouped_by_subject() -> None:
    clients: list[object] = [
        {"id": "c1", "subject": "kiosk-b", "connected_at": "2026-11-02T10:00:05+00:00"},
        {"id": "c2", "subject": "kiosk-a", "connected_at": "2026-11-02T10:00:09+00:00"},
        {"id": "c3", "subject": "kiosk-b", "connected_at": "2026-11-02T10:00:01+00:00"},
        {"id": "c4", "subject": "", "connected_at": "2026-11-02T10:00:01+00:00"},
        {"id": "c5", "connected_at": "2026-11-02T10:00:01+00:00"},
        "garbage",
        {"id": "c6", "subject": "kiosk-c"},
    ]
    assert group_presence(clients) == [
        Kiosk("kiosk-a", "2026-11-02T10:00:09+00:00", 1),
        Kiosk("kiosk-b", "2026-11-02T10:00:01+00:00", 2),
        Kiosk("kiosk-c", "", 1),
    ]


def test_rendering_escapes_kiosk_ids() -> None:
    evil = Kiosk(EVIL_ID, "2026-11-02T10:00:00+00:00")
    quoted = Kiosk('x" autofocus onfocus="alert(1)', "<b>")
    page = render_dashboard(csrf="tok", kiosks=[evil, quoted], hub_error="<script>alert(2)</script>")
    for raw in (EVIL_ID, 'x" autofocus', "<b>", "<script>"):
        assert raw not in page
    assert html.escape(EVIL_ID) in page
    assert 'data-kiosk-id="x&quot; autofocus onfocus=&quot;alert(1)"' in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    # An id that cannot name a channel gets no reset form.
    row = render_kiosk_row(evil, "tok")
    assert "<form" not in row
    assert "disabled" in row
    good = render_kiosk_row(Kiosk("kiosk-7", "2026-11-02T10:00:00+00:00"), "tok")
    assert 'name="kiosk" value="kiosk-7"' in good
    assert 'aria-label="Reset kiosk kiosk-7"' in good
    assert "10:00:00 UTC" in good
    assert "<script>alert" not in render_login('<script>alert("x")</script>')


def test_pages_have_no_inline_script_or_style() -> None:
    pages = [
        render_login("error"),
        render_dashboard(csrf="tok", kiosks=[Kiosk("k", "")], hub_error="down"),
        render_dashboard(csrf="tok", kiosks=None),
    ]
    for page in pages:
        assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
        assert "<style" not in page
        assert " style=" not in page
        assert re.search(r"\son[a-z]+=", page) is None  # no event-handler attributes


def test_script_builds_the_dom_without_parsing_html() -> None:
    script = (WEB_ADMIN / "admin.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in script
    assert "textContent = kiosk.id" in script


def test_build_admin_app_refuses_unsafe_settings() -> None:
    good: dict[str, Any] = {
        "hub_url": "http://127.0.0.1:1",
        "publish_token": Secret(PUBLISH_TOKEN),
        "password": Secret(PASSWORD),
        "session_key": SESSION_KEY,
        "public_origins": (ADMIN_ORIGIN,),
    }
    build_admin_app(**good)
    for key, value in [
        ("password", Secret("")),
        ("session_key", b"too short"),
        ("public_origins", ()),
        ("public_origins", ("not an origin",)),
        ("hub_url", "ws://127.0.0.1:1"),
    ]:
        with pytest.raises(ValueError):  # noqa: PT011 - each has its own message
            build_admin_app(**{**good, key: value})


# ----------------------------------------------------------------------------------------------------------
# The app against a real hub.


ServeAdmin = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve_admin() -> AsyncIterator[ServeAdmin]:
    """Run admin apps on free ports; ``serve(hub_url, **overrides)`` answers the base URL."""
    runners: list[web.AppRunner] = []

    async def serve(hub_url: str, **overrides: Any) -> str:
        settings: dict[str, Any] = {
            "hub_url": hub_url,
            "publish_token": Secret(PUBLISH_TOKEN),
            "password": Secret(PASSWORD),
            "session_key": SESSION_KEY,
            "public_origins": (ADMIN_ORIGIN, "http://localhost:8000"),
        }
        runner = web.AppRunner(build_admin_app(**(settings | overrides)), access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass
class Browser:
    """An HTTP client that keeps cookies like a browser and records everything the server sent it."""

    base: str
    session: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)

    async def request(
        self, method: str, path: str, *, origin: str | None = ADMIN_ORIGIN, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, str]:
        headers = dict(kwargs.pop("headers", {}))
        if origin is not None:
            headers.setdefault("Origin", origin)
        kwargs.setdefault("allow_redirects", False)
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            body = await response.text()
        self.seen.append(body)
        self.seen.extend(f"{name}: {value}" for name, value in response.headers.items())
        return response, body

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, str]:
        return await self.request("GET", path, origin=None, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, str]:
        return await self.request("POST", path, **kwargs)

    async def login(self, password: str = PASSWORD, **kwargs: Any) -> aiohttp.ClientResponse:
        response, _ = await self.post("/admin/login", data={"password": password}, **kwargs)
        return response

    async def csrf(self) -> str:
        response, page = await self.get("/admin")
        assert response.status == 200
        match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
        assert match is not None, "not logged in"
        return match.group(1)

    async def act(
        self, path: str, data: dict[str, str] | None = None, *, method: str = "POST", **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, Any]:
        """A request the way admin.js sends it: a form body (for a POST), ``Accept: application/json``."""
        headers = {"Accept": "application/json"} | dict(kwargs.pop("headers", {}))
        if method == "POST":
            kwargs["data"] = data or {}
        response, body = await self.request(method, path, headers=headers, **kwargs)
        assert response.content_type == "application/json", body
        return response, await response.json()

    @property
    def cookie(self) -> str | None:
        morsel = self.session.cookie_jar.filter_cookies(URL(self.base + "/admin")).get(COOKIE_NAME)
        return None if morsel is None else morsel.value


@pytest.fixture
async def open_browser() -> AsyncIterator[Callable[[str], Browser]]:
    sessions: list[aiohttp.ClientSession] = []

    def open_(base: str) -> Browser:
        # unsafe=True: aiohttp's jar otherwise ignores cookies from IP-address hosts such as 127.0.0.1.
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
        )
        sessions.append(session)
        return Browser(base, session)

    yield open_
    for session in sessions:
        await session.close()


@pytest.fixture
async def hub(start_hub: StartHub) -> HubServer:
    return await start_hub()


@pytest.fixture
async def admin_url(hub: HubServer, serve_admin: ServeAdmin) -> str:
    return await serve_admin(hub.url)


@pytest.fixture
async def browser(admin_url: str, open_browser: Callable[[str], Browser]) -> Browser:
    return open_browser(admin_url)


@pytest.fixture
async def logged_in(browser: Browser) -> Browser:
    response = await browser.login()
    assert response.status == 303
    return browser


OpenKiosk = Callable[..., Awaitable[aiohttp.ClientWebSocketResponse]]


@pytest.fixture
def open_kiosk(hub: HubServer, connect: Connect) -> OpenKiosk:
    """A kiosk as the gateway connects it: a signed token whose subject is the kiosk id, subscribed to
    ``kiosks`` and its own ``kiosk:<id>``."""

    async def open_(kiosk_id: str, *, own_channel: bool = True) -> aiohttp.ClientWebSocketResponse:
        channels = ["kiosks", f"kiosk:{kiosk_id}"] if own_channel else ["kiosks"]
        token = mint_token(key=Secret(KEY_NEW), kid="2026-11", subject=kiosk_id, ttl=600, subscribe=channels)
        ws = await connect(hub, kiosk_headers(token, origin=ORIGIN))
        for channel in channels:
            await subscribe(ws, channel)
        return ws

    return open_


async def listed_kiosks(browser: Browser) -> list[dict[str, Any]]:
    response, body = await browser.act("/admin/kiosks", method="GET")
    assert response.status == 200, body
    assert body["ok"] is True
    kiosks: list[dict[str, Any]] = body["kiosks"]
    return kiosks


async def wait_for_kiosks(
    browser: Browser, expected: set[str], connections: list[int] | None = None
) -> list[dict[str, Any]]:
    """Poll ``/admin/kiosks`` (as the page does) until it lists exactly ``expected`` (with these connection
    counts, in id order, when given): presence follows connections as the hub processes them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        kiosks = await listed_kiosks(browser)
        if {kiosk["id"] for kiosk in kiosks} == expected and (
            connections is None or [kiosk["connections"] for kiosk in kiosks] == connections
        ):
            return kiosks
        if loop.time() > deadline:
            raise AssertionError(f"listed {kiosks}, expected {expected} {connections or ''}")
        await asyncio.sleep(0.02)


async def message_on(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, Any, int]:
    frame = await receive_json(ws)
    assert frame["type"] == "message", frame
    return frame["channel"], frame["data"], frame["offset"]


# -- login ---------------------------------------------------------------------------------------------------


async def test_logged_out_admin_sees_the_login_form(browser: Browser) -> None:
    for path in ("/admin", "/admin/login"):
        response, page = await browser.get(path)
        assert response.status == 200
        assert response.content_type == "text/html"
        assert '<form class="card login-card" method="post" action="/admin/login">' in page
        assert 'name="password" type="password"' in page
        assert "Reset all kiosks" not in page
        assert "csrf-token" not in page


async def test_wrong_password_is_refused_without_a_cookie(browser: Browser) -> None:
    for password in ("wrong", "", PASSWORD + " ", PASSWORD[:-1]):
        response = await browser.login(password)
        assert response.status == 401
        assert "Set-Cookie" not in response.headers
    _, page = await browser.post("/admin/login", data={"other": "x"})
    assert "That password is not correct." in page
    assert browser.cookie is None


async def test_login_sets_a_hardened_session_cookie(browser: Browser) -> None:
    response = await browser.login()
    assert response.status == 303
    assert response.headers["Location"] == "/admin"
    set_cookie = response.headers["Set-Cookie"]
    attributes = {part.strip().split("=", 1)[0].lower(): part for part in set_cookie.split(";")}
    assert set_cookie.startswith(f"{COOKIE_NAME}=")
    assert "httponly" in attributes
    assert attributes["samesite"].strip() == "SameSite=Strict"
    assert attributes["path"].strip() == "Path=/admin"
    assert attributes["max-age"].strip() == f"Max-Age={int(admin.SESSION_TTL)}"
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert browser.cookie is not None


async def test_cookie_is_secure_behind_https(browser: Browser) -> None:
    response = await browser.login(headers={"X-Forwarded-Proto": "https"})
    assert response.status == 303
    assert "; Secure" in response.headers["Set-Cookie"]


async def test_dashboard_after_login(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    await open_kiosk("kiosk-1")
    await wait_for_kiosks(logged_in, {"kiosk-1"})
    response, page = await logged_in.get("/admin")
    assert response.status == 200
    assert '<button type="submit" id="reset-all" class="danger big">Reset all kiosks</button>' in page
    assert '<li class="kiosk" data-kiosk-id="kiosk-1">' in page
    assert 'id="announce-text" name="text"' in page
    assert ">Announce</button>" in page
    assert ">Log out</button>" in page
    assert PUBLISH_TOKEN not in page
    assert PASSWORD not in page
    # Logged in, the login URL leads to the dashboard.
    response, _ = await logged_in.get("/admin/login")
    assert response.status == 303
    assert response.headers["Location"] == "/admin"


async def test_login_rate_limit(browser: Browser, open_browser: Callable[[str], Browser]) -> None:
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    for _ in range(admin.MAX_LOGIN_FAILURES):
        assert (await browser.login("guess", headers=attacker)).status == 401
    refused = await browser.login("guess", headers=attacker)
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Even the right password: otherwise guessing would just go on.
    refused = await browser.login(headers=attacker)
    assert refused.status == 429
    assert "Set-Cookie" not in refused.headers
    # Another client is not affected.
    other = open_browser(browser.base)
    assert (await other.login(headers={"X-Forwarded-For": "198.51.100.1"})).status == 303


async def test_login_from_a_foreign_origin_is_refused(browser: Browser) -> None:
    response = await browser.login(origin="https://evil.example")
    assert response.status == 403
    assert browser.cookie is None


# -- presence ------------------------------------------------------------------------------------------------


async def test_kiosks_lists_connected_kiosk_ids(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    assert await listed_kiosks(logged_in) == []
    await open_kiosk("kiosk-1")
    second = await open_kiosk("kiosk-2")
    await open_kiosk("kiosk-2")  # the same kiosk in a second tab is listed once
    kiosks = await wait_for_kiosks(logged_in, {"kiosk-1", "kiosk-2"}, [1, 2])
    assert [kiosk["id"] for kiosk in kiosks] == ["kiosk-1", "kiosk-2"]
    assert all(kiosk["resettable"] and kiosk["connected_at"] for kiosk in kiosks)
    await second.close()
    await wait_for_kiosks(logged_in, {"kiosk-1", "kiosk-2"}, [1, 1])


async def test_kiosk_that_leaves_disappears(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    await open_kiosk("kiosk-1")
    leaving = await open_kiosk("kiosk-2")
    await wait_for_kiosks(logged_in, {"kiosk-1", "kiosk-2"})
    await leaving.close()
    await wait_for_kiosks(logged_in, {"kiosk-1"})


async def test_hostile_kiosk_id_is_escaped(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    await open_kiosk(EVIL_ID, own_channel=False)
    kiosks = await wait_for_kiosks(logged_in, {EVIL_ID})
    assert kiosks[0]["resettable"] is False  # JSON carries it as data; admin.js renders it with textContent
    _, page = await logged_in.get("/admin")
    assert EVIL_ID not in page
    assert f'<span class="kiosk-id">{html.escape(EVIL_ID)}</span>' in page


async def test_kiosks_needs_a_session(browser: Browser) -> None:
    response, body = await browser.act("/admin/kiosks", method="GET")
    assert response.status == 401
    assert body["ok"] is False


# -- actions -------------------------------------------------------------------------------------------------


async def test_reset_all_reaches_every_kiosk(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    kiosks = [await open_kiosk(f"kiosk-{n}") for n in range(3)]
    csrf = await logged_in.csrf()
    response, body = await logged_in.act("/admin/reset", headers={"X-CSRF-Token": csrf})
    assert response.status == 200, body
    assert body["ok"] is True
    assert body["channel"] == "kiosks"
    for ws in kiosks:
        assert await message_on(ws) == ("kiosks", {"action": "reset"}, body["offset"])


async def test_per_kiosk_reset_reaches_only_that_kiosk(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    one, two = await open_kiosk("kiosk-1"), await open_kiosk("kiosk-2")
    csrf = await logged_in.csrf()
    response, body = await logged_in.act("/admin/reset", {"kiosk": "kiosk-2", "csrf_token": csrf})
    assert response.status == 200, body
    assert body["channel"] == "kiosk:kiosk-2"
    assert await message_on(two) == ("kiosk:kiosk-2", {"action": "reset"}, body["offset"])
    # kiosk-1 got nothing: the next thing it receives is the announcement sent afterwards.
    await logged_in.act("/admin/announce", {"text": "after", "csrf_token": csrf})
    assert (await message_on(one))[:2] == ("kiosks", {"action": "announce", "text": "after"})
    assert (await message_on(two))[:2] == ("kiosks", {"action": "announce", "text": "after"})


@pytest.mark.parametrize("kiosk_id", ["", "a/b", "x" * 201, EVIL_ID, "kiosk 1"])
async def test_reset_refuses_bad_kiosk_ids(logged_in: Browser, open_kiosk: OpenKiosk, kiosk_id: str) -> None:
    ws = await open_kiosk("kiosk-1")
    csrf = await logged_in.csrf()
    response, body = await logged_in.act("/admin/reset", {"kiosk": kiosk_id, "csrf_token": csrf})
    assert response.status == 400
    assert body["error"] == "bad_kiosk"
    await logged_in.act("/admin/announce", {"text": "sentinel", "csrf_token": csrf})
    assert (await message_on(ws))[1] == {"action": "announce", "text": "sentinel"}


async def test_announce(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    kiosks = [await open_kiosk("kiosk-1"), await open_kiosk("kiosk-2")]
    csrf = await logged_in.csrf()
    text = '  The office closes at 16:00 — <b>today</b> & "tomorrow"  '
    response, body = await logged_in.act("/admin/announce", {"text": text}, headers={"X-CSRF-Token": csrf})
    assert response.status == 200, body
    for ws in kiosks:
        assert await message_on(ws) == (
            "kiosks",
            {"action": "announce", "text": text.strip()},
            body["offset"],
        )
    longest = "x" * admin.MAX_ANNOUNCEMENT
    response, _ = await logged_in.act("/admin/announce", {"text": longest, "csrf_token": csrf})
    assert response.status == 200
    for bad in ("", "   ", longest + "x", "bell\x07"):
        response, body = await logged_in.act("/admin/announce", {"text": bad, "csrf_token": csrf})
        assert response.status == 400, bad
        assert body["error"] == "bad_text"


async def test_oversized_form_is_refused(logged_in: Browser) -> None:
    csrf = await logged_in.csrf()
    text = "x" * (admin.MAX_BODY + 1)
    response, _ = await logged_in.post("/admin/announce", data={"text": text, "csrf_token": csrf})
    assert response.status == 413
    assert response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]


async def test_plain_form_posts_redirect_back(logged_in: Browser, open_kiosk: OpenKiosk) -> None:
    ws = await open_kiosk("kiosk-1")
    csrf = await logged_in.csrf()
    response, _ = await logged_in.post("/admin/reset", data={"csrf_token": csrf})
    assert response.status == 303
    assert response.headers["Location"] == "/admin"
    assert (await message_on(ws))[1] == {"action": "reset"}
    response, page = await logged_in.post("/admin/reset", data={"csrf_token": "wrong"})
    assert response.status == 403
    assert response.content_type == "text/html"
    assert "reload the admin page" in page


ACTIONS = [("/admin/reset", {}), ("/admin/reset", {"kiosk": "kiosk-1"}), ("/admin/announce", {"text": "hi"})]


@pytest.mark.parametrize(("path", "data"), [*ACTIONS, ("/admin/logout", {})])
async def test_csrf_token_is_required(
    logged_in: Browser, open_browser: Callable[[str], Browser], path: str, data: dict[str, str]
) -> None:
    other = open_browser(logged_in.base)
    assert (await other.login()).status == 303
    others_token = await other.csrf()
    for headers, fields in [
        ({}, {}),  # missing
        ({"X-CSRF-Token": "x" * 43}, {}),
        ({}, {"csrf_token": ""}),
        ({"X-CSRF-Token": others_token}, {}),  # valid, but another session's
        ({}, {"csrf_token": others_token}),
    ]:
        response, body = await logged_in.act(path, data | fields, headers=headers)
        assert response.status == 403, (headers, fields)
        assert body["error"] == "csrf"
    # The session is still alive: nothing above logged it out.
    assert (await logged_in.csrf()) != others_token


@pytest.mark.parametrize(("path", "data"), ACTIONS)
@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://127.0.0.1:8001",  # another port
        "https://127.0.0.1:8000",  # another scheme
        "http://127.0.0.1:8000.evil.example",
        "garbage",
    ],
)
async def test_foreign_origin_is_refused(
    logged_in: Browser, open_kiosk: OpenKiosk, path: str, data: dict[str, str], origin: str
) -> None:
    ws = await open_kiosk("kiosk-1")
    csrf = await logged_in.csrf()
    response, body = await logged_in.act(path, data, headers={"X-CSRF-Token": csrf}, origin=origin)
    assert response.status == 403
    assert body["error"] == "origin"
    # Allowed origins, the same one spelled differently, and no Origin at all (not a browser) pass.
    for allowed in ("http://localhost:8000", "HTTP://127.0.0.1:8000", None):
        response, body = await logged_in.act(path, data, headers={"X-CSRF-Token": csrf}, origin=allowed)
        assert response.status == 200, body
        await message_on(ws)


async def test_cross_site_fetch_metadata_is_refused(logged_in: Browser) -> None:
    csrf = await logged_in.csrf()
    headers = {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    response, body = await logged_in.act("/admin/reset", headers=headers)
    assert response.status == 403
    assert body["error"] == "origin"


async def test_plain_form_posts_from_our_page_carry_a_null_origin(browser: Browser) -> None:
    """What Chromium sends for the login form under our `Referrer-Policy: no-referrer`."""
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    assert (await browser.login(origin="null", headers=same_origin)).status == 303
    csrf = await browser.csrf()
    response, _ = await browser.post(
        "/admin/reset", data={"csrf_token": csrf}, origin="null", headers=same_origin
    )
    assert response.status == 303
    response, _ = await browser.post("/admin/reset", data={"csrf_token": csrf}, origin="null")
    assert response.status == 403


@pytest.mark.parametrize(("path", "data"), [*ACTIONS, ("/admin/logout", {})])
async def test_actions_need_a_session(browser: Browser, path: str, data: dict[str, str]) -> None:
    response, body = await browser.act(path, data | {"csrf_token": "x"})
    assert response.status == 401
    assert body["error"] == "unauthorized"


async def send_with_cookie(
    base: str, cookie: str, method: str = "POST", path: str = "/admin/reset"
) -> tuple[int, str]:
    """A request carrying exactly this session cookie (aiohttp's jar would refuse to store a forged one)."""
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.request(
            method,
            base + path,
            data={"csrf_token": "x"} if method == "POST" else None,
            headers={"Cookie": f"{COOKIE_NAME}={cookie}", "Accept": "application/json"},
        ) as response,
    ):
        return response.status, await response.text()


async def test_tampered_and_expired_cookies_are_refused(logged_in: Browser) -> None:
    cookie = logged_in.cookie
    assert cookie is not None
    expiry, session_id, mac = cookie.split(".")
    codec = SessionCodec(SESSION_KEY)
    _, expired = codec.issue(now=1000.0)
    _, other_key = SessionCodec(bytes(32)).issue()
    for forged in (
        f"{int(expiry) + 86400}.{session_id}.{mac}",
        f"{expiry}.{_flip(session_id, 3)}.{mac}",
        f"{expiry}.{session_id}.{_flip(mac, 0)}",
        expired,
        other_key,
        "",
    ):
        status, _ = await send_with_cookie(logged_in.base, forged)
        assert status == 401, forged
        status, _ = await send_with_cookie(logged_in.base, forged, "GET", "/admin/kiosks")
        assert status == 401, forged
    # A cookie signed with the right key and an expiry still ahead is accepted (so the refusals above were not
    # for some other reason): the CSRF token is then what fails.
    status, body = await send_with_cookie(logged_in.base, cookie)
    assert status == 403, body


async def test_logout_revokes_the_session(logged_in: Browser) -> None:
    cookie = logged_in.cookie
    assert cookie is not None
    csrf = await logged_in.csrf()
    response, body = await logged_in.act("/admin/logout", {"csrf_token": csrf})
    assert response.status == 200
    assert body == {"ok": True}
    set_cookie = response.headers["Set-Cookie"]
    assert "Max-Age=0" in set_cookie
    assert "Path=/admin" in set_cookie
    assert logged_in.cookie is None
    _, page = await logged_in.get("/admin")
    assert 'name="password"' in page
    # The old cookie, replayed, is dead on the server too.
    status, _ = await send_with_cookie(logged_in.base, cookie)
    assert status == 401


# -- hub trouble ---------------------------------------------------------------------------------------------


async def test_hub_unreachable(serve_admin: ServeAdmin, open_browser: Callable[[str], Browser]) -> None:
    browser = open_browser(await serve_admin(f"http://127.0.0.1:{free_port()}"))
    assert (await browser.login()).status == 303
    response, page = await browser.get("/admin")
    assert response.status == 200
    assert "Reset all kiosks" in page
    assert "Cannot list kiosks: the hub is unreachable" in page
    response, body = await browser.act("/admin/kiosks", method="GET")
    assert response.status == 502
    assert body["ok"] is False
    assert body["error"] == "hub_unavailable"
    csrf = await browser.csrf()
    for path, data in ACTIONS:
        response, body = await browser.act(path, data | {"csrf_token": csrf})
        assert response.status == 502
        assert body == {"ok": False, "error": "hub_unavailable", "message": body["message"]}
        assert "unreachable" in body["message"]


async def test_hub_refusing_the_token_is_a_502(
    hub: HubServer, serve_admin: ServeAdmin, open_browser: Callable[[str], Browser]
) -> None:
    browser = open_browser(await serve_admin(hub.url, publish_token=Secret("not-the-publish-token")))
    assert (await browser.login()).status == 303
    csrf = await browser.csrf()
    response, body = await browser.act("/admin/reset", {"csrf_token": csrf})
    assert response.status == 502
    assert "HTTP 401" in body["message"]
    assert "not-the-publish-token" not in str(body)


# -- headers, assets, secrets --------------------------------------------------------------------------------


async def test_security_headers_on_every_response(
    logged_in: Browser, open_browser: Callable[[str], Browser]
) -> None:
    csrf = await logged_in.csrf()
    anonymous = open_browser(logged_in.base)
    responses = [
        await anonymous.get("/admin"),
        await anonymous.post("/admin/login", data={"password": "wrong"}),
        await anonymous.get("/admin/nothing-here"),
        await anonymous.get("/admin/"),
        await anonymous.post("/admin/reset"),
        await logged_in.get("/admin"),
        await logged_in.get("/admin/kiosks"),
        await logged_in.get("/admin/static/admin.css"),
        await logged_in.get("/admin/static/admin.js"),
        await logged_in.post(
            "/admin/reset", data={"csrf_token": csrf}, headers={"Accept": "application/json"}
        ),
        await logged_in.post("/admin/reset", data={"csrf_token": "no"}),
    ]
    statuses = [response.status for response, _ in responses]
    assert statuses == [200, 401, 404, 308, 401, 200, 200, 200, 200, 200, 403]
    for response, _ in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.url, name)
    assert SECURITY_HEADERS["Content-Security-Policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    )


async def test_static_assets(browser: Browser) -> None:
    response, script = await browser.get("/admin/static/admin.js")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script == (WEB_ADMIN / "admin.js").read_text()
    response, _ = await browser.get("/admin/static/admin.css")
    assert response.headers["Content-Type"] == "text/css; charset=utf-8"
    response, _ = await browser.get("/admin/static/favicon.svg")
    assert response.headers["Content-Type"] == "image/svg+xml"
    for path in ("/admin/static/admin.py", "/admin/static/..%2fdemo%2fadmin.py", "/admin/static/"):
        response, body = await browser.get(path)
        assert response.status == 404, path
        assert "import" not in body


async def test_secrets_never_leave_the_server(
    logged_in: Browser,
    open_browser: Callable[[str], Browser],
    open_kiosk: OpenKiosk,
    serve_admin: ServeAdmin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgate")
    ws = await open_kiosk("kiosk-1")
    await wait_for_kiosks(logged_in, {"kiosk-1"})
    csrf = await logged_in.csrf()
    await logged_in.act("/admin/reset", {"csrf_token": csrf})
    await logged_in.act("/admin/reset", {"kiosk": "kiosk-1", "csrf_token": csrf})
    await logged_in.act("/admin/announce", {"text": "hello", "csrf_token": csrf})
    await logged_in.act("/admin/announce", {"text": "", "csrf_token": csrf})
    await logged_in.get("/admin/static/admin.js")
    await logged_in.get("/admin/static/admin.css")
    for _ in range(3):
        await message_on(ws)
    stranger = open_browser(logged_in.base)
    await stranger.login("wrong")
    await stranger.get("/admin")
    down = open_browser(await serve_admin(f"http://127.0.0.1:{free_port()}"))
    await down.login()
    await down.get("/admin")
    await down.act("/admin/reset", {"csrf_token": await down.csrf()})
    cookie = logged_in.cookie
    assert cookie is not None
    await logged_in.act("/admin/logout", {"csrf_token": csrf})

    everything = "\n".join(logged_in.seen + stranger.seen + down.seen)
    assert PUBLISH_TOKEN not in everything
    assert PASSWORD not in everything
    for secret in (PUBLISH_TOKEN, PASSWORD, cookie, cookie.split(".")[1]):
        assert secret not in caplog.text

    lines = [record.getMessage() for record in caplog.records if record.name == "wsgate.admin"]
    assert any(line.startswith("login ok session=") for line in lines)
    assert any(line.startswith("login failed peer=127.0.0.1") for line in lines)
    assert any(line.startswith("reset channel=kiosks offset=") for line in lines)
    assert any(line.startswith("reset channel=kiosk:kiosk-1 offset=") for line in lines)
    assert any(line.startswith("announce chars=5 offset=") for line in lines)
    assert any(line.startswith("reset failed: hub unavailable channel=kiosks") for line in lines)
    assert any(line.startswith("logout session=") for line in lines)
    assert sum("hub unreachable at" in line for line in lines) == 1  # logged once, not per request
