"""Upgrade handshakes that differ only in their key, answered from memory.

In a reconnect storm (an admin resets every kiosk at once) the same browsers send the same upgrade request
again and again, each differing from the last only in its ``Sec-WebSocket-Key``, and the upstream answers
each the same way but for its ``Sec-WebSocket-Accept``. Everything the gateway does in between - parsing the
request, checking it and its Origin, building the upstream's request, checking the 101, building the
client's - is a pure function of those two heads, so it is done once per distinct head and then replayed with
the new key, which saves about a third of a proxied handshake's CPU time (docs/performance.md). The front
offers each head to the memory before parsing it (:meth:`wsgate.front.UpgradeHandler.recall`).

Exact by construction, not by heuristics:

- A head is looked up by its *shape*: its bytes with the key's (or accept's) value cut out, and where it was
  cut. Two heads of one shape are the same head but for that value, byte for byte.
- Only a canonical value is cut out: a key of 22 base64 characters and ``==`` (16 bytes, what every client
  sends), an accept of 27 and ``=`` (a SHA-1). Such a key is always valid, so the one check that depends on
  the key's value is answered by the shape itself. Anything else is checked in full, every time.
- Only a success is remembered. A refused shape is checked in full every time (refusals are rare and cheap).
- On the response side the accept's value is still checked against the key on every recall: that is the
  check the upstream's answer exists for.
- Results that depend on more than the head are looked up with it: the client's address (forwarding
  headers) for requests, what the client offered (subprotocols, extensions) for responses. Routes that mint
  a token per connection remember no requests at all.

Both memories are bounded (:data:`MAX_SHAPES` entries of at most :data:`MAX_SHAPE_BYTES`, least recently used
out), so a client sending endless distinct heads costs at most a few MiB and slows only itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from wsgate.gateway.upgrade import WebSocketOffer
from wsgate.handshake import accept_key
from wsgate.http_head import HEAD_END

# Enough for every distinct head of a large kiosk fleet (one per client address). A remembered request is its
# shape and the upstream request (each at most ~MAX_SHAPE_BYTES), an answer its shape and a 101 of ~150 bytes:
# at most ~7 MiB for both memories, whatever clients send; ~1.5 KiB per kiosk for a real fleet.
MAX_SHAPES: Final = 1024
# Larger heads are not remembered: browsers send 400-800 bytes, more only with many cookies.
MAX_SHAPE_BYTES: Final = 2048

# A field line carrying a canonical value. It starts after a CRLF, so it is a whole line of the head (values
# hold no CR or LF), never part of another. The name is case-insensitive as everywhere in HTTP.
_KEY_LINE: Final = re.compile(rb"\r\n(?i:sec-websocket-key):[ \t]*+([A-Za-z0-9+/]{22}==)[ \t]*\r\n")
_ACCEPT_LINE: Final = re.compile(rb"\r\n(?i:sec-websocket-accept):[ \t]*+([A-Za-z0-9+/]{27}=)[ \t]*\r\n")

# A head with one value cut out: where it was cut, and the bytes around it joined. Where is part of the shape:
# the same bytes cut at another place would be another head.
Shape = tuple[int, bytes]

K = TypeVar("K")
V = TypeVar("V")


def _cut(head: bytes, line: re.Pattern[bytes]) -> tuple[Shape, str] | None:
    """The shape of ``head`` without the value of its first ``line``, and that value; ``None`` when it has no
    such line or is too large to remember."""
    if len(head) > MAX_SHAPE_BYTES:
        return None
    match = line.search(head)
    if match is None:
        return None
    start, end = match.span(1)
    return (start, head[:start] + head[end:]), match[1].decode("ascii")


def request_shape(raw_head: bytes) -> tuple[Shape, str] | None:
    """The shape of a request head without its canonical ``Sec-WebSocket-Key`` value, and the key."""
    return _cut(raw_head, _KEY_LINE)


def response_shape(data: bytes) -> tuple[Shape, str, int] | None:
    """For the upstream's first bytes: the shape of the response head they begin with, without its canonical
    ``Sec-WebSocket-Accept`` value, the accept, and where the head ends. ``None`` unless the whole head is
    there (as every server sends it) with such a line."""
    end = data.find(HEAD_END)
    if end < 0:
        return None
    end += len(HEAD_END)
    found = _cut(data[:end], _ACCEPT_LINE)
    if found is None:
        return None
    shape, accept = found
    return shape, accept, end


class Template:
    """Bytes with one header value to fill in, split around a known value: ``before + value + after``.

    Holds the upstream request with its injected credential: it never shows its bytes (``repr``).
    """

    __slots__ = ("_after", "_before")

    def __init__(self, before: bytes, after: bytes) -> None:
        self._before = before
        self._after = after

    @classmethod
    def around(cls, head: bytes, name: bytes, value: str) -> Template | None:
        """``head`` split around the value of its one ``name: value`` line, as the gateway writes lines;
        ``None`` unless that line is there exactly once."""
        line = b"\r\n" + name + b": " + value.encode("ascii") + b"\r\n"
        at = head.find(line)
        if at < 0 or head.find(line, at + 1) >= 0:
            return None
        start = at + len(name) + 4  # past CRLF, the name, ": "
        return cls(head[:start], head[start + len(value) :])

    def fill(self, value: str) -> bytes:
        return b"".join((self._before, value.encode("ascii"), self._after))

    def __repr__(self) -> str:
        return f"Template({len(self._before) + len(self._after)} bytes)"


class Memory(Generic[K, V]):
    """A mapping of at most ``size`` entries; the least recently used goes first."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = MAX_SHAPES) -> None:
        self.size = size
        self._entries: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        entries = self._entries
        value = entries.pop(key, None)
        if value is not None:
            entries[key] = value  # to the end: the most recently used
        return value

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        entries.pop(key, None)
        entries[key] = value
        if len(entries) > self.size:
            del entries[next(iter(entries))]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True, repr=False)
