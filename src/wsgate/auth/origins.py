"""Origin allowlists: the check that stops another site's page from opening a WebSocket with our credentials.

Browsers attach cookies, and a gateway attaches its injected credential, to every WebSocket they open,
whichever page asked; the ``Origin`` header (RFC 6454 §7, RFC 6455 §4.1 item 8 and §10.2) is the only thing
that tells the server *which* page asked. It is also attacker-controlled text, so it is parsed strictly and
compared only after normalisation:

- :func:`normalize_origin` turns ``scheme://host[:port]`` into one canonical spelling (scheme and host lower
  case, host IDNA-encoded, trailing dot removed, default port dropped, IPv6 kept in brackets) and rejects
  everything else with :class:`ValueError`.
- :class:`OriginPattern` is one allowlist entry: an exact origin, ``https://*.example.org`` (sub-domains at
  any depth, not the domain itself, same scheme and port) or the literal ``null``.
- :class:`OriginPolicy` is a whole allowlist; :meth:`OriginPolicy.check` raises
  :class:`~wsgate.errors.ForbiddenError` (403, ``reason="origin"``) with a message that never repeats the
  offending header.

Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from wsgate.errors import ForbiddenError

__all__ = [
    "DEFAULT_PORTS",
    "MAX_ORIGIN_LENGTH",
    "OriginPattern",
    "OriginPolicy",
    "normalize_origin",
]

# RFC 6454 sets no limit. A real origin is a scheme plus a DNS name (at most 253 octets, RFC 1035 §2.3.4)
# plus a port, far below this; the bound only stops an attacker from making us IDNA-encode a megabyte.
MAX_ORIGIN_LENGTH = 1024

# The ports a browser leaves out when it serialises an origin (RFC 6454 §6.2 via the URL's default port;
# RFC 6455 §3 gives ws 80 and wss 443).
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*", re.ASCII)
# RFC 3986 §3.2.3: port = *DIGIT; we want 1 to 65535 and no more than five digits.
_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)
# A host label after IDNA encoding and lower-casing. "_" is not LDH but browsers accept it in host names, and
# it is harmless here: it cannot delimit anything.
_LABEL_RE = re.compile(r"[a-z0-9_\-]{1,63}", re.ASCII)
# One or more labels: the part of a host a wildcard stands for.
_LABELS_RE = re.compile(r"[a-z0-9_\-]{1,63}(?:\.[a-z0-9_\-]{1,63})*", re.ASCII)
# What may appear between the brackets of an IPv6 literal. No "%": zone identifiers (RFC 6874) are not part
# of an origin a browser sends.
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+", re.ASCII)
# Space, C0 controls and DEL: never valid in an origin.
_ASCII_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f]", re.ASCII)
# Unicode categories rejected outright: controls, format characters (zero-width joiners, soft hyphen, bidi
# overrides - invisible, so an allowlist entry holding one is not what its author saw), surrogates, private
# use and unassigned code points.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# The "deviation" characters of UTS #46 §2.3: Python's idna codec (IDNA 2003) maps them to other letters
# ("straße" -> "strasse"), browsers (non-transitional UTS #46) keep them ("xn--strae-oqa"). The two spellings
# are different domains, possibly with different owners, so we refuse to guess.
_DEVIATIONS = frozenset("\u00df\u03c2")

_SHAPE_HINT = "write an origin as scheme://host[:port], e.g. https://kiosk.example.org"
_MAX_HOST_LENGTH = 253  # RFC 1035 §2.3.4, without the trailing dot


def normalize_origin(value: str) -> str:
    """Return the canonical form of an ``Origin`` header value or allowlist entry.

    The result is ``scheme://host`` or ``scheme://host:port`` with scheme and host in lower case, the host
    IDNA-encoded (``bücher.example`` -> ``xn--bcher-kva.example``), one trailing dot removed, a default port
    (http/ws 80, https/wss 443) dropped, IPv4 in dotted-quad form and IPv6 compressed inside brackets.
    ``"null"`` (RFC 6454 §7.1, sent by sandboxed and ``file:`` pages) is returned unchanged.

    Raises :class:`ValueError` - and nothing else - for anything that is not a serialised origin: a path
    (even ``/``), query, fragment, user info, whitespace or control characters anywhere, an empty or invalid
    host, a port that is not 1-65535, or more than :data:`MAX_ORIGIN_LENGTH` characters. The message never
    contains the value, so it may be shown to the peer; callers that parse configuration add the key.
    """
    if len(value) > MAX_ORIGIN_LENGTH:
        raise ValueError(f"origin longer than {MAX_ORIGIN_LENGTH} characters")
    if value == "null":
        return value
    _reject_invisible(value)
    scheme, sep, rest = value.partition("://")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        raise ValueError(f"origin has no valid scheme; {_SHAPE_HINT}")
    # RFC 6454 §6.2: the serialisation is scheme "://" host [ ":" port ] and nothing else.
    if "@" in rest:
        raise ValueError(f"origin must not contain user info ('@'); {_SHAPE_HINT}")
    if any(c in rest for c in "/?#\\"):
        raise ValueError(f"origin must not have a path, query or fragment (not even '/'); {_SHAPE_HINT}")
    scheme = scheme.lower()
    host, port = _split_host_port(rest)
    if port is not None and DEFAULT_PORTS.get(scheme) == port:
        port = None
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def _reject_invisible(value: str) -> None:
    if value.isascii():
        if _ASCII_FORBIDDEN_RE.search(value):
            raise ValueError(f"origin must not contain whitespace or control characters; {_SHAPE_HINT}")
        return
    for char in value:
        if char.isspace() or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise ValueError(
                f"origin must not contain whitespace, control or invisible characters; {_SHAPE_HINT}"
            )


def _split_host_port(rest: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` and normalise both halves."""
    if rest.startswith("["):
        end = rest.find("]")
        if end == -1:
            raise ValueError("IPv6 address in origin lacks its closing ']'")
        host = _normalize_ipv6(rest[1:end])
        after = rest[end + 1 :]
        if not after:
            return host, None
        if not after.startswith(":"):
            raise ValueError(f"unexpected text after an IPv6 address; {_SHAPE_HINT}")
        return host, _parse_port(after[1:])
    if rest.count(":") > 1:
        raise ValueError("an IPv6 address in an origin must be in brackets, e.g. http://[::1]:8000")
    host, colon, port_text = rest.partition(":")
    return _normalize_host(host), (_parse_port(port_text) if colon else None)


