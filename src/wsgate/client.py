"""A Python client for the wsgate hub: subscribe, publish, and never miss a message across reconnects.

::

    async with wsgate.client.connect("wss://hub.example.org/ws", token=token) as hub:
        async for event in hub.subscribe("kiosks"):
            if isinstance(event, Resync):
                reload_state()              # the hub could not replay what was missed
            else:
                handle(event.data)          # a Message, in offset order, each exactly once

The credential travels in a header (``Authorization: Bearer …`` or a raw ``header``), never in the URL.
When the connection drops the client reconnects with capped exponential backoff and full jitter,
resubscribes every channel with ``since`` = the last (epoch, offset) it received, and delivers the replayed
messages before live ones, dropping any offset it has already delivered. When the hub cannot replay (it
restarted, or its history was trimmed) the subscription yields a :class:`Resync`. A signed token is refreshed
through ``token_refresh`` at 80 % of its lifetime; the next connection uses the new token. ``docs/client.md``
has the full story.

The pieces that decide things - :func:`backoff_delay`, :class:`Cursor` (recovery and duplicate dropping),
:func:`token_lifetime` and :func:`refresh_at` - are pure and do no I/O; :class:`HubClient` moves frames and
calls them. :func:`publish` is a synchronous facade over the HTTP API for scripts, and :func:`run_listen` is
``wsgate listen``.

Errors (all derive from :class:`wsgate.errors.WsgateError`)::

    WsgateError
    └── HubClientError          the client could not do what was asked
        ├── HubRefused          the handshake was answered with an HTTP status retrying will not fix
        │                       (401, 403, 404, …); ``status`` carries it
        ├── HubUnreachable      no connection: network, TLS, timeout, 5xx, 429 (retried after the first
        │                       connection; raised by ``open()`` for the first one)
        ├── SubscriptionRefused the hub answered a subscribe with an error (no right, too many)
        ├── PublishFailed       :func:`publish` over HTTP failed; ``status`` is None when there was no answer
        └── ClientClosed        the client or the subscription was closed

Arguments that can never work (a ``http://`` URL, a token in the query string, a bad channel name, data that
is not JSON) raise :class:`ValueError` at once. Nothing here logs a credential.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import random
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from ssl import SSLContext
from types import TracebackType
from typing import Any, Final, TextIO, TypeVar

import aiohttp
from yarl import URL

from wsgate.errors import ProtocolError, WsgateError
from wsgate.hub import idempotency, protocol
from wsgate.hub.protocol import Since
from wsgate.logs import SECRET_PARAMS

__all__ = [
    "DEFAULT_BACKOFF",
    "Backoff",
    "ClientClosed",
    "Cursor",
    "HubClient",
    "HubClientError",
    "HubEvent",
    "HubRefused",
    "HubUnreachable",
    "Message",
    "PublishFailed",
    "Resync",
    "Since",
    "Subscription",
    "SubscriptionRefused",
    "TokenRefresh",
    "backoff_delay",
    "connect",
    "publish",
    "refresh_at",
    "run_listen",
    "token_lifetime",
]

log = logging.getLogger("wsgate.client")

# --- limits and defaults, each with its reason ---------------------------------------------------------

# The hub's own limits.handshake_timeout: a handshake that has not completed by then will not.
OPEN_TIMEOUT: Final = 10.0
# The hub pings every 20 s too; pinging from this side notices a dead network path the hub cannot report.
PING_INTERVAL: Final = 20.0
# How long the close handshake may take before the connection is dropped (the hub allows 2 s as well).
CLOSE_TIMEOUT: Final = 2.0
# Events buffered per subscription before the client stops reading the socket. Hub messages are at most
# 64 KiB by default, so this bounds a stalled consumer at 16 MiB; the hub then drops the connection as a
# slow consumer and the client catches up from history when it reconnects.
MAX_QUEUE: Final = 256
# Large enough for any message the hub accepts (limits.max_message is 64 KiB by default) plus its envelope.
MAX_MESSAGE: Final = 4 * 1024 * 1024
# A signed token is refreshed when this fraction of its lifetime has passed: early enough that a slow
# refresher still finishes in time, late enough not to mint tokens needlessly.
REFRESH_FRACTION: Final = 0.8
# A refresher that hands out tokens already due for refresh must not make the client spin.
MIN_REFRESH_DELAY: Final = 0.5
# A token that expires sooner than this is refreshed before a connection attempt rather than after a 401.
EXPIRY_MARGIN: Final = 1.0
# A connection that lasted this long was healthy: the next reconnect starts the backoff from the beginning.
# A hub that accepts and drops at once is retried with growing delays instead.
STABLE_CONNECTION: Final = 10.0

# Close codes (RFC 6455 §7.4.1).
NORMAL_CLOSURE: Final = 1000
PROTOCOL_ERROR: Final = 1002
ABNORMAL_CLOSURE: Final = 1006
POLICY_VIOLATION: Final = 1008  # the hub: "token expired"

# Handshake answers that retrying can fix: timeouts, rate limits, and every server-side trouble.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
# RFC 9110 §5.1: a field name is a token.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the WebSocket handshake itself owns; a credential in one of them would be overwritten or break it.
_HANDSHAKE_HEADERS = frozenset(
    {"host", "upgrade", "connection", "origin", "content-length", "transfer-encoding"}
)

_T = TypeVar("_T")

TokenRefresh = Callable[[], Awaitable[str]]
"""An async callable returning a fresh credential (typically a newly minted signed token)."""


# --- errors ------------------------------------------------------------------------------------------------


class HubClientError(WsgateError):
    """Root of the client's errors."""


