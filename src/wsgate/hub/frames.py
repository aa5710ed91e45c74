"""Server-to-client WebSocket framing (RFC 6455 §5.2), pure, and the opcodes and close codes the hub uses.

The hub builds each outgoing frame once and writes the same bytes to every subscriber's transport, so fan-out
costs one ``write`` per subscriber and no per-subscriber encoding. Server frames are never masked (§5.1).
Client frames are read by :mod:`wsgate.hub.frame_reader`.
"""

from __future__ import annotations

import struct

# Opcodes (§5.2).
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
FIN = 0x80  # the last frame of a message

# Close codes (§7.4.1, IANA registry).
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001  # shutdown
PROTOCOL_ERROR = 1002  # a frame breaks RFC 6455
NO_STATUS = 1005  # logged when the peer's close frame had no code; never sent
ABNORMAL_CLOSURE = 1006  # logged when a connection ended without a close frame; never sent
INVALID_PAYLOAD = 1007  # text that is not UTF-8
POLICY_VIOLATION = 1008  # the token expired
MESSAGE_TOO_BIG = 1009  # over limits.max_message
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013  # slow consumer


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unfragmented, unmasked frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = bytes((FIN | opcode, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", FIN | opcode, 127, length)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut so the control frame stays within 125 bytes (§5.5)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return server_frame(payload, OP_CLOSE)


# Codes a close frame may carry (RFC 6455 §7.4): the registered ones an endpoint may send, and 3000-4999 for
# libraries and applications. 1004 is reserved; 1005, 1006 and 1015 only report a close locally and must never
# be sent (§7.4.1); 1016-2999 are unassigned.
_VALID_ON_THE_WIRE = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))


def allowed_on_the_wire(code: int) -> bool:
    """Whether a close frame may carry ``code`` (§7.4)."""
    return code in _VALID_ON_THE_WIRE or 3000 <= code <= 4999


def close_reply_code(received: int) -> int:
    """The code to answer a peer's close frame with (``0``: the frame carried no code).

    1000, or 1002 when the peer's code may not appear on the wire (§7.4.1), which fails the connection.
    """
    if received == 0 or allowed_on_the_wire(received):
        return NORMAL_CLOSURE
    return PROTOCOL_ERROR
