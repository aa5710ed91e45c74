"""Helpers for the fault tests: real `wsgate` processes (started, signalled and killed by their own PID only),
gateways in front of hubs, and collectors that record what a client's subscription delivered."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tests.conftest import KEY_NEW, TIMEOUT
from wsgate.client import Backoff, HubClient, HubEvent, Message, Resync, Subscription, connect
from wsgate.config import Address, GatewayConfig, GatewayLimits, MintConfig, Route
from wsgate.secret import Secret

ORIGIN = "https://kiosk.example.org"
KID = "2026-11"
# Behind the gateway a client holds no secret; the client library still wants a token, which the gateway
# strips (it never forwards a client's Authorization to a WebSocket upstream).
NO_SECRET = "nothing-secret-behind-the-gateway"
# Reconnect quickly: these tests are about what is recovered, not about the shape of the backoff.
FAST = Backoff(base=0.05, cap=0.25)


class WsgateProcess:
    """A `python -m wsgate …` child. Its stderr is read continuously (a full pipe would block its logging)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._eof = False
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._drain())

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _drain(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode(errors="replace"))
            self._new.set()
        self._eof = True
        self._new.set()

    async def wait_for_line(self, pattern: str, *, start: int = 0) -> re.Match[str]:
        """The first log line from index ``start`` on that matches (a readiness signal, never a sleep)."""
        index = start
        async with asyncio.timeout(TIMEOUT):
            while True:
                while index < len(self.lines):
                    match = re.search(pattern, self.lines[index])
                    if match:
                        return match
                    index += 1
                if self._eof:
                    raise AssertionError(f"process ended before logging {pattern!r}:\n{self.log()}")
                self._new.clear()
                await self._new.wait()

    async def wait(self, timeout: float = TIMEOUT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        with suppress(TimeoutError):
            await asyncio.wait_for(self._reader, TIMEOUT)
        return code

    def log(self) -> str:
        return "".join(self.lines)


@asynccontextmanager
async def wsgate_process(*args: str, env: dict[str, str], cwd: Path) -> AsyncIterator[WsgateProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgate", *args,
        env={**os.environ, **env}, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    process = WsgateProcess(proc)
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()  # this child only, by its own PID
            await proc.wait()
        process._reader.cancel()
        with suppress(asyncio.CancelledError):
            await process._reader


def ws_route(upstream: str) -> Route:
    """The deployed shape: /ws with a token minted per connection from `?kiosk=` with the hub's key."""
    mint = MintConfig(
        key=Secret(KEY_NEW), kid=KID, ttl=60.0, subject="query:kiosk", subscribe=("kiosks", "kiosk:{subject}")
    )
    return Route(
        path="/ws",
        upstream=(upstream,),
        websocket=True,
        change_origin=True,
        mint=mint,
        headers=MappingProxyType({}),
    )


def gateway_config(*routes: Route, **limits: Any) -> GatewayConfig:
    ordered = tuple(sorted(routes, key=lambda route: len(route.path), reverse=True))
    return GatewayConfig(
        listen=Address("127.0.0.1", 0),
        public_origins=(ORIGIN,),
        routes=ordered,
        limits=GatewayLimits(**limits),
    )


def gateway_client(gateway_ws: str, kiosk: str) -> HubClient:
    """wsgate's Python client behind the gateway, as a kiosk: an Origin, no secret."""
    return connect(f"{gateway_ws}/ws?kiosk={kiosk}", token=NO_SECRET, origin=ORIGIN, backoff=FAST)


class Collector:
    """Records every event a subscription yields, in a task of its own."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.events: list[HubEvent] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.subscription:
            self.events.append(event)

    def messages(self) -> list[Message]:
        return [event for event in self.events if isinstance(event, Message)]

    def resyncs(self) -> list[Resync]:
        return [event for event in self.events if isinstance(event, Resync)]

    def offsets(self) -> list[int]:
        return [message.offset for message in self.messages()]

    def last_offset(self) -> int:
        messages = self.messages()
        return messages[-1].offset if messages else 0

    async def stop(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
