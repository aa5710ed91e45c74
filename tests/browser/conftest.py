"""Fixtures for the browser tests: one Chromium for the session, a fresh kiosk system per test, and helpers
that drive kiosk pages and the admin page the way a person would.

Debian's chromium is used (``make test`` installs it; ``WSGATE_CHROMIUM`` points elsewhere); Playwright's own
browser downloads are not needed. Without it the tests are skipped with a loud reason — except on CI (``CI``
set), where that is a failure.
Waiting is done with Playwright's ``expect`` (auto-retrying assertions, which work across reloads and under
the kiosk page's Content-Security-Policy, unlike ``wait_for_function``, which would need ``unsafe-eval``) —
never with fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Playwright,
    WebSocket,
    async_playwright,
    expect,
)

from wsgate.demo.system import KioskSystem

CHROMIUM = Path(os.environ.get("WSGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous for a loaded 2-core CI machine; a passing run takes a fraction of it.
TIMEOUT_MS = 10_000
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"

expect.set_options(timeout=TIMEOUT_MS)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        reason = (
            f"BROWSER TESTS SKIPPED: {CHROMIUM} is missing. Install Debian's chromium "
            "(`apt-get install chromium`; `make test` does it) or point WSGATE_CHROMIUM at a Chromium binary."
        )
        if os.environ.get("CI"):  # `make test` installs chromium, so on CI a missing browser is a failure
            pytest.fail(reason.replace("SKIPPED", "CANNOT RUN"))
        pytest.skip(reason)
    launched = await playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield launched
    await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def system() -> AsyncIterator[KioskSystem]:
    """The whole kiosk system of ``wsgate up``, in this process, on a free port."""
    running = KioskSystem(port=0)
    await running.start()
    yield running
    await running.stop()


@dataclass
class Recorder:
    """What one browser context used: request URLs, WebSocket URLs and frames, console errors."""

    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext) -> None:
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("page", self.attach_page)

    def attach_page(self, page: Page) -> None:
        page.on("websocket", self._websocket)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _websocket(self, websocket: WebSocket) -> None:
        self.websockets.append(websocket.url)
        websocket.on("framesent", lambda payload: self.frames.append(str(payload)))
        websocket.on("framereceived", lambda payload: self.frames.append(str(payload)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"console {message.type}: {message.text}")


class KioskPage:
    """One kiosk display: its own browser context (so its own storage), one page on ``/?kiosk=ID``."""

    def __init__(self, kiosk_id: str, context: BrowserContext, page: Page, recorder: Recorder) -> None:
        self.id = kiosk_id
        self.context = context
        self.page = page
        self.recorder = recorder
        self.loads = 0
        page.on("load", self._loaded)
        self.body = page.locator("body")
        self.banner = page.locator("#announcement")

    def _loaded(self, _: Page) -> None:
        self.loads += 1

    async def load_id(self) -> str:
        """The current page load's marker (set by kiosk.js on every load)."""
        await expect(self.body).to_have_attribute("data-load-id", re.compile(r".+"))
        value = await self.body.get_attribute("data-load-id")
        assert value is not None
        return value

    async def connected(self) -> None:
        await expect(self.body).to_have_attribute("data-state", "connected")

    async def reloaded(self, before: str) -> str:
        """Wait until a new page load replaced the one marked ``before`` and is connected; its marker."""
        await expect(self.body).to_have_attribute("data-load-id", re.compile(rf"^(?!{re.escape(before)}$).+"))
        await self.connected()
        return await self.load_id()

    async def shows(self, text: str) -> None:
        await expect(self.banner).to_be_visible()
        await expect(self.page.locator("#announcement-text")).to_have_text(text)


OpenKiosk = Callable[[str], Awaitable[KioskPage]]


@pytest_asyncio.fixture(loop_scope="session")
async def open_kiosk(browser: Browser, system: KioskSystem) -> AsyncIterator[OpenKiosk]:
    """Open a connected kiosk page per call, each in its own browser context, all closed after the test."""
    contexts: list[BrowserContext] = []

    async def open_one(kiosk_id: str) -> KioskPage:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        recorder = Recorder()
        recorder.attach(context)
        page = await context.new_page()
        kiosk = KioskPage(kiosk_id, context, page, recorder)
        await page.goto(f"{system.url}/?kiosk={kiosk_id}")
        await kiosk.connected()
        return kiosk

    yield open_one
    for context in contexts:
        await context.close()


class AdminPage:
    """The admin dashboard, logged in; every confirm() is accepted."""

    def __init__(self, context: BrowserContext, page: Page, recorder: Recorder) -> None:
        self.context = context
        self.page = page
        self.recorder = recorder
        self.kiosk_list = page.locator("#kiosk-list li.kiosk")
        self.status = page.locator("#status")
        page.on("dialog", self._accept)

    @staticmethod
    async def _accept(dialog: Dialog) -> None:
        await dialog.accept()

    async def login(self, base_url: str, password: str) -> None:
        await self.page.goto(f"{base_url}/admin")
        await self.page.locator("#password").fill(password)
        await self.page.locator("#login").click()
        await expect(self.page.locator("#reset-all")).to_be_visible()

    async def sees_online(self, *kiosk_ids: str) -> None:
        """The kiosk list shows exactly these ids."""
        await expect(self.kiosk_list).to_have_count(len(kiosk_ids))
        for kiosk_id in kiosk_ids:
            await expect(self.row(kiosk_id)).to_be_visible()

    def row(self, kiosk_id: str) -> Locator:
        return self.page.locator(f'#kiosk-list li.kiosk[data-kiosk-id="{kiosk_id}"]')

    async def reset_all(self) -> None:
        await self.page.get_by_role("button", name="Reset all kiosks").click()
        await expect(self.status).to_have_text(re.compile("Reset sent"))

    async def reset(self, kiosk_id: str) -> None:
        await self.page.get_by_role("button", name=f"Reset kiosk {kiosk_id}").click()
        await expect(self.status).to_have_text(re.compile(f"Reset sent to kiosk {re.escape(kiosk_id)}"))

    async def announce(self, text: str) -> None:
        await self.page.locator("#announce-text").fill(text)
        await self.page.locator("#announce").click()
        await expect(self.status).to_have_text(re.compile("Announcement sent"))


OpenAdmin = Callable[[], Awaitable[AdminPage]]


@pytest_asyncio.fixture(loop_scope="session")
async def open_admin(browser: Browser, system: KioskSystem) -> AsyncIterator[OpenAdmin]:
    """Open the admin page in its own context and log in with the system's password.

    Open it after the kiosks: the dashboard then lists them from its first render instead of after its
    next poll (every 2 s), which keeps the tests fast without hiding anything.
    """
    contexts: list[BrowserContext] = []

    async def open_one() -> AdminPage:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        recorder = Recorder()
        recorder.attach(context)
        page = await context.new_page()
        dashboard = AdminPage(context, page, recorder)
        await dashboard.login(system.url, system.admin_password)
        return dashboard

    yield open_one
    for context in contexts:
        await context.close()


def hub_sessions(system: KioskSystem, kiosk_id: str) -> list[str]:
    """Ids of the hub sessions whose connection was opened for ``kiosk_id``."""
    return [sid for sid, session in system.hub.hub.sessions.items() if session.grant.subject == kiosk_id]


async def until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Poll an in-process condition (the hub's own state) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
