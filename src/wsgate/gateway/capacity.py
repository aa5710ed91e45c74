"""How many connections the gateway serves at once, shared by its HTTP requests and its WebSocket tunnels."""

from __future__ import annotations

from collections.abc import Mapping


class ConnectionSlots:
    """``limits.max_connections`` slots; none are given out while the gateway drains."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.draining = False

    def refusal(self) -> tuple[int, str, Mapping[str, str]] | None:
        """The answer for a new request when no slot is free (status, message, headers), else ``None``."""
        if self.draining:
            return 503, "the gateway is shutting down", {}
        if self.active >= self.limit:
            return 503, "too many connections; retry later", {"Retry-After": "5"}
        return None

    def acquire(self) -> None:
        self.active += 1

    def release(self) -> None:
        self.active -= 1
