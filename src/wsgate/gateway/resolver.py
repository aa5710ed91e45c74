"""Upstream host names, looked up once per ``ttl`` and shared by every handshake that needs them.

A WebSocket route's upstream is usually a name (``ws://hub:9000``). Looked up per connection, that is a
``getaddrinfo()`` in a thread for every proxied handshake — ~75 µs of the gateway's CPU each with nothing but
``/etc/hosts`` to read (docs/performance.md) — and 10,000 kiosks reconnecting at once would start 10,000
lookups. aiohttp's connector keeps the HTTP routes' lookups for 10 s; this does the same for the WebSocket
routes: one lookup per name and port at a time, its addresses kept for ``ttl`` seconds, forgotten as soon as
none of them accepts a connection (the upstream may have moved).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# As aiohttp's TCPConnector (ttl_dns_cache): long enough to spare a reconnect storm, short enough that a moved
# upstream is found again within seconds (and at once when the old address refuses).
DEFAULT_TTL = 10.0


# What getaddrinfo() gives: (family, type, proto, canonname, sockaddr) tuples.
AddressInfo = tuple[int, int, int, str, tuple[Any, ...]]
LookUp = Callable[[str, int], Awaitable[Sequence[AddressInfo]]]


async def look_up(host: str, port: int) -> Sequence[AddressInfo]:
    """The system's resolver (``getaddrinfo()``, in the loop's thread pool), for stream sockets."""
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


class Resolver:
    """Addresses of upstream hosts, cached. IP literals are returned as they are, without a lookup."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        lookup: LookUp = look_up,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lookup = lookup
        self._cache: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}  # → (expires, addresses)
        self._lookups: dict[tuple[str, int], asyncio.Task[tuple[str, ...]]] = {}

    def known(self, host: str, port: int) -> tuple[str, ...] | None:
        """The addresses to try for ``host`` if they are known without a lookup: an IP literal, or a name
        looked up less than ``ttl`` ago. (The common case, answered without a coroutine.)"""
        if _is_ip_literal(host):
            return (host,)
        cached = self._cache.get((host, port))
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        return None

    async def resolve(self, host: str, port: int) -> tuple[str, ...]:
        """The addresses to try for ``host``, in the order ``getaddrinfo()`` gave them. Raises
        :class:`OSError` (``socket.gaierror``) when the name cannot be resolved; failures are not kept."""
        known = self.known(host, port)
        if known is not None:
            return known
        key = (host, port)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.get_running_loop().create_task(self._look_up(host, port))
            lookup.add_done_callback(functools.partial(self._looked_up, key))
            self._lookups[key] = lookup
        # Shielded: a handshake that gives up (its client left, its deadline passed) must not cancel the
        # lookup the others wait for.
        return await asyncio.shield(lookup)

    def forget(self, host: str, port: int) -> None:
        """Drop what is known of ``host``: none of its addresses took a connection."""
        self._cache.pop((host, port), None)

    async def _look_up(self, host: str, port: int) -> tuple[str, ...]:
        infos = await self._lookup(host, port)
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))  # in order, once each
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
        self._cache[(host, port)] = (self._clock() + self._ttl, addresses)
        return addresses

    def _looked_up(self, key: tuple[str, int], lookup: asyncio.Task[tuple[str, ...]]) -> None:
        # Here and not in _look_up: a lookup cancelled before it ran (the loop shutting down) ends too.
        self._lookups.pop(key, None)
        if not lookup.cancelled():
            # Marks a failure as seen: when every waiter has given up, asyncio would otherwise log it as
            # never retrieved. The waiters that remain get it through the shield.
            lookup.exception()


@functools.lru_cache(maxsize=256)  # a gateway has a handful of upstream hosts
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
