"""The kiosk system of ``wsgate up`` in a real Chromium: kiosk pages, the admin page, resets, announcements,
recovery after being offline, and what must never reach a browser.

"Exactly once" is checked with a *barrier*: after the reset, another message is published on the same
channel. The hub delivers a channel's messages in order, so a page that shows the barrier has already dealt
with everything before it; if that page is still the same load, the reset was not replayed to it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, expect

from tests.browser.conftest import (
    ARTIFACTS,
    KioskPage,
    OpenAdmin,
    OpenKiosk,
    Recorder,
    hub_sessions,
    until,
)
from wsgate.demo.system import KioskSystem
from wsgate.http_server import Listener

pytestmark = pytest.mark.asyncio(loop_scope="session")

KIOSKS = ("k1", "k2", "k3")
# The shape of a JWT (header.payload.): the gateway mints one per connection, and none may reach a page.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")


async def open_all(open_kiosk: OpenKiosk, ids: tuple[str, ...] = KIOSKS) -> list[KioskPage]:
    return list(await asyncio.gather(*(open_kiosk(kiosk_id) for kiosk_id in ids)))


async def load_ids(kiosks: list[KioskPage]) -> dict[str, str]:
    return {kiosk.id: await kiosk.load_id() for kiosk in kiosks}


async def barrier(system: KioskSystem, kiosks: list[KioskPage], text: str, channel: str = "kiosks") -> None:
    """Publish an announcement after everything before it and wait until every page shows it."""
    await system.publish(channel, {"action": "announce", "text": text})
    await asyncio.gather(*(kiosk.shows(text) for kiosk in kiosks))


async def test_reset_all_reloads_every_kiosk_once_and_they_come_back(
    system: KioskSystem, open_kiosk: OpenKiosk, open_admin: OpenAdmin
) -> None:
    kiosks = await open_all(open_kiosk)
    admin = await open_admin()
    await admin.sees_online(*KIOSKS)
    before = await load_ids(kiosks)
    connections_before = {kiosk_id: set(hub_sessions(system, kiosk_id)) for kiosk_id in KIOSKS}

    await admin.reset_all()

    reloaded = await asyncio.gather(*(kiosk.reloaded(before[kiosk.id]) for kiosk in kiosks))
    after = dict(zip(KIOSKS, reloaded, strict=True))
    await until(
        lambda: all(
            hub_sessions(system, kiosk_id)
            and connections_before[kiosk_id].isdisjoint(hub_sessions(system, kiosk_id))
            for kiosk_id in KIOSKS
        ),
        "every kiosk on a new hub connection",
    )
    # The admin's list, as refreshed by a poll sent after the kiosks came back, shows all three online.
    async with admin.page.expect_request(lambda request: request.url.endswith("/admin/kiosks")) as polled:
        pass
    response = await (await polled.value).response()
    assert response is not None
    listed = await response.json()
    assert sorted(kiosk["id"] for kiosk in listed["kiosks"]) == list(KIOSKS)
    await admin.sees_online(*KIOSKS)

    await barrier(system, kiosks, "After the reset")
    for kiosk in kiosks:
        assert await kiosk.load_id() == after[kiosk.id], f"{kiosk.id} reloaded again: the reset was replayed"
        assert kiosk.loads == 2
        assert kiosk.recorder.errors == []


async def test_kiosk_offline_during_reset_reloads_once_when_back(
    system: KioskSystem, open_kiosk: OpenKiosk, open_admin: OpenAdmin
) -> None:
    k1, k2, k3 = kiosks = await open_all(open_kiosk)
    admin = await open_admin()
    await admin.sees_online(*KIOSKS)
    before = await load_ids(kiosks)

    # k3 loses its network, and its hub connection with it.
    await k3.context.set_offline(True)
    for session_id in hub_sessions(system, "k3"):
        system.hub.hub.close_session_soon(
            system.hub.hub.sessions[session_id], 1001, "network cut by the test"
        )
    await until(lambda: not hub_sessions(system, "k3"), "k3's hub connection to end")
    await expect(k3.body).to_have_attribute("data-state", "reconnecting")

    await admin.reset_all()
    await asyncio.gather(k1.reloaded(before["k1"]), k2.reloaded(before["k2"]))
    assert await k3.load_id() == before["k3"], "k3 cannot have heard of the reset"
    await expect(k3.body).to_have_attribute("data-state", "reconnecting")

    await k3.context.set_offline(False)
    after = await k3.reloaded(before["k3"])

    await barrier(system, kiosks, "Back online")
    assert await k3.load_id() == after, "k3 reloaded again: the reset was replayed after its reload"
    assert [kiosk.loads for kiosk in kiosks] == [2, 2, 2]
    await admin.sees_online(*KIOSKS)
    # While offline, k3's reconnect attempts failed with the browser's network error, and nothing else.
    assert [error for error in k3.recorder.errors if "ERR_INTERNET_DISCONNECTED" not in error] == []


async def test_announcement_reaches_every_kiosk_and_goes_away(
    system: KioskSystem, open_kiosk: OpenKiosk, open_admin: OpenAdmin
) -> None:
    kiosks = await open_all(open_kiosk)
    admin = await open_admin()
    k1 = kiosks[0]
    await k1.page.clock.install()  # k1's timers can be fast-forwarded; the connection is real either way
    before = await load_ids(kiosks)
    text = "Council session moved to 15:00 in Room 204"

    await admin.announce(text)

    await asyncio.gather(*(kiosk.shows(text) for kiosk in kiosks))
    assert await load_ids(kiosks) == before
    assert [kiosk.loads for kiosk in kiosks] == [1, 1, 1]
    await k1.page.clock.fast_forward(61_000)
    await expect(k1.banner).to_be_hidden()
    await expect(kiosks[1].banner).to_be_visible()


async def test_per_kiosk_reset_reaches_only_that_kiosk(
    system: KioskSystem, open_kiosk: OpenKiosk, open_admin: OpenAdmin
) -> None:
    k1, k2, k3 = kiosks = await open_all(open_kiosk)
    admin = await open_admin()
    await admin.sees_online(*KIOSKS)
    before = await load_ids(kiosks)

    await admin.reset("k2")

    await k2.reloaded(before["k2"])
    await barrier(system, kiosks, "Only k2 was reset")
    assert await k1.load_id() == before["k1"]
    assert await k3.load_id() == before["k3"]
    assert [kiosk.loads for kiosk in kiosks] == [1, 2, 1]


async def test_pages_never_replay_a_reset_they_have_handled(
    system: KioskSystem, open_kiosk: OpenKiosk
) -> None:
    k1 = await open_kiosk("k1")
    first = await k1.load_id()
    await system.publish("kiosks", {"action": "reset"})
    second = await k1.reloaded(first)

    # A reload for another reason (a person pressing F5) resumes after the reset, as the reset's reload did.
    await k1.page.reload()
    third = await k1.reloaded(second)
    # A kiosk page opened after the reset does not receive it: a new page is as fresh as a reset makes it.
    k4 = await open_kiosk("k4")
    k4_first = await k4.load_id()

    await barrier(system, [k1, k4], "Nothing replayed")
    assert await k1.load_id() == third
    assert await k4.load_id() == k4_first
    assert (k1.loads, k4.loads) == (3, 1)


async def test_kiosk_ids_without_and_with_a_bad_query(browser: Browser, system: KioskSystem) -> None:
    """Without ?kiosk= a page makes an id once and keeps it; an invalid ?kiosk= says so and stays offline."""
    context = await browser.new_context()
    try:
        recorder = Recorder()
        recorder.attach(context)
        page = await context.new_page()
        await page.goto(f"{system.url}/")
        kiosk = KioskPage("?", context, page, recorder)
        await kiosk.connected()
        made = await kiosk.body.get_attribute("data-kiosk-id")
        assert made is not None
        assert re.fullmatch(r"kiosk-[a-z2-9]{8}", made), made
        assert hub_sessions(system, made)
        await page.reload()
        await kiosk.connected()
        assert await kiosk.body.get_attribute("data-kiosk-id") == made

        sockets_before = len(recorder.websockets)
        await page.goto(f"{system.url}/?kiosk=not%20valid")
        await expect(kiosk.body).to_have_attribute("data-state", "misconfigured")
        await expect(page.locator("#connection-text")).to_contain_text("invalid ?kiosk= id")
        await expect(page.locator("#offices tr")).to_have_count(7)  # the information is still shown
        assert len(recorder.websockets) == sockets_before
    finally:
        await context.close()


async def test_kiosk_that_missed_more_than_the_history_reloads_once(
    system: KioskSystem, open_kiosk: OpenKiosk
) -> None:
    """When the hub cannot replay what a kiosk missed (recovered: false), the kiosk reloads to be safe —
    once: the reloaded page resumes from the hub's position instead of asking again for what is gone."""
    k1 = await open_kiosk("k1")
    first = await k1.load_id()
    await k1.context.set_offline(True)
    await until(lambda: not hub_sessions(system, "k1"), "k1's hub connection to end")
    for number in range(system.hub.config.history.size + 1):  # one more than the history keeps
        await system.publish("kiosks", {"action": "announce", "text": f"missed {number}"})
    await k1.context.set_offline(False)
    second = await k1.reloaded(first)

    await barrier(system, [k1], "Resynchronised")
    assert await k1.load_id() == second
    assert k1.loads == 2


