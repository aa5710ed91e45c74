"""Brokers: where channel history and presence live (memory for one node, Redis for many)."""

from __future__ import annotations

from wsgate.errors import ConfigError
from wsgate.hub.broker.base import Broker
from wsgate.hub.broker.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "create_broker"]


def create_broker(url: str, *, history_size: int, history_ttl: float) -> Broker:
    """The broker a ``hub.broker`` URL names."""
    if url.startswith("memory://"):
        return MemoryBroker(history_size=history_size, history_ttl=history_ttl)
    raise ConfigError("hub.broker", f"unsupported broker {url.split(':', 1)[0]!r}", 'use "memory://"')
