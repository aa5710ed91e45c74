"""permessage-deflate (RFC 7692) for the test-only ``/echo`` endpoint, pure: accepting an offer, inflating.

``/ws`` never negotiates compression (docs/hub.md: it would cost CPU per subscriber and invite decompression
bombs). ``/echo`` accepts it so that the Autobahn suite's compression cases (12.*, 13.*) run against the hub's
frame reader: the client may compress its messages, the echo never compresses its replies (RFC 7692 §6 allows
uncompressed messages on such a connection). Because the server never compresses, every server-side parameter
can be granted as asked; the client's window is whatever it is, up to 15 bits, which a 15-bit inflater reads.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Final

from wsgate.errors import FrameError
from wsgate.hub.frames import INVALID_PAYLOAD, MESSAGE_TOO_BIG

EXTENSION: Final = "permessage-deflate"
# RFC 7692 §7.2.1: a compressed message's payload ends without the 00 00 ff ff of its final flush.
_TAIL: Final = b"\x00\x00\xff\xff"
_WINDOW_BITS: Final = re.compile(r"(?:[89]|1[0-5])")
_NO_VALUE: Final = ("server_no_context_takeover", "client_no_context_takeover")


@dataclass(frozen=True, slots=True)
class Agreement:
    """An accepted offer: the response header value, and whether the client resets its context per message."""

    response: str
    client_no_context_takeover: bool


def _parameters(offer: str) -> tuple[str, dict[str, str | None]] | None:
    """An offer's extension name and parameters (RFC 7692 §5, RFC 6455 §9.1); ``None`` if malformed."""
    name, *raw = (part.strip() for part in offer.split(";"))
    parameters: dict[str, str | None] = {}
    for item in raw:
        key, equals, value = (piece.strip() for piece in item.partition("="))
        if not key or key in parameters:  # §7: a parameter given twice makes the offer invalid
            return None
        if equals and len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        parameters[key] = value if equals else None
    return name.lower(), parameters


def accept_offer(header_values: list[str]) -> Agreement | None:
    """The first acceptable permessage-deflate offer among the ``Sec-WebSocket-Extensions`` values, or
    ``None`` (then the connection is uncompressed). An offer with unknown or invalid parameters is declined
    (§5: the server must not accept it), and the next one is tried."""
    for value in header_values:
        for offer in value.split(","):
            parsed = _parameters(offer)
            if parsed is None or parsed[0] != EXTENSION:
                continue
            parameters = parsed[1]
            if not _acceptable(parameters):
                continue
            # Grant the server-side parameters as asked (we never compress); let the client keep its window.
            response = [EXTENSION]
            for key in ("server_no_context_takeover", "client_no_context_takeover"):
                if key in parameters:
                    response.append(key)
            if "server_max_window_bits" in parameters:
                response.append(f"server_max_window_bits={parameters['server_max_window_bits']}")
            return Agreement("; ".join(response), "client_no_context_takeover" in parameters)
    return None


def _acceptable(parameters: dict[str, str | None]) -> bool:
    for key, value in parameters.items():
        if key in _NO_VALUE:
            if value is not None:
                return False
        elif key == "server_max_window_bits":
            if value is None or not _WINDOW_BITS.fullmatch(value):
                return False
        elif key == "client_max_window_bits":
            if value is not None and not _WINDOW_BITS.fullmatch(value):
                return False
        else:
            return False
    return True


class Inflater:
    """Inflates compressed messages within a budget (:class:`~wsgate.hub.frame_reader.Decompressor`).

    Output is bounded while inflating (``max_length``), so a bomb costs at most the budget, never its
    inflated size. The context carries over from message to message unless the client said it resets it.
    """

    __slots__ = ("_reset", "_zlib")

    def __init__(self, *, client_no_context_takeover: bool) -> None:
        self._reset = client_no_context_takeover
        self._zlib = zlib.decompressobj(wbits=-zlib.MAX_WBITS)

    def inflate(self, data: bytes, *, final: bool, budget: int) -> bytes:
        decompressor = self._zlib
        try:
            out = decompressor.decompress(data, budget + 1)
            if final and not self._over(out, budget):
                out += decompressor.decompress(_TAIL, budget + 1 - len(out))
        except zlib.error:
            raise FrameError(INVALID_PAYLOAD, "compressed message is not valid DEFLATE data") from None
        if self._over(out, budget):
            raise FrameError(MESSAGE_TOO_BIG, "message over the size limit once inflated")
        if final and self._reset:
            self._zlib = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        return out

    def _over(self, out: bytes, budget: int) -> bool:
        # Output stopped at budget + 1 bytes (max_length) with input left over, or went past the budget.
        return bool(self._zlib.unconsumed_tail) or len(out) > budget