async def test_a_page_loaded_after_the_history_was_lost_does_not_reload(
    system: KioskSystem, open_kiosk: OpenKiosk
) -> None:
    """A position the hub no longer knows (another epoch, e.g. after a hub restart) met on a page's first
    connection only refetches the data: the page has just been loaded, so a reload would change nothing."""
    k1 = await open_kiosk("k1")
    stale = json.dumps({"epoch": "before-a-restart", "offset": 7})
    await k1.page.evaluate("value => sessionStorage.setItem('wsgate:since:kiosks', value)", stale)
    first = await k1.load_id()
    await k1.page.reload()
    second = await k1.reloaded(first)

    await barrier(system, [k1], "No reload loop")
    assert await k1.load_id() == second
    assert k1.loads == 2  # the test's reload only
    stored = json.loads(await k1.page.evaluate("sessionStorage.getItem('wsgate:since:kiosks')"))
    assert stored["epoch"] != "before-a-restart"


async def test_wsgate_js_helpers(open_kiosk: OpenKiosk) -> None:
    """The browser client's pure parts: full-jitter backoff and the URL rules (same origin, no credential)."""
    k1 = await open_kiosk("k1")
    results = await k1.page.evaluate(
        """async () => {
        const { backoffDelay, socketUrl } = await import("/wsgate.js");
        const page = { href: "https://kiosk.example.org/lobby?kiosk=a", host: "kiosk.example.org" };
        const refused = (url) => { try { socketUrl(url, page); return false; } catch { return true; } };
        return {
          lowest: [0, 1, 5, 40].map((n) => backoffDelay(n, 1000, 30000, () => 0)),
          highest: [0, 1, 5, 40].map((n) => backoffDelay(n, 1000, 30000, () => 0.999999)),
          relative: socketUrl("/ws?kiosk=lobby", page),
          plain: socketUrl("http://kiosk.example.org/ws", page),
          refused: ["/ws?token=x", "/ws?kiosk=a&Access_Token=x", "wss://user:pw@kiosk.example.org/ws",
                    "wss://evil.example/ws", "ftp://kiosk.example.org/ws"].map(refused),
        };
    }"""
    )
    assert results == {
        "lowest": [0, 0, 0, 0],
        "highest": [999, 1999, 29999, 29999],
        "relative": "wss://kiosk.example.org/ws?kiosk=lobby",
        "plain": "ws://kiosk.example.org/ws",
        "refused": [True, True, True, True, True],
    }


