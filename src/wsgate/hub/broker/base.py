"""What the hub needs from a broker: ordered publishing with offsets, history, recovery and presence.

A broker owns the truth about each channel (its epoch, offsets and history); the hub node owns its local
subscribers. The broker calls the node's ``deliver`` callback once per message for every channel the node
listens to, and the node fans that out to its own connections.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from wsgate.hub.history import Entry
from wsgate.hub.protocol import Since

Deliver = Callable[[str, int, str], None]
"""``deliver(channel, offset, data_json)``: called in offset order for each message on a listened channel."""


@dataclass(frozen=True, slots=True)
class Published:
    channel: str
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to a (re)subscription: the channel's epoch and latest offset, and what the client missed.

    ``missed`` is ``None`` when the history cannot replay everything after ``since`` (so ``recovered`` is
    false), and a possibly empty tuple when it can.
    """

    epoch: str
    offset: int
    missed: tuple[Entry, ...] | None

    @property
    def recovered(self) -> bool:
        return self.missed is not None


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    client_id: str
    subject: str
    connected_at: str
    """ISO 8601, UTC."""


class Broker(abc.ABC):
    """A broker; the hub node calls :meth:`start` once before anything else and :meth:`close` at shutdown."""

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, channel: str, data: str) -> Published:
        """Append to the channel's history and deliver to every listening node."""

    @abc.abstractmethod
    async def recover(self, channel: str, since: Since | None) -> Recovery:
        """The channel's state now, and the messages after ``since`` if history still holds them all."""

    @abc.abstractmethod
    async def listen(self, channel: str) -> None:
        """Start delivering the channel's messages to this node (idempotent per channel)."""

    @abc.abstractmethod
    async def unlisten(self, channel: str) -> None:
        """Stop delivering the channel's messages to this node."""

    @abc.abstractmethod
    async def join(self, channel: str, entry: PresenceEntry) -> None: ...

    @abc.abstractmethod
    async def leave(self, channel: str, client_id: str) -> None: ...

    @abc.abstractmethod
    async def presence(self, channel: str) -> list[PresenceEntry]: ...
