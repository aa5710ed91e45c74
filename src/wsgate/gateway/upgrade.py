"""The gateway's WebSocket upgrade, sans I/O: what goes upstream, what comes back, what the browser sees.

The I/O layer (``gateway/websocket.py``) moves bytes and calls these, in order:

1. :func:`parse_upstream` once per configured URL → :class:`UpstreamTarget` (host, port, TLS, path).
2. :func:`mint_subject` when the route mints a token whose subject comes from the query (``query:NAME``).
3. :func:`build_websocket_request` → the upgrade request head for the upstream, built from an **allowlist**
   of the client's headers (RFC 6455 §4.1 handshake fields, ``Origin``, ``User-Agent``, and ``Cookie`` /
   ``Authorization`` only when the route passes them) plus the injected credential and forwarding headers.
   Nothing else the client sent reaches the upstream: not a ``token`` header, not ``Proxy-Authorization``,
   not a spoofed ``X-Forwarded-For``.
4. :class:`ResponseHeadParser` reads the upstream's response head incrementally; bytes after it
   (:attr:`ResponseHeadParser.leftover`) may already be WebSocket frames and belong to the client.
5. On 101: :func:`check_switching_protocols` (RFC 6455 §4.1, the client's checks, done here too so a broken
   upstream is a clean 502 rather than a confused browser), then :func:`client_switching_response` → the 101
   for the browser, again from an allowlist. Otherwise :func:`upstream_refusal_status` → the status to
   answer, with a body of the caller's own.

Errors, added to the tree in :mod:`wsgate.errors`::

    WsgateError
    ├── UpstreamProtocolError   the upstream's answer is not valid HTTP/1.1 or not a valid 101 (answer 502)
    └── HeaderInjectionError    a value cannot be put in a request head safely: CR, LF, NUL or another
                                control character, a header name that is not a token, a header the gateway
                                owns (also a ValueError; answer 400 when it comes from the client)

:func:`build_websocket_request` also lets :class:`~wsgate.errors.HandshakeError` (400/426) through when the
client's request is not a valid single WebSocket upgrade (:func:`wsgate.handshake.check_upgrade`, repeated
``Host``/``Origin``/``Sec-WebSocket-Key``…). No message contains a header value, so every message is safe to
log: values may be credentials.

Text conventions: header names and values are ``str`` holding ISO-8859-1 code points, one per octet (RFC 9110
§5.5 — what the caller gets by decoding raw header bytes as latin-1); heads are encoded back as latin-1, so
octets round-trip unchanged.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from wsgate.config import Route
from wsgate.errors import WsgateError
from wsgate.gateway.forwarded import forwarded_element, forwarded_for
from wsgate.handshake import (
    WEBSOCKET_VERSION,
    accept_key,
    check_upgrade,
    header_tokens,
    single_header,
)
from wsgate.http_head import FIELD_CHARS, TOKEN_TEXT, parse_field_block

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "MAX_SUBJECT_LENGTH",
    "ClientRequest",
    "HeaderInjectionError",
    "ResponseHead",
    "ResponseHeadParser",
    "UpstreamProtocolError",
    "UpstreamTarget",
    "WebSocketOffer",
    "accept_key",
    "build_websocket_request",
    "check_switching_protocols",
    "client_switching_response",
    "mint_subject",
    "parse_upstream",
    "upstream_refusal_status",
    "websocket_offer",
]

# ----------------------------------------------------------------------------------------------------------
# Limits and constants. Each bound in one place, with its reason.

# h11's default max_incomplete_event_size, and the gateway's own request-head limit
# (GatewayLimits.max_header); a 101 is a few hundred bytes, an error page's head rarely over 1 KiB.
MAX_HEAD_SIZE: Final = 16 * 1024
# CPython's http.client refuses more than 100 header lines (_MAXHEADERS); an upgrade answer has about five.
MAX_HEADERS: Final = 100
# A subject taken from the query: the bound and the characters of the hub's channel names (hub/protocol.py),
# so a kiosk id can name its channel ("kiosk:7"); nothing that needs escaping in a log line or a JWT.
MAX_SUBJECT_LENGTH: Final = 200

_DEFAULT_PORTS: Final = {"ws": 80, "wss": 443, "http": 80, "https": 443}
_SECURE_SCHEMES: Final = frozenset({"wss", "https"})

# RFC 9110 §5.5: field-value = *field-content of field-vchar (VCHAR / obs-text), SP and HTAB. Everything
# else - NUL, CR, LF (which would end the line and start a header of the sender's choosing), other C0
# controls and DEL - is refused, and nothing beyond U+00FF exists in an ISO-8859-1 head.
_FIELD_VALUE = re.compile(f"[{FIELD_CHARS}]*")
# RFC 9112 §5.1: the optional whitespace around a field value, which is not part of it.
_OWS: Final = " \t"
# RFC 9112 §3.2 request-target (origin-form: absolute-path [ "?" query ]) is visible ASCII with no "#"
# (RFC 3986 §3.5: the fragment never leaves the client). A space would end the request-target early.
_REQUEST_TARGET = re.compile(r"/[\x21\x22\x24-\x7e]*")
_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*")
# RFC 3986 §3.2.2 reg-name, narrowed to what DNS and IPv4 use (after urlsplit lower-cases it).
_HOST_NAME = re.compile(r"[a-z0-9._~-]+")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]. Like h11 we also accept the
# line without the second SP when the reason is empty (servers do send "HTTP/1.1 101").
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_SUBJECT = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{MAX_SUBJECT_LENGTH}}}")

# Headers only the gateway writes: they frame the connection or carry the handshake (as in config.py, which
# refuses to inject them; refused here again in case a caller builds ``injected`` some other way).
_RESERVED: Final = frozenset(
    {"host", "origin", "connection", "upgrade", "content-length", "transfer-encoding", "te", "trailer"}
    | {"keep-alive", "proxy-connection"}
)
# A client request must carry these at most once (RFC 9112 §3.2 Host; RFC 6454 §7.2 Origin; RFC 6455 §11.3.1
# and §11.3.5 Key and Version; RFC 9110 §5.3 for a singleton field like User-Agent): with two, one hop might
# read the first and the next the second. Authorization is added to the list when the route passes it.
_SINGLETONS: Final = ("Host", "Origin", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "User-Agent")


class UpstreamProtocolError(WsgateError):
    """The upstream's answer is not valid HTTP/1.1, exceeds a limit, or is not a valid WebSocket 101.

    ``status`` is what the client should be answered (502, RFC 9110 §15.6.3: an invalid response from an
    inbound server). The message names the fault without repeating header values.
    """

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class HeaderInjectionError(WsgateError, ValueError):
    """A name or value cannot be written into a request head safely.

    ``header`` names the field (never its value). ``status`` is 400: a client sent it. When the value came
    from the configuration instead (validation in config.py should make that impossible), it is the
    gateway's fault and the caller should answer 500.
    """

    status = 400

    def __init__(self, header: str, problem: str) -> None:
        super().__init__(header, problem)
        self.header = header
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.header}: {self.problem}"


# ----------------------------------------------------------------------------------------------------------
# The upstream.


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where and how to connect: ``host`` (lower case, IPv6 without brackets), ``port``, TLS if ``secure``,
    and ``path``, the path and query of the URL exactly as written (``"/"`` when it has none)."""

    url: str
    secure: bool
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        """The ``Host`` value for this upstream (RFC 9110 §7.2, RFC 6455 §4.1 item 4): the port only when
        it is not the scheme's default, an IPv6 literal in brackets (RFC 3986 §3.2.2)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_upstream(url: str) -> UpstreamTarget:
    """Parse a ``ws``, ``wss``, ``http`` or ``https`` URL; raise :class:`ValueError` otherwise.

    The URL must be ASCII (an internationalised host in its ``xn--`` form, a path percent-encoded), have a
    host, no user information, no fragment, and no IPv6 zone identifier (RFC 6874 zones are local to one
    machine and cannot go in a ``Host`` header). Error messages do not repeat the URL.
    """
    # urlsplit silently deletes tabs and newlines (WHATWG "strip"); refusing them first keeps "as written".
    if not url or any(not "\x21" <= char <= "\x7e" for char in url):
        raise ValueError(
            "the upstream URL must be printable ASCII without spaces (percent-encode the path, "
            "write an internationalised host name in its xn-- form)"
        )
    parts = urlsplit(url)
    scheme = parts.scheme  # lower-cased by urlsplit
    if scheme not in _DEFAULT_PORTS or not url[len(scheme) :].startswith("://"):
        raise ValueError("the upstream URL must start with ws://, wss://, http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("the upstream URL must not carry user information; inject credentials as headers")
    if "#" in url:
        raise ValueError("the upstream URL must not have a #fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the upstream URL has an invalid port") from None
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    elif port == 0:
        raise ValueError("the upstream URL has port 0, which cannot be connected to")
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("the upstream URL has an invalid IPv6 address") from None
        if address.scope_id is not None:
            raise ValueError("the upstream URL must not have an IPv6 zone identifier")
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError("the upstream URL has no host, or a host that is not a DNS name or IP address")
    # The request-target is what follows the authority, byte for byte (DESIGN.md §3: "used as written").
    rest = url[len(scheme) + 3 + len(parts.netloc) :]
    if not rest.startswith("/"):
        rest = "/" + rest  # "ws://h" → "/", "ws://h?x=1" → "/?x=1" (RFC 9112 §3.2.1: "/" for an empty path)
    if not _REQUEST_TARGET.fullmatch(rest):
        raise ValueError("the upstream URL's path cannot be sent as a request-target")
    return UpstreamTarget(url=url, secure=scheme in _SECURE_SCHEMES, host=host, port=port, path=rest)


# ----------------------------------------------------------------------------------------------------------
# The client's request.


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """The client's upgrade request as received.

    ``target`` is the raw request-target (path and optional query); ``headers`` are the raw header lines in
    order, original case, names possibly repeated (stored as a tuple); ``peer`` the client's IP address
    (``""`` when unknown); ``scheme`` ``"http"`` or ``"https"``, how the client reached the gateway;
    ``host`` the client's ``Host`` header, ``None`` when it sent none; ``by_name`` the header lines looked up
    case-insensitively (derived from ``headers``).
    """

    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    peer: str
    scheme: str
    host: str | None
    by_name: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A snapshot: a list the caller keeps mutating must not change what a frozen record says.
        headers = tuple([(str(n), str(v)) for n, v in self.headers])
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "by_name", CIMultiDictProxy(CIMultiDict(headers)))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        return self.by_name.get(name, default)

    def getall(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order; empty when absent."""
        return self.by_name.getall(name, [])


