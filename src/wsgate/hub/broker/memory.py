"""The single-node broker: history and presence in this process's memory."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from wsgate.hub.broker.base import Broker, Deliver, PresenceEntry, Published, Recovery
from wsgate.hub.history import ChannelLog
from wsgate.hub.protocol import Since

# How often idle channels are looked at; forgetting one only costs its (empty) history and epoch.
SWEEP_INTERVAL = 30.0


class MemoryBroker(Broker):
    def __init__(self, *, history_size: int, history_ttl: float) -> None:
        self._size = history_size
        self._ttl = history_ttl
        self._logs: dict[str, ChannelLog] = {}
        self._listening: set[str] = set()
        self._presence: dict[str, dict[str, PresenceEntry]] = {}
        self._deliver: Deliver | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="wsgate-memory-broker-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def _log(self, channel: str) -> ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = ChannelLog(secrets.token_hex(6), size=self._size, ttl=self._ttl)
        return log

    async def publish(self, channel: str, data: str) -> Published:
        log = self._log(channel)
        offset = log.append(data, time.monotonic())
        if channel in self._listening and self._deliver is not None:
            self._deliver(channel, offset, data)
        return Published(channel, log.epoch, offset)

    async def recover(self, channel: str, since: Since | None) -> Recovery:
        log = self._log(channel)
        if since is None:
            return Recovery(log.epoch, log.last_offset, None)
        missed = log.missed_since(since.epoch, since.offset, time.monotonic())
        return Recovery(log.epoch, log.last_offset, None if missed is None else tuple(missed))

    async def listen(self, channel: str) -> None:
        self._listening.add(channel)

    async def unlisten(self, channel: str) -> None:
        self._listening.discard(channel)

    async def join(self, channel: str, entry: PresenceEntry) -> None:
        self._presence.setdefault(channel, {})[entry.client_id] = entry

    async def leave(self, channel: str, client_id: str) -> None:
        members = self._presence.get(channel)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self._presence[channel]

    async def presence(self, channel: str) -> list[PresenceEntry]:
        return list(self._presence.get(channel, {}).values())

    def sweep(self, now: float) -> None:
        """Trim expired history; forget channels with neither history nor listeners, so memory stays bounded
        by live channels rather than every channel name ever published to."""
        for channel in list(self._logs):
            log = self._logs[channel]
            log.trim(now)
            if log.is_empty() and channel not in self._listening:
                del self._logs[channel]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL, max(self._ttl, 1.0)))
            self.sweep(time.monotonic())
