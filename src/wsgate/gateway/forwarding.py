"""The gateway's HTTP reverse proxy, sans I/O: where a request goes, which header fields cross each way, and
the framing checks. :mod:`wsgate.gateway.http_proxy` moves the bytes and calls these:

1. :func:`check_framing` on the client's header fields → :class:`RejectedRequest` (400) for anything a
   second parser might read differently (request smuggling, RFC 9112 §6.3 and §11.2).
2. :func:`upstream_target` → the request-target for the upstream: the client's raw path kept byte for byte
   (``/api/x?q=1`` → ``/api/x?q=1``), or with the route prefix replaced by ``route.rewrite`` (path ``/api``,
   rewrite ``/``: ``/api/x`` → ``/x``, ``/api`` → ``/``); a path with a dot-segment is refused (400).
3. :func:`request_headers` → the header fields for the upstream.
4. :func:`response_headers` → the upstream's response header fields for the client.

**Which client header fields reach an HTTP upstream.** An HTTP route fronts a REST API (Django in
production) that authenticates the browser itself, with its session cookie or an ``Authorization`` header.
So, unlike a WebSocket route (DESIGN.md §3: ``Authorization`` and ``Cookie`` are stripped unless the route
passes them), an HTTP route passes ``Cookie`` and ``Authorization`` — and every other end-to-end field — by
default; ``Route.pass_cookies`` and ``Route.pass_authorization`` only concern WebSocket routes. Removed:

- hop-by-hop fields (RFC 9110 §7.6.1): ``Connection`` and every field it names, ``Keep-Alive``, ``TE``,
  ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-Connection``, and every ``Proxy-*`` field
  (``Proxy-Authorization`` is a credential for this hop only, RFC 9110 §11.7.2);
- ``Host``, written again (the client's, or the upstream's when ``route.change_origin``);
- ``Expect``: the gateway's server has already answered ``100-continue`` itself;
- every field the route injects (``route.headers``): the configured value always wins and the client's copies
  never arrive, so a browser cannot forge or duplicate the gateway's credential;
- ``Forwarded``, every ``X-Forwarded-*`` and ``X-Real-IP``, whatever ``route.forwarded`` says: the gateway
  is the edge, so those values can only have been written by the client, and upstreams trust them (Django's
  ``SECURE_PROXY_SSL_HEADER``, ``USE_X_FORWARDED_HOST``, rate limits by client IP). The gateway then writes
  its own per ``route.forwarded``: ``"x-forwarded"`` → ``X-Forwarded-For`` (the peer alone, never appended
  to a client's list), ``X-Forwarded-Proto``, ``X-Forwarded-Host``; ``"rfc7239"`` → ``Forwarded``;
  ``"none"`` → nothing. A forwarding field the route injects under the same name is not written twice.

This is a denylist, unlike the WebSocket upgrade's allowlist: an API's own headers (``X-CSRFToken``,
``If-Match``, ``Content-Type``…) must reach it, and the set removed is closed — the fields that describe the
connection or that only the gateway may write.

Response fields all pass (``Set-Cookie`` included) except hop-by-hop ones. The gateway adds none of its own
— aiohttp's server writes ``Date`` and ``Server`` only when the upstream sent none — and never an injected
value.

Header text is what aiohttp hands over (UTF-8 decoded, ``surrogateescape``); a field whose name or value holds
a control character or bytes that are not UTF-8 cannot be written back unchanged by aiohttp and is dropped
rather than forwarded altered. Messages never contain a header value: values may be credentials.

Errors, added to the tree in :mod:`wsgate.errors`::

    WsgateError
    └── RejectedRequest   the client's request cannot be forwarded as it is; carries the status (400)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import unquote

from wsgate.config import Route
from wsgate.errors import WsgateError
from wsgate.gateway.forwarded import forwarded_element, forwarded_for
from wsgate.gateway.upgrade import UpstreamTarget
from wsgate.http_head import TOKEN_TEXT

__all__ = [
    "HOP_BY_HOP",
    "RejectedRequest",
    "check_framing",
    "connection_options",
    "forwarded_for",
    "request_headers",
    "response_headers",
    "upstream_target",
    "upstream_url",
]

Fields = Sequence[tuple[str, str]]

# RFC 9110 §7.6.1 (and Proxy-Connection, the pre-standard spelling browsers still send). Every field named in
# Connection is hop-by-hop too; so is every Proxy-* field, matched by prefix below.
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"}
)
# Fields only the gateway writes on a forwarded request (see the module docstring for each reason).
_GATEWAY_WRITES: Final = frozenset({"host", "expect", "forwarded", "x-real-ip"})
_STRIPPED_PREFIXES: Final = ("proxy-", "x-forwarded-")

# RFC 9110 §5.5: field values are VCHAR, obs-text, SP and HTAB; anything else (CR, LF, NUL, other controls)
# would end or corrupt the head. Lone surrogates are bytes that were not UTF-8 (see the module docstring).
_UNSENDABLE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
# RFC 9112 §3.2.2 absolute-form ("GET http://host/path HTTP/1.1"): the scheme and authority to skip.
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
# RFC 9112 §6.1: a Content-Length is 1*DIGIT.
_DIGITS = re.compile(r"[0-9]+")


class RejectedRequest(WsgateError):
    """The client's request cannot be forwarded; ``status`` is the answer (400), ``message`` says why.

    The message names the field or rule, never a value, so it is safe to log and to send to the client.
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------------------------------------
# Framing.