@dataclass(frozen=True, slots=True)
class WebSocketOffer:
    """What the client offered: its key, its subprotocols in order and exact case, whether it offered any
    extension. The arguments :func:`check_switching_protocols` needs."""

    key: str
    protocols: tuple[str, ...]
    extensions: bool


def websocket_offer(client: ClientRequest) -> WebSocketOffer:
    """The client's offer, for :func:`check_switching_protocols`.

    Subprotocol names keep their case: browsers compare the server's choice byte for byte with what they
    offered (RFC 6455 §4.1 item 6 of the client's checks; WHATWG WebSocket "establish a connection").
    """
    return WebSocketOffer(
        key=(client.get("Sec-WebSocket-Key") or "").strip(),
        protocols=tuple(_list_items(client.getall("Sec-WebSocket-Protocol"))),
        extensions=any(_list_items(client.getall("Sec-WebSocket-Extensions"))),
    )


def mint_subject(subject: str, target: str) -> str:
    """The ``sub`` claim of a minted token: ``subject`` itself, or for ``query:NAME`` the first value of query
    parameter NAME in ``target``, percent-decoded (UTF-8).

    The value must be 1-200 characters of ``A-Z a-z 0-9 _ . : @ -``; otherwise, or when the parameter is
    absent, :class:`ValueError` (answer 400). The message does not repeat the value. The subject is chosen
    by the client, so it labels a connection (presence, logs) but proves nothing.
    """
    if not subject.startswith("query:"):
        return subject
    name = subject.removeprefix("query:")
    if not name:
        raise ValueError("mint subject 'query:' names no query parameter")
    query = target.partition("?")[2].partition("#")[0]
    # RFC 3986 §3.4 leaves the query's structure open; "&"-separated name=value pairs with percent-encoding
    # is the HTML form encoding (WHATWG URL "application/x-www-form-urlencoded") every browser produces.
    for pair in query.split("&"):
        raw_name, _, raw_value = pair.partition("=")
        try:
            if unquote(raw_name, errors="strict") != name:
                continue
            value = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"query parameter {name!r} is not valid percent-encoded UTF-8") from None
        if not _SUBJECT.fullmatch(value):
            raise ValueError(
                f"query parameter {name!r} must be 1-{MAX_SUBJECT_LENGTH} characters of A-Z a-z 0-9 _ . : @ -"
            )
        return value
    raise ValueError(f"query parameter {name!r} is missing; connect with ?{name}=…")


