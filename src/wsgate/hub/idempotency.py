"""Retry-safe HTTP publishing: the ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-key-header).

A publisher whose request timed out, or whose connection dropped before the answer arrived, cannot know
whether the hub published its message. Sending the request again with the same ``Idempotency-Key`` is safe:
within the hub's window (its history TTL, at least :data:`MIN_WINDOW`) it answers with the *first* answer -
the same channel, epoch and offset - and publishes nothing again.

Following the draft:

- the key is an RFC 8941 ``sf-string`` (``Idempotency-Key: "8e03978e-…"``); a bare value
  (``Idempotency-Key: 8e03978e-…``, what Stripe-style clients send) is accepted as the same key. It must be
  1-255 visible ASCII characters, and a request carries at most one: anything else is ``400``;
- keys are scoped to the credential's principal (its kind and subject), so one publisher can neither replay
  nor probe another's answers;
- the same key with another payload (channel or data) is ``422``; the same key while the first request is
  still being processed is ``409`` (retry it a moment later);
- only successes are remembered: a refused request changed nothing, so its retry is simply decided again.

Everything here is pure apart from an injected clock; :class:`IdempotencyStore` is a bounded LRU map.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from wsgate.errors import WsgateError

HEADER: Final = "Idempotency-Key"
# Long enough for any UUID, ULID or hash-based key; the same bound Stripe publishes.
MAX_KEY_LENGTH: Final = 255
# Keys remembered per hub node. At most ~255 B of key plus a ~200 B answer each: a few MiB in the worst case,
# while a publisher retrying within seconds needs only its latest few.
MAX_KEYS: Final = 10_000
# The shortest window a key is remembered for, whatever the history TTL: longer than any sane retry loop.
MIN_WINDOW: Final = 60.0

Answer = Mapping[str, Any]


class IdempotencyError(WsgateError):
    """A request's ``Idempotency-Key`` cannot be honoured; the API answers ``status`` and ``code``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidKey(IdempotencyError):
    """The header is malformed, too long, or repeated (400)."""


class KeyReused(IdempotencyError):
    """The key was used with another payload by the same credential (422)."""

    status = 422
    code = "idempotency_key_reused"


class KeyInFlight(IdempotencyError):
    """A request with the same key is still being processed (409)."""

    status = 409
    code = "idempotency_key_in_flight"


def _visible(text: str) -> bool:
    return all("\x21" <= char <= "\x7e" for char in text)


def parse_key(values: Sequence[str]) -> str | None:
    """The key carried by a request's ``Idempotency-Key`` header values, or ``None`` when it has none.

    Raises :class:`InvalidKey` (400) for two headers, an empty or overlong key, a malformed ``sf-string`` or a
    character that is not visible ASCII. The error message never repeats the value.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKey(f"send one {HEADER} header, not {len(values)}")
    raw = values[0].strip(" \t")
    key = _unquote(raw) if raw.startswith('"') else raw
    if not key or len(key) > MAX_KEY_LENGTH or not _visible(key):
        raise InvalidKey(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} visible ASCII characters (e.g. a UUID), optionally quoted"
        )
    return key


def _unquote(raw: str) -> str:
    """Decode an RFC 8941 §3.3.3 ``sf-string``: ``"…"`` with ``\\"`` and ``\\\\`` the only escapes."""
    bad = InvalidKey(f'{HEADER} starts with " but is not a quoted string')
    if len(raw) < 2 or not raw.endswith('"'):
        raise bad
    chars: list[str] = []
    body = iter(raw[1:-1])
    for char in body:
        if char == "\\":
            escaped = next(body, "")
            if escaped not in ('"', "\\"):
                raise bad
            chars.append(escaped)
        elif char == '"':
            raise bad
        else:
            chars.append(char)
    return "".join(chars)


def format_key(key: str) -> str:
    """The header value for ``key`` as the draft writes it (an ``sf-string``).

    Raises ``ValueError`` for a key the hub would refuse."""
    if not key or len(key) > MAX_KEY_LENGTH or not _visible(key):
        raise ValueError(f"an idempotency key must be 1-{MAX_KEY_LENGTH} visible ASCII characters")
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fingerprint(channel: str, data: str) -> bytes:
    """What makes two publishes "the same request": the channel and the compact JSON of the data."""
    hashed = hashlib.sha256(channel.encode())
    hashed.update(b"\n")  # a channel name never contains a newline
    hashed.update(data.encode())
    return hashed.digest()


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes
    answer: Answer | None  # None while the first request is being processed
    expires: float


class IdempotencyStore:
    """Answers remembered per (scope, key) for ``window`` seconds after they were given, at most ``max_keys``
    of them; beyond that the least recently used key is forgotten first.

    ``clock`` returns seconds (monotonic); tests pass their own.
    """

    def __init__(
        self,
        *,
        window: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError("window must be positive and max_keys at least 1")
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, scope: str, key: str, digest: bytes) -> Answer | None:
        """Look a request up: its earlier answer, or ``None`` when it is new - the caller must then
        :meth:`finish` or :meth:`abandon` it. Raises :class:`KeyReused` or :class:`KeyInFlight`."""
        now = self._clock()
        slot = (scope, key)
        entry = self._entries.get(slot)
        if entry is not None and entry.answer is not None and entry.expires <= now:
            del self._entries[slot]
            entry = None
        if entry is not None:
            if entry.fingerprint != digest:
                raise KeyReused(
                    f"this {HEADER} was already used for another publish; use a new key for a new message"
                )
            if entry.answer is None:
                raise KeyInFlight(f"a publish with this {HEADER} is still being processed; retry shortly")
            self._entries.move_to_end(slot)
            return entry.answer
        self._entries[slot] = _Entry(digest, None, now + self.window)
        self._trim(now)
        return None

    def finish(self, scope: str, key: str, digest: bytes, answer: Answer) -> None:
        """Remember the answer given to a request :meth:`begin` called new."""
        now = self._clock()
        self._entries[(scope, key)] = _Entry(digest, answer, now + self.window)
        self._entries.move_to_end((scope, key))
        self._trim(now)

    def abandon(self, scope: str, key: str) -> None:
        """Forget a request that failed: nothing was published, so a retry must try again."""
        entry = self._entries.get((scope, key))
        if entry is not None and entry.answer is None:
            del self._entries[(scope, key)]

    async def run(
        self,
        scope: str,
        key: str | None,
        digest: bytes,
        action: Callable[[], Awaitable[Answer]],
    ) -> tuple[Answer, bool]:
        """Do ``action`` once per (scope, key): returns its answer and whether it is a replay. Without a key
        the action simply runs."""
        if key is None:
            return await action(), False
        earlier = self.begin(scope, key, digest)
        if earlier is not None:
            return earlier, True
        try:
            answer = await action()
        except BaseException:
            self.abandon(scope, key)
            raise
        self.finish(scope, key, digest, answer)
        return answer, False

    def _trim(self, now: float) -> None:
        entries = self._entries
        # Expired answers at the least-recently-used end go first; then the count bound.
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.answer is None or oldest.expires > now:
                break
            entries.popitem(last=False)
        while len(entries) > self.max_keys:
            entries.popitem(last=False)
