"""Server-to-client WebSocket framing (RFC 6455 §5.2), pure.

The hub builds each outgoing frame once and writes the same bytes to every subscriber's transport, so fan-out
costs one ``write`` per subscriber and no per-subscriber encoding. Server frames are never masked (§5.1).
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
_FIN = 0x80


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unfragmented, unmasked frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN | opcode, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut so the control frame stays within 125 bytes (§5.5)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return server_frame(payload, OP_CLOSE)


# Codes a close frame may carry (RFC 6455 §7.4): the registered ones an endpoint may send, and 3000-4999 for
# libraries and applications. 1004 is reserved; 1005, 1006 and 1015 only report a close locally and must never
# be sent (§7.4.1); 1016-2999 are unassigned.
_VALID_ON_THE_WIRE = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))
NORMAL_CLOSURE = 1000
PROTOCOL_ERROR = 1002


def close_reply_code(received: int) -> int:
    """The code to answer a peer's close frame with (``0``: the frame carried no code).

    1000, or 1002 when the peer's code may not appear on the wire (§7.4.1), which fails the connection.
    aiohttp refuses most invalid codes itself but lets 1006 through and would answer it with 1000, so the hub
    answers close frames itself (``autoclose=False``).
    """
    if received == 0 or received in _VALID_ON_THE_WIRE or 3000 <= received <= 4999:
        return NORMAL_CLOSURE
    return PROTOCOL_ERROR
