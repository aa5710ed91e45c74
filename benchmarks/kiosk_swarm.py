"""Thousands of kiosks through a gateway: the rig behind ``tests/load/test_ten_thousand.py`` and
``benchmarks/soak.py``.

::

    generator processes ──ws──▶ wsgate gateway ──ws──▶ wsgate hub ◀── POST /api/publish (this process)
    (the connections: /ws?kiosk=ID,  (process: Origin        (process: verifies the minted
     the kiosk page's Origin,         checked, a token        token and the Origin again)
     no credential, like a browser)   minted per connection)

* The hub and the gateway are the real CLI (``python -m wsgate hub|gateway --config <toml>``, on uvloop), each
  with its own configuration file and its secrets in environment variables. Both listen on port 0: the rig
  reads the bound ports from their "listening" log lines, then waits for ``/healthz`` (the gateway's on its
  admin listener). Their RLIMIT_NOFILE is raised before they start (the gateway needs two descriptors per
  connection, more than the default 20,000 here), and they get SIGTERM if this process dies.
* The generators reuse ``hub_fanout``'s client, a raw asyncio protocol on uvloop that builds its frames once
  (:class:`~benchmarks.hub_fanout.Subscriber`, :class:`~benchmarks.hub_fanout.Swarm`) and its process
  management (:class:`~benchmarks.hub_fanout.Generators`). What :class:`Kiosk` adds: it connects as a kiosk
  page does, checks every message it reads (type and the next offset) and keeps the last one, counts the
  hub's pings it answers, and at the end closes with a close handshake (1000), then waits for the server's
  close frame and the end of the TCP connection.
* This process publishes through the hub's HTTP API and reads each server's RSS, open file descriptors and
  CPU time from ``/proc`` (``benchmarks/procstat.py``).

Generator protocol (pipe): the parent sends ``"go"``, the generator opens its connections and answers
``("ready", seconds)``; ``("done", n, t)`` whenever all its connections have read n messages; on ``"close"``
it closes every connection and answers ``("summary", {...})`` (see :func:`run_kiosks`); ``("error", text)``
reports the first failure of a connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

try:
    from benchmarks.hub_fanout import (
        CHANNEL,
        CONNECT_CONCURRENCY,
        OP_CLOSE,
        BenchError,
        Generators,
        Subscriber,
        Swarm,
        client_frame,
        open_all,
        run_loop,
        split,
    )
    from benchmarks.procstat import cpu_seconds, maps_library, rss_bytes
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from hub_fanout import (  # type: ignore[no-redef,import-not-found]
        CHANNEL,
        CONNECT_CONCURRENCY,
        OP_CLOSE,
        BenchError,
        Generators,
        Subscriber,
        Swarm,
        client_frame,
        open_all,
        run_loop,
        split,
    )
    from procstat import cpu_seconds, maps_library, rss_bytes  # type: ignore[no-redef,import-not-found]

__all__ = [
    "CHANNEL",
    "ORIGIN",
    "BenchError",
    "Kiosk",
    "KioskRig",
    "KioskSpec",
    "Swarmed",
    "open_fds",
    "run_loop",
]

HOST = "127.0.0.1"
ORIGIN = "https://kiosk.example.org"  # the kiosk page's Origin: allowed by the gateway and by the hub
KID = "load"
FD_LIMIT = 65536  # what the rig gives each server: 2 per connection at the gateway, for up to ~30,000
FD_MARGIN = 256  # descriptors beyond the connections: listeners, logs, the interpreter's own
STEP_TIMEOUT = 30.0  # a process starting, one connection's handshake + subscribe, a server answering
CLOSE_TIMEOUT = 60.0  # every connection of a generator completing its close handshake
LOG_POLL = 0.02  # how often a starting server's log is read for its "listening" line


# --- the generator side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KioskSpec:
    """One generator process: ``count`` kiosks connecting to the gateway at ``port``."""

    index: int
    port: int
    count: int
    origin: str = ORIGIN


def kiosk_request(port: int, kiosk: str, origin: str) -> bytes:
    """A browser's upgrade request for the kiosk page: its Origin, its kiosk id, and no credential."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws?kiosk={kiosk} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n\r\n"
    ).encode()


