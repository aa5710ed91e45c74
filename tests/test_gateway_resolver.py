"""wsgate.gateway.resolver: upstream names looked up once per TTL, one lookup at a time, forgotten on failure.

The lookups here are the system's own (``localhost`` from /etc/hosts), counted on their way through."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from tests.conftest import TIMEOUT
from wsgate.gateway.resolver import AddressInfo, Resolver, look_up


class Counted:
    """The system's resolver, counting the lookups it is asked for (``started`` is set at the first);
    ``gate``, when set, holds them back."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def __call__(self, host: str, port: int) -> Sequence[AddressInfo]:
        self.hosts.append(host)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return await look_up(host, port)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_name_is_looked_up_once_and_kept_for_the_ttl() -> None:
    lookups, clock = Counted(), Clock()
    resolver = Resolver(ttl=10.0, clock=clock, lookup=lookups)
    assert await resolver.resolve("localhost", 9000) == ("127.0.0.1",)
    clock.now += 9.9
    assert await resolver.resolve("localhost", 9000) == ("127.0.0.1",)
    assert lookups.hosts == ["localhost"]
    clock.now += 0.2  # past the TTL
    await resolver.resolve("localhost", 9000)
    assert lookups.hosts == ["localhost", "localhost"]


async def test_handshakes_that_need_a_name_at_once_share_one_lookup() -> None:
    lookups = Counted()
    lookups.gate = asyncio.Event()
    resolver = Resolver(lookup=lookups)
    waiting = [asyncio.create_task(resolver.resolve("localhost", 9000)) for _ in range(50)]
    # The lookup starts only after all 50 have asked (they ran first, in the order they were created).
    await asyncio.wait_for(lookups.started.wait(), TIMEOUT)
    lookups.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT)
    assert set(results) == {("127.0.0.1",)}
    assert lookups.hosts == ["localhost"]


async def test_a_handshake_that_gives_up_does_not_cancel_the_lookup_others_wait_for() -> None:
    lookups = Counted()
    lookups.gate = asyncio.Event()
    resolver = Resolver(lookup=lookups)
    leaving = asyncio.create_task(resolver.resolve("localhost", 9000))
    staying = asyncio.create_task(resolver.resolve("localhost", 9000))
    await asyncio.wait_for(lookups.started.wait(), TIMEOUT)  # both wait on the lookup
    leaving.cancel()
    lookups.gate.set()
    assert await asyncio.wait_for(staying, TIMEOUT) == ("127.0.0.1",)
    assert leaving.cancelled()


async def test_ip_literals_are_never_looked_up() -> None:
    lookups = Counted()
    resolver = Resolver(lookup=lookups)
    assert await resolver.resolve("127.0.0.1", 9000) == ("127.0.0.1",)
    assert await resolver.resolve("::1", 9000) == ("::1",)
    assert lookups.hosts == []


async def test_a_forgotten_name_is_looked_up_again() -> None:
    lookups = Counted()
    resolver = Resolver(lookup=lookups)
    await resolver.resolve("localhost", 9000)
    resolver.forget("localhost", 9000)
    await resolver.resolve("localhost", 9000)
    assert lookups.hosts == ["localhost", "localhost"]


async def test_a_name_that_does_not_resolve_fails_every_waiter_and_is_not_kept() -> None:
    lookups = Counted()
    resolver = Resolver(lookup=lookups)
    name = "no-such-upstream.invalid"  # RFC 6761: .invalid never resolves
    results = await asyncio.gather(
        resolver.resolve(name, 9000), resolver.resolve(name, 9000), return_exceptions=True
    )
    assert all(isinstance(result, socket.gaierror) for result in results), results
    with pytest.raises(socket.gaierror):
        await resolver.resolve(name, 9000)
    assert lookups.hosts == [name, name]  # the failure was not cached


async def test_known_answers_without_a_lookup_only_what_is_fresh() -> None:
    lookups, clock = Counted(), Clock()
    resolver = Resolver(ttl=10.0, clock=clock, lookup=lookups)
    assert resolver.known("127.0.0.1", 9000) == ("127.0.0.1",)
    assert resolver.known("localhost", 9000) is None
    await resolver.resolve("localhost", 9000)
    assert resolver.known("localhost", 9000) == ("127.0.0.1",)
    assert resolver.known("localhost", 9001) is None  # kept per name and port
    clock.now += 10.0
    assert resolver.known("localhost", 9000) is None
    assert lookups.hosts == ["localhost"]


def test_a_lookup_cut_short_by_its_loop_ending_does_not_block_the_next() -> None:
    lookups = Counted()
    resolver = Resolver(lookup=lookups)
    loop = asyncio.new_event_loop()
    try:
        waiter = loop.create_task(resolver.resolve("localhost", 9000))
        loop.call_soon(loop.stop)
        loop.run_forever()  # one pass: the lookup is created, and has not run when the loop ends
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    finally:
        loop.close()
    assert waiter.cancelled()
    assert lookups.hosts == []  # cancelled before it ran

    async def resolve() -> tuple[str, ...]:
        return await asyncio.wait_for(resolver.resolve("localhost", 9000), TIMEOUT)

    assert asyncio.run(resolve()) == ("127.0.0.1",)