def _parse_port(text: str) -> int:
    # An empty port ("https://host:") is legal in a URL but no browser serialises an origin that way.
    if not _PORT_RE.fullmatch(text):
        raise ValueError("origin port must be a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError("origin port must be a number from 1 to 65535")
    return port


def _normalize_ipv6(text: str) -> str:
    if not _IPV6_RE.fullmatch(text):
        raise ValueError("origin holds an invalid IPv6 address")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError("origin holds an invalid IPv6 address") from None
    # The URL standard serialises IPv6 hosts compressed and in lower case (RFC 5952), as ipaddress does.
    return f"[{address.compressed}]"


def _normalize_host(host: str) -> str:
    if not host:
        raise ValueError(f"origin has an empty host; {_SHAPE_HINT}")
    if "[" in host or "]" in host:
        raise ValueError("brackets in an origin are only allowed around an IPv6 address")
    if _DEVIATIONS.intersection(host):
        raise ValueError(
            "origin host contains 'ß' or 'ς', which browsers and IDNA 2003 encode differently; "
            "write the host in its xn-- (punycode) form as the browser sends it"
        )
    try:
        # RFC 3490 ToASCII per label (nameprep lower-cases and maps Unicode; ASCII labels pass unchanged).
        encoded = host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        raise ValueError("origin host is not a valid (internationalised) domain name") from None
    encoded = encoded.lower()
    # A fully qualified name's trailing dot names the same host (RFC 1034 §3.1); browsers keep it in the
    # origin, so drop it here or "https://kiosk.example.org." would not match its allowlist entry.
    if encoded.endswith("."):
        encoded = encoded[:-1]
    if not encoded:
        raise ValueError(f"origin has an empty host; {_SHAPE_HINT}")
    if len(encoded) > _MAX_HOST_LENGTH:
        raise ValueError(f"origin host longer than {_MAX_HOST_LENGTH} characters")
    labels = encoded.split(".")
    # Checked after encoding: nameprep can turn Unicode into ASCII punctuation (U+FF0F FULLWIDTH SOLIDUS
    # becomes "/"), which must not slip through as part of a host.
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError("origin host may contain only letters, digits, '-', '_' and dots between labels")
    last = labels[-1]
    if last.isdigit() or last.startswith("0x"):
        # WHATWG URL "ends in a number": such a host must be an IPv4 address; browsers would send it in
        # dotted-quad form, and "1.2.3" or "0x7f.0.0.1" are not what an allowlist means.
        try:
            return str(ipaddress.IPv4Address(encoded))
        except ValueError:
            raise ValueError("origin host ending in a number must be a dotted-quad IPv4 address") from None
    return encoded


def _is_ip_host(host: str) -> bool:
    return host.startswith("[") or host.rsplit(".", 1)[-1].isdigit()


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """One allowlist entry, parsed with :meth:`parse`.

    ``kind`` is ``"exact"``, ``"wildcard"`` or ``"null"``; ``text`` is the canonical spelling
    (``https://*.example.org`` for a wildcard), suitable for display and for ``wsgate check``.
    """

    kind: Literal["exact", "wildcard", "null"]
    text: str
    # For wildcards: the normalised origin must start with ``prefix`` ("https://") and end with ``suffix``
    # (".example.org" or ".example.org:8443"), with one or more whole labels in between.
    prefix: str = field(default="", repr=False)
    suffix: str = field(default="", repr=False)

    @classmethod
    def parse(cls, text: str) -> OriginPattern:
        """Parse an allowlist entry.

        Accepted: an exact origin (``https://kiosk.example.org``, ``http://localhost:8000``), a sub-domain
        wildcard (``https://*.example.org``: any depth below ``example.org``, not ``example.org`` itself, same
        scheme and port), or the literal ``null``. Unicode hosts are IDNA-encoded so they match what browsers
        send. Raises :class:`ValueError` with a message that says what to write instead.
        """
        if text == "null":
            return cls("null", "null")
        if "*" not in text:
            return cls("exact", normalize_origin(text))
        if text.strip() == "*":
            raise ValueError(
                "'*' would let every web site connect; list each origin, "
                "or a sub-domain wildcard such as https://*.example.org"
            )
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise ValueError("origin wildcard has no scheme; write e.g. https://*.example.org")
        if not rest.startswith("*.") or "*" in rest[2:]:
            raise ValueError(
                "'*' is only allowed as the whole first label of the host, e.g. https://*.example.org"
            )
        if not rest[2:] or rest[2] == ":":
            raise ValueError("origin wildcard needs a domain after '*.', e.g. https://*.example.org")
        base = normalize_origin(f"{scheme}://{rest[2:]}")
        base_scheme, _, base_hostport = base.partition("://")
        if base_hostport.startswith("["):
            raise ValueError("an origin wildcard needs a domain name, not an IP address")
        base_host, colon, base_port = base_hostport.partition(":")
        if _is_ip_host(base_host):
            raise ValueError("an origin wildcard needs a domain name, not an IP address")
        if "." not in base_host:
            # "*.org" would admit every .org site. A public suffix such as "co.uk" cannot be recognised
            # without the Public Suffix List; that remains the author's responsibility.
            raise ValueError(
                "an origin wildcard over a top-level domain would admit any site; "
                "use a domain you control, e.g. https://*.example.org"
            )
        prefix = f"{base_scheme}://"
        suffix = f".{base_host}{colon}{base_port}"
        return cls("wildcard", f"{prefix}*{suffix}", prefix, suffix)

    def matches(self, normalized_origin: str) -> bool:
        """Whether an origin, already passed through :func:`normalize_origin`, is admitted by this entry."""
        if self.kind != "wildcard":
            return normalized_origin == self.text
        if not (normalized_origin.startswith(self.prefix) and normalized_origin.endswith(self.suffix)):
            return False
        middle = normalized_origin[len(self.prefix) : len(normalized_origin) - len(self.suffix)]
        # Whole labels only: "https://evil-example.org" must not pass for "*.example.org" (it fails the
        # endswith above), and nothing but host labels may fill the gap.
        return _LABELS_RE.fullmatch(middle) is not None

    def __str__(self) -> str:
        return self.text


class OriginPolicy:
    """A whole Origin allowlist, checked once per WebSocket handshake.

    ``allowed`` holds allowlist entries as accepted by :meth:`OriginPattern.parse` (a bad entry raises
    :class:`ValueError`; the configuration layer turns it into a ``ConfigError`` naming the key).
    ``allow_missing`` admits requests with no ``Origin`` header at all - non-browser clients; browsers always
    send one on a WebSocket handshake (RFC 6455 §4.1). ``config_key`` is the setting named in refusal
    messages, so an operator reading a 403 knows what to edit.

    Matching is one set lookup for exact entries and one set lookup per host label for wildcards, however long
    the list.
    """

    __slots__ = ("_allow_missing", "_allow_null", "_config_key", "_exact", "_wildcards", "patterns")

    def __init__(
        self, allowed: Iterable[str], *, allow_missing: bool, config_key: str = "allowed_origins"
    ) -> None:
        if isinstance(allowed, str):
            # A bare string would be iterated character by character.
            raise TypeError("allowed must be an iterable of origins, not a single string")
        self.patterns: tuple[OriginPattern, ...] = tuple(OriginPattern.parse(entry) for entry in allowed)
        self._allow_missing = allow_missing
        self._config_key = config_key
        self._allow_null = any(p.kind == "null" for p in self.patterns)
        self._exact = frozenset(p.text for p in self.patterns if p.kind == "exact")
        self._wildcards = frozenset(p.text for p in self.patterns if p.kind == "wildcard")

    @property
    def allow_missing(self) -> bool:
        return self._allow_missing

    def check(self, origin: str | None) -> None:
        """Return if ``origin`` (the raw header value, ``None`` when absent) is admitted.

        Otherwise raise :class:`~wsgate.errors.ForbiddenError` with ``reason="origin"``. The message says what
        to configure and never contains the header value, which is attacker-controlled.
        """
        if origin is None:
            if self._allow_missing:
                return
            raise ForbiddenError(
                "Origin header missing; browsers always send one - to admit non-browser clients "
                "without it, set allow_missing_origin = true",
                reason="origin",
            )
        # Fast path: browsers send the canonical form, and every entry of _exact is a fixed point of
        # normalize_origin, so an exact hit needs no parsing.
        if origin in self._exact:
            return
        # RFC 6454 §6.2 serialises an origin in ASCII (hosts as punycode); a browser never sends anything
        # else, so Unicode here is a forgery or a broken client, never a match.
        if not origin.isascii():
            raise ForbiddenError(_MALFORMED, reason="origin")
        try:
            normalized = normalize_origin(origin)
        except ValueError:
            raise ForbiddenError(_MALFORMED, reason="origin") from None
        if normalized == "null":
            if self._allow_null:
                return
            raise ForbiddenError(
                f"Origin 'null' (a sandboxed or file: page) not allowed; "
                f'add "null" to {self._config_key} only if such pages must connect',
                reason="origin",
            )
        if normalized in self._exact or self._matches_wildcard(normalized):
            return
        raise ForbiddenError(f"Origin not allowed; add it to {self._config_key}", reason="origin")

    def allows(self, origin: str | None) -> bool:
        """Like :meth:`check`, as a boolean."""
        try:
            self.check(origin)
        except ForbiddenError:
            return False
        return True

    def _matches_wildcard(self, normalized: str) -> bool:
        if not self._wildcards:
            return False
        scheme, _, hostport = normalized.partition("://")
        if hostport.startswith("["):
            return False
        host, colon, port = hostport.partition(":")
        # Try every parent domain: for a.b.example.org look up *.b.example.org, *.example.org, *.org.
        start = host.find(".")
        while start != -1:
            if f"{scheme}://*{host[start:]}{colon}{port}" in self._wildcards:
                return True
            start = host.find(".", start + 1)
        return False

    def __repr__(self) -> str:
        entries = ", ".join(p.text for p in self.patterns)
        return f"OriginPolicy([{entries}], allow_missing={self._allow_missing})"


_MALFORMED = "Origin header malformed; browsers send scheme://host[:port] (RFC 6454 §6.2)"