class HubRefused(HubClientError):
    """The hub (or a gateway in front of it) answered the WebSocket handshake with ``status`` instead of 101,
    and retrying will not change that: 401 credential missing, wrong or expired; 403 Origin or channel not
    allowed; 404 wrong path; …"""

    _HINTS: Final = {
        401: "the credential is missing, wrong or expired",
        403: "the Origin or the credential is not allowed here",
        404: "nothing answers WebSockets at this path",
        426: "the server did not see a WebSocket upgrade (a proxy in between?)",
    }

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

    def __str__(self) -> str:
        hint = self._HINTS.get(self.status)
        if hint is None:
            hint = "not a WebSocket endpoint" if self.status < 400 else "refused"
        return f"the hub refused the connection: HTTP {self.status} ({hint})"


class HubUnreachable(HubClientError):
    """No connection could be made: the network, TLS, a timeout, or an answer such as 503 or 429.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"cannot reach the hub: {self.reason}"


class SubscriptionRefused(HubClientError):
    """The hub answered a subscribe with an ``error``: ``code`` is ``forbidden`` (no subscribe right on the
    channel), ``limit`` (too many subscriptions on one connection), …; ``message`` is the hub's text."""

    def __init__(self, channel: str, code: str, message: str) -> None:
        super().__init__(channel, code, message)
        self.channel = channel
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"subscription to {self.channel} refused ({self.code}): {self.message}"


class PublishFailed(HubClientError):
    """:func:`publish` over HTTP failed: ``status`` is the hub's answer, ``None`` when there was none."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class ClientClosed(HubClientError):
    """The client, or the subscription, has been closed."""

    def __init__(self, what: str = "the client is closed") -> None:
        super().__init__(what)


# --- events ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A message published on ``channel``; ``offset`` rises by one per message within an epoch; ``data`` is
    the published JSON value."""

    channel: str
    offset: int
    data: Any


@dataclass(frozen=True, slots=True)
class Resync:
    """The hub could not replay what this subscription missed (it restarted, or its history no longer reaches
    back far enough). Rebuild your state from the source of truth; messages continue live after ``offset``
    in ``epoch``."""

    channel: str
    epoch: str
    offset: int


HubEvent = Message | Resync