# ----------------------------------------------------------------------------------------------------------
# The upstream request.


def build_websocket_request(
    route: Route, upstream: UpstreamTarget, client: ClientRequest, *, injected: Mapping[str, str]
) -> bytes:
    """The HTTP/1.1 upgrade request head to send to ``upstream``, ending in CRLF CRLF.

    ``injected`` maps lower-case header names to values already resolved by the caller (the route's
    ``headers`` revealed, or a minted token in ``route.mint.header``; ``"Bearer <token>"`` for
    ``authorization``). The head holds, in this order:

    - ``GET`` ``upstream.path``, plus the client's query (joined with ``&`` when the upstream URL has a
      query already). The client's path is not used: the upstream URL is used as written (DESIGN.md §3).
    - ``Host``: ``upstream.host_header`` when ``route.change_origin``, else the client's ``Host`` (the
      upstream's when the client sent none); ``Upgrade: websocket``; ``Connection: Upgrade``.
    - From the client, only: ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version``, ``Sec-WebSocket-Protocol`` and
      ``Sec-WebSocket-Extensions`` (repeated lines joined with ``", "``), ``Origin`` (never rewritten),
      ``User-Agent``; ``Cookie`` when ``route.pass_cookies``; ``Authorization`` when
      ``route.pass_authorization``. A client header named like an injected one is always dropped.
    - The injected headers, in the mapping's order.
    - Forwarding headers per ``route.forwarded``, unless injected under the same name (an operator who sets
      ``X-Forwarded-Proto`` explicitly knows better): ``"x-forwarded"`` → ``X-Forwarded-For`` (the peer
      alone), ``X-Forwarded-Proto``, ``X-Forwarded-Host``; ``"rfc7239"`` → ``Forwarded``; ``"none"`` → none.

    Raises :class:`~wsgate.errors.HandshakeError` (400/426) for a request that is not one valid WebSocket
    upgrade, :class:`HeaderInjectionError` for a name or value that cannot be sent (CR, LF, NUL, other
    controls, a non-token name, an injected name the gateway owns), :class:`ValueError` for a route that is
    not a WebSocket route or a ``scheme`` other than http/https.
    """
    if not route.websocket:
        raise ValueError(f"route {route.path!r} is not a WebSocket route")
    if client.scheme not in ("http", "https"):
        raise ValueError("client.scheme must be 'http' or 'https'")
    headers = client.by_name
    # The caller checked the upgrade already; checking again costs little and keeps this function from ever
    # emitting a request the upstream could take for something other than a WebSocket handshake.
    check_upgrade(client.method, headers)
    for name in (*_SINGLETONS, "Authorization") if route.pass_authorization else _SINGLETONS:
        single_header(headers, name)
    client_host = _nonempty(client.host)
    # One snapshot of the mapping: the names checked are the names sent.
    injected_fields = tuple(injected.items())
    overrides = _check_injected(tuple(name for name, _ in injected_fields))

    # RFC 9112 §3.2: a client SHOULD send Host first after the request-line.
    host = upstream.host_header if route.change_origin or client_host is None else client_host
    fields = [
        ("Host", host),
        # RFC 6455 §4.1 items 5-6 (RFC 9110 §7.8): Upgrade is hop-by-hop and is listed in Connection, so both
        # are ours to write, never copied; "Connection: Upgrade" alone also stops any other hop-by-hop header.
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        # The key goes through unchanged: the client checks Sec-WebSocket-Accept against it end to end
        # (RFC 6455 §4.1, client's check 4), since after the 101 the bytes are relayed, not re-framed.
        ("Sec-WebSocket-Key", _first(headers, "Sec-WebSocket-Key")),
        ("Sec-WebSocket-Version", WEBSOCKET_VERSION),
    ]
    fields += _unless_injected(_client_fields(route, headers), overrides)
    fields += injected_fields
    fields += _unless_injected(_forwarding_fields(route, client, client_host), overrides)
    # Every name is a literal of this module or an injected name _check_injected passed: only values are
    # checked on the way out.
    return _render_head(f"GET {_request_target(upstream.path, client.target)} HTTP/1.1", fields)