class Kiosk(Subscriber):
    """``hub_fanout``'s subscriber as a kiosk: every message checked, the last one kept, a clean close."""

    def __init__(self, swarm: Swarm, request: bytes) -> None:
        super().__init__(swarm, request, validate=True)  # validate: type "message" and the next offset
        self.last = b""
        self.pings = 0
        self.closing = False
        self.close_code: int | None = None  # the server's answer to our close frame
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def text(self, data: bytes, start: int, end: int) -> None:
        before = self.received
        super().text(data, start, end)
        if self.received != before:
            self.last = data[start:end]

    def ping_received(self, payload: bytes) -> None:
        self.pings += 1
        super().ping_received(payload)

    def close(self) -> None:
        """Start the close handshake; the server answers with its close frame and ends the connection."""
        self.closing = True
        if self.transport is None or self.transport.is_closing():
            if not self.gone.done():
                self.gone.set_result(None)
            return
        self.transport.write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))

    def close_received(self, code: int) -> None:
        if self.closing:
            self.close_code = code
            return
        super().close_received(code)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        if not self.closing:
            super().connection_lost(exc)


async def run_kiosks(spec: KioskSpec, conn: Connection) -> None:
    """Open ``spec.count`` kiosk connections, report progress, and on ``"close"`` close them and summarise.

    The summary: ``connections``; ``received`` (how many connections read how many messages, {n: count});
    ``last`` (the distinct last messages read, {text: count}); ``pings`` (answered, min/max/total per
    connection); ``close_codes`` ({code: count}, "none" where the connection ended without the server's close
    frame); ``not_closed`` (still open at the deadline); ``errors`` (connections that failed).
    """
    loop = asyncio.get_running_loop()
    swarm = Swarm(spec.count, conn.send)
    kiosks: list[Kiosk] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(i: int) -> None:
        async with gate:
            request = kiosk_request(spec.port, f"k{spec.index}-{i}", spec.origin)
            _, kiosk = await loop.create_connection(lambda: Kiosk(swarm, request), HOST, spec.port)
            kiosks.append(kiosk)
            async with asyncio.timeout(STEP_TIMEOUT):
                await kiosk.subscribed

    started = time.monotonic()
    failure = await open_all(spec.count, open_one)
    if failure is not None:
        conn.send(("error", f"a kiosk could not connect: {failure.__class__.__name__}: {failure}"))
        for kiosk in kiosks:
            if kiosk.transport is not None:
                kiosk.transport.abort()
        return
    conn.send(("ready", time.monotonic() - started))

    closing: asyncio.Future[None] = loop.create_future()

    def on_command() -> None:  # the only command is "close"; the parent gone (EOF) means the same
        with contextlib.suppress(EOFError, OSError):
            conn.recv()
        if not closing.done():
            closing.set_result(None)

    loop.add_reader(conn.fileno(), on_command)
    await closing
    loop.remove_reader(conn.fileno())

    swarm.stopping = True  # from here on, connections ending are expected
    received = Counter(k.received for k in kiosks)
    last = Counter(k.last for k in kiosks)
    pings = [k.pings for k in kiosks]
    for kiosk in kiosks:
        kiosk.close()
    _, pending = await asyncio.wait([k.gone for k in kiosks], timeout=CLOSE_TIMEOUT)
    codes = Counter(str(k.close_code) if k.close_code is not None else "none" for k in kiosks)
    summary = {
        "connections": len(kiosks),
        "received": dict(received),
        "last": {text.decode(errors="replace"): n for text, n in last.most_common(5)},
        "distinct_last": len(last),
        "pings": {"min": min(pings), "max": max(pings), "total": sum(pings)},
        "close_codes": dict(codes),
        "not_closed": len(pending),
        "errors": swarm.errors,
    }
    for kiosk in kiosks:
        if not kiosk.gone.done() and kiosk.transport is not None:
            kiosk.transport.abort()
    conn.send(("summary", summary))