# A WebSocket stand-in the test drives frame by frame, to check the client's handling of the wire protocol
# exactly: order, duplicates, gaps, replays, resyncs, positions saved before handlers run, close().
FAKE_SOCKET_SCENARIO = """async () => {
    const { WsgateClient } = await import("/wsgate.js");
    const sockets = [];
    class FakeSocket {
        static OPEN = 1;
        constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
        send(text) { this.sent.push(JSON.parse(text)); }
        close(code) { this.readyState = 3; this.closedWith = code; }
        open() { this.readyState = 1; this.onopen(); }
        frame(value) { if (this.onmessage) this.onmessage({ data: JSON.stringify(value) }); }
        drop() { this.readyState = 3; this.onclose({ code: 1006 }); }
    }
    const connection = async (n) => {
        while (sockets.length < n) await new Promise((wake) => setTimeout(wake, 1));
        sockets[n - 1].open();
        return sockets[n - 1];
    };
    const message = (offset, data) => ({ type: "message", channel: "kiosks", offset, data });
    globalThis.WebSocket = FakeSocket;
    sessionStorage.clear();
    const log = [];
    const hub = new WsgateClient("/ws?kiosk=t", { baseDelay: 2, maxDelay: 2 });
    hub.on("state", (state) => log.push(state));
    hub.on("resync", ({ channel, reconnect }) => log.push(`resync ${channel} reconnect=${reconnect}`));
    const saved = () => sessionStorage.getItem("wsgate:since:kiosks");
    hub.subscribe("kiosks", (data, { offset, replayed }) =>
        log.push(`${data}@${offset}${replayed ? " replayed" : ""} saved=${saved()}`));
    hub.subscribe("kiosks", (data) => { if (data === "stop") hub.close(); });

    const first = await connection(1);
    first.frame({ type: "subscribed", channel: "kiosks", epoch: "e1", offset: 4, recovered: false });
    first.frame(message(5, "a"));
    first.frame(message(5, "a again"));  // a duplicate: dropped
    first.frame(message(7, "c"));        // a gap: reconnect and recover from 5
    const second = await connection(2);
    second.frame({ type: "subscribed", channel: "kiosks", epoch: "e1", offset: 7, recovered: true });
    second.frame(message(6, "b"));
    second.frame(message(7, "c"));
    second.frame(message(8, "d"));
    second.drop();
    const third = await connection(3);
    third.frame({ type: "subscribed", channel: "kiosks", epoch: "e2", offset: 2, recovered: false });
    third.frame(message(3, "stop"));
    third.frame(message(4, "after close"));  // never handled
    return { log, sent: sockets.map((socket) => socket.sent), urls: sockets.map((socket) => socket.url),
             closed: sockets.map((socket) => socket.closedWith ?? null) };
}"""


