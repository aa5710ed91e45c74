"""Who the client is, as the gateway tells upstreams: ``X-Forwarded-For`` and RFC 7239 ``Forwarded``. Pure.

Shared by the WebSocket and HTTP routes. The gateway is the edge: the peer address it saw is the only thing it
knows, so it never trusts or appends to a client-sent value (a client could claim to be 127.0.0.1).
"""

from __future__ import annotations

import functools
import ipaddress

from wsgate.http_head import TOKEN_TEXT


# Parsing an address with ipaddress is a fifth of building an upstream request; clients reconnect from the
# same few addresses, so a small cache of this pure function takes that off nearly every handshake.
@functools.lru_cache(maxsize=4096)
def forwarded_for(peer: str | None) -> str | None:
    """The peer as an IP address string for ``X-Forwarded-For``: an IPv4-mapped IPv6 address (a dual-stack
    socket's view of an IPv4 client) as IPv4, a zone identifier dropped; ``None`` when not an IP address."""
    if peer is None:
        return None
    text = peer.strip().removeprefix("[").removesuffix("]").partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def forwarded_element(peer: str | None, scheme: str, host: str | None) -> str:
    """One RFC 7239 §4 forwarded-element: ``for=…;proto=…[;host=…]``."""
    address = forwarded_for(peer)
    if address is None:
        node = "unknown"  # RFC 7239 §6.2: the preceding entity is not known
    elif ":" in address:
        node = f'"[{address}]"'  # RFC 7239 §6: IPv6 in brackets, quoted since ":[]" are not token characters
    else:
        node = address
    element = f"for={node};proto={scheme}"
    if host is not None:
        element += f";host={_token_or_quoted(host)}"
    return element


def _token_or_quoted(value: str) -> str:
    """RFC 7239 §4: value = token / quoted-string (RFC 9110 §5.6.4, escaping ``"`` and ``\\``)."""
    if TOKEN_TEXT.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
