"""The hub's wire protocol (DESIGN.md §4): decoding client commands and encoding hub messages, pure.

Client messages are untrusted: :func:`decode_command` accepts exactly the documented shapes and raises
:class:`~wsgate.errors.ProtocolError` (code ``bad_request``) for anything else. Hub messages are built by
string concatenation around JSON that is already encoded, so a published payload is encoded once, however many
subscribers receive it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from wsgate.errors import ProtocolError

# Channel names appear in metrics, logs and Redis keys: a conservative alphabet keeps them safe in all three.
# `*` is excluded because it is the wildcard in channel rights.
CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_.:@/-]{1,200}")
MAX_EPOCH_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Since:
    """Where a reconnecting client left off: the epoch it saw, the offset of the last message it processed."""

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    since: Since | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str
    data: str
    """The payload as compact JSON text, ready to be spliced into outgoing messages."""


Command = Subscribe | Unsubscribe | Publish


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode_json(value: Any) -> str:
    """Compact JSON; NaN and infinities are refused because other JSON parsers reject them."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON: no NaN/Infinity; depth bombs and bad UTF-8 become :class:`ProtocolError`."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError("message is not valid JSON") from exc


def validate_channel(value: Any) -> str:
    if not isinstance(value, str) or not CHANNEL_PATTERN.fullmatch(value):
        raise ProtocolError("channel must be 1-200 characters of A-Z a-z 0-9 _ . : @ / -")
    return value


def _parse_since(value: Any) -> Since:
    if not isinstance(value, dict) or set(value) != {"epoch", "offset"}:
        raise ProtocolError('since must be {"epoch": "<e>", "offset": <n>}')
    epoch, offset = value["epoch"], value["offset"]
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        raise ProtocolError("since.epoch must be the epoch string the hub sent")
    # bool is an int subclass in Python; true/false are not offsets.
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ProtocolError("since.offset must be a non-negative integer")
    return Since(epoch, offset)


def decode_command(raw: bytes | str) -> Command:
    """Parse one client text message into a command."""
    message = parse_json(raw)
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
    kind = message.get("type")
    if kind == "subscribe":
        _only_keys(message, {"type", "channel", "since"})
        since = message.get("since")
        return Subscribe(
            validate_channel(message.get("channel")), None if since is None else _parse_since(since)
        )
    if kind == "unsubscribe":
        _only_keys(message, {"type", "channel"})
        return Unsubscribe(validate_channel(message.get("channel")))
    if kind == "publish":
        _only_keys(message, {"type", "channel", "data"})
        if "data" not in message:
            raise ProtocolError("publish needs a data field")
        return Publish(validate_channel(message.get("channel")), encode_json(message["data"]))
    raise ProtocolError('type must be "subscribe", "unsubscribe" or "publish"')


def _only_keys(message: dict[str, Any], allowed: set[str]) -> None:
    # Unknown fields are refused rather than ignored, so a typo ("sinse") fails loudly instead of silently
    # turning a recovery into a fresh subscription.
    extra = set(message) - allowed
    if extra:
        raise ProtocolError(f"unknown field(s): {', '.join(sorted(extra))[:100]}")


def subscribed(channel: str, epoch: str, offset: int, recovered: bool) -> str:
    return (
        f'{{"type":"subscribed","channel":{encode_json(channel)},"epoch":{encode_json(epoch)},'
        f'"offset":{offset},"recovered":{"true" if recovered else "false"}}}'
    )


def message(channel: str, offset: int, data: str) -> str:
    """A delivered message; ``data`` is JSON text already encoded by :func:`encode_json`."""
    return f'{{"type":"message","channel":{encode_json(channel)},"offset":{offset},"data":{data}}}'


def error(code: str, text: str) -> str:
    return f'{{"type":"error","code":{encode_json(code)},"message":{encode_json(text)}}}'