class UpgradePlan:
    """What a request of one shape became: the upstream requests (one per upstream URL) and the client's
    offer, all waiting for a key."""

    requests: tuple[tuple[str, Template], ...]
    protocols: tuple[str, ...]
    extensions: bool

    @classmethod
    def of(cls, requests: dict[str, bytes], offer: WebSocketOffer) -> UpgradePlan | None:
        templates = []
        for url, request in requests.items():
            template = Template.around(request, b"Sec-WebSocket-Key", offer.key)
            if template is None:
                return None
            templates.append((url, template))
        return cls(tuple(templates), offer.protocols, offer.extensions)

    def fill(self, key: str) -> tuple[dict[str, bytes], WebSocketOffer]:
        requests = {url: template.fill(key) for url, template in self.requests}
        return requests, WebSocketOffer(key, self.protocols, self.extensions)

    def __repr__(self) -> str:
        return f"UpgradePlan({len(self.requests)} upstreams)"


class Plans:
    """The upgrade requests passed, as the upstream requests they became, per client address (the
    forwarding headers carry it)."""

    __slots__ = ("_memory",)

    def __init__(self, size: int = MAX_SHAPES) -> None:
        self._memory: Memory[tuple[str, Shape], UpgradePlan] = Memory(size)

    def recall(self, raw_head: bytes, peer: str) -> tuple[dict[str, bytes], WebSocketOffer] | None:
        """The upstream requests and the offer for ``raw_head`` from ``peer``, if a head like it but for its
        key has passed before; ``None`` otherwise (it must then be checked in full)."""
        found = request_shape(raw_head)
        if found is None:
            return None
        shape, key = found
        plan = self._memory.get((peer, shape))
        return None if plan is None else plan.fill(key)

    def remember(self, raw_head: bytes, peer: str, requests: dict[str, bytes], offer: WebSocketOffer) -> None:
        """Remember a head from ``peer`` that passed every check, as the requests and offer built from it."""
        found = request_shape(raw_head)
        plan = UpgradePlan.of(requests, offer) if found is not None else None
        if found is not None and plan is not None:
            self._memory.put((peer, found[0]), plan)

    def __len__(self) -> int:
        return len(self._memory)


# A response shape together with what the client offered: the 101's checks depend on both.
AnswerKey = tuple[Shape, tuple[str, ...], bool]


@dataclass(frozen=True, slots=True)
class Switched:
    """An upstream 101 recalled from memory: the client's 101, and the bytes that followed the upstream's."""

    response: bytes
    leftover: bytes


@dataclass(frozen=True, slots=True)
class Unrecalled:
    """An upstream answer that can be remembered once it has passed every check in full."""

    key: AnswerKey
    accept: str


class Answers:
    """The upstream 101s seen, as the client 101s they became."""

    __slots__ = ("_memory",)

    def __init__(self, size: int = MAX_SHAPES) -> None:
        self._memory: Memory[AnswerKey, Template] = Memory(size)

    def recall(self, data: bytes, offer: WebSocketOffer) -> Switched | Unrecalled | None:
        """For the upstream's first bytes: the client's 101 if their head was seen before and its accept
        is right for ``offer.key``; otherwise what to :meth:`remember` it by once it has passed the checks
        (``None``: it can't be remembered)."""
        found = response_shape(data)
        if found is None:
            return None
        shape, accept, end = found
        key = (shape, offer.protocols, offer.extensions)
        template = self._memory.get(key)
        if template is not None and accept == accept_key(offer.key):
            return Switched(template.fill(accept), data[end:])
        return Unrecalled(key, accept)

    def remember(self, seen: Unrecalled, client_response: bytes) -> None:
        """Remember an answer that passed every check, as the client 101 built from it."""
        template = Template.around(client_response, b"Sec-WebSocket-Accept", seen.accept)
        if template is not None:
            self._memory.put(seen.key, template)

    def __len__(self) -> int:
        return len(self._memory)
