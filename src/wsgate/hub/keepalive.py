"""Pings and pong deadlines for every connection of a hub, with one timer for all of them.

Every ``interval`` the keepalive pings each open connection and clears its ``heard`` flag; ``interval / 2``
later it drops the connections that have received nothing since — a pong or any other byte counts. Rounds
are cheap: one timer per hub instead of two ``TimerHandle`` per connection, pings sent in slices so a
hub with 50,000 connections never blocks its loop for long.

The deadline must not kill healthy connections on a starved machine (docs/reliability.md: a hub on
aiohttp's per-connection heartbeat dropped 229 of 500 healthy connections under CPU starvation). When the
event loop runs late, a timer fires in the same iteration as the reads that were waiting — and on uvloop
before them — so the pong that came in time may still be unread. Two things guard against that:

- a connection is judged only after the loop has polled its sockets once more (two ``call_soon`` hops: the
  first lands before the next poll's callbacks, the second after them), so whatever had arrived is read;
- a deadline check that runs late by more than ``LATE`` is postponed by as much as it was late: peers get
  the time the hub itself lost, not less. A new round ends the previous one's judgement unfinished.

A connection whose reading the hub has paused (``reading_paused``) is not judged: its pong may be waiting
behind input the hub is not reading yet.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

# Pings written per loop iteration: a few milliseconds of system calls at most.
SLICE: Final = 1000
# A deadline check this much later than planned (or a tenth of the deadline, if more) means the loop stalled.
LATE: Final = 0.05


class Pingable(Protocol):
    heard: bool
    reading_paused: bool

    @property
    def open(self) -> bool: ...

    def ping(self) -> None: ...

    def lost(self) -> None: ...


class Keepalive:
    """The liveness of a set of connections: :meth:`add` on open, :meth:`discard` on close."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.deadline = interval / 2
        self.connections: set[Pingable] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._round = 0

    def add(self, connection: Pingable) -> None:
        self.connections.add(connection)

    def discard(self, connection: Pingable) -> None:
        self.connections.discard(connection)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        self._round += 1  # rounds under way stop at their next step
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = loop.call_later(self.interval, self._tick)
        self._round += 1
        members = [connection for connection in self.connections if connection.open]
        self._ping(self._round, members, 0)

    def _ping(self, round_: int, members: list[Pingable], start: int) -> None:
        if round_ != self._round:
            return
        loop = self._loop
        assert loop is not None
        end = start + SLICE
        for connection in members[start:end]:
            if connection.open:
                connection.heard = False
                connection.ping()
        if end < len(members):
            loop.call_soon(self._ping, round_, members, end)
        else:
            due = loop.time() + self.deadline
            loop.call_at(due, self._check, round_, members, due)

    def _check(self, round_: int, members: list[Pingable], due: float) -> None:
        if round_ != self._round:
            return
        loop = self._loop
        assert loop is not None
        late = loop.time() - due
        if late > max(LATE, self.deadline / 10):
            # The loop stalled past the deadline: what the peers sent meanwhile may not be read yet, and they
            # may have been as starved as we were. Give them the time we lost.
            loop.call_later(late, self._check, round_, members, loop.time() + late)
            return
        suspects = [c for c in members if c.open and not c.heard and not c.reading_paused]
        if suspects:
            loop.call_soon(self._after_a_poll, round_, suspects)

    def _after_a_poll(self, round_: int, suspects: list[Pingable]) -> None:
        assert self._loop is not None
        self._loop.call_soon(self._verdict, round_, suspects)

    def _verdict(self, round_: int, suspects: list[Pingable]) -> None:
        if round_ != self._round:
            return
        for connection in suspects:
            if connection.open and not connection.heard and not connection.reading_paused:
                connection.lost()
