"""The admin page of ``wsgate up``: log in with a password, watch the online kiosks, reset them, announce.

:func:`build_admin_app` returns an aiohttp application whose routes all live under ``/admin`` (the gateway's
HTTP route keeps the path and passes cookies):

==========================  ===========================================================================
``GET  /admin``             the dashboard when logged in, else the login form (``GET /admin/login`` too)
``POST /admin/login``       form field ``password`` → 303 to ``/admin`` with a session cookie; 401; 429
``POST /admin/logout``      ends the session (the cookie is revoked server-side, not just deleted)
``GET  /admin/kiosks``      JSON: the online kiosks, from the hub's presence of channel ``kiosks``
``POST /admin/reset``       publish ``{"action": "reset"}`` on ``kiosks``, or on ``kiosk:<id>`` with ``kiosk``
``POST /admin/announce``    publish ``{"action": "announce", "text": …}`` on ``kiosks``
``GET  /admin/static/…``    ``admin.css`` and ``admin.js`` (package data under ``wsgate/web/admin/``)
==========================  ===========================================================================

The dashboard refreshes its kiosk list by polling ``GET /admin/kiosks`` every 2 s (not SSE: a poll is one
short request the gateway's HTTP proxy forwards like any other, survives restarts of either side without
reconnect logic, and costs one presence lookup per open admin page every 2 s).

Security model:

- **The publish token stays on the server.** Only :class:`HubClient` reveals it, in the ``Authorization``
  header of requests to the hub. No page, script, cookie, JSON answer or log line contains it.
- **Sessions** are stateless signed cookies (:class:`SessionCodec`): ``<expiry>.<random id>.<HMAC-SHA256>``,
  ``HttpOnly; SameSite=Strict; Path=/admin`` and ``Secure`` when the request came over https (the gateway
  says so in ``X-Forwarded-Proto``). They expire after :data:`SESSION_TTL`; logging out revokes the id.
- **Every state-changing POST** needs, in this order: an ``Origin`` (when present) in ``public_origins``
  (403), a valid session (401), and the session's CSRF token (a synchronizer token: an HMAC of the session id,
  sent as form field ``csrf_token`` or header ``X-CSRF-Token``; 403). The login form checks the Origin too.
- **Password guessing** is limited per client address (:class:`LoginLimiter`): after
  :data:`MAX_LOGIN_FAILURES` failures within :data:`LOGIN_WINDOW` seconds every attempt, right or wrong, is
  answered 429 until the window has passed.
- **Kiosk ids come from browsers**: the server escapes everything it renders (:func:`html.escape`), the script
  builds DOM nodes with ``textContent``; per-kiosk resets accept only ids matching :data:`KIOSK_ID`.
- **Headers** on every response: a strict Content-Security-Policy (no inline script or style), no framing, no
  referrer, no caching (:data:`SECURITY_HEADERS`).

Logs go to ``wsgate.admin``: one line per login (ok, failed, rate-limited), logout, reset and announcement,
naming the session by :attr:`AdminSession.tag` (a hash of its id, never a piece of the cookie) and the client
by address. Never a password, the publish token or a cookie value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import logging
import math
import re
import secrets
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Final, TypeGuard

import aiohttp
from aiohttp import web

from wsgate.auth.origins import OriginPolicy
from wsgate.errors import WsgateError
from wsgate.http_server import Handler, handshake_guard
from wsgate.secret import Secret

__all__ = [
    "COOKIE_NAME",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "KIOSKS_CHANNEL",
    "SECURITY_HEADERS",
    "AdminSession",
    "HubClient",
    "HubUnavailable",
    "Kiosk",
    "LoginLimiter",
    "SessionCodec",
    "build_admin_app",
    "client_address",
    "from_own_page",
    "group_presence",
    "is_kiosk_id",
    "render_dashboard",
    "render_kiosk_row",
    "render_login",
]

log = logging.getLogger("wsgate.admin")

PREFIX: Final = "/admin"
STATIC_PREFIX: Final = "/admin/static"
COOKIE_NAME: Final = "wsgate_admin"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"
KIOSKS_CHANNEL: Final = "kiosks"

# An absolute lifetime, not a sliding one: a stolen cookie dies on its own within a working day.
SESSION_TTL: Final = 8 * 3600.0
# HMAC-SHA256 keys shorter than the hash output weaken it (RFC 2104 §3).
MIN_SESSION_KEY_BYTES: Final = 32
# Our cookies are ~80 characters; anything much longer is not ours and is not worth parsing.
MAX_COOKIE_LENGTH: Final = 256
# Ten wrong passwords a minute per client: plenty for a person mistyping, hopeless for guessing.
MAX_LOGIN_FAILURES: Final = 10
LOGIN_WINDOW: Final = 60.0
# Bounds the limiter's memory; beyond it the client whose last failure is oldest is forgotten.
MAX_TRACKED_CLIENTS: Final = 4096
# An announcement is a banner on a public display, not a document.
MAX_ANNOUNCEMENT: Final = 500
# The largest form we accept (an announcement plus a token, in any encoding); larger bodies get 413.
MAX_BODY: Final = 16 * 1024
# How long a request to the hub may take before the admin reports it unreachable. Presence is asked on
# every poll, so it gets less time than a publish.
PUBLISH_TIMEOUT: Final = 5.0
PRESENCE_TIMEOUT: Final = 3.0
# The dashboard lists at most this many kiosks (and says how many there are in all).
MAX_LISTED_KIOSKS: Final = 1000

# The per-kiosk channel is ``kiosk:<id>``; channel names are limited to 200 characters and the id is kept to
# characters that are safe in a channel name, a log line and an HTML attribute.
KIOSK_ID: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,200}")

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

STATIC_FILES: Final[Mapping[str, str]] = {
    "admin.css": "text/css; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def is_kiosk_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` can name a kiosk in a per-kiosk reset (1–200 of ``A-Z a-z 0-9 _ . : @ -``)."""
    return isinstance(value, str) and KIOSK_ID.fullmatch(value) is not None