async def test_wsgate_js_protocol_handling(browser: Browser, system: KioskSystem) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{system.url}/api/offices")  # any page of the origin that serves /wsgate.js
        result = await page.evaluate(FAKE_SOCKET_SCENARIO)
    finally:
        await context.close()

    saved = '{{"epoch":"{}","offset":{}}}'.format
    assert result["log"] == [
        "connected",
        f"a@5 saved={saved('e1', 5)}",  # the position is saved before the handler runs
        "reconnecting",
        "connected",
        f"b@6 replayed saved={saved('e1', 6)}",
        f"c@7 replayed saved={saved('e1', 7)}",
        f"d@8 saved={saved('e1', 8)}",
        "reconnecting",
        "resync kiosks reconnect=true",
        "connected",
        f"stop@3 saved={saved('e2', 3)}",
        "closed",
    ]
    subscribe = {"type": "subscribe", "channel": "kiosks"}
    assert result["sent"] == [
        [subscribe],
        [{**subscribe, "since": {"epoch": "e1", "offset": 5}}],
        [{**subscribe, "since": {"epoch": "e1", "offset": 8}}],
    ]
    assert result["urls"] == [system.url.replace("http://", "ws://") + "/ws?kiosk=t"] * 3
    assert result["closed"] == [4002, None, 1000]  # offset gap; dropped by the "network"; close()


async def test_no_secret_reaches_the_browser(
    system: KioskSystem, open_kiosk: OpenKiosk, open_admin: OpenAdmin
) -> None:
    kiosks = await open_all(open_kiosk, ("k1", "k2"))
    admin = await open_admin()
    await admin.sees_online("k1", "k2")
    before = await load_ids(kiosks)
    await admin.announce("Secrets check")
    await admin.reset("k1")
    await kiosks[0].reloaded(before["k1"])
    before = await load_ids(kiosks)
    await admin.reset_all()
    await asyncio.gather(*(kiosk.reloaded(before[kiosk.id]) for kiosk in kiosks))

    secrets = {
        "publish token": system._publish_token.reveal(),
        "signing key": system._signing_key.reveal(),
        "admin password": system.admin_password,
    }
    visible: list[tuple[str, str]] = []  # (where, text) for everything a browser had
    sessions: list[tuple[BrowserContext, Recorder]] = [(kiosk.context, kiosk.recorder) for kiosk in kiosks]
    sessions.append((admin.context, admin.recorder))
    for context, recorder in sessions:
        visible += [("request URL", url) for url in recorder.requests]
        visible += [("WebSocket URL", url) for url in recorder.websockets]
        visible += [("WebSocket frame", frame) for frame in recorder.frames]
        visible += [(f"cookie {cookie['name']}", cookie["value"]) for cookie in await context.cookies()]
        for page in context.pages:
            visible.append((f"DOM of {page.url}", await page.content()))
            storage = "JSON.stringify({local: {...localStorage}, session: {...sessionStorage}})"
            visible.append((f"storage of {page.url}", await page.evaluate(storage)))
        # Every resource the page loaded, fetched again with the same cookies: HTML, scripts, styles, JSON.
        for url in sorted({url for url in recorder.requests if url.startswith(system.url)}):
            if urlsplit(url).path == "/ws":
                continue
            response = await context.request.get(url, max_redirects=0)
            visible.append((f"body of GET {url}", await response.text()))

    assert any(where.startswith("body of GET") and "kiosk.js" in where for where, _ in visible)
    assert any(where.startswith("body of GET") and "/admin/static/admin.js" in where for where, _ in visible)
    for where, text in visible:
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} appears in the {where}"
        assert not JWT.search(text), f"a token appears in the {where}"

    websocket_urls = [url for _, recorder in sessions for url in recorder.websockets]
    assert websocket_urls, "the kiosks opened no WebSocket"
    for url in websocket_urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == ("ws", urlsplit(system.url).netloc, "/ws")
        assert [name for name, _ in parse_qsl(parts.query)] == ["kiosk"], url