def check_framing(fields: Fields) -> None:
    """Raise :class:`RejectedRequest` (400) unless the body's framing and the ``Host`` are unambiguous.

    aiohttp's request parsers — llhttp (strict for requests) and the pure-Python fallback used with
    ``AIOHTTP_NO_EXTENSIONS`` or without the C extension — already answer 400 to every one of these before a
    handler runs (aiohttp 3.14; the tests send each on a raw socket, to both parsers). This check repeats the
    rules in the handler so the proxy does not depend on the aiohttp version or parser loaded. The body is
    re-framed on its way upstream, so what matters is that the gateway and whatever sent the request agree on
    where it ends (RFC 9112 §6.3, §11.2):

    - ``Transfer-Encoding`` together with ``Content-Length``;
    - more than one ``Content-Length`` (even equal ones), or one that is not digits;
    - a ``Transfer-Encoding`` other than exactly ``chunked`` (``chunked, identity``, ``gzip, chunked``,
      ``xchunked``…): the gateway accepts no other transfer coding;
    - more than one ``Host`` (RFC 9112 §3.2: a server MUST answer 400).
    """
    lengths: list[str] = []
    codings: list[str] = []
    hosts = 0
    for name, value in fields:
        lowered = name.lower()
        if lowered == "content-length":
            lengths.append(value)
        elif lowered == "transfer-encoding":
            codings += [item.strip().lower() for item in value.split(",")]
        elif lowered == "host":
            hosts += 1
    if hosts > 1:
        raise RejectedRequest("more than one Host header")
    if codings and lengths:
        raise RejectedRequest("both Transfer-Encoding and Content-Length")
    if len(lengths) > 1:
        raise RejectedRequest("more than one Content-Length header")
    if lengths and not _DIGITS.fullmatch(lengths[0].strip(" \t")):
        raise RejectedRequest("Content-Length is not a number")
    if codings and codings != ["chunked"]:
        raise RejectedRequest("Transfer-Encoding must be exactly 'chunked'")


# ----------------------------------------------------------------------------------------------------------
# The request-target.


def upstream_target(raw_target: str, route: Route, upstream: UpstreamTarget) -> str:
    """The request-target to send to ``upstream`` for a client's raw request-target.

    ``raw_target`` is the request-target exactly as received (aiohttp's ``request.raw_path``): its
    percent-encoding is kept byte for byte, so ``/api/a%2Fb`` stays one path segment. Absolute-form
    (``http://any/api/x``, RFC 9112 §3.2.2) is reduced to its path and query; its authority never chooses
    where the request goes. A ``#fragment`` is dropped.

    The path is then:

    - kept as is when ``route.rewrite`` is unset: ``/api/x?q=1`` → ``/api/x?q=1``;
    - otherwise the route prefix ``route.path`` is replaced by ``rewrite``. With path ``/api`` and rewrite
      ``/``: ``/api/x`` → ``/x`` and ``/api`` → ``/``; with rewrite ``/v1``: ``/api/x`` → ``/v1/x`` and
      ``/api`` → ``/v1``. The rewrite is used as written when nothing follows the prefix; otherwise its
      trailing ``/`` is dropped before the rest is appended, so no ``//`` appears.

    and is appended to the upstream URL's own path (``http://h/base`` → ``/base/api/x``); the client's query
    follows the upstream URL's query, joined by ``&``, as for WebSocket routes.

    Raises :class:`RejectedRequest` (400) when the raw path does not start with the route prefix literally
    (``/%61pi/x``: the router matched the decoded path) or holds a dot-segment — ``.`` or ``..``, percent-
    encoded or not, also between backslashes or before a ``;`` parameter — which the upstream could resolve to
    a path outside the prefix the route exposes (``/api/../admin``).
    """
    target = raw_target
    if not target.startswith("/"):
        match = _ABSOLUTE_FORM.match(target)
        if match is None:
            raise RejectedRequest("the request-target must be a path")
        target = target[match.end() :]
        target = target if target.startswith("/") else "/" + target
    # RFC 9110 §4.2.4: a fragment is never sent; llhttp lets one through, yarl would drop it on the way out.
    target = target.partition("#")[0]
    path, question, query = target.partition("?")
    _check_segments(path)

    prefix = route.path.rstrip("/")
    if path != prefix and not path.startswith(prefix + "/"):
        raise RejectedRequest("the path does not start with the route's prefix as written")
    if route.rewrite is not None:
        rest = path[len(prefix) :]
        path = route.rewrite.rstrip("/") + rest if rest else route.rewrite

    base_path, _, base_query = upstream.path.partition("?")
    path = base_path.rstrip("/") + path
    if base_query and query:
        query = base_query + ("" if base_query.endswith("&") else "&") + query
    elif base_query:
        query = base_query
    has_query = bool(question) or "?" in upstream.path
    return f"{path}?{query}" if has_query else path


