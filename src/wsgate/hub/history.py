"""Per-channel message history: the last N messages within a TTL, for lossless recovery on reconnect. Pure.

Offsets rise by one per message within an epoch. The epoch names one unbroken history: it is new whenever the
history is created afresh (process start, channel forgotten), so a client holding an offset from another epoch
knows its offset means nothing here and resyncs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    published_at: float
    data: str


class ChannelLog:
    """History of one channel. Time is passed in (``now``) so behaviour is deterministic under test."""

    __slots__ = ("_entries", "_ttl", "epoch", "last_offset")

    def __init__(self, epoch: str, *, size: int, ttl: float) -> None:
        self.epoch = epoch
        self.last_offset = 0
        self._ttl = ttl
        self._entries: deque[Entry] = deque(maxlen=size)

    def append(self, data: str, now: float) -> int:
        """Record a message and return its offset."""
        self.last_offset += 1
        if self._entries.maxlen:
            self._entries.append(Entry(self.last_offset, now, data))
        return self.last_offset

    def trim(self, now: float) -> None:
        """Drop entries older than the TTL."""
        horizon = now - self._ttl
        entries = self._entries
        while entries and entries[0].published_at <= horizon:
            entries.popleft()

    def is_empty(self) -> bool:
        return not self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def missed_since(self, epoch: str, offset: int, now: float) -> list[Entry] | None:
        """The entries after ``offset`` if history still holds every one of them, else ``None``.

        ``None`` means the caller cannot recover losslessly: another epoch, an offset from the future, or
        messages already trimmed by size or age.
        """
        if epoch != self.epoch or offset > self.last_offset:
            return None
        if offset == self.last_offset:
            return []
        self.trim(now)
        entries = self._entries
        if not entries or entries[0].offset > offset + 1:
            return None
        # Entries are contiguous by offset, so the first missed one sits at a computable index.
        start = offset + 1 - entries[0].offset
        return [entries[i] for i in range(start, len(entries))]