@pytest_asyncio.fixture(loop_scope="session")
async def foreign_site() -> AsyncIterator[str]:
    """Another site's server (another port: another origin) whose page targets the gateway."""
    page = """<!doctype html><title>elsewhere</title>
<form id="attack" method="post"><input name="kiosk" value="k1"></form>
<script src="/attack.js"></script>"""
    script = """
const target = new URL(location.href).searchParams.get("target");
const ws = new WebSocket(target.replace("http", "ws") + "/ws?kiosk=intruder");
ws.onopen = () => { document.body.dataset.ws = "open"; };
ws.onclose = () => { document.body.dataset.ws ??= "refused"; };
document.getElementById("attack").action = target + "/admin/reset";
"""

    async def serve_page(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def serve_script(_: web.Request) -> web.Response:
        return web.Response(text=script, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", serve_page)
    app.router.add_get("/attack.js", serve_script)
    listener = Listener(app, host="127.0.0.1", port=0, handshake_timeout=10.0)
    await listener.start()
    yield f"http://127.0.0.1:{listener.port}"
    await listener.close()


async def test_another_site_cannot_use_the_gateway_or_drive_the_admin(
    system: KioskSystem, open_kiosk: OpenKiosk, open_admin: OpenAdmin, foreign_site: str
) -> None:
    k1 = await open_kiosk("k1")
    admin = await open_admin()
    before = await k1.load_id()
    # The admin's browser, logged in, visits the other site. 127.0.0.1 on another port is the same *site*,
    # so even the SameSite=Strict session cookie goes along: only the Origin checks stand in the way.
    page = await admin.context.new_page()
    await page.goto(f"{foreign_site}/?target={system.url}")
    await expect(page.locator("body")).to_have_attribute("data-ws", "refused")
    assert hub_sessions(system, "intruder") == []

    async with page.expect_response(f"{system.url}/admin/reset") as posted:
        await page.evaluate("document.getElementById('attack').submit()")
    assert (await posted.value).status == 403

    # Nothing was published: the next message on k1's channel is the first.
    assert await system.publish("kiosk:k1", {"action": "announce", "text": "Still here"}) == 1
    await k1.shows("Still here")
    assert await k1.load_id() == before
    await page.close()


async def test_screenshots(
    system: KioskSystem, browser: Browser, open_kiosk: OpenKiosk, open_admin: OpenAdmin
) -> None:
    """Kiosk and admin pages as a person sees them, saved under build/screenshots/ (not committed).

    The kiosk's clock is fixed at 14:20 today, so the pictures show an event under way and one coming next.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await open_all(open_kiosk, ("lobby", "floor-2"))
    admin = await open_admin()
    await admin.sees_online("floor-2", "lobby")
    await admin.page.screenshot(path=ARTIFACTS / "admin.png")

    afternoon = datetime.now().astimezone().replace(hour=14, minute=20, second=0, microsecond=0)
    saved = []
    for width, height in ((1920, 1080), (1280, 800)):
        context = await browser.new_context(viewport={"width": width, "height": height})
        try:
            page = await context.new_page()
            await page.clock.set_fixed_time(afternoon)
            await page.goto(f"{system.url}/?kiosk=entrance")
            kiosk = KioskPage("entrance", context, page, Recorder())
            await kiosk.connected()
            await expect(page.locator("#offices tr")).to_have_count(7)
            await expect(page.locator('.event[data-status="now"]')).to_have_count(1)
            saved.append(ARTIFACTS / f"kiosk-{width}x{height}.png")
            await page.screenshot(path=saved[-1])
            await barrier(system, [kiosk], "The east entrance is closed today. Please use the main entrance.")
            await expect(kiosk.banner).to_have_css("opacity", "1")  # the banner's arrival animation is over
            saved.append(ARTIFACTS / f"kiosk-{width}x{height}-announcement.png")
            await page.screenshot(path=saved[-1])
        finally:
            await context.close()
    assert all(path.stat().st_size > 10_000 for path in saved)
