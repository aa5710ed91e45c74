"""Choosing among a route's upstreams: round-robin over the healthy ones, with passive health checks. Pure.

An upstream that refuses a connection is *benched* for a while: it is tried only after every healthy one, so
one dead node costs clients a failed connect attempt once per bench period instead of on every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

# Long enough that a dead node is not hammered, short enough that a restarted one is back within seconds.
DEFAULT_BENCH_SECONDS = 10.0


class UpstreamPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        bench_seconds: float = DEFAULT_BENCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a route needs at least one upstream")
        self.urls = tuple(urls)
        self._bench_seconds = bench_seconds
        self._clock = clock
        self._next = 0
        self._benched_until: dict[str, float] = {}

    def candidates(self) -> list[str]:
        """Every upstream in the order to try them: healthy ones round-robin, benched ones last.

        Benched upstreams stay in the list so that when all are down a request still tries them rather than
        failing without an attempt.
        """
        start = self._next
        self._next = (self._next + 1) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        if not self._benched_until:  # the usual case, on every proxied handshake
            return list(rotated)
        now = self._clock()
        healthy = [url for url in rotated if self._benched_until.get(url, 0.0) <= now]
        benched = sorted(
            (url for url in rotated if self._benched_until.get(url, 0.0) > now),
            key=lambda url: self._benched_until[url],
        )
        return healthy + benched

    def failed(self, url: str) -> None:
        self._benched_until[url] = self._clock() + self._bench_seconds

    def succeeded(self, url: str) -> None:
        self._benched_until.pop(url, None)

    def is_benched(self, url: str) -> bool:
        return self._benched_until.get(url, 0.0) > self._clock()