# --- backoff (pure) ----------------------------------------------------------------------------------------


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before reconnection attempt number ``attempt`` (0 for the first retry).

    "Full jitter": uniform in ``[0, min(cap, base * 2**attempt)]``, so clients dropped together by one hub
    restart spread out instead of returning in lock-step.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # 2.0**1024 overflows; any exponent past 1000 is far beyond every cap anyway (the product may be inf).
    ceiling = min(cap, base * 2.0 ** min(attempt, 1000))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnection delays: exponential from ``base`` seconds, capped at ``cap``, with full jitter."""

    base: float = 0.5
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError("Backoff.base must be a positive number of seconds")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ValueError("Backoff.cap must be a number of seconds no smaller than base")

    def delay(self, attempt: int, rng: random.Random) -> float:
        return backoff_delay(attempt, self.base, self.cap, rng)


DEFAULT_BACKOFF: Final = Backoff()


# --- recovery (pure) ---------------------------------------------------------------------------------------


class OffsetGap(WsgateError):
    """A message skipped offsets: something was lost between the hub and here. The client reconnects and
    recovers from the last offset it has (internal; never reaches callers)."""


class Cursor:
    """Where one subscription stands in its channel, and what each hub answer means for it.

    ``epoch``/``offset`` are the epoch and the offset of the last message received (or the ``subscribed``
    offset when none has been). Feed it the hub's ``subscribed`` and ``message`` frames; it returns the events
    to deliver. Rules:

    - the first subscription, without a position, only records where the channel stands: no event;
    - a later one (a reconnect, or a caller-supplied ``since``) that the hub answers ``recovered: true`` keeps
      the position - the missed messages follow; ``recovered: false`` yields a :class:`Resync` and moves the
      position to the new epoch and offset;
    - a message at or below the position is a duplicate and is dropped; one beyond position + 1 raises
      :class:`OffsetGap`.
    """

    __slots__ = ("channel", "epoch", "offset")

    def __init__(self, channel: str, since: Since | None = None) -> None:
        self.channel = channel
        self.epoch: str | None = since.epoch if since else None
        self.offset: int = since.offset if since else 0

    @property
    def position(self) -> Since | None:
        return None if self.epoch is None else Since(self.epoch, self.offset)

    def subscribe_command(self) -> str:
        """The ``subscribe`` frame, with ``since`` once there is a position to recover from."""
        command: dict[str, Any] = {"type": "subscribe", "channel": self.channel}
        if self.epoch is not None:
            command["since"] = {"epoch": self.epoch, "offset": self.offset}
        return protocol.encode_json(command)

    def on_subscribed(self, epoch: str, offset: int, recovered: bool) -> Resync | None:
        if self.epoch is None:
            self.epoch, self.offset = epoch, offset
            return None
        if recovered and epoch == self.epoch:
            return None
        self.epoch, self.offset = epoch, offset
        return Resync(self.channel, epoch, offset)

    def on_message(self, offset: int, data: Any) -> Message | None:
        if self.epoch is None or offset <= self.offset:
            return None
        if offset != self.offset + 1:
            raise OffsetGap(f"channel {self.channel}: expected offset {self.offset + 1}, got {offset}")
        self.offset = offset
        return Message(self.channel, offset, data)


def error_concerns_subscribe(text: str) -> bool:
    """Whether a hub ``error`` frame answers a ``subscribe`` rather than a ``publish`` or an ``unsubscribe``.

    The hub handles a connection's commands in order and answers every subscribe (``subscribed`` or
    ``error``), but a publish or an unsubscribe only when it fails, and its error frames do not name the
    command. So an error that arrives while a subscribe awaits its answer belongs to that subscribe unless its
    text is about a publish ("no publish right on channel …") or an unsubscribe ("not subscribed to …").
    """
    return "publish" not in text and not text.startswith("not subscribed")


# --- token lifetime (pure) ---------------------------------------------------------------------------------


def _numeric_date(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def token_lifetime(token: str, *, now: float) -> tuple[float, float] | None:
    """``(start, expires)`` of a signed token, in unix seconds; ``None`` when it is not a JWT with an ``exp``
    (a static token, which does not expire).

    The claims are read WITHOUT verifying the signature: the token is our own credential, and only the hub
    can and does verify it (so no key, and no PyJWT/cryptography import, is needed here). ``start`` is the
    ``iat`` claim when it is plausible, else ``now`` (when we got the token).
    """
    parts = token.split(".")
    if len(parts) != 3:  # RFC 7515 §7.1 compact serialisation: header.payload.signature
        return None
    payload = parts[1]
    try:
        # RFC 7515 §2: base64url without padding.
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError and JSONDecodeError included
        return None
    if not isinstance(claims, dict):
        return None
    expires = _numeric_date(claims.get("exp"))
    if expires is None:
        return None
    issued = _numeric_date(claims.get("iat"))
    start = issued if issued is not None and issued < expires else min(now, expires)
    return start, expires


def refresh_at(start: float, expires: float) -> float:
    """When a token valid from ``start`` to ``expires`` is due for refresh: at 80 % of its lifetime."""
    return start + REFRESH_FRACTION * (expires - start)


# --- argument checks ---------------------------------------------------------------------------------------


def _check_url(url: str) -> URL:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise ValueError("url is not a valid URL") from None
    if parsed.scheme not in ("ws", "wss") or not parsed.host:
        raise ValueError("url must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:9000/ws")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("url must not contain credentials; pass token= (it is sent in a header)")
    for name in parsed.query:
        if name.lower() in SECRET_PARAMS:
            # URLs end up in logs and browser histories; the name is safe to repeat, the value is not.
            raise ValueError(
                f"url must not carry a credential in its query string ({name}=); "
                "pass token= instead: it is sent in a header"
            )
    return parsed


def _check_channel(channel: str) -> str:
    try:
        return protocol.validate_channel(channel)
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None


def _check_token(token: str) -> str:
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string")
    if not (token.isascii() and token.isprintable()) or token != token.strip():
        raise ValueError("token must be printable ASCII without surrounding spaces")
    return token


def _check_header(header: str) -> str:
    if not _FIELD_NAME.fullmatch(header):
        raise ValueError("header must be an HTTP header name, e.g. authorization or token")
    name = header.lower()
    if name in _HANDSHAKE_HEADERS or name.startswith("sec-websocket-"):
        raise ValueError(f"header {header} is part of the WebSocket handshake; choose another")
    return name


def _check_since(since: Since) -> Since:
    if not isinstance(since, Since):
        raise ValueError("since must be a wsgate.client.Since(epoch, offset)")
    if not (isinstance(since.epoch, str) and 0 < len(since.epoch) <= protocol.MAX_EPOCH_LENGTH):
        raise ValueError("since.epoch must be an epoch the hub sent")
    if isinstance(since.offset, bool) or not isinstance(since.offset, int) or since.offset < 0:
        raise ValueError("since.offset must be a non-negative integer")
    return since


# --- plumbing ----------------------------------------------------------------------------------------------


class _Inbox:
    """A bounded buffer between the connection's reader (one producer) and a subscription's consumer (one).

    When it is full the reader waits, so the socket is not read: that back-pressure is the bound on memory.
    Items carry the epoch they belong to, so the subscription can report its position as it delivers them.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[str, HubEvent]] = deque()
        self._limit = limit
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._ended = False
        self._error: BaseException | None = None

    async def put(self, epoch: str, event: HubEvent) -> None:
        while len(self._items) >= self._limit and not self._ended:
            self._writable.clear()
            await self._writable.wait()
        if not self._ended:
            self._items.append((epoch, event))
            self._readable.set()

    async def get(self) -> tuple[str, HubEvent]:
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        self._writable.set()
        return self._items.popleft()

    def end(self, error: BaseException | None = None, *, discard: bool = False) -> None:
        """No more items: the consumer gets what is buffered (unless ``discard``), then ``error`` or
        the end."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        if discard:
            self._items.clear()
        self._readable.set()
        self._writable.set()


class _Connection:
    """One WebSocket connection, and the subscribes sent on it that await their answer, in sending order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        self.ws = ws
        self.pending: deque[_Channel] = deque()
        # Frames go out one at a time and in the order they were asked for (asyncio.Lock is FIFO), which is
        # what lets subscribe answers be matched to `pending` by order.
        self._lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._lock:
            await self.ws.send_str(text)