def kiosk_generator_main(spec: KioskSpec, conn: Connection) -> None:
    """Entry point of a generator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    try:
        if conn.recv() != "go":
            return
    except EOFError:
        return
    run_loop(run_kiosks(spec, conn))


class Swarmed(Generators):
    """The generator processes holding the kiosks, seen from the parent (``hub_fanout.Generators``).

    Generator i connects to gateway ``i % len(gateway_ports)``; there are at least as many generators as
    gateways, and a multiple of their number, so that each gateway gets the same share."""

    def __init__(self, gateway_ports: Sequence[int], connections: int, generators: int) -> None:
        gateways = len(gateway_ports)
        generators = gateways * math.ceil(max(generators, gateways) / gateways)
        specs = [
            KioskSpec(i, gateway_ports[i % gateways], count)
            for i, count in enumerate(split(connections, generators))
        ]
        super().__init__(specs, target=kiosk_generator_main)
        self.connections = connections
        for process in self.processes:
            assert process.pid is not None
            raise_fd_limit(process.pid, max(spec.count for spec in specs) + FD_MARGIN)

    async def connect(self, limit: float) -> float:
        """Start connecting and wait until every kiosk is subscribed; returns the seconds it took."""
        self.attach()
        started = time.monotonic()
        self.go()
        await self.wait(
            lambda: all(r is not None for r in self.ready),
            f"{self.connections} kiosks to connect and subscribe",
            limit=limit,
        )
        return time.monotonic() - started

    def reached(self) -> int:
        """The highest n such that every kiosk has read n messages (0 before the first)."""
        return min((max(done) if done else 0) for done in self.done)

    async def close(self) -> list[dict[str, Any]]:
        """Close every kiosk with a close handshake; the generators' summaries (see :func:`run_kiosks`).

        A failure reported before (``self.error``) does not stop the summaries from being collected."""
        self.summaries = [None] * len(self.conns)
        self.error = None
        self.stop()  # sends "stop", which the generators read as "close"
        await self.wait(
            lambda: all(s is not None for s in self.summaries), "the close summaries", CLOSE_TIMEOUT + 15
        )
        self.detach()
        return [dict(s) for s in self.summaries if s is not None]

    async def shutdown(self) -> None:
        """Let the generator processes end (they end by themselves once closed), killing what lingers, and
        close the pipes."""
        self.stop()
        await asyncio.to_thread(self.join)
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            loop.remove_reader(conn.fileno())  # still attached if the run failed before close()
            conn.close()


# --- the servers ----------------------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (entries of ``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


CAP_SYS_RESOURCE = 24  # capabilities(7): may raise a hard resource limit


def may_raise_hard_limits() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (being root is not enough: a container may drop it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except OSError:
        pass
    return False


def attainable_fd_limit(wanted: int) -> int:
    """The RLIMIT_NOFILE a process started from here can have: ``wanted``, unless the hard limit is lower and
    we may not raise it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= wanted or may_raise_hard_limits():
        return wanted
    return int(hard)


def raise_fd_limit(pid: int, needed: int) -> None:
    """Give a process we started room for ``needed`` descriptors."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (needed, new_hard))
    except (PermissionError, ValueError):
        raise BenchError(
            f"process {pid} needs {needed} file descriptors but RLIMIT_NOFILE is {soft}/{hard} and cannot be "
            f"raised here (no CAP_SYS_RESOURCE): raise the hard limit (ulimit -Hn {needed}) first"
        ) from None


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _server_preexec(fd_limit: int) -> None:
    """In the child before exec: its descriptor limit (``attainable_fd_limit``), and SIGTERM when the
    process that started it dies (so a killed test or soak leaves no server behind)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < fd_limit:
        hard = fd_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Usage:
    """One reading of a server's resources (or a sum over several)."""

    rss: int  # bytes
    fds: int
    cpu: float  # seconds, user + system, since start

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.rss + other.rss, self.fds + other.fds, self.cpu + other.cpu)