# ----------------------------------------------------------------------------------------------------------
# Sessions and CSRF tokens (pure: no I/O; ``now`` is injectable so tests need no clock).


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_COOKIE: Final = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{24})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class AdminSession:
    """A logged-in admin: a random id and the Unix time its cookie expires."""

    id: str
    expires: int

    @property
    def tag(self) -> str:
        """Eight hex digits naming the session in logs: a hash of the id, so no log holds part of a cookie."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:8]


class SessionCodec:
    """Issues and verifies session cookies and derives their CSRF tokens.

    A cookie is ``<expiry>.<id>.<mac>``: the expiry in Unix seconds, 18 random bytes of id and an
    HMAC-SHA256 of the first two with a key derived from ``key``. The CSRF token is an HMAC of the id with a
    second derived key, so one can never be passed off as the other. Revoked ids (logout) are remembered until
    their cookies would have expired anyway.
    """

    def __init__(self, key: bytes, *, ttl: float = SESSION_TTL) -> None:
        if len(key) < MIN_SESSION_KEY_BYTES:
            raise ValueError(f"session_key must be at least {MIN_SESSION_KEY_BYTES} random bytes")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError("session ttl must be a positive number of seconds")
        self.ttl = ttl
        self._cookie_key = hmac.new(key, b"wsgate admin: session cookie", hashlib.sha256).digest()
        self._csrf_key = hmac.new(key, b"wsgate admin: csrf token", hashlib.sha256).digest()
        self._revoked: dict[str, int] = {}

    def issue(self, *, now: float | None = None) -> tuple[AdminSession, str]:
        """A new session and its cookie value."""
        now = time.time() if now is None else now
        session = AdminSession(secrets.token_urlsafe(18), math.floor(now + self.ttl))
        payload = f"{session.expires}.{session.id}"
        return session, f"{payload}.{self._mac(payload)}"

    def verify(self, value: str | None, *, now: float | None = None) -> AdminSession | None:
        """The session a cookie value stands for; ``None`` if it is malformed, forged, expired or revoked."""
        if value is None or len(value) > MAX_COOKIE_LENGTH:
            return None
        match = _COOKIE.fullmatch(value)
        if match is None:
            return None
        expires_text, session_id, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(f"{expires_text}.{session_id}")):
            return None
        now = time.time() if now is None else now
        expires = int(expires_text)
        if now >= expires or session_id in self._revoked:
            return None
        return AdminSession(session_id, expires)

    def revoke(self, session: AdminSession, *, now: float | None = None) -> None:
        """Refuse this session's cookie from now on (logout)."""
        now = time.time() if now is None else now
        # Forget revocations whose cookies have expired anyway: the table stays as small as the live sessions.
        self._revoked = {sid: expires for sid, expires in self._revoked.items() if expires > now}
        self._revoked[session.id] = session.expires

    def csrf_token(self, session: AdminSession) -> str:
        return _b64(hmac.new(self._csrf_key, session.id.encode(), hashlib.sha256).digest())

    def check_csrf(self, session: AdminSession, token: str | None) -> bool:
        """Constant-time check of a submitted CSRF token against the session's."""
        if not token or not token.isascii():  # compare_digest takes ASCII strings only
            return False
        return hmac.compare_digest(token, self.csrf_token(session))

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._cookie_key, payload.encode(), hashlib.sha256).digest())