class _Channel:
    """A subscription's state inside the client."""

    def __init__(self, name: str, since: Since | None, max_queue: int) -> None:
        self.name = name
        self.cursor = Cursor(name, since)
        self.inbox = _Inbox(max_queue)
        self.confirmed: asyncio.Future[Since] = asyncio.get_running_loop().create_future()
        self.sent_on: _Connection | None = None  # the connection its subscribe was sent on
        self.active_on: _Connection | None = None  # the connection that confirmed it
        self.closed = False

    def settle(self, error: BaseException) -> None:
        if not self.confirmed.done():
            self.confirmed.set_exception(error)
            self.confirmed.exception()  # retrieved: nobody has to await it


class _ResetConnection(WsgateError):
    """The hub sent something inconsistent; drop the connection and recover on a new one."""


# --- the client --------------------------------------------------------------------------------------------


class Subscription:
    """The events of one channel, in order: ``async for event in subscription``.

    Iteration ends when the subscription or the client is closed; it raises :class:`SubscriptionRefused` when
    the hub refuses the channel, and the client's failure (e.g. :class:`HubRefused`) after delivering what was
    already received. Also an async context manager that closes (unsubscribes) on exit.
    """

    def __init__(self, client: HubClient, channel: _Channel) -> None:
        self._client = client
        self._channel = channel
        self._position = channel.cursor.position

    @property
    def channel(self) -> str:
        return self._channel.name

    @property
    def position(self) -> Since | None:
        """The epoch and offset of the last event delivered by this iterator (the caller's ``since`` before
        any): persist it to resume later with ``subscribe(channel, since=…)``."""
        return self._position

    async def wait_subscribed(self) -> Since:
        """Wait until the hub has confirmed the first subscribe; returns where the channel stood then."""
        return await asyncio.shield(self._channel.confirmed)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> HubEvent:
        epoch, event = await self._channel.inbox.get()
        self._position = Since(epoch, event.offset)
        return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends. Closing twice does nothing."""
        await self._client._unsubscribe(self._channel)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class HubClient:
    """A connection to a hub that survives disconnects. Make one with :func:`connect`.

    Use it as an async context manager, or call :meth:`open` and :meth:`close`. See :func:`connect` for the
    arguments.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str,
        header: str = "authorization",
        origin: str | None = None,
        ssl: SSLContext | bool | None = None,
        token_refresh: TokenRefresh | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        open_timeout: float = OPEN_TIMEOUT,
        ping_interval: float | None = PING_INTERVAL,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self._url = _check_url(url)
        self._header = _check_header(header)
        self._origin = origin
        self._ssl: SSLContext | bool = True if ssl is None else ssl
        self._token_refresh = token_refresh
        self._backoff = backoff
        if not (math.isfinite(open_timeout) and open_timeout > 0):
            raise ValueError("open_timeout must be a positive number of seconds")
        self._open_timeout = open_timeout
        if ping_interval is not None and not (math.isfinite(ping_interval) and ping_interval > 0):
            raise ValueError("ping_interval must be a positive number of seconds, or None")
        self._ping_interval = ping_interval
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._max_queue = max_queue
        self._token = ""
        self._lifetime: tuple[float, float] | None = None
        self._set_token(_check_token(token))

        self._rng = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._conn: _Connection | None = None
        self._channels: dict[str, _Channel] = {}
        self._changed = asyncio.Event()  # replaced and set on every change of connection state
        self._token_changed = asyncio.Event()  # likewise, when the token changes
        self._refresh_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: HubClientError | None = None
        self._closing = False

    # -- public API --

    @property
    def url(self) -> str:
        return str(self._url)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        """Make the first connection: :class:`HubRefused` or :class:`HubUnreachable` when it cannot be made
        (the first connection is not retried, so a wrong URL or credential fails at once)."""
        if self._session is not None or self._closing:
            raise RuntimeError("a HubClient can be opened only once")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._open_timeout, sock_read=self._open_timeout
            )
        )
        try:
            ws = await self._attempt()
        except BaseException:
            self._closing = True
            await self._session.close()
            raise
        self._runner = asyncio.create_task(self._run(self._adopt(ws)), name="wsgate-client")
        if self._token_refresh is not None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="wsgate-client-refresh")

    async def close(self) -> None:
        """Close the connection with 1000 and end every subscription. Closing twice does nothing."""
        if self._closing:
            return
        self._closing = True
        self._notify()
        conn = self._conn
        if conn is not None:
            with suppress(Exception):
                await conn.ws.close(code=NORMAL_CLOSURE)
        for task in (self._refresher, self._runner, *self._tasks):
            if task is not None:
                task.cancel()
        tasks = [t for t in (self._refresher, self._runner, *self._tasks) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in self._channels.values():
            channel.closed = True
            channel.inbox.end(discard=True)
            channel.settle(ClientClosed())
        self._channels.clear()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> HubClient:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def subscribe(self, channel: str, *, since: Since | None = None) -> Subscription:
        """Subscribe to ``channel``; iterate the result for its events.

        ``since`` resumes from a position saved earlier (:attr:`Subscription.position`): the hub replays what
        followed it, or the first event is a :class:`Resync` when it cannot. Without it, the subscription
        starts at the channel's current offset and its first subscribe is never a resync.
        """
        _check_channel(channel)
        if since is not None:
            _check_since(since)
        self._check_usable()
        if channel in self._channels:
            raise ValueError(f"already subscribed to {channel} on this client")
        state = _Channel(channel, since, self._max_queue)
        self._channels[channel] = state
        conn = self._conn
        if conn is not None:
            self._spawn(self._send_subscribe(conn, state))
        return Subscription(self, state)

    async def publish(self, channel: str, data: Any) -> None:
        """Publish ``data`` (any JSON value) on ``channel`` over the WebSocket.

        Waits for a connection when there is none. Like the hub, this is not acknowledged: the frame has been
        handed to the connection when this returns, and a refusal (no publish right) is logged, not raised.
        Use :func:`publish` (HTTP) when you need the offset back.
        """
        _check_channel(channel)
        try:
            text = protocol.encode_json({"type": "publish", "channel": channel, "data": data})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data is not JSON: {exc}") from None
        failed: _Connection | None = None
        while True:
            conn = await self._wait_connected(other_than=failed)
            try:
                await conn.send(text)
                return
            except (aiohttp.ClientError, ConnectionError):
                failed = conn  # it is going away; send on the next one

    # -- connection lifecycle --

    async def _attempt(self) -> aiohttp.ClientWebSocketResponse[bool]:
        """One connection attempt, refreshing the token first if it is about to expire, and once more after a
        401 when there is a refresher."""
        lifetime = self._lifetime
        if lifetime is not None and lifetime[1] - time.time() < EXPIRY_MARGIN and self._token_refresh:
            await self._refresh(stale=self._token)
        used = self._token
        try:
            return await self._handshake()
        except HubRefused as exc:
            if exc.status != 401 or self._token_refresh is None:
                raise
            log.info("the hub refused the credential (401); asking token_refresh for a new one")
            if not await self._refresh(stale=used):
                raise HubUnreachable("the credential was refused and token_refresh failed") from None
            return await self._handshake()

    async def _handshake(self) -> aiohttp.ClientWebSocketResponse[bool]:
        assert self._session is not None
        value = f"Bearer {self._token}" if self._header == "authorization" else self._token
        try:
            async with asyncio.timeout(self._open_timeout):
                return await self._session.ws_connect(
                    self._url,
                    headers={self._header: value},
                    origin=self._origin,
                    ssl=self._ssl,
                    heartbeat=self._ping_interval,
                    autoping=True,
                    compress=0,
                    max_msg_size=MAX_MESSAGE,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
            if status >= 500 or status in _RETRYABLE_STATUSES:
                retry_after = _retry_after(exc.headers)
                raise HubUnreachable(f"HTTP {status}", retry_after=retry_after) from None
            raise HubRefused(status) from None
        except TimeoutError:
            raise HubUnreachable(f"no answer within {self._open_timeout:g}s") from None
        except aiohttp.ClientConnectorCertificateError:
            raise HubUnreachable("the server's TLS certificate did not verify") from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or exc.__class__.__name__
            raise HubUnreachable(str(reason)) from None

    async def _run(self, conn: _Connection) -> None:
        try:
            await self._maintain(conn)
        except HubClientError as exc:
            log.error("%s; giving up", exc)
            self._fail(exc)
        except Exception as exc:
            log.exception("the client stopped on an unexpected error")
            self._fail(HubClientError(f"the client stopped on an unexpected error ({type(exc).__name__})"))

    async def _maintain(self, conn: _Connection) -> None:
        """Serve connections until closed: after each one, reconnect with backoff (HubRefused escapes)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            used, started = self._token, loop.time()
            code = await self._serve(conn)
            if self._closing:
                return
            if code == POLICY_VIOLATION and self._token_refresh is not None:
                await self._refresh(stale=used)  # the token expired and no refresh happened in time
            if loop.time() - started >= STABLE_CONNECTION:
                attempt = 0
            if code == POLICY_VIOLATION and self._token != used:
                delay = 0.0  # the hub closed it for the old token; the new one is ready
            else:
                delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
            log.info("connection closed (code %s); reconnecting in %.2fs", code, delay)
            while True:
                await asyncio.sleep(delay)
                try:
                    conn = self._adopt(await self._attempt())
                    break
                except HubUnreachable as exc:
                    delay = self._backoff.delay(attempt, self._rng)
                    attempt += 1
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, self._backoff.cap))
                    log.warning("%s; retrying in %.2fs", exc, delay)

    def _adopt(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> _Connection:
        """Make a new connection the current one: publishes and new subscribes go to it from now on."""
        conn = _Connection(ws)
        self._conn = conn
        self._notify()
        log.info("connected to %s", self._url.with_query(None))
        return conn

    async def _serve(self, conn: _Connection) -> int:
        """Resubscribe every channel on ``conn`` and read it until it closes; returns the close code."""
        ws = conn.ws
        try:
            for channel in list(self._channels.values()):
                await self._send_subscribe(conn, channel)
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    await self._dispatch(conn, frame.data)
                elif frame.type is aiohttp.WSMsgType.ERROR:
                    break
        except _ResetConnection as exc:
            log.warning("%s; reconnecting to recover", exc)
            with suppress(aiohttp.ClientError, ConnectionError):
                await ws.close(code=PROTOCOL_ERROR)
        except (aiohttp.ClientError, ConnectionError):
            with suppress(aiohttp.ClientError, ConnectionError):
                await ws.close()
        finally:
            self._conn = None
            for channel in self._channels.values():
                channel.sent_on = channel.active_on = None
            self._notify()
        return ws.close_code if ws.close_code is not None else ABNORMAL_CLOSURE

    async def _send_subscribe(self, conn: _Connection, channel: _Channel) -> None:
        if channel.closed or channel.sent_on is conn:
            return
        channel.sent_on = conn
        conn.pending.append(channel)
        with suppress(aiohttp.ClientError, ConnectionError):  # the connection is going: the next resubscribes
            await conn.send(channel.cursor.subscribe_command())

    async def _unsubscribe(self, channel: _Channel) -> None:
        if channel.closed:
            return
        channel.closed = True
        channel.inbox.end(discard=True)
        channel.settle(ClientClosed("the subscription is closed"))
        if self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
        conn = self._conn
        if conn is not None and channel.sent_on is conn:
            with suppress(aiohttp.ClientError, ConnectionError):
                await conn.send(protocol.encode_json({"type": "unsubscribe", "channel": channel.name}))

    # -- frames from the hub --

    async def _dispatch(self, conn: _Connection, raw: str) -> None:
        try:
            frame = protocol.parse_json(raw)
        except ProtocolError:
            raise _ResetConnection("the hub sent a frame that is not JSON") from None
        if not isinstance(frame, dict):
            raise _ResetConnection("the hub sent a frame that is not a JSON object")
        kind = frame.get("type")
        if kind == "message":
            await self._on_message(conn, frame)
        elif kind == "subscribed":
            await self._on_subscribed(conn, frame)
        elif kind == "error":
            self._on_error(conn, frame)
        # Other types are ignored: a newer hub may add some.

    async def _on_message(self, conn: _Connection, frame: dict[str, Any]) -> None:
        name, offset = _field(frame, "channel", str), _field(frame, "offset", int)
        channel = self._channels.get(name)
        if channel is None or channel.active_on is not conn:
            return  # a channel unsubscribed meanwhile, or an answer to an earlier subscription of it
        try:
            message = channel.cursor.on_message(offset, frame.get("data"))
        except OffsetGap as exc:
            raise _ResetConnection(str(exc)) from None
        if message is not None:
            assert channel.cursor.epoch is not None
            await channel.inbox.put(channel.cursor.epoch, message)

    async def _on_subscribed(self, conn: _Connection, frame: dict[str, Any]) -> None:
        name = _field(frame, "channel", str)
        epoch, offset = _field(frame, "epoch", str), _field(frame, "offset", int)
        recovered = _field(frame, "recovered", bool)
        if not conn.pending or conn.pending[0].name != name:
            raise _ResetConnection(f"the hub confirmed a subscription to {name} that was not asked for")
        channel = conn.pending.popleft()
        if channel.closed:
            return  # unsubscribed meanwhile; the unsubscribe follows on the wire
        resync = channel.cursor.on_subscribed(epoch, offset, recovered)
        channel.active_on = conn
        if not channel.confirmed.done():
            channel.confirmed.set_result(Since(epoch, offset))
        log.debug("subscribed channel=%s epoch=%s offset=%d recovered=%s", name, epoch, offset, recovered)
        if resync is not None:
            log.info("channel %s could not be recovered (epoch %s); delivering a Resync", name, epoch)
            await channel.inbox.put(epoch, resync)

    def _on_error(self, conn: _Connection, frame: dict[str, Any]) -> None:
        code, text = str(frame.get("code", "error")), str(frame.get("message", ""))
        if conn.pending and error_concerns_subscribe(text):
            channel = conn.pending.popleft()
            if not channel.closed:
                self._refuse(channel, SubscriptionRefused(channel.name, code, text))
            return
        log.warning("the hub refused a command (%s): %s", code, text)

    def _refuse(self, channel: _Channel, error: SubscriptionRefused) -> None:
        log.warning("%s", error)
        channel.closed = True
        channel.sent_on = channel.active_on = None
        if self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
        channel.inbox.end(error)
        channel.settle(error)

    # -- token refresh --

    def _set_token(self, token: str) -> None:
        self._token = token
        self._lifetime = token_lifetime(token, now=time.time())

    async def _refresh(self, *, stale: str) -> bool:
        """Replace the token ``stale`` through ``token_refresh``.

        True once the token is no longer ``stale``, False when the refresher failed."""
        refresher = self._token_refresh
        assert refresher is not None
        async with self._refresh_lock:
            if self._token != stale:
                return True  # another path refreshed it meanwhile
            try:
                token = _check_token(await refresher())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The refresher is the caller's code: its message could contain anything, so only its type.
                log.warning("token_refresh failed (%s); keeping the current token", type(exc).__name__)
                log.debug("token_refresh failure", exc_info=True)
                return False
            self._set_token(token)
            changed, self._token_changed = self._token_changed, asyncio.Event()
            changed.set()
            log.info("token refreshed")
            return True

    async def _refresh_loop(self) -> None:
        """Refresh a signed token at 80 % of its lifetime, so the next connection has a valid one."""
        failures = 0
        while True:
            changed = self._token_changed
            lifetime = self._lifetime
            if lifetime is None:
                await changed.wait()  # not a signed token: nothing expires until it changes
                continue
            if failures:
                delay = self._backoff.delay(failures - 1, self._rng)
            else:
                delay = max(refresh_at(*lifetime) - time.time(), MIN_REFRESH_DELAY)
            try:
                async with asyncio.timeout(delay):
                    await changed.wait()
                failures = 0  # refreshed by another path: start over with the new token
                continue
            except TimeoutError:
                pass
            failures = 0 if await self._refresh(stale=self._token) else failures + 1

    # -- helpers --

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing or self._session is None:
            raise ClientClosed("the client is closed" if self._closing else "the client is not open yet")

    async def _wait_connected(self, *, other_than: _Connection | None = None) -> _Connection:
        while True:
            changed = self._changed
            self._check_usable()
            conn = self._conn
            if conn is not None and conn is not other_than:
                return conn
            await changed.wait()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail(self, error: HubClientError) -> None:
        self._failure = error
        for channel in self._channels.values():
            channel.inbox.end(error)
            channel.settle(error)
        self._notify()


def _field(frame: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = frame.get(name)
    # bool is an int subclass; an offset of true is not an offset.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _ResetConnection(f"the hub sent a {frame.get('type')} frame with a bad {name!r}")
    return value


def _retry_after(headers: Any) -> float | None:
    """The delay-seconds form of Retry-After (RFC 9110 §10.2.3); the date form is not worth the parsing."""
    value = headers.get("Retry-After") if headers is not None else None
    if isinstance(value, str) and value.strip().isdigit():
        return float(value.strip())
    return None


def connect(
    url: str,
    *,
    token: str,
    header: str = "authorization",
    origin: str | None = None,
    ssl: SSLContext | bool | None = None,
    token_refresh: TokenRefresh | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    open_timeout: float = OPEN_TIMEOUT,
    ping_interval: float | None = PING_INTERVAL,
    max_queue: int = MAX_QUEUE,
) -> HubClient:
    """A client for the hub at ``url`` (``ws://`` or ``wss://``, e.g. ``wss://hub.example.org/ws``).

    - ``token`` is sent as ``Authorization: Bearer <token>`` or, with another ``header`` (the hub's
      ``auth_header``, e.g. ``"token"``), as that header's whole value. Never in the URL: a URL carrying
      ``?token=``/``?ticket=`` is refused.
    - ``origin``: the Origin header to send (hubs that do not set ``allow_missing_origin`` require one).
    - ``ssl``: an :class:`ssl.SSLContext` for ``wss://`` (a private CA), or ``False`` to skip verification.
    - ``token_refresh``: an async callable returning a fresh token, called at 80 % of a signed token's
      lifetime, after the hub closes a connection because the token expired (1008), and once after a 401.
    - ``backoff``: reconnection delays (:class:`Backoff`; default 0.5 s doubling up to 30 s, full jitter).
    - ``open_timeout``: seconds a handshake may take; ``ping_interval``: seconds between pings (``None``:
      never); ``max_queue``: events buffered per subscription before the client stops reading.

    Use ``async with connect(…) as hub:``; entering makes the first connection (see :meth:`HubClient.open`).
    """
    return HubClient(
        url,
        token=token,
        header=header,
        origin=origin,
        ssl=ssl,
        token_refresh=token_refresh,
        backoff=backoff,
        open_timeout=open_timeout,
        ping_interval=ping_interval,
        max_queue=max_queue,
    )


# --- synchronous HTTP publish ------------------------------------------------------------------------------


def publish(
    url: str,
    channel: str,
    data: Any,
    *,
    token: str,
    timeout: float = 10.0,
    idempotency_key: str | None = None,
) -> int:
    """Publish ``data`` on ``channel`` through the hub's HTTP API and return the message's offset.

    ``url`` is the hub's HTTP base URL (``http://127.0.0.1:9000``) or its ``…/api/publish``; ``token`` a
    publish credential, sent as ``Authorization: Bearer``. Blocks for at most ``timeout`` seconds. Raises
    :class:`PublishFailed` (with the HTTP status, or ``None`` when the hub could not be reached) and
    :class:`ValueError` for ``data`` that is not JSON (NaN, infinities, objects JSON cannot encode) or an
    ``idempotency_key`` that is not 1-255 visible ASCII characters.
    Callable from any thread, including one running an event loop (it then runs on a private one).

    With ``idempotency_key`` (e.g. ``str(uuid.uuid4())``, one per message) the call can be repeated after a
    timeout or a dropped connection: the hub publishes the message once and answers every repetition with
    the same offset.
    """
    try:
        body = protocol.encode_json({"channel": channel, "data": data})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data is not JSON: {exc}") from None
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    if idempotency_key is not None:
        headers[idempotency.HEADER] = idempotency.format_key(idempotency_key)
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/api/publish"):
        endpoint += "/api/publish"

    def post() -> int:
        return asyncio.run(_post_publish(endpoint, headers, body, timeout))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return post()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsgate-publish") as pool:
        return pool.submit(post).result()


async def _post_publish(url: str, headers: dict[str, str], body: str, seconds: float) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session,
            session.post(url, data=body.encode(), headers=headers) as response,
        ):
            if response.status != 200:
                raise PublishFailed(response.status, await _error_message(response))
            try:
                return int((await response.json())["offset"])
            except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                raise PublishFailed(None, "the hub's answer is not a publish result") from None
    except aiohttp.ClientError as exc:
        raise PublishFailed(None, f"cannot reach the hub: {exc.__class__.__name__}") from None
    except TimeoutError:
        raise PublishFailed(None, f"the hub did not answer within {seconds:g}s") from None


async def _error_message(response: aiohttp.ClientResponse) -> str:
    try:
        return str((await response.json())["message"])
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return str(response.reason or "error")


# --- wsgate listen -----------------------------------------------------------------------------------------


def run_listen(
    url: str,
    channel: str,
    *,
    origin: str | None,
    token: str,
    header: str = "authorization",
    out: TextIO | None = None,
) -> int:
    """``wsgate listen``: subscribe to ``channel`` and print each event as one JSON line on ``out``
    (default: standard output, looked up when called) until SIGINT or SIGTERM.

    Lines are ``{"channel", "offset", "data"}`` for messages and ``{"event": "resync", "channel", "epoch",
    "offset"}`` when the hub could not replay what was missed. Status goes to standard error. Returns the exit
    status: 0 when stopped by a signal, 1 on a permanent failure (401, 403, channel refused, hub unreachable
    at start) with a one-line reason, 2 for unusable arguments.
    """
    from wsgate import logs

    stream = sys.stdout if out is None else out
    try:
        _check_url(url)
        _check_channel(channel)
        _check_header(header)
        _check_token(token)
    except ValueError as exc:
        print(f"wsgate listen: {exc}", file=sys.stderr)
        return 2
    logs.configure()
    try:
        return _run_loop(_listen(url, channel, origin=origin, token=token, header=header, out=stream))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 0
    except BrokenPipeError:
        # The reader went away (`wsgate listen … | head -1`): that ends listening, quietly.
        if stream is sys.stdout:
            _silence_stdout()
        return 0


async def _listen(url: str, channel: str, *, origin: str | None, token: str, header: str, out: TextIO) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        async with connect(url, token=token, header=header, origin=origin) as client:
            printing = asyncio.create_task(_print_events(client.subscribe(channel), out))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({printing, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not printing.done():
                printing.cancel()
            with suppress(asyncio.CancelledError):
                await printing  # re-raises a failure
        return 0
    except HubClientError as exc:
        print(f"wsgate listen: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _print_events(subscription: Subscription, out: TextIO) -> None:
    position = await subscription.wait_subscribed()
    print(
        f"wsgate listen: subscribed to {subscription.channel} at offset {position.offset}",
        file=sys.stderr,
        flush=True,
    )
    async for event in subscription:
        if isinstance(event, Message):
            line = {"channel": event.channel, "offset": event.offset, "data": event.data}
        else:
            line = {"event": "resync", "channel": event.channel, "epoch": event.epoch, "offset": event.offset}
        out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed, like the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _silence_stdout() -> None:
    import os

    with suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