class Server:
    """A ``wsgate hub`` or ``wsgate gateway`` process started by the rig; its output goes to a log file."""

    def __init__(
        self, name: str, command: str, workdir: Path, config: str, env: dict[str, str], fd_limit: int
    ) -> None:
        self.name = name
        self.command = command
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / f"{name}.log"
        self.env = env
        self.fd_limit = fd_limit
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wsgate", self.command, "--config", str(self.config_path)],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _server_preexec(self.fd_limit),
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(
                f"the {self.name} exited with status {self.process.returncode}; its log ends:\n"
                f"{self.log_tail()}"
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_for_lines(self, *patterns: str, limit: float = STEP_TIMEOUT) -> list[re.Match[str]]:
        """Wait until the log holds a line matching each pattern (the server says it is listening)."""
        deadline = time.monotonic() + limit
        while True:
            self.check_alive()
            text = self.log_path.read_text(errors="replace")
            found = [re.search(pattern, text) for pattern in patterns]
            if all(match is not None for match in found):
                return [match for match in found if match is not None]
            if time.monotonic() > deadline:
                raise BenchError(f"the {self.name} did not log {patterns} within {limit:.0f}s")
            await asyncio.sleep(LOG_POLL)

    def usage(self) -> Usage:
        return Usage(rss=rss_bytes(self.pid), fds=open_fds(self.pid), cpu=cpu_seconds(self.pid))

    async def stop(self) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL if it has not ended in time; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        return self.process.returncode


HUB_CONFIG = """\
[hub]
listen = "{host}:0"
allowed_origins = ["{origin}"]
broker = "memory://"
limits = {{ max_connections = {max_connections}, ping_interval = "{ping_interval}s" }}

[hub.signing]
keys = {{ "{kid}" = "${{WSGATE_LOAD_SIGNING_KEY}}" }}

[hub.publish_api]
tokens = ["${{WSGATE_LOAD_PUBLISH_TOKEN}}"]
"""

GATEWAY_CONFIG = """\
[gateway]
listen = "{host}:0"
admin_listen = "{host}:0"
public_origins = ["{origin}"]
limits = {{ max_connections = {max_connections} }}

[[gateway.routes]]
path = "/ws"
upstream = "ws://{host}:{hub_port}/ws"
websocket = true
change_origin = true
mint = {{ key = "${{WSGATE_LOAD_SIGNING_KEY}}", kid = "{kid}", ttl = "60s", subject = "query:kiosk", \
subscribe = ["{channel}", "kiosk:{{subject}}"] }}
"""


def prometheus_value(text: str, name: str) -> float:
    """The sum of a metric's samples (all labels) in a Prometheus text page; 0 if absent."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


class KioskRig:
    """The hub and the gateway tier, configured for ``connections`` kiosks, and what this process asks of
    them.

    The gateway tier is one process wherever the file limit allows it: a tunnel holds two descriptors
    there. Where the hard RLIMIT_NOFILE is too low for 2 × ``connections`` and cannot be raised (a container
    without CAP_SYS_RESOURCE, even as root), it is as few processes as the limit allows, each with an equal
    share (``gateways`` chooses the number instead).
    """

    def __init__(
        self, workdir: Path, connections: int, *, ping_interval: float = 20.0, gateways: int | None = None
    ) -> None:
        self.workdir = workdir
        self.connections = connections
        self.ping_interval = ping_interval
        self.signing_key = secrets.token_urlsafe(32)
        self.publish_token = secrets.token_urlsafe(32)
        self.fd_limit = attainable_fd_limit(max(FD_LIMIT, 2 * connections + FD_MARGIN))
        if connections + FD_MARGIN > self.fd_limit:
            raise BenchError(
                f"the hub needs {connections + FD_MARGIN} file descriptors for {connections} connections; "
                f"the hard RLIMIT_NOFILE is {self.fd_limit} and cannot be raised here: raise it first"
            )
        self.gateway_count = gateways or math.ceil(connections / ((self.fd_limit - FD_MARGIN) // 2))
        self.hub: Server | None = None
        self.gateways: list[Server] = []
        self.hub_url = ""
        self.gateway_ports: list[int] = []
        self.admin_urls: dict[str, str] = {}
        self.ready_fds: dict[str, int] = {}  # each server's descriptors when it said it was listening
        # force_close: no keep-alive connection of ours stays open in a server and counts as its descriptor.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT),
        )

    @property
    def servers(self) -> list[Server]:
        return ([self.hub] if self.hub is not None else []) + self.gateways

    def describe(self) -> str:
        tier = "one gateway process" if self.gateway_count == 1 else f"{self.gateway_count} gateway processes"
        why = (
            ""
            if self.gateway_count == 1
            else f" (RLIMIT_NOFILE {self.fd_limit} per process, 2 descriptors per tunnel)"
        )
        return f"hub process ← {tier}{why}, fd limit {self.fd_limit}"

    async def start(self) -> None:
        limit = self.connections + FD_MARGIN
        self.hub = Server(
            "hub",
            "hub",
            self.workdir,
            HUB_CONFIG.format(
                host=HOST, origin=ORIGIN, max_connections=limit, ping_interval=self.ping_interval, kid=KID
            ),
            {"WSGATE_LOAD_SIGNING_KEY": self.signing_key, "WSGATE_LOAD_PUBLISH_TOKEN": self.publish_token},
            self.fd_limit,
        )
        self.hub.start()
        (listening,) = await self.hub.wait_for_lines(r"hub listening on (http://127\.0\.0\.1:(\d+))")
        self.hub_url = listening[1]
        self.ready_fds["hub"] = open_fds(self.hub.pid)
        await self.wait_healthy(self.hub, self.hub_url)

        config = GATEWAY_CONFIG.format(
            host=HOST, origin=ORIGIN, max_connections=limit, hub_port=listening[2], kid=KID, channel=CHANNEL
        )
        for i in range(self.gateway_count):
            name = "gateway" if self.gateway_count == 1 else f"gateway-{i + 1}"
            gateway = Server(
                name,
                "gateway",
                self.workdir,
                config,
                {"WSGATE_LOAD_SIGNING_KEY": self.signing_key},
                self.fd_limit,
            )
            self.gateways.append(gateway)
            gateway.start()
        for gateway in self.gateways:
            main, admin = await gateway.wait_for_lines(
                r"gateway listening on http://127\.0\.0\.1:(\d+)",
                r"gateway admin \(/metrics, /healthz\) on (http://127\.0\.0\.1:\d+)",
            )
            self.gateway_ports.append(int(main[1]))
            self.admin_urls[gateway.name] = admin[1]
            self.ready_fds[gateway.name] = open_fds(gateway.pid)
            await self.wait_healthy(gateway, admin[1])

    def url_of(self, server: Server) -> str:
        return self.hub_url if server is self.hub else self.admin_urls[server.name]

    async def wait_healthy(self, server: Server, url: str) -> None:
        """Poll ``/healthz`` until it answers 200."""
        deadline = time.monotonic() + STEP_TIMEOUT
        status: object = "no answer"
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                async with self.http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
                    status = response.status
            except aiohttp.ClientError as exc:
                status = exc.__class__.__name__
            await asyncio.sleep(LOG_POLL)
        raise BenchError(f"the {server.name} did not answer /healthz within {STEP_TIMEOUT:.0f}s ({status})")

    async def healthy(self) -> bool:
        """Every server alive and answering ``/healthz`` with 200."""
        for server in self.servers:
            if not server.alive():
                return False
            async with self.http.get(self.url_of(server) + "/healthz") as response:
                if response.status != 200:
                    return False
        return True

    def uvloop(self) -> dict[str, bool]:
        """Whether each server really runs on uvloop (its library is mapped into the process)."""
        return {server.name: maps_library(server.pid, "uvloop/loop") for server in self.servers}

    async def publish(self, data: Any) -> int:
        """Publish on the kiosks' channel through the hub's HTTP API; the message's offset."""
        async with self.http.post(
            self.hub_url + "/api/publish",
            data=json.dumps({"channel": CHANNEL, "data": data}),
            headers={"Authorization": f"Bearer {self.publish_token}", "Content-Type": "application/json"},
        ) as response:
            if response.status != 200:
                raise BenchError(f"publish answered {response.status}: {(await response.text())[:200]}")
            return int((await response.json())["offset"])

    async def hub_metric(self, name: str) -> float:
        assert self.hub is not None
        async with self.http.get(self.hub_url + "/metrics") as response:
            return prometheus_value(await response.text(), name)

    async def gateway_metric(self, name: str) -> float:
        """A metric summed over the gateway processes."""
        total = 0.0
        for url in self.admin_urls.values():
            async with self.http.get(url + "/metrics") as response:
                total += prometheus_value(await response.text(), name)
        return total

    def usage(self) -> dict[str, Usage]:
        """Each server's resources, by name."""
        return {server.name: server.usage() for server in self.servers}

    async def idle_usage(self) -> dict[str, Usage]:
        """Each server's resources once it holds no connection of ours: the descriptors it had when it said
        it was listening (our ``/healthz`` requests have ended), for a baseline."""
        counts = await self.wait_fds(self.ready_fds, STEP_TIMEOUT)
        if any(counts[name] != ready for name, ready in self.ready_fds.items()):
            raise BenchError(f"idle servers hold {counts} descriptors, {self.ready_fds} when they started")
        return self.usage()

    def tiers(self, usage: dict[str, Usage]) -> dict[str, Usage]:
        """``usage`` as two tiers, ``hub`` and ``gateway`` (the gateway processes summed)."""
        gateways = [usage[server.name] for server in self.gateways]
        total = gateways[0]
        for more in gateways[1:]:
            total = total + more
        return {"hub": usage["hub"], "gateway": total}

    async def wait_fds(self, at_most: dict[str, int], limit: float) -> dict[str, int]:
        """Wait (at most ``limit`` seconds) until each server holds at most ``at_most[name]`` descriptors;
        the last counts read."""
        deadline = time.monotonic() + limit
        while True:
            counts = {server.name: open_fds(server.pid) for server in self.servers}
            if all(counts[name] <= most for name, most in at_most.items()):
                return counts
            if time.monotonic() > deadline:
                return counts
            for server in self.servers:
                server.check_alive()
            await asyncio.sleep(0.1)

    async def stop(self) -> dict[str, int | None]:
        """Stop the gateways, then the hub (SIGTERM); their exit statuses."""
        statuses: dict[str, int | None] = {}
        for server in reversed(self.servers):
            statuses[server.name] = await server.stop()
        await self.http.close()
        return statuses


def expected_message(offset: int, data: Any) -> dict[str, Any]:
    """The ``message`` every kiosk must read for a publish of ``data`` that got ``offset``."""
    return {"type": "message", "channel": CHANNEL, "offset": offset, "data": data}


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generators' close summaries as one."""
    received: Counter[int] = Counter()
    last: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for summary in summaries:
        received.update({int(n): count for n, count in summary["received"].items()})
        last.update(summary["last"])
        codes.update(summary["close_codes"])
    return {
        "connections": sum(s["connections"] for s in summaries),
        "received": dict(sorted(received.items())),
        "last": dict(last),
        "distinct_last": max((s["distinct_last"] for s in summaries), default=0),
        "pings": {
            "min": min((s["pings"]["min"] for s in summaries), default=0),
            "max": max((s["pings"]["max"] for s in summaries), default=0),
            "total": sum(s["pings"]["total"] for s in summaries),
        },
        "close_codes": dict(codes),
        "not_closed": sum(s["not_closed"] for s in summaries),
        "errors": sum(s["errors"] for s in summaries),
    }