# ----------------------------------------------------------------------------------------------------------
# Login rate limit (pure).


class LoginLimiter:
    """At most ``max_failures`` failed logins per client within any ``window`` seconds.

    A client that reached the limit is refused, right password or not, until its oldest counted failure is
    ``window`` seconds old — otherwise a guesser would simply keep going and wait for the one 303. A
    successful login clears the client's count. At most ``max_clients`` clients are tracked; when a new one
    arrives at a full table, the one whose last failure is oldest is forgotten.
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_LOGIN_FAILURES,
        window: float = LOGIN_WINDOW,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        if max_failures < 1 or window <= 0 or max_clients < 1:
            raise ValueError("max_failures, window and max_clients must be positive")
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        # Least recently failing first; each deque holds the times of the client's latest failures.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float) -> float:
        """0 when ``client`` may try a password now, else the seconds until it may."""
        failures = self._failures.get(client)
        if failures is None or len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[0] + self.window - now)

    def record_failure(self, client: str, now: float) -> None:
        failures = self._failures.pop(client, None)
        if failures is None:
            failures = deque(maxlen=self.max_failures)
            while len(self._failures) >= self.max_clients:
                self._failures.popitem(last=False)
        failures.append(now)
        self._failures[client] = failures

    def record_success(self, client: str) -> None:
        self._failures.pop(client, None)

    def __len__(self) -> int:
        return len(self._failures)


def client_address(headers: Mapping[str, str], peer: str | None) -> str:
    """The client's IP address: the last ``X-Forwarded-For`` entry when it is an address, else the peer.

    The gateway replaces any client-sent ``X-Forwarded-For`` by the peer's address alone, and this app listens
    on loopback behind it; the last entry is the one the nearest proxy wrote, should there be several.
    """
    forwarded = headers.get("X-Forwarded-For")
    if forwarded:
        candidate = forwarded.rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    return peer or "unknown"


def from_own_page(origins: Sequence[str], fetch_site: str | None, allowed: OriginPolicy) -> bool:
    """Whether a POST may have come from one of our own pages, judging by its ``Origin`` header(s) and
    ``Sec-Fetch-Site`` (both set by browsers, never by a page's script).

    - ``Sec-Fetch-Site``, when sent, must be ``same-origin`` (or ``none``: the user's own action).
    - ``Origin``, when sent once, must be allowed. ``null`` is accepted only together with
      ``Sec-Fetch-Site: same-origin``: under our ``Referrer-Policy: no-referrer`` a browser sends
      ``Origin: null`` for a plain form post to its own origin (Fetch, "serializing a request origin").
    - Two ``Origin`` headers are refused. None at all is allowed: not a browser, or a very old one, and the
      session cookie and CSRF token still apply.
    """
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    if not origins:
        return True
    if len(origins) > 1:
        return False
    if origins[0] == "null" and fetch_site == "same-origin":
        return True
    return allowed.allows(origins[0])


# ----------------------------------------------------------------------------------------------------------
# Presence → kiosks (pure).


@dataclass(frozen=True, slots=True)
class Kiosk:
    """An online kiosk: its id (the subject of its connections), its earliest connection and their count."""

    id: str
    connected_at: str
    connections: int = 1

    @property
    def resettable(self) -> bool:
        return is_kiosk_id(self.id)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "connected_at": self.connected_at,
            "connections": self.connections,
            "resettable": self.resettable,
        }


def group_presence(clients: Iterable[object]) -> list[Kiosk]:
    """One :class:`Kiosk` per subject of the hub's presence entries, sorted by id.

    A kiosk open in two tabs (or reconnecting while its old connection times out) has two entries with the
    same subject; it is listed once, with its earliest ``connected_at``. Malformed entries are skipped.
    """
    found: dict[str, Kiosk] = {}
    for entry in clients:
        if not isinstance(entry, Mapping):
            continue
        subject = entry.get("subject")
        connected_at = entry.get("connected_at")
        if not isinstance(subject, str) or not subject:
            continue
        if not isinstance(connected_at, str):
            connected_at = ""
        seen = found.get(subject)
        if seen is None:
            found[subject] = Kiosk(subject, connected_at)
        else:
            # ISO 8601 UTC timestamps of one format sort as text; an empty one never wins.
            earliest = min(filter(None, (seen.connected_at, connected_at)), default="")
            found[subject] = Kiosk(subject, earliest, seen.connections + 1)
    return [found[subject] for subject in sorted(found)]


# ----------------------------------------------------------------------------------------------------------
# Pages (pure). Every value that is not a literal of this module goes through _e().


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _since(connected_at: str) -> str:
    """``HH:MM:SS UTC`` for an ISO 8601 timestamp (the script shows local time instead), else the text."""
    try:
        moment = datetime.fromisoformat(connected_at)
    except ValueError:
        return connected_at
    return moment.strftime("%H:%M:%S UTC") if moment.utcoffset() is not None else connected_at


def _page(title: str, body: str, *, page: str, csrf: str | None = None) -> str:
    meta = f'\n<meta name="csrf-token" content="{_e(csrf)}">' if csrf is not None else ""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}\n<title>{_e(title)}</title>\n"
        f'<link rel="icon" href="{STATIC_PREFIX}/favicon.svg" type="image/svg+xml">\n'
        f'<link rel="stylesheet" href="{STATIC_PREFIX}/admin.css">\n'
        f'<script src="{STATIC_PREFIX}/admin.js" defer></script>\n'
        f'</head>\n<body class="{page}">\n{body}\n</body>\n</html>\n'
    )


def _csrf_input(csrf: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(csrf)}">'


def render_login(error: str | None = None) -> str:
    """The login page; ``error`` is shown above the form."""
    alert = f'\n<p class="error" role="alert">{_e(error)}</p>' if error else ""
    body = f"""<main class="login">
<form class="card login-card" method="post" action="{PREFIX}/login">
<h1>wsgate admin</h1>
<p class="hint">Sign in to manage the kiosks.</p>{alert}
<input name="username" type="text" value="admin" autocomplete="username" hidden>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required autofocus>
<button type="submit" id="login" class="primary">Log in</button>
</form>
</main>"""
    return _page("Log in · wsgate admin", body, page="login-page")


def render_kiosk_row(kiosk: Kiosk, csrf: str) -> str:
    """One ``<li class="kiosk">`` of the kiosk list; ``admin.js`` builds the same structure with DOM calls."""
    kiosk_id = _e(kiosk.id)
    connections = f" · {kiosk.connections} connections" if kiosk.connections > 1 else ""
    if kiosk.resettable:
        action = (
            f'<form class="kiosk-reset-form" method="post" action="{PREFIX}/reset">{_csrf_input(csrf)}'
            f'<input type="hidden" name="kiosk" value="{kiosk_id}">'
            f'<button type="submit" class="kiosk-reset" aria-label="Reset kiosk {kiosk_id}">Reset</button>'
            "</form>"
        )
    else:
        action = (
            '<button type="button" class="kiosk-reset" disabled '
            'title="This id cannot name a kiosk channel">Reset</button>'
        )
    return (
        f'<li class="kiosk" data-kiosk-id="{kiosk_id}">'
        '<span class="kiosk-dot" aria-hidden="true"></span>'
        f'<span class="kiosk-id">{kiosk_id}</span>'
        f'<span class="kiosk-meta">since <time datetime="{_e(kiosk.connected_at)}">'
        f"{_e(_since(kiosk.connected_at))}</time>{_e(connections)}</span>"
        f"{action}</li>"
    )


def render_dashboard(
    *, csrf: str, kiosks: list[Kiosk] | None, hub_error: str | None = None, total: int | None = None
) -> str:
    """The dashboard. ``kiosks`` is ``None`` when the hub could not be asked (``hub_error`` says why)."""
    listed = kiosks or []
    count = len(listed) if total is None else total
    rows = "".join(render_kiosk_row(kiosk, csrf) for kiosk in listed)
    notice_hidden = "" if hub_error else " hidden"
    empty_hidden = " hidden" if listed or kiosks is None else ""
    body = f"""<header class="topbar">
<h1>wsgate admin</h1>
<form id="logout-form" method="post" action="{PREFIX}/logout">{_csrf_input(csrf)}
<button type="submit" id="logout" class="secondary">Log out</button>
</form>
</header>
<main class="dashboard">
<section class="card kiosks" aria-labelledby="kiosks-heading">
<div class="section-head">
<h2 id="kiosks-heading">Online kiosks</h2>
<span id="kiosk-count" class="count" aria-label="kiosks online">{"?" if kiosks is None else count}</span>
</div>
<p id="hub-state" class="notice" role="status"{notice_hidden}>{_e(hub_error or "")}</p>
<ul id="kiosk-list" class="kiosk-list">{rows}</ul>
<p id="kiosk-empty" class="empty"{empty_hidden}>No kiosks online.</p>
<p class="footnote">The list updates every 2 seconds.</p>
</section>
<section class="card actions" aria-labelledby="actions-heading">
<h2 id="actions-heading">Actions</h2>
<form id="reset-all-form" method="post" action="{PREFIX}/reset">{_csrf_input(csrf)}
<button type="submit" id="reset-all" class="danger big">Reset all kiosks</button>
<p class="hint">Reloads the page on every kiosk. A kiosk that is offline now reloads when it reconnects.</p>
</form>
<form id="announce-form" method="post" action="{PREFIX}/announce">{_csrf_input(csrf)}
<label for="announce-text">Announcement</label>
<div class="field-row">
<input id="announce-text" name="text" type="text" maxlength="{MAX_ANNOUNCEMENT}" required
 placeholder="Banner text">
<button type="submit" id="announce" class="primary">Announce</button>
</div>
</form>
<p id="status" class="status" role="status" aria-live="polite"></p>
</section>
</main>"""
    return _page("wsgate admin", body, page="dashboard-page", csrf=csrf)


def render_message(title: str, message: str) -> str:
    """A small page for a refused plain form post (without JavaScript)."""
    body = f"""<main class="login">
<div class="card login-card">
<h1>{_e(title)}</h1>
<p class="error" role="alert">{_e(message)}</p>
<p><a href="{PREFIX}">Back to the admin page</a></p>
</div>
</main>"""
    return _page(f"{title} · wsgate admin", body, page="message-page")


# ----------------------------------------------------------------------------------------------------------
# The hub's HTTP API.


class HubUnavailable(WsgateError):
    """The hub could not be reached or refused the admin's request. The message is safe to show a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HubClient:
    """Publishes and reads presence through the hub's HTTP API (DESIGN.md §5) with the publish token.

    This is the only place the token is revealed: in the ``Authorization`` header of requests to ``base_url``.
    Failures become :class:`HubUnavailable` with a message that names neither the token nor the hub's answer.
    """

    def __init__(self, base_url: str, token: Secret, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session = session
        self._reachable = True  # logged on change only: the dashboard asks every 2 s

    async def publish(self, channel: str, data: Mapping[str, Any]) -> int:
        """Publish ``data`` on ``channel``; the message's offset."""
        body = await self._request(
            "POST", "/api/publish", PUBLISH_TIMEOUT, json={"channel": channel, "data": dict(data)}
        )
        offset = body.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise HubUnavailable("the hub sent an unexpected answer")
        return offset

    async def presence(self, channel: str) -> list[object]:
        """The hub's presence entries for ``channel``."""
        body = await self._request("GET", "/api/presence", PRESENCE_TIMEOUT, params={"channel": channel})
        clients = body.get("clients")
        if not isinstance(clients, list):
            raise HubUnavailable("the hub sent an unexpected answer")
        return clients

    async def _request(self, method: str, path: str, time_limit: float, **kwargs: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=time_limit),
                allow_redirects=False,
                **kwargs,
            ) as response:
                if response.status != 200:
                    # A 401/403 means the wiring is wrong, not that the hub is down: the log says which.
                    log.error("hub answered %d to %s %s", response.status, method, path)
                    raise HubUnavailable(f"the hub refused the request (HTTP {response.status})")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if self._reachable:
                log.warning("hub unreachable at %s (%s)", self.base_url, type(exc).__name__)
            self._reachable = False
            raise HubUnavailable("the hub is unreachable; try again in a moment") from None
        if not self._reachable:
            log.info("hub reachable again at %s", self.base_url)
            self._reachable = True
        if not isinstance(body, dict):
            raise HubUnavailable("the hub sent an unexpected answer")
        return body


# ----------------------------------------------------------------------------------------------------------
# The application.


class Refused(WsgateError):
    """A request is refused with ``status``; ``code`` is a short machine name, ``message`` safe to show."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


_TITLES: Final[Mapping[int, str]] = {
    400: "Not accepted",
    401: "Not logged in",
    403: "Forbidden",
    413: "Too large",
    502: "Hub unreachable",
}

HUB_CLIENT = web.AppKey("wsgate_admin_hub", HubClient)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _is_https(request: web.Request) -> bool:
    proto = request.headers.get("X-Forwarded-Proto", "").split(",", 1)[0].strip().lower()
    return request.secure or proto == "https"


def _html(text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=headers)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


@web.middleware
async def _refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn :class:`Refused` and :class:`HubUnavailable` into JSON (for fetch) or a small HTML page."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except HubUnavailable as exc:
        refusal = Refused(502, "hub_unavailable", exc.message)
    except Refused as exc:
        refusal = exc
    if _wants_json(request) or request.path == f"{PREFIX}/kiosks":
        return web.json_response(
            {"ok": False, "error": refusal.code, "message": refusal.message},
            status=refusal.status,
            headers=refusal.headers,
        )
    title = _TITLES.get(refusal.status, "Refused")
    return _html(render_message(title, refusal.message), refusal.status, refusal.headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


class _Admin:
    def __init__(
        self,
        *,
        hub_url: str,
        publish_token: Secret,
        password: Secret,
        sessions: SessionCodec,
        origins: OriginPolicy,
        limiter: LoginLimiter,
        static: Mapping[str, bytes],
    ) -> None:
        self.hub_url = hub_url
        self.publish_token = publish_token
        self.password = password
        self.sessions = sessions
        self.origins = origins
        self.limiter = limiter
        self.static = static

    async def hub_client(self, app: web.Application) -> AsyncIterator[None]:
        # The hub sets no cookies, and none should be kept if it did.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            app[HUB_CLIENT] = HubClient(self.hub_url, self.publish_token, session)
            yield

    # -- checks --------------------------------------------------------------------------------------------

    def session(self, request: web.Request) -> AdminSession | None:
        return self.sessions.verify(request.cookies.get(COOKIE_NAME))

    def check_origin(self, request: web.Request) -> None:
        origins = request.headers.getall("Origin", [])
        if not from_own_page(origins, request.headers.get("Sec-Fetch-Site"), self.origins):
            raise Refused(403, "origin", "this request came from a page of another site")

    async def form(self, request: web.Request) -> dict[str, str]:
        """The form's text fields (the first value of each); uploads and repeated values are ignored."""
        try:
            posted = await request.post()
        except ValueError:
            raise Refused(400, "bad_request", "the form could not be read") from None
        fields: dict[str, str] = {}
        for name, value in posted.items():
            if isinstance(value, str):
                fields.setdefault(name, value)
        return fields

    async def authorize(self, request: web.Request) -> tuple[AdminSession, dict[str, str]]:
        """Origin (403), session (401), then CSRF token (403) — for every state-changing POST."""
        self.check_origin(request)
        session = self.session(request)
        if session is None:
            raise Refused(401, "unauthorized", "log in first (your session may have expired)")
        form = await self.form(request)
        token = request.headers.get(CSRF_HEADER, form.get(CSRF_FIELD))
        if not self.sessions.check_csrf(session, token):
            raise Refused(403, "csrf", "the form is out of date; reload the admin page and try again")
        return session, form

    def done(self, request: web.Request, payload: dict[str, Any]) -> web.Response:
        return web.json_response(payload) if _wants_json(request) else _see_other(PREFIX)

    def set_session_cookie(self, request: web.Request, response: web.Response, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=int(self.sessions.ttl),
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=True if _is_https(request) else None,
        )

    # -- pages ---------------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        session = self.session(request)
        if session is None:
            return _html(render_login())
        kiosks: list[Kiosk] | None
        total: int | None
        hub_error: str | None
        try:
            found = group_presence(await request.app[HUB_CLIENT].presence(KIOSKS_CHANNEL))
        except HubUnavailable as exc:
            kiosks, total, hub_error = None, None, f"Cannot list kiosks: {exc.message}."
        else:
            kiosks, total, hub_error = found[:MAX_LISTED_KIOSKS], len(found), None
        csrf = self.sessions.csrf_token(session)
        return _html(render_dashboard(csrf=csrf, kiosks=kiosks, hub_error=hub_error, total=total))

    async def login_page(self, request: web.Request) -> web.Response:
        if self.session(request) is not None:
            return _see_other(PREFIX)
        return _html(render_login())

    async def login(self, request: web.Request) -> web.Response:
        self.check_origin(request)
        client = client_address(request.headers, request.remote)
        now = time.monotonic()
        wait = self.limiter.retry_after(client, now)
        if wait > 0:
            log.warning("login refused: too many failures peer=%s", client)
            page = render_login("Too many failed attempts. Wait a minute, then try again.")
            return _html(page, 429, {"Retry-After": str(math.ceil(wait))})
        form = await self.form(request)
        candidate = form.get("password")
        if not isinstance(candidate, str) or not candidate or not self.password.matches(candidate):
            self.limiter.record_failure(client, now)
            log.warning("login failed peer=%s", client)
            return _html(render_login("That password is not correct."), 401)
        self.limiter.record_success(client)
        session, cookie = self.sessions.issue()
        response = _see_other(PREFIX)
        self.set_session_cookie(request, response, cookie)
        log.info("login ok session=%s peer=%s", session.tag, client)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session, _ = await self.authorize(request)
        self.sessions.revoke(session)
        response = self.done(request, {"ok": True})
        response.del_cookie(
            COOKIE_NAME,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=True if _is_https(request) else None,
        )
        log.info("logout session=%s", session.tag)
        return response

    async def kiosks(self, request: web.Request) -> web.Response:
        if self.session(request) is None:
            raise Refused(401, "unauthorized", "log in first (your session may have expired)")
        found = group_presence(await request.app[HUB_CLIENT].presence(KIOSKS_CHANNEL))
        return web.json_response(
            {
                "ok": True,
                "channel": KIOSKS_CHANNEL,
                "total": len(found),
                "kiosks": [kiosk.to_json() for kiosk in found[:MAX_LISTED_KIOSKS]],
            }
        )

    # -- actions -------------------------------------------------------------------------------------------

    async def reset(self, request: web.Request) -> web.Response:
        session, form = await self.authorize(request)
        kiosk = form.get("kiosk")
        if kiosk is None:
            channel = KIOSKS_CHANNEL
        elif is_kiosk_id(kiosk):
            channel = f"kiosk:{kiosk}"
        else:
            # An empty id is an error, not "all": a broken per-kiosk form must not reset every kiosk.
            raise Refused(400, "bad_kiosk", "a kiosk id is 1–200 characters of A-Z a-z 0-9 _ . : @ -")
        try:
            offset = await request.app[HUB_CLIENT].publish(channel, {"action": "reset"})
        except HubUnavailable:
            log.warning("reset failed: hub unavailable channel=%s session=%s", channel, session.tag)
            raise
        log.info("reset channel=%s offset=%d session=%s", channel, offset, session.tag)
        return self.done(request, {"ok": True, "channel": channel, "offset": offset})

    async def announce(self, request: web.Request) -> web.Response:
        session, form = await self.authorize(request)
        text = _announcement(form.get("text"))
        try:
            offset = await request.app[HUB_CLIENT].publish(
                KIOSKS_CHANNEL, {"action": "announce", "text": text}
            )
        except HubUnavailable:
            log.warning("announce failed: hub unavailable session=%s", session.tag)
            raise
        log.info("announce chars=%d offset=%d session=%s", len(text), offset, session.tag)
        return self.done(request, {"ok": True, "channel": KIOSKS_CHANNEL, "offset": offset})

    # -- assets --------------------------------------------------------------------------------------------

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self.static.get(name)
        if body is None:
            raise web.HTTPNotFound(text="no such file\n")
        return web.Response(body=body, headers={"Content-Type": STATIC_FILES[name]})

    async def slash(self, request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(PREFIX)


def _announcement(value: object) -> str:
    """The announcement text, trimmed: 1–500 characters, no control characters other than newlines."""
    if not isinstance(value, str) or not value.strip():
        raise Refused(400, "bad_text", "write the announcement first")
    text = value.strip()
    if len(text) > MAX_ANNOUNCEMENT:
        raise Refused(400, "bad_text", f"an announcement is at most {MAX_ANNOUNCEMENT} characters")
    if any(unicodedata.category(char) == "Cc" and char != "\n" for char in text):
        raise Refused(400, "bad_text", "an announcement cannot contain control characters")
    return text


def _load_static() -> dict[str, bytes]:
    folder = resources.files("wsgate").joinpath("web", "admin")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}


def build_admin_app(
    *,
    hub_url: str,
    publish_token: Secret,
    password: Secret,
    session_key: bytes,
    public_origins: tuple[str, ...],
    session_ttl: float = SESSION_TTL,
    login_limiter: LoginLimiter | None = None,
) -> web.Application:
    """The admin application (routes under ``/admin``), talking to the hub at ``hub_url`` (``http://host:port``).

    ``public_origins`` are the origins the admin page is served from (the gateway's); a POST whose ``Origin``
    is another is refused. ``session_key`` signs session cookies and CSRF tokens: at least 32 random bytes,
    new at each start (which logs everyone out). Raises :class:`ValueError` for an empty password or origin
    list, a bad origin, a short key or a ``hub_url`` that is not http(s).
    """
    if not password:
        raise ValueError("the admin password must not be empty")
    if not public_origins:
        raise ValueError("public_origins must name the origin(s) the admin page is served from")
    if not hub_url.startswith(("http://", "https://")):
        raise ValueError("hub_url must be the hub's HTTP base URL, http://host:port")
    admin = _Admin(
        hub_url=hub_url,
        publish_token=publish_token,
        password=password,
        sessions=SessionCodec(session_key, ttl=session_ttl),
        origins=OriginPolicy(public_origins, allow_missing=True, config_key="gateway.public_origins"),
        limiter=login_limiter or LoginLimiter(),
        static=_load_static(),
    )
    app = web.Application(middlewares=[handshake_guard, _refusals], client_max_size=MAX_BODY)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(admin.hub_client)
    app.router.add_get(PREFIX, admin.index)
    app.router.add_get(f"{PREFIX}/", admin.slash)
    app.router.add_get(f"{PREFIX}/login", admin.login_page)
    app.router.add_post(f"{PREFIX}/login", admin.login)
    app.router.add_post(f"{PREFIX}/logout", admin.logout)
    app.router.add_get(f"{PREFIX}/kiosks", admin.kiosks)
    app.router.add_post(f"{PREFIX}/reset", admin.reset)
    app.router.add_post(f"{PREFIX}/announce", admin.announce)
    app.router.add_get(STATIC_PREFIX + "/{name}", admin.asset)
    return app
