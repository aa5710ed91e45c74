"""Server-to-client WebSocket framing (RFC 6455 §5.2), pure.

The hub builds each outgoing frame once and writes the same bytes to every subscriber's transport, so fan-out
costs one ``write`` per subscriber and no per-subscriber encoding. Server frames are never masked (§5.1).
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
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
