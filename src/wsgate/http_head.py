"""HTTP/1.1 request heads (RFC 9112 §2-5), pure: found in a byte stream, parsed strictly, nothing guessed.

Used where wsgate reads a head itself instead of through aiohttp: the first request of each connection, to
send WebSocket upgrades on claimed paths straight to a protocol-level handler (:mod:`wsgate.front`). A head
this module cannot parse without guessing is refused with 400, never repaired, so no hop behind us can read
it differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from wsgate.errors import HandshakeError

# RFC 9110 §5.6.2 token characters (tchar), and a field value's (§5.5): field-vchar (visible ASCII, obs-text),
# space and tab. CR, LF and NUL are in neither, so a bare CR or LF inside a line fails every pattern built
# from them. Written once as character-class bodies, for the bytes patterns here and the str patterns of
# wsgate.gateway.upgrade.
TCHARS: Final = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
FIELD_VCHARS: Final = r"\x21-\x7e\x80-\xff"
FIELD_CHARS: Final = rf"\t\x20{FIELD_VCHARS}"
TOKEN: Final = re.compile(rf"[{TCHARS}]+".encode("ascii"))
# The same for text: field names as the gateway and its configuration hold them, token values (RFC 7239).
TOKEN_TEXT: Final = re.compile(rf"[{TCHARS}]+")
FIELD_VALUE: Final = re.compile(rf"[{FIELD_CHARS}]*".encode("ascii"))
# origin-form or absolute-form targets are visible ASCII without spaces (§3.2); the version is 1.0 or 1.1.
_REQUEST_LINE: Final = re.compile(rf"([{TCHARS}]+) ([\x21-\x7e]+) HTTP/1\.([01])".encode("ascii"))
# A whole field line in a latin-1 decoded block: field-name ":" OWS field-value OWS CRLF (RFC 9112 §5.1),
# capturing the name and the value without the whitespace around it (the value starts and ends with a
# field-vchar, or is empty). The whitespace runs are possessive (*+): given back one space at a time, they
# would make a long run of spaces before a bad byte cost time quadratic in its length. Where no valid line
# starts, the second alternative takes the rest of the block: findall yields _FAULT for it, which no valid
# line gives (a name is never empty).
_FIELD_LINE_OR_FAULT: Final = re.compile(
    rf"([{TCHARS}]+):[ \t]*+((?:[{FIELD_VCHARS}](?:[{FIELD_CHARS}]*[{FIELD_VCHARS}])?)?)[ \t]*+\r\n|(?s:.+)"
)
_FAULT: Final = ("", "")

HEAD_END: Final = b"\r\n\r\n"
# As aiohttp (wsgate.http_server.MAX_HEADERS, MAX_FIELD_SIZE): a head outside them is answered 431.
MAX_FIELDS: Final = 128
MAX_LINE: Final = 8190


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head. ``target`` is the request-target as sent; ``path`` is it without the query;
    ``fields`` are the header lines in order and original case (latin-1 decoded, one byte one character);
    ``headers`` looks them up case-insensitively; ``size`` is the head's length on the wire; ``raw`` the
    head as received, when it was parsed from bytes (``b""`` when aiohttp parsed it)."""

    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]
    headers: CIMultiDictProxy[str]
    size: int
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


def request_path(line: bytes) -> str | None:
    """The path of a request line (without CRLF), for routing before the rest of the head has arrived;
    ``None`` when the line is not a request line (the full parser reports why)."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return None
    return match[2].partition(b"?")[0].decode("ascii")


class FieldLimitError(ValueError):
    """The fields are well-formed but more or longer than we accept (431, not 400)."""


def parse_field_lines(
    lines: list[bytes], *, max_fields: int = MAX_FIELDS, max_line: int = MAX_LINE
) -> list[tuple[str, str]]:
    """Header field lines (without CRLF) as ``(name, value)``; raises :class:`ValueError` naming the fault
    (:class:`FieldLimitError` for more than ``max_fields`` lines or one over ``max_line`` bytes).

    No obs-fold (§5.2), no whitespace before the colon (§5.1), values without surrounding whitespace and
    without control characters. The reference for :func:`parse_field_block`, which heads go through: it
    comes here only to find and name the first fault (or for a block over ``max_line``).
    """
    if len(lines) > max_fields:
        raise FieldLimitError(f"more than {max_fields} header lines")
    fields: list[tuple[str, str]] = []
    for line in lines:
        if len(line) > max_line:
            raise FieldLimitError(f"a header line over {max_line} bytes")
        if line[:1] in (b" ", b"\t"):
            raise ValueError("obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name):
            # Also catches "Name :": RFC 9112 §5.1 forbids whitespace between the name and the colon.
            raise ValueError("a malformed header line")
        value = value.strip(b" \t")  # §5.1: whitespace around the value is not part of it
        if not FIELD_VALUE.fullmatch(value):
            raise ValueError("a control character in a header value")
        fields.append((name.decode("ascii"), value.decode("latin-1")))
    return fields


def parse_field_block(
    block: bytes, *, max_fields: int = MAX_FIELDS, max_line: int = MAX_LINE
) -> list[tuple[str, str]]:
    """The field lines of a head, ``block`` holding each followed by its CRLF (empty when there are none):
    exactly what :func:`parse_field_lines` gives for those lines, fields or exception. Shared by request heads
    and the upstream's response heads (``wsgate.gateway.upgrade``).

    A valid block within the limits takes one regular-expression pass instead of several calls per line.
    """
    if len(block) <= max_line:  # then no line in it is longer
        fields: list[tuple[str, str]] = _FIELD_LINE_OR_FAULT.findall(block.decode("latin-1"))
        if _FAULT not in fields and len(fields) <= max_fields:
            return fields
    # Something is wrong, or merely over a limit: line by line, the first fault is found and named.
    lines = block.removesuffix(b"\r\n").split(b"\r\n") if block else []
    return parse_field_lines(lines, max_fields=max_fields, max_line=max_line)


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse a request head, ``raw`` being everything up to and including its blank line.

    Empty lines before the request line are skipped (§2.2). Raises :class:`~wsgate.errors.HandshakeError`
    with status 400 (a line that is not HTTP/1.x, a malformed field, a bare CR or LF) or 431 (too many
    fields, a line over MAX_LINE bytes). The message names the fault, never a byte of the request.
    """
    if not raw.endswith(HEAD_END):
        raise HandshakeError(400, "the request head is incomplete")
    size = len(raw)
    start = 0
    while raw.startswith(b"\r\n", start):
        start += 2
    # The request line, then the field lines each with its CRLF; the head's last CRLF (its empty line) goes.
    request_line, _, field_block = raw[start:-2].partition(b"\r\n")
    if len(request_line) > MAX_LINE:
        raise HandshakeError(431, f"the request line is over {MAX_LINE} bytes")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise HandshakeError(400, "the request line is not 'METHOD target HTTP/1.1'")
    try:
        fields = parse_field_block(field_block)
    except ValueError as exc:
        status = 431 if isinstance(exc, FieldLimitError) else 400
        raise HandshakeError(status, f"the request head has {exc}") from None
    return RequestHead(
        method=match[1].decode("ascii"),
        target=match[2].decode("ascii"),
        version=f"1.{match[3].decode()}",
        fields=tuple(fields),
        headers=CIMultiDictProxy(CIMultiDict(fields)),
        size=size - start,
        raw=raw,
    )