def _check_segments(path: str) -> None:
    decoded = unquote(path, errors="surrogateescape")
    for segment in re.split(r"[/\\]", decoded):
        # "..;x" is ".." to servlet containers (Tomcat strips path parameters before resolving).
        if segment.partition(";")[0] in (".", ".."):
            raise RejectedRequest("the path holds a '.' or '..' segment")


def upstream_url(upstream: UpstreamTarget, target: str) -> str:
    """The absolute URL for ``target`` (from :func:`upstream_target`) on ``upstream``."""
    scheme = "https" if upstream.secure else "http"
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return f"{scheme}://{host}:{upstream.port}{target}"


# ----------------------------------------------------------------------------------------------------------
# Header fields.


def connection_options(fields: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lower-case field names listed in every ``Connection`` field (RFC 9110 §7.6.1)."""
    names: set[str] = set()
    for name, value in fields:
        if name.lower() == "connection":
            names.update(item.strip().lower() for item in value.split(",") if item.strip())
    return frozenset(names)


def _is_hop_by_hop(lowered: str, options: frozenset[str]) -> bool:
    return lowered in HOP_BY_HOP or lowered in options or lowered.startswith("proxy-")


def _sendable(name: str, value: str) -> bool:
    return TOKEN_TEXT.fullmatch(name) is not None and _UNSENDABLE_VALUE.search(value) is None


def request_headers(
    fields: Fields, *, route: Route, upstream: UpstreamTarget, peer: str | None, scheme: str
) -> list[tuple[str, str]]:
    """The header fields to send to ``upstream`` for a client request with ``fields``.

    ``fields`` are the client's fields in order, names as received, repeats kept; ``peer`` is the client's IP
    address (``None`` when unknown, e.g. a Unix socket); ``scheme`` is how the client reached the gateway
    (``"http"`` or ``"https"``). The result holds ``Host`` first, then the client's end-to-end fields in their
    order, the route's injected fields (values revealed: they go on the wire here) and the forwarding fields.
    See the module docstring for what is removed and why. ``Content-Length`` is kept: the body is forwarded
    unchanged, so its length is too.
    """
    options = connection_options(fields)
    injected = frozenset(route.headers)
    client_host: str | None = None
    kept: list[tuple[str, str]] = []
    for name, value in fields:
        lowered = name.lower()
        if lowered == "host":
            client_host = client_host or value.strip() or None
            continue
        if (
            _is_hop_by_hop(lowered, options)
            or lowered in _GATEWAY_WRITES
            or lowered.startswith(_STRIPPED_PREFIXES)
            or lowered in injected
            or not _sendable(name, value)
        ):
            continue
        kept.append((name, value))

    host = upstream.host_header if route.change_origin or client_host is None else client_host
    result = [("Host", host), *kept]
    result += [(name, secret.reveal()) for name, secret in route.headers.items()]

    def add(name: str, value: str | None) -> None:
        if value is not None and name.lower() not in injected:
            result.append((name, value))

    if route.forwarded == "x-forwarded":
        add("X-Forwarded-For", forwarded_for(peer))
        add("X-Forwarded-Proto", scheme)
        add("X-Forwarded-Host", client_host)
    elif route.forwarded == "rfc7239":
        add("Forwarded", forwarded_element(peer, scheme, client_host))
    elif route.forwarded != "none":
        raise ValueError(f"route {route.path!r} has an unknown forwarded style")
    return result


def response_headers(fields: Fields) -> list[tuple[str, str]]:
    """The upstream's response fields to pass to the client: all but hop-by-hop ones, in order.

    ``Content-Length`` is kept (the body is passed unchanged, ``Content-Encoding`` included) unless the
    upstream also sent ``Transfer-Encoding``, which makes it meaningless (RFC 9112 §6.3 item 3).
    """
    options = connection_options(fields)
    chunked = any(name.lower() == "transfer-encoding" for name, _ in fields)
    return [
        (name, value)
        for name, value in fields
        if not _is_hop_by_hop(name.lower(), options)
        and not (chunked and name.lower() == "content-length")
        and _sendable(name, value)
    ]