def _client_fields(route: Route, headers: CIMultiDictProxy[str]) -> list[tuple[str, str | None]]:
    """The client's headers that go upstream (the allowlist), ``None`` for those it did not send."""
    fields = [
        # RFC 6455 §11.3.2 and §11.3.4: these may repeat; one line with the values joined means the same.
        ("Sec-WebSocket-Protocol", _join(headers.getall("Sec-WebSocket-Protocol", []), ", ")),
        ("Sec-WebSocket-Extensions", _join(headers.getall("Sec-WebSocket-Extensions", []), ", ")),
        # RFC 6455 §10.2: the upstream runs its own Origin check (the hub does); Origin is passed as sent.
        ("Origin", _nonempty(headers.get("Origin"))),
        ("User-Agent", _nonempty(headers.get("User-Agent"))),
    ]
    if route.pass_cookies:
        # RFC 6265 §5.4 asks for one Cookie line; RFC 9113 §8.2.3 joins split crumbs with "; ".
        fields.append(("Cookie", _join(headers.getall("Cookie", []), "; ")))
    if route.pass_authorization:
        fields.append(("Authorization", _nonempty(headers.get("Authorization"))))
    return fields


def _forwarding_fields(
    route: Route, client: ClientRequest, client_host: str | None
) -> list[tuple[str, str | None]]:
    """The forwarding headers of ``route.forwarded`` (``None`` for one without a value)."""
    if route.forwarded == "x-forwarded":
        # The client's own X-Forwarded-For is not trusted and not appended to: the gateway is the edge, so
        # anything already in it was written by the client, and upstreams commonly read the leftmost entry as
        # "the client's IP" (rate limits, audit logs, IP allowlists). Appending as nginx's
        # $proxy_add_x_forwarded_for does would let any client claim to be 127.0.0.1.
        return [
            ("X-Forwarded-For", forwarded_for(client.peer)),
            ("X-Forwarded-Proto", client.scheme),
            ("X-Forwarded-Host", client_host),
        ]
    if route.forwarded == "rfc7239":
        return [("Forwarded", forwarded_element(client.peer, client.scheme, client_host))]
    if route.forwarded == "none":
        return []
    raise ValueError(f"route {route.path!r} has an unknown forwarded style")


def _unless_injected(
    fields: Iterable[tuple[str, str | None]], overrides: frozenset[str]
) -> list[tuple[str, str]]:
    """The fields that have a value and whose name (any case) is not injected: an injected header replaces
    the client's or the gateway's own of the same name."""
    return [(name, value) for name, value in fields if value is not None and name.lower() not in overrides]


# Bounded: a route injects the same few names on every request; each distinct set is checked once.
@functools.lru_cache(maxsize=256)
def _check_injected(names: tuple[str, ...]) -> frozenset[str]:
    """The injected header names, lower-cased; :class:`HeaderInjectionError` for one that is not a token, one
    the gateway writes itself, or one injected twice."""
    lowered_names: set[str] = set()
    for name in names:
        lowered = _checked_name(name).lower()
        if lowered in _RESERVED or lowered.startswith("sec-websocket-"):
            raise HeaderInjectionError(name, "the gateway writes this header itself; it cannot be injected")
        if lowered in lowered_names:
            raise HeaderInjectionError(name, "injected twice (header names ignore case)")
        lowered_names.add(lowered)
    return frozenset(lowered_names)


def _request_target(upstream_path: str, client_target: str) -> str:
    path, _, upstream_query = upstream_path.partition("?")
    client_query = client_target.partition("?")[2]
    if not _QUERY.fullmatch(client_query):
        raise HeaderInjectionError("request-target", "the query holds a character that cannot be forwarded")
    query = upstream_query
    if client_query:
        separator = "&" if upstream_query and not upstream_query.endswith("&") else ""
        query = f"{upstream_query}{separator}{client_query}"
    target = f"{path}?{query}" if query or "?" in upstream_path else path
    if not _REQUEST_TARGET.fullmatch(target):
        raise HeaderInjectionError("request-target", "holds a character that cannot be sent")
    return target


# ----------------------------------------------------------------------------------------------------------
# The upstream's response.


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head. ``headers`` are in order, original case, values without surrounding
    whitespace; ``http_version`` is ``"1.1"`` or ``"1.0"``; ``by_name`` the headers looked up
    case-insensitively (derived from ``headers``)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    http_version: str = "1.1"
    by_name: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", CIMultiDictProxy(CIMultiDict(self.headers)))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        return self.by_name.get(name, default)

    def getall(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order; empty when absent."""
        return self.by_name.getall(name, [])


class ResponseHeadParser:
    """Reads an HTTP/1.1 response head from bytes as they arrive.

    :meth:`feed` returns ``None`` until the head is complete, then the :class:`ResponseHead`; the bytes that
    followed it are in :attr:`leftover` (after a 101 they are the upstream's first WebSocket frames). Feeding
    the input whole or one byte at a time gives the same result. Every fault raises
    :class:`UpstreamProtocolError`, and so does every later :meth:`feed`:

    - the head, CRLF CRLF included, larger than ``max_size`` bytes, or more than :data:`MAX_HEADERS` lines;
    - a status line other than ``HTTP/1.1`` or ``HTTP/1.0``, a 3-digit status in 100-599 and a reason;
    - a line ending other than CRLF. RFC 9112 §2.2 lets a recipient accept a bare LF; we do not: every server
      an upgrade reaches sends CRLF, and one message framed two ways by two parsers is how smuggling starts.
      A bare LF or CR fails at once instead of waiting for a CRLF CRLF that will never come;
    - obs-fold (RFC 9112 §5.2: a gateway may answer 502 instead of unfolding), whitespace before the colon
      (§5.1), a name that is not a token, NUL or another control character in a value (RFC 9110 §5.5).
    """

    __slots__ = ("_buffer", "_checked", "_error", "_head", "_leftover", "_max_size", "_searched")

    def __init__(self, max_size: int = MAX_HEAD_SIZE) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError("max_size must be a positive number of bytes")
        self._max_size = max_size
        self._buffer = bytearray()
        self._searched = 0  # the terminator does not start before this offset - 3
        self._checked = 0  # line endings are valid before this offset
        self._error: str | None = None
        self._head: ResponseHead | None = None
        self._leftover = b""

    @property
    def leftover(self) -> bytes:
        """The bytes received after the head; empty until :meth:`feed` has returned the head."""
        return self._leftover

    @property
    def head(self) -> ResponseHead | None:
        """The head once complete, else ``None``."""
        return self._head

    def feed(self, data: bytes) -> ResponseHead | None:
        """Add bytes; return the head once it is complete, ``None`` while more are needed.

        Raises :class:`UpstreamProtocolError` for an invalid head, and :class:`RuntimeError` when called
        after the head was returned (later bytes belong to the relay, not to this parser).
        """
        if self._head is not None:
            raise RuntimeError("the response head is complete; relay further bytes directly")
        if self._error is not None:
            raise UpstreamProtocolError(self._error)
        try:
            return self._feed(data)
        except UpstreamProtocolError as exc:
            self._error = exc.message
            self._buffer = bytearray()
            raise

    def feed_eof(self) -> None:
        """The upstream closed its side: raise :class:`UpstreamProtocolError` unless the head was complete."""
        if self._head is None:
            self._error = self._error or "the upstream closed the connection before its response head ended"
            raise UpstreamProtocolError(self._error)

    def _feed(self, data: bytes) -> ResponseHead | None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n", max(0, self._searched - 3))
        if end < 0:
            self._searched = len(buffer)
            self._check_line_endings(len(buffer))
            if len(buffer) > self._max_size:
                raise UpstreamProtocolError(f"the upstream's response head exceeds {self._max_size} bytes")
            return None
        head_end = end + 4
        self._check_line_endings(head_end)
        if head_end > self._max_size:
            raise UpstreamProtocolError(f"the upstream's response head exceeds {self._max_size} bytes")
        head = _parse_response_head(bytes(buffer[: end + 2]))  # up to the empty line that ends it
        self._leftover = bytes(buffer[head_end:])
        self._buffer = bytearray()
        self._head = head
        return head

    def _check_line_endings(self, end: int) -> None:
        """Every LF before ``end`` follows a CR and every CR is followed by an LF (RFC 9112 §2.2). A CR that
        is the last byte received so far is checked when the next byte arrives."""
        buffer, position = self._buffer, self._checked
        # The usual case in three counts: as many CRs and as many LFs as CRLFs means each is half of a pair,
        # all the walk below would find.
        pairs = buffer.count(b"\r\n", position, end)
        if buffer.count(b"\r", position, end) == pairs == buffer.count(b"\n", position, end):
            self._checked = end
            return
        # Otherwise, pair by pair: the first fault is found and named, or a CR still waits for its LF.
        while True:
            lf = buffer.find(b"\n", position, end)
            cr = buffer.find(b"\r", position, end)
            if lf < 0 and cr < 0:
                self._checked = end
                return
            if cr < 0 or 0 <= lf < cr:
                raise UpstreamProtocolError("the upstream's response head has a bare LF line ending")
            if cr + 1 >= len(buffer):
                self._checked = cr  # the byte after this CR has not arrived yet
                return
            if buffer[cr + 1] != 0x0A:
                raise UpstreamProtocolError("the upstream's response head has a bare CR")
            position = cr + 2


def _parse_response_head(raw: bytes) -> ResponseHead:
    """Parse a head without its empty last line (each line still ending in CRLF); line endings are already
    known to be CRLF."""
    status_line, _, field_block = raw.partition(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise UpstreamProtocolError("the upstream's status line is not 'HTTP/1.1 <status> <reason>'")
    status = int(match[2])
    if not 100 <= status <= 599:
        # RFC 9110 §15: status codes are 100-599; anything else is not a response we can interpret.
        raise UpstreamProtocolError("the upstream's status code is outside 100-599")
    try:
        # The whole head is bounded by the parser's max_size already; no separate bound per line.
        headers = parse_field_block(field_block, max_fields=MAX_HEADERS, max_line=MAX_HEAD_SIZE)
    except ValueError as exc:
        raise UpstreamProtocolError(f"the upstream's response head has {exc}") from None
    reason = (match[3] or b"").decode("latin-1")
    return ResponseHead(status, reason, tuple(headers), http_version=f"1.{match[1].decode()}")


def check_switching_protocols(
    head: ResponseHead, client_key: str, offered_protocols: Sequence[str], offered_extensions: bool
) -> None:
    """Raise :class:`UpstreamProtocolError` unless ``head`` accepts the client's WebSocket handshake.

    The checks RFC 6455 §4.1 asks of a client (its list after "the client MUST validate the server's
    response"): status 101 over HTTP/1.1, ``Upgrade: websocket``, ``upgrade`` among the ``Connection``
    tokens, ``Sec-WebSocket-Accept`` derived from ``client_key``, a subprotocol only if it is one of
    ``offered_protocols`` (compared exactly: subprotocol names are case-sensitive for browsers), extensions
    only if the client offered some (their parameters are the client's to check: bytes are relayed as is).
    """
    if head.status != 101:
        raise UpstreamProtocolError(f"the upstream answered {head.status}, not 101 Switching Protocols")
    if head.http_version != "1.1":
        # RFC 9110 §15.2: 1xx does not exist in HTTP/1.0, and Upgrade is an HTTP/1.1 mechanism (§7.8).
        raise UpstreamProtocolError("the upstream switched protocols over HTTP/1.0")
    upgrade = head.getall("Upgrade")
    # Client's check 2: an Upgrade value that is not, case-insensitively, "websocket" fails the connection.
    if len(upgrade) != 1 or upgrade[0].lower() != "websocket":
        raise UpstreamProtocolError("the upstream's 101 does not say 'Upgrade: websocket'")
    if "upgrade" not in header_tokens(", ".join(head.getall("Connection"))):
        raise UpstreamProtocolError("the upstream's 101 lacks 'Connection: Upgrade'")
    accept = head.getall("Sec-WebSocket-Accept")
    # RFC 6455 §11.3.3: Sec-WebSocket-Accept MUST NOT appear more than once in a response.
    if len(accept) != 1 or accept[0] != accept_key(client_key.strip()):
        raise UpstreamProtocolError("the upstream's Sec-WebSocket-Accept does not match the client's key")
    protocol = head.getall("Sec-WebSocket-Protocol")
    # RFC 6455 §11.3.4: at most one line in a response, naming one subprotocol the client offered.
    if len(protocol) > 1 or (protocol and protocol[0] not in offered_protocols):
        raise UpstreamProtocolError("the upstream chose a subprotocol the client did not offer")
    # Client's check 5: an extension the client did not ask for fails the connection.
    if any(_list_items(head.getall("Sec-WebSocket-Extensions"))) and not offered_extensions:
        raise UpstreamProtocolError("the upstream chose an extension although the client offered none")


def client_switching_response(head: ResponseHead) -> bytes:
    """The 101 head for the browser, after :func:`check_switching_protocols` passed.

    ``Upgrade`` and ``Connection`` are written afresh; from the upstream only ``Sec-WebSocket-Accept``,
    ``Sec-WebSocket-Protocol`` and ``Sec-WebSocket-Extensions`` are copied - its ``Set-Cookie``, ``Server``
    and everything else stay behind (allowlist, as for the request).
    """
    if head.status != 101:
        raise UpstreamProtocolError(f"the upstream answered {head.status}, not 101 Switching Protocols")
    fields = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    accept = head.get("Sec-WebSocket-Accept")
    if accept is None:
        raise UpstreamProtocolError("the upstream's 101 lacks Sec-WebSocket-Accept")
    fields.append(("Sec-WebSocket-Accept", accept))
    protocol = head.get("Sec-WebSocket-Protocol")
    if protocol is not None:
        fields.append(("Sec-WebSocket-Protocol", protocol))
    extensions = _join(head.getall("Sec-WebSocket-Extensions"), ", ")
    if extensions is not None:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    return _render_head("HTTP/1.1 101 Switching Protocols", fields)


# Refusals that describe the gateway's own exchange with the upstream, not the client's request: passing
# them on would mislead the browser. 407: the upstream wants proxy credentials from the gateway (and a 407
# makes some clients prompt for a proxy password); 408: the upstream gave up waiting for the gateway; 505:
# the upstream refuses the gateway's HTTP/1.1; 511: something between gateway and upstream wants a login.
_NOT_RELAYED: Final = frozenset({407, 408, 505, 511})


def upstream_refusal_status(head: ResponseHead) -> int:
    """The status to answer the client when the upstream did not switch protocols.

    A 4xx or 5xx is passed on (401 → 401, 403 → 403, 429, 503 …) except :data:`_NOT_RELAYED`, which become
    502; so do 1xx, 2xx and 3xx, which make no sense as an answer to an upgrade (a 3xx would also point
    the browser at a location the gateway's configuration did not choose). The caller sends a generic body
    of its own, never the upstream's: it might echo the injected credential. (A 401 without
    ``WWW-Authenticate`` is what WebSocket servers send; browsers show no prompt for an upgrade.)
    Raises :class:`ValueError` for a 101, which is no refusal.
    """
    if head.status == 101:
        raise ValueError("101 is not a refusal; check it with check_switching_protocols")
    if 400 <= head.status <= 599 and head.status not in _NOT_RELAYED:
        return head.status
    return 502


# ----------------------------------------------------------------------------------------------------------
# Small helpers.


def _list_items(values: Sequence[str]) -> list[str]:
    """The elements of a list-based field spread over several lines (RFC 9110 §5.6.1), empties dropped."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _nonempty(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(_OWS)
    return value or None


def _join(values: Sequence[str], separator: str) -> str | None:
    """Several field lines as one (RFC 9110 §5.3), empty ones left out; ``None`` when none remains."""
    kept = [value.strip(_OWS) for value in values if value.strip(_OWS)]
    return separator.join(kept) if kept else None


def _first(headers: CIMultiDictProxy[str], name: str) -> str:
    return headers.get(name, "").strip(_OWS)


def _checked_name(name: str) -> str:
    if not TOKEN_TEXT.fullmatch(name):
        # The name itself may be what is broken, so it is shown escaped (repr) and shortened.
        raise HeaderInjectionError(repr(name[:40]), "is not a valid header name (RFC 9110 §5.6.2 token)")
    return name


def _checked_value(name: str, value: str) -> str:
    value = value.strip(_OWS)
    if not _FIELD_VALUE.fullmatch(value):
        raise HeaderInjectionError(
            name, "the value holds CR, LF, NUL or another character that cannot be sent in a header"
        )
    return value


def _render_head(start_line: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """The head of ``start_line`` and ``fields`` (names already known to be tokens), CRLF after each line and
    an empty line at the end. Values lose their surrounding whitespace and are checked as
    :func:`_checked_value` does, all in one scan."""
    lines = [f"{name}: {value.strip(_OWS)}" for name, value in fields]
    # Names are tokens and ": " is sendable: this fails exactly when some value holds a character that is not.
    if not _FIELD_VALUE.fullmatch("".join(lines)):
        # Only for the refusal: one value at a time, to name the first header that cannot be sent.
        for name, value in fields:
            _checked_value(name, value)
    # Every value was checked to be ISO-8859-1 and names and start lines are ASCII: encoding cannot fail.
    return "\r\n".join([start_line, *lines, "", ""]).encode("latin-1")
