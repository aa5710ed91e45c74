"""Hub fan-out benchmark: the wsgate hub against a Node ``ws`` broadcast server and a python-websockets
``broadcast()`` server, in alternation, over loopback.

Targets (``--targets``; each started afresh for its turn, pinned to the first CPU, stopped after it):

* ``wsgate``: the real CLI, ``wsgate hub --config <tmp toml>`` (uvloop), memory broker, two static tokens;
* ``node-ws``: ``benchmarks/peers/ws_broadcast.js`` on the pinned ``ws``, ``client.send()`` in a loop;
* ``node-ws-preframed``: the same server writing one pre-built frame to every socket (not run by default);
* ``py-websockets``: ``benchmarks/peers/py_broadcast.py``, ``websockets``' own ``broadcast()``, on uvloop.

Every target accepts the same handshake (``Authorization: Bearer <token>``, 401 otherwise) and the same two
commands (``subscribe``, answered with the channel's offset; ``publish``, fanned out as a ``message`` with the
next offset), so the clients are the same for all. The load runs on the other CPUs:

* ``--generators`` subscriber processes hold the N connections, counting frames by their headers (the first
  connection of each checks every message's offset): by default ``peers/ws_subscribers.c``, one epoll loop
  in C (``--client c``, compiled on first use), or raw asyncio protocols on uvloop (``--client python``);
* this process publishes over one more WebSocket, the *control connection*, which subscribes after all N
  subscribers. Every target writes a message to its subscribers in subscription order, so the control
  connection reads it when the target has written it to everybody.

Scenarios, per N in ``--subscribers`` (1,000 and 10,000), target after target, for ``--rounds`` rounds:

1. fan-out latency: sequential publishes (20 to warm up, then ``--latency-publishes``), each until the LAST
   subscriber has read it → p50/p99/max, from the moment the publish was sent (CLOCK_MONOTONIC, one clock
   for every process);
2. a burst of publishes, 8 in flight (``--burst-deliveries`` deliveries in all) → deliveries/s and the
   target's CPU time per delivery (utime + stime from ``/proc/<pid>/stat`` over the burst);
3. idle memory (``--idle-connections``): the target's RSS before and after that many subscribed connections.

Every window records what the target, the load and the rest of the machine did with their CPUs, and says
whether the target was the limit (``verdict``). Results go to ``benchmarks/results/hub_fanout-<time>.json``;
``benchmarks/report.py`` turns them into the tables and plots of ``docs/performance.md``.

Usage: ``benchmarks/setup-peers && .venv/bin/python benchmarks/hub_fanout.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

try:
    from benchmarks.procstat import (
        build_c,
        cpu_seconds,
        cpu_times,
        fd_count,
        machine_busy,
        machine_description,
        maps_library,
        meminfo_bytes,
        rss_bytes,
        run_delay,
        source_version,
        write_calls,
    )
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from procstat import (  # type: ignore[no-redef,import-not-found]
        build_c,
        cpu_seconds,
        cpu_times,
        fd_count,
        machine_busy,
        machine_description,
        maps_library,
        meminfo_bytes,
        rss_bytes,
        run_delay,
        source_version,
        write_calls,
    )

HOST = "127.0.0.1"
CHANNEL = "bench"
EMPTY_CHANNEL = "bench-empty"  # only the control connection listens: a publish's cost without fan-out
BENCH_DIR = Path(__file__).resolve().parent
PEERS = BENCH_DIR / "peers"
RESULTS_DIR = BENCH_DIR / "results"

# The first ~15 messages on a fresh connection cost the kernel about twice as much (docs/performance.md).
WARMUP_PUBLISHES = 20
LATENCY_PUBLISHES = 50
EMPTY_PUBLISHES = 1000  # ~0.05-0.1 s of target CPU: enough ticks for a rough per-publish figure
BURST_IN_FLIGHT = 8  # publishes sent and not yet read back, so the target never waits for the publisher
BURST_DELIVERIES = 300_000  # per burst: 300 publishes to 1,000 subscribers, 30 to 10,000
CONNECT_CONCURRENCY = 50  # handshakes in flight per generator; far below every target's listen backlog
IDLE_SETTLE = 1.0  # seconds between the last subscription and the idle memory reading
STEP_TIMEOUT = 15.0  # any one awaited step (a publish reaching everybody, a handshake, the target starting)
TIME_LIMIT = 300.0  # the whole run: `make bench` stays under 15 minutes with the gateway's 570 s cap
FD_MARGIN = 256  # descriptors beyond one per connection: listeners, pipes, logs, the interpreter's own

# A window where the rest of the machine (processes this run did not start) used this many CPUs or more is
# "disturbed": another program competed. An idle machine stays within about ±0.1.
DISTURBED_CPUS = 0.2


class BenchError(Exception):
    """The benchmark could not run or its result would be wrong; the message says why."""


def payload(seq: int) -> dict[str, Any]:
    """A kiosk-sized event: the frame each subscriber receives is about 140 bytes."""
    return {"action": "reload", "seq": seq, "reason": "benchmark", "at": "2026-01-01T00:00:00Z"}


# --- subscriber side (generator processes) -------------------------------------------------------------


def client_frame(opcode: int, body: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3) with a body under 64 KiB (our commands, pongs, publishes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(body))
    if len(body) < 126:
        header = bytes((0x80 | opcode, 0x80 | len(body)))
    else:
        assert len(body) < 1 << 16
        header = bytes((0x80 | opcode, 0x80 | 126)) + len(body).to_bytes(2, "big")
    return header + mask + masked


MESSAGE_PREFIX = b'{"type":"message"'
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class Swarm:
    """The subscribers of one generator process and their common progress."""

    def __init__(self, count: int, report: Callable[[tuple[Any, ...]], None]) -> None:
        self.count = count
        self.report = report
        # reached[n] = how many subscribers have read at least n messages; all of them → report n.
        self.reached = [0] * 1024
        self.errors = 0
        self.stopping = False

    def received(self, n: int) -> None:
        reached = self.reached
        if n >= len(reached):
            reached.extend([0] * len(reached))
        reached[n] += 1
        if reached[n] == self.count:
            self.report(("done", n, time.monotonic()))

    def fail(self, message: str) -> None:
        if self.stopping:
            return
        self.errors += 1
        if self.errors == 1:  # the first says what went wrong; the rest are counted in the summary
            self.report(("error", message))


class Subscriber(asyncio.Protocol):
    """One WebSocket client: upgrade, subscribe, then count message frames as cheaply as possible.

    Frames from the server are unmasked and, for these servers, never fragmented. One subscriber per process
    (``validate``) also decodes every message and checks its offset, so a wrong or missing message is noticed
    without making every subscriber pay for JSON decoding.
    """

    def __init__(self, swarm: Swarm, request: bytes, validate: bool) -> None:
        self.swarm = swarm
        self.request = request
        self.validate = validate
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.subscribed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.base_offset = -1
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost after {self.received} messages")

    def fail(self, message: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(BenchError(message))
        else:
            self.swarm.fail(message)

    def on_upgraded(self) -> None:
        """The handshake succeeded: subscribe to the benchmark's channel."""
        assert self.transport is not None
        self.transport.write(
            client_frame(OP_TEXT, json.dumps({"type": "subscribe", "channel": CHANNEL}).encode())
        )

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            status = data[: data.find(b"\r\n")].decode("latin-1")
            if not status.startswith("HTTP/1.1 101"):
                self.fail(f"handshake refused: {status}")
                return
            self.upgraded = True
            self.on_upgraded()
            data = data[end + 4 :]
        pos, size = 0, len(data)
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode == OP_TEXT:
                self.text(data, start, end)
            elif opcode == OP_PING:
                self.ping_received(data[start:end])
            elif opcode == OP_CLOSE:
                self.close_received(int.from_bytes(data[start : start + 2], "big") if length >= 2 else 1005)
                return
            pos = end
        if pos < size:
            self.buffer = data[pos:]

    def ping_received(self, payload: bytes) -> None:
        """The server's heartbeat: answer it, or it closes the connection."""
        assert self.transport is not None
        self.transport.write(client_frame(OP_PONG, payload))

    def close_received(self, code: int) -> None:
        """The server's close frame: a failure here (a subclass that closes on purpose overrides this)."""
        self.fail(f"the server closed the connection with code {code}")

    def text(self, data: bytes, start: int, end: int) -> None:
        if self.base_offset < 0:
            answer = json.loads(data[start:end])
            if answer.get("type") != "subscribed":
                self.fail(f"expected subscribed, got {answer.get('type')}: {answer.get('message', '')}")
                return
            self.base_offset = int(answer["offset"])
            self.subscribed.set_result(self.base_offset)
            return
        if self.validate:
            message = json.loads(data[start:end])
            expected = self.base_offset + self.received + 1
            if message.get("type") != "message" or message.get("offset") != expected:
                self.fail(f"expected message with offset {expected}, got {data[start:end][:200]!r}")
                return
        elif not data.startswith(MESSAGE_PREFIX, start):
            self.fail(f"unexpected frame {data[start:end][:200]!r}")
            return
        self.received += 1
        self.swarm.received(self.received)


@dataclass(frozen=True)
class GeneratorSpec:
    index: int
    port: int
    token: str
    count: int


def upgrade_request(port: int, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


async def open_all(count: int, open_one: Callable[[int], Awaitable[None]]) -> BaseException | None:
    """Run ``open_one(0 … count-1)`` concurrently; the first connection failure, or None when all opened."""
    failure: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for i in range(count):
                group.create_task(open_one(i))
    except* (OSError, BenchError, TimeoutError) as failed:
        failure = failed.exceptions[0]
    return failure


async def generate(spec: GeneratorSpec, conn: Connection) -> None:
    """Open ``spec.count`` subscriptions, report progress until told to stop, then summarise."""
    loop = asyncio.get_running_loop()
    swarm = Swarm(spec.count, conn.send)
    subscribers: list[Subscriber] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(i: int) -> None:
        async with gate:
            request = upgrade_request(spec.port, spec.token)
            _, subscriber = await loop.create_connection(
                lambda: Subscriber(swarm, request, validate=i == 0), HOST, spec.port
            )
            subscribers.append(subscriber)
            async with asyncio.timeout(STEP_TIMEOUT):
                await subscriber.subscribed

    started = time.monotonic()
    failure = await open_all(spec.count, open_one)
    if failure is not None:
        conn.send(("error", f"subscriber could not connect: {failure.__class__.__name__}: {failure}"))
        return
    conn.send(("ready", time.monotonic() - started))

    stop: asyncio.Future[None] = loop.create_future()

    def on_command() -> None:  # the only command is "stop"
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(conn.fileno(), on_command)
    await stop
    loop.remove_reader(conn.fileno())
    swarm.stopping = True
    counts = [s.received for s in subscribers]
    conn.send(("summary", {"min": min(counts), "max": max(counts), "errors": swarm.errors}))
    for subscriber in subscribers:
        if subscriber.transport is not None:
            subscriber.transport.abort()


def generator_main(spec: GeneratorSpec, conn: Connection) -> None:
    """Entry point of a generator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    if conn.recv() != "go":  # sent once the target answers
        return
    run_loop(generate(spec, conn))


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# --- the control connection (this process) ---------------------------------------------------------------


class ControlConnection(Subscriber):
    """The publisher's WebSocket. It publishes, and it subscribes to the benchmark's channel after all the
    generators' subscribers: every target writes a message to its subscribers in subscription order, so this
    connection reads it once the target has written it to everybody. That is also how the burst keeps a
    fixed number of publishes in flight."""

    def __init__(self, request: bytes) -> None:
        super().__init__(Swarm(1, lambda _: None), request, validate=False)
        self.answers: dict[str, asyncio.Future[int]] = {}
        self.read_at: dict[str, dict[int, float]] = {}  # channel → offset → when this process read it
        self.arrived = asyncio.Event()
        self.error: str | None = None

    def on_upgraded(self) -> None:
        self.subscribed.set_result(0)  # here: "the handshake succeeded"; subscriptions come later

    def fail(self, message: str) -> None:
        super().fail(message)
        if self.error is None:
            self.error = f"control connection: {message}"
        for answer in self.answers.values():
            if not answer.done():
                answer.set_exception(BenchError(self.error))
        self.arrived.set()

    def send(self, command: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(OP_TEXT, json.dumps(command, separators=(",", ":")).encode()))

    async def subscribe(self, channel: str) -> int:
        """Subscribe to ``channel``; its current offset."""
        answer = self.answers[channel] = asyncio.get_running_loop().create_future()
        self.send({"type": "subscribe", "channel": channel})
        async with asyncio.timeout(STEP_TIMEOUT):
            return await answer

    def publish(self, channel: str, seq: int) -> None:
        self.send({"type": "publish", "channel": channel, "data": payload(seq)})

    def text(self, data: bytes, start: int, end: int) -> None:
        now = time.monotonic()
        message = json.loads(data[start:end])
        kind, channel = message.get("type"), message.get("channel")
        if kind == "message":
            self.read_at.setdefault(channel, {})[int(message["offset"])] = now
            self.arrived.set()
        elif kind == "subscribed" and channel in self.answers:
            self.answers[channel].set_result(int(message["offset"]))
        else:
            self.fail(f"unexpected {data[start:end][:200]!r}")

    async def read(self, channel: str, offset: int, limit: float = STEP_TIMEOUT) -> float:
        """Wait until this connection has read message ``offset`` of ``channel``; when it did."""
        seen = self.read_at.setdefault(channel, {})
        try:
            async with asyncio.timeout(limit):
                while offset not in seen:
                    if self.error is not None:
                        raise BenchError(self.error)
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise BenchError(f"timed out waiting for message {offset} of {channel}") from None
        return seen[offset]

    async def burst(self, channel: str, base: int, first: int, count: int, limit: float) -> float:
        """Publish ``first … first+count-1`` with BURST_IN_FLIGHT not yet read back; when the last was."""
        for seq in range(first, first + count):
            if seq - BURST_IN_FLIGHT >= first:
                await self.read(channel, base + seq - BURST_IN_FLIGHT, limit)
            self.publish(channel, seq)
        return await self.read(channel, base + first + count - 1, limit)


async def open_control(port: int, token: str) -> ControlConnection:
    loop = asyncio.get_running_loop()
    _, control = await loop.create_connection(
        lambda: ControlConnection(upgrade_request(port, token)), HOST, port
    )
    async with asyncio.timeout(STEP_TIMEOUT):
        await control.subscribed
    return control


# --- the targets -----------------------------------------------------------------------------------------


WSGATE_CONFIG = """\
[hub]
listen = "{host}:{port}"
allowed_origins = []
allow_missing_origin = true
broker = "memory://"
history = {{ size = 100, ttl = "10m" }}
limits = {{ max_connections = {max_connections} }}

[[hub.tokens]]
name = "subscriber"
token = "${{WSGATE_BENCH_TOKEN}}"
subscribe = ["{channel}"]
publish = []

[[hub.tokens]]
name = "publisher"
token = "${{WSGATE_BENCH_PUBLISH_TOKEN}}"
subscribe = ["{channel}", "{empty}"]
publish = ["{channel}", "{empty}"]
"""


def wsgate_command() -> list[str]:
    script = Path(sys.executable).with_name("wsgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsgate"]


@dataclass(frozen=True)
class Launch:
    """How to start a target: its command line and its secrets (in the environment, never in argv)."""

    command: list[str]
    env: dict[str, str]


def launch_wsgate(workdir: Path, port: int, sub: str, pub: str, max_connections: int) -> Launch:
    config = workdir / "hub.toml"
    config.write_text(
        WSGATE_CONFIG.format(
            host=HOST, port=port, max_connections=max_connections, channel=CHANNEL, empty=EMPTY_CHANNEL
        )
    )
    env = {"WSGATE_BENCH_TOKEN": sub, "WSGATE_BENCH_PUBLISH_TOKEN": pub}
    return Launch([*wsgate_command(), "hub", "--config", str(config)], env)


def launch_node(mode: str) -> Callable[[Path, int, str, str, int], Launch]:
    def launch(workdir: Path, port: int, sub: str, pub: str, max_connections: int) -> Launch:
        command = ["node", str(PEERS / "ws_broadcast.js"), str(port), mode]
        return Launch(command, {"SUB_TOKEN": sub, "PUB_TOKEN": pub})

    return launch


def launch_python(workdir: Path, port: int, sub: str, pub: str, max_connections: int) -> Launch:
    command = [sys.executable, str(PEERS / "py_broadcast.py"), str(port)]
    return Launch(command, {"SUB_TOKEN": sub, "PUB_TOKEN": pub})


TARGETS: dict[str, Callable[[Path, int, str, str, int], Launch]] = {
    "wsgate": launch_wsgate,
    "node-ws": launch_node("send"),
    "node-ws-preframed": launch_node("preframed"),
    "py-websockets": launch_python,
}
DEFAULT_TARGETS = ["wsgate", "node-ws", "py-websockets"]


class TargetProcess:
    """One target server for one turn: started pinned, checked, measured through /proc, stopped.

    Only this process is ever signalled, and only through its own Popen handle."""

    def __init__(
        self, name: str, workdir: Path, max_connections: int, extra_env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.publish_token = secrets.token_urlsafe(24)
        self.launch = TARGETS[name](workdir, self.port, self.token, self.publish_token, max_connections)
        self.launch.env.update(extra_env or {})
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, cpus: list[int] | None) -> None:
        """Start it pinned to ``cpus`` from its first instruction (node's helper threads inherit it)."""
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.launch.command,
                env=dict(os.environ, **self.launch.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin,  # safe: this process starts no threads
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")

    async def wait_ready(self) -> None:
        """Wait until it refuses a handshake with a wrong token (401): it is serving, and it checks tokens."""
        deadline = time.monotonic() + STEP_TIMEOUT
        status = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status = await handshake_status(self.port, "wrong-" + self.token)
            except OSError as exc:
                status = exc.__class__.__name__
            else:
                if status.startswith("HTTP/1.1 401"):
                    return
                raise BenchError(f"{self.name} answered a wrong token with {status!r}, not 401")
            await asyncio.sleep(0.05)
        raise BenchError(f"{self.name} did not answer within {STEP_TIMEOUT:.0f}s ({status})")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def handshake_status(port: int, token: str) -> str:
    """The status line a target answers a WebSocket handshake with."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(upgrade_request(port, token))
        async with asyncio.timeout(STEP_TIMEOUT):
            return (await reader.readline()).decode("latin-1").strip()
    finally:
        writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- the generators, seen from here ------------------------------------------------------------------


class GeneratorReports:
    """What the generator processes report, and waiting for it: the part both kinds of generator share.

    ``ready[i]``: seconds generator i took to connect and subscribe all its connections; ``done[i][n]``: when
    all its connections had read n messages; ``summaries[i]``: its final counts; ``error``: the first failure.
    """

    def __init__(self, size: int) -> None:
        self.ready: list[float | None] = [None] * size
        self.done: list[dict[int, float]] = [{} for _ in range(size)]
        self.summaries: list[dict[str, int] | None] = [None] * size
        self.error: str | None = None
        self.changed = asyncio.Event()

    def record(self, index: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            self.done[index][message[1]] = message[2]
        elif kind == "ready":
            self.ready[index] = message[1]
        elif kind == "summary":
            self.summaries[index] = message[1]
        elif kind == "error" and self.error is None:
            self.error = f"generator {index}: {message[1]}"

    def ended(self, index: int) -> None:
        """Generator ``index`` closed its end of the channel."""
        if self.summaries[index] is None and self.error is None:
            self.error = f"generator {index} exited unexpectedly"

    async def wait(self, predicate: Callable[[], bool], what: str, limit: float = STEP_TIMEOUT) -> None:
        try:
            async with asyncio.timeout(limit):
                while True:
                    if self.error is not None:
                        raise BenchError(self.error)
                    if predicate():
                        return
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise BenchError(f"timed out after {limit:.0f}s waiting for {what}") from None

    async def delivered(self, n: int, limit: float = STEP_TIMEOUT) -> float:
        """Wait until every subscriber has read n messages; the moment the last one did (monotonic clock)."""
        await self.wait(
            lambda: all(n in done for done in self.done), f"message {n} to reach everybody", limit
        )
        return max(done[n] for done in self.done)


class Generators(GeneratorReports):
    """The Python subscriber processes (multiprocessing, one pipe each) and what they report."""

    def __init__(
        self, specs: Sequence[Any], target: Callable[[Any, Connection], None] = generator_main
    ) -> None:
        """One process per spec, running ``target(spec, pipe)`` (:func:`generator_main` unless another
        module brings its own generator, speaking the same messages)."""
        super().__init__(len(specs))
        context = multiprocessing.get_context("spawn")  # a clean interpreter, no inherited loop or sockets
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Connection] = []
        for spec in specs:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=target, args=(spec, theirs), name=f"bench-gen-{spec.index}", daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.conns.append(ours)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def attach(self) -> None:
        loop = asyncio.get_running_loop()
        for index, conn in enumerate(self.conns):
            loop.add_reader(conn.fileno(), self._on_readable, index)

    def detach(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            loop.remove_reader(conn.fileno())

    def _on_readable(self, index: int) -> None:
        conn = self.conns[index]
        try:
            while conn.poll():
                self.record(index, conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            self.ended(index)
        self.changed.set()

    def go(self) -> None:
        for conn in self.conns:
            conn.send("go")

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send("stop")

    def join(self) -> None:
        for process in self.processes:
            process.join(timeout=STEP_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()


NATIVE_SOURCE = PEERS / "ws_subscribers.c"
NATIVE_BINARY = BENCH_DIR.parent / "build" / "bench" / "ws_subscribers"


def build_native_client() -> Path:
    """The C subscribers (``benchmarks/peers/ws_subscribers.c``), compiled when the binary is missing or older
    than its source; the binary lives in the git-ignored ``build/bench/``."""
    problem = build_c(NATIVE_SOURCE, NATIVE_BINARY)
    if problem is not None:
        raise BenchError(f"{problem} (or use --client python)")
    return NATIVE_BINARY


class NativeGenerators(GeneratorReports):
    """The C subscribers, one process per spec, reporting in lines on their stdout (see ws_subscribers.c);
    they inherit this process's CPUs, as the Python generators do."""

    def __init__(self, specs: Sequence[GeneratorSpec], binary: Path) -> None:
        super().__init__(len(specs))
        self.processes = [
            subprocess.Popen(
                [str(binary), str(spec.port), str(spec.count), str(CONNECT_CONCURRENCY)],
                env=dict(os.environ, SUB_TOKEN=spec.token),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for spec in specs
        ]
        self.pending = [b""] * len(specs)  # a line read in part

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _stdout(self, index: int) -> int:
        stdout = self.processes[index].stdout
        assert stdout is not None
        return stdout.fileno()

    def attach(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(len(self.processes)):
            os.set_blocking(self._stdout(index), False)
            loop.add_reader(self._stdout(index), self._on_readable, index)

    def detach(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(len(self.processes)):
            loop.remove_reader(self._stdout(index))

    def _on_readable(self, index: int) -> None:
        try:
            data = os.read(self._stdout(index), 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self._stdout(index))
            self.ended(index)
        *lines, self.pending[index] = (self.pending[index] + data).split(b"\n")
        for line in lines:
            self.record(index, self.parse(line.decode()))
        self.changed.set()

    @staticmethod
    def parse(line: str) -> tuple[Any, ...]:
        kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind == "done":
            return ("done", int(fields[0]), float(fields[1]))
        if kind == "ready":
            return ("ready", float(fields[0]))
        if kind == "summary":
            return ("summary", dict(zip(("min", "max", "errors"), map(int, fields), strict=True)))
        return ("error", rest if kind == "error" else f"unexpected output {line!r}")

    def _send(self, command: bytes) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.write(command)
                process.stdin.flush()

    def go(self) -> None:
        self._send(b"go\n")

    def stop(self) -> None:
        self._send(b"stop\n")

    def join(self) -> None:
        for process in self.processes:
            try:
                process.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


AnyGenerators = Generators | NativeGenerators


# --- measurement -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


class Meter:
    """Who used which CPU over one measurement window: the target (user, system, time spent waiting for a
    CPU), the load (the generators and this process) and the rest of the machine."""

    def __init__(self, target_pid: int, load_pids: list[int]) -> None:
        self.target_pid = target_pid
        self.load_pids = [*load_pids, os.getpid()]
        self.started = time.monotonic()
        self.target = cpu_times(target_pid)
        self.target_wait = run_delay(target_pid)
        self.target_writes = write_calls(target_pid)
        self.load = [cpu_seconds(pid) for pid in self.load_pids]
        self.machine = machine_busy()

    def stop(self, ended: float | None = None) -> dict[str, Any]:
        """The window's figures; ``ended``: when the window's work ended (monotonic), if not now."""
        elapsed = (ended or time.monotonic()) - self.started
        user, system = (a - b for a, b in zip(cpu_times(self.target_pid), self.target, strict=True))
        load = [cpu_seconds(pid) - before for pid, before in zip(self.load_pids, self.load, strict=True)]
        known = user + system + sum(load)
        return {
            "elapsed_s": elapsed,
            "target_user_s": user,
            "target_system_s": system,
            "target_cpu_s": user + system,
            "target_busy": (user + system) / elapsed,
            "target_waiting": (run_delay(self.target_pid) - self.target_wait) / elapsed,
            "target_write_calls": write_calls(self.target_pid) - self.target_writes,
            "load_cpu_s": load,  # each generator, then this process
            "load_cores": sum(load) / elapsed,
            "rest_of_machine_cpus": (machine_busy() - self.machine - known) / elapsed,
        }


def verdict(window: dict[str, Any], load_cpus: int) -> str:
    """Who limited a window where the target was asked for all it could do (a burst).

    ``disturbed``: the rest of the machine used ≥ 0.2 CPUs (another program competed; the rates are
    suspect); ``target-bound``: the target kept its CPU ≥ 90 % busy, so a faster load could not have made it
    go faster; ``starved``: it was runnable but had no CPU for the rest; ``load-bound``: it idled while the
    load kept its CPUs ≥ 90 % busy; ``not saturated`` otherwise. Time spent waiting for a CPU is not held
    against ``target-bound``: node's helper threads share its pinned CPU and wait for each other."""
    if window["rest_of_machine_cpus"] >= DISTURBED_CPUS:
        return "disturbed"
    if window["target_busy"] >= 0.9:
        return "target-bound"
    if window["target_busy"] + window["target_waiting"] >= 0.9:
        return "starved"
    if window["load_cores"] >= 0.9 * load_cpus:
        return "load-bound"
    return "not saturated"


@dataclass
class Turn:
    """One target, one N, one round."""

    target: str
    subscribers: int
    round: int
    generators: int
    scenario: str  # "fanout" or "idle"


async def connect_everybody(turn: Turn, server: TargetProcess, generators: AnyGenerators) -> dict[str, Any]:
    """Start the generators and wait until all N subscribers are subscribed; the memory they cost."""
    await server.wait_ready()
    rss_idle, fds_idle, slab_idle = rss_bytes(server.pid), fd_count(server.pid), meminfo_bytes("Slab")
    generators.attach()
    generators.go()
    started = time.monotonic()
    await generators.wait(
        lambda: all(r is not None for r in generators.ready),
        f"{turn.subscribers} subscribers to connect and subscribe",
        limit=STEP_TIMEOUT + turn.subscribers / 250,
    )
    connect_s = time.monotonic() - started
    if turn.scenario == "idle":
        await asyncio.sleep(IDLE_SETTLE)
    rss, fds, slab = rss_bytes(server.pid), fd_count(server.pid), meminfo_bytes("Slab")
    n = turn.subscribers
    return {
        "seconds": connect_s,
        "rss_idle_bytes": rss_idle,
        "rss_connected_bytes": rss,
        "rss_per_connection_bytes": (rss - rss_idle) / n,
        "fds_per_connection": (fds - fds_idle) / n,
        # Machine-wide, both ends of each loopback connection, and anything else that ran meanwhile.
        "slab_per_connection_bytes": (slab - slab_idle) / n,
        "uvloop": maps_library(server.pid, "uvloop/loop"),
    }


async def measure_latency(
    n: int, publishes: int, server: TargetProcess, generators: AnyGenerators, control: ControlConnection
) -> dict[str, Any]:
    """Sequential publishes, each until the last of the ``n`` subscribers read it."""
    base = await control.subscribe(CHANNEL)
    latencies, written, lags = [], [], []
    meter: Meter | None = None
    for seq in range(1, WARMUP_PUBLISHES + publishes + 1):
        if seq == WARMUP_PUBLISHES + 1:
            meter = Meter(server.pid, generators.pids)
        sent = time.monotonic()
        control.publish(CHANNEL, seq)
        all_written = await control.read(CHANNEL, base + seq)
        last = await generators.delivered(seq)
        if seq > WARMUP_PUBLISHES:
            latencies.append(last - sent)
            written.append(all_written - sent)
            lags.append(last - all_written)
    assert meter is not None
    window = meter.stop()
    ms = 1000.0
    count = len(latencies)
    return {
        "base_offset": base,
        "publishes": count,
        "warmup_publishes": WARMUP_PUBLISHES,
        "last_received_ms": {
            "p50": percentile(latencies, 50) * ms,
            "p99": percentile(latencies, 99) * ms,
            "max": max(latencies) * ms,
            "min": min(latencies) * ms,
        },
        # The control connection read it: the target had written it to every subscriber.
        "all_written_ms": {"p50": percentile(written, 50) * ms, "p99": percentile(written, 99) * ms},
        # How long the generators trailed the target's last write: their share of the latency.
        "last_read_after_written_ms": {"p50": percentile(lags, 50) * ms, "max": max(lags) * ms},
        "target_cpu_ms_per_publish": window["target_cpu_s"] / count * ms,
        "target_cpu_us_per_delivery": window["target_cpu_s"] / (count * n) * 1e6,
        "target_writes_per_delivery": window["target_write_calls"] / (count * n),
        "window": window,
        "samples_ms": [round(x * ms, 3) for x in latencies],
    }


async def measure_burst(
    n: int,
    burst_deliveries: int,
    server: TargetProcess,
    generators: AnyGenerators,
    control: ControlConnection,
    base: int,
    first: int,
    load_cpus: int,
) -> dict[str, Any]:
    """A burst of publishes to all N, BURST_IN_FLIGHT at a time: deliveries/s and CPU per delivery."""
    publishes = burst_publishes(n, burst_deliveries)
    limit = STEP_TIMEOUT + n * publishes / 50_000  # generous: 50,000 deliveries/s is far below any target
    meter = Meter(server.pid, generators.pids)
    await control.burst(CHANNEL, base, first, publishes, limit)
    last = await generators.delivered(first + publishes - 1, limit)
    window = meter.stop(ended=last)
    deliveries = n * publishes
    return {
        "publishes": publishes,
        "in_flight": BURST_IN_FLIGHT,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / window["elapsed_s"],
        "target_cpu_us_per_delivery": window["target_cpu_s"] / deliveries * 1e6,
        "target_user_us_per_delivery": window["target_user_s"] / deliveries * 1e6,
        "target_system_us_per_delivery": window["target_system_s"] / deliveries * 1e6,
        # The floor the issue names is one write per subscriber per message: below 1, writes were coalesced.
        "target_writes_per_delivery": window["target_write_calls"] / deliveries,
        # The subscribers' CPU per delivery (this process's, the publisher's, not counted).
        "load_us_per_delivery": sum(window["load_cpu_s"][:-1]) / deliveries * 1e6,
        "window": window,
        "verdict": verdict(window, load_cpus),
    }


def burst_publishes(n: int, deliveries: int) -> int:
    """Publishes in a burst to ``n`` subscribers: about ``deliveries`` in all, and never fewer than 20."""
    return max(20, deliveries // n)


async def measure_empty(server: TargetProcess, control: ControlConnection) -> dict[str, Any]:
    """The target's CPU per publish that reaches only the control connection: the price of the trigger."""
    base = await control.subscribe(EMPTY_CHANNEL)
    meter = Meter(server.pid, [])
    await control.burst(EMPTY_CHANNEL, base, 1, EMPTY_PUBLISHES, STEP_TIMEOUT)
    window = meter.stop()
    return {
        "publishes": EMPTY_PUBLISHES,
        "target_cpu_us_per_publish": window["target_cpu_s"] / EMPTY_PUBLISHES * 1e6,
        "elapsed_s": window["elapsed_s"],
    }


async def finish(generators: AnyGenerators, expected: int) -> None:
    """Stop the generators and check that every subscriber read exactly ``expected`` messages."""
    generators.stop()
    await generators.wait(lambda: all(s is not None for s in generators.summaries), "generator summaries")
    generators.detach()
    for index, summary in enumerate(generators.summaries):
        assert summary is not None
        if summary["min"] != expected or summary["max"] != expected or summary["errors"]:
            raise BenchError(f"generator {index}: expected {expected} messages per subscriber, got {summary}")


async def measure_turn(
    args: argparse.Namespace, turn: Turn, server: TargetProcess, generators: AnyGenerators, load_cpus: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"connect": await connect_everybody(turn, server, generators)}
    if turn.scenario == "idle":
        await finish(generators, 0)
        return result
    n = turn.subscribers
    control = await open_control(server.port, server.publish_token)
    try:
        result["latency"] = await measure_latency(n, args.latency_publishes, server, generators, control)
        result["empty_publish"] = await measure_empty(server, control)
        first = WARMUP_PUBLISHES + args.latency_publishes + 1
        base = result["latency"]["base_offset"]
        result["burst"] = await measure_burst(
            n, args.burst_deliveries, server, generators, control, base, first, load_cpus
        )
        await finish(generators, first + result["burst"]["publishes"] - 1)
    finally:
        if control.transport is not None:
            control.transport.abort()
    return result


def run_turn(args: argparse.Namespace, turn: Turn, workdir: Path, pinned: dict[str, list[int]] | None) -> Any:
    """Start the target and the generators, measure, stop them all (whatever happened)."""
    # --wsgate-src: the hub under test is imported from there (PYTHONPATH comes before the editable install).
    extra_env = {"PYTHONPATH": str(args.wsgate_src)} if args.wsgate_src and turn.target == "wsgate" else None
    server = TargetProcess(turn.target, workdir, turn.subscribers + FD_MARGIN, extra_env)
    generators: AnyGenerators | None = None
    try:
        server.start(pinned["target"] if pinned else None)
        specs = [
            GeneratorSpec(i, server.port, server.token, count)
            for i, count in enumerate(split(turn.subscribers, turn.generators))
        ]
        generators = NativeGenerators(specs, args.native) if args.client == "c" else Generators(specs)
        load_cpus = len(pinned["load"]) if pinned else len(os.sched_getaffinity(0))
        started = time.monotonic()
        result = run_loop(measure_turn(args, turn, server, generators, load_cpus))
        result["turn_s"] = time.monotonic() - started
        return result
    finally:
        if generators is not None:
            generators.stop()
            generators.join()
        server.stop()


# --- the run: turns in alternation, summaries --------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Turn]:
    """Every scenario, target after target, round after round (A B C A B C …), so a slow drift of the
    machine falls on all targets alike."""
    turns: list[Turn] = []
    for round_ in range(1, args.rounds + 1):
        for n in args.subscribers:
            turns += [Turn(t, n, round_, args.generators, "fanout") for t in args.targets]
        if args.idle_connections and round_ <= args.idle_rounds:
            turns += [Turn(t, args.idle_connections, round_, args.generators, "idle") for t in args.targets]
    # Round 0: the same turn with one more generator process, for the targets asked (the fastest is the one
    # whose figures a slow load would cap first).
    n = max(args.subscribers)
    turns += [Turn(t, n, 0, args.generators + 1, "fanout") for t in args.extra_generator]
    return turns


# Figures summarised over the rounds: key, scenario, path in a turn's result, factor to the key's unit.
KIB, MIB = 1 / 1024, 1 / 2**20
SUMMARY_FIGURES: list[tuple[str, str, tuple[str, ...], float]] = [
    ("latency_p50_ms", "fanout", ("latency", "last_received_ms", "p50"), 1),
    ("latency_p99_ms", "fanout", ("latency", "last_received_ms", "p99"), 1),
    ("latency_max_ms", "fanout", ("latency", "last_received_ms", "max"), 1),
    ("written_p50_ms", "fanout", ("latency", "all_written_ms", "p50"), 1),
    ("written_p99_ms", "fanout", ("latency", "all_written_ms", "p99"), 1),
    ("lag_p50_ms", "fanout", ("latency", "last_read_after_written_ms", "p50"), 1),
    ("lag_max_ms", "fanout", ("latency", "last_read_after_written_ms", "max"), 1),
    ("sequential_cpu_us", "fanout", ("latency", "target_cpu_us_per_delivery"), 1),
    ("sequential_writes", "fanout", ("latency", "target_writes_per_delivery"), 1),
    ("deliveries_per_s", "fanout", ("burst", "deliveries_per_s"), 1),
    ("burst_cpu_us", "fanout", ("burst", "target_cpu_us_per_delivery"), 1),
    ("burst_user_us", "fanout", ("burst", "target_user_us_per_delivery"), 1),
    ("burst_system_us", "fanout", ("burst", "target_system_us_per_delivery"), 1),
    ("burst_writes", "fanout", ("burst", "target_writes_per_delivery"), 1),
    ("burst_target_busy", "fanout", ("burst", "window", "target_busy"), 1),
    ("burst_target_waiting", "fanout", ("burst", "window", "target_waiting"), 1),
    ("burst_load_cores", "fanout", ("burst", "window", "load_cores"), 1),
    ("burst_load_us", "fanout", ("burst", "load_us_per_delivery"), 1),
    ("burst_rest_cpus", "fanout", ("burst", "window", "rest_of_machine_cpus"), 1),
    ("empty_publish_cpu_us", "fanout", ("empty_publish", "target_cpu_us_per_publish"), 1),
    ("connect_s", "fanout", ("connect", "seconds"), 1),
    ("rss_kib_per_connection", "fanout", ("connect", "rss_per_connection_bytes"), KIB),
    ("idle_rss_kib_per_connection", "idle", ("connect", "rss_per_connection_bytes"), KIB),
    ("idle_rss_idle_mib", "idle", ("connect", "rss_idle_bytes"), MIB),
    ("idle_rss_connected_mib", "idle", ("connect", "rss_connected_bytes"), MIB),
    ("idle_slab_kib_per_connection", "idle", ("connect", "slab_per_connection_bytes"), KIB),
    ("idle_connect_s", "idle", ("connect", "seconds"), 1),
]


def dig(value: Any, path: tuple[str, ...]) -> float | None:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarise(turns: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """figure → str(N) → target → {median, min, max, n}, over the regular rounds (not the extra-generator
    check) that completed."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for key, scenario, path, scale in SUMMARY_FIGURES:
        cells: dict[str, dict[str, list[float]]] = {}
        for turn in turns:
            if turn["scenario"] != scenario or turn["round"] == 0 or "result" not in turn:
                continue
            value = dig(turn["result"], path)
            if value is not None:
                cells.setdefault(str(turn["subscribers"]), {}).setdefault(turn["target"], []).append(value)
        summary[key] = {
            n: {
                target: {
                    "median": statistics.median(values) * scale,
                    "min": min(values) * scale,
                    "max": max(values) * scale,
                    "n": len(values),
                }
                for target, values in by_target.items()
            }
            for n, by_target in cells.items()
        }
    return summary


def extra_generator_check(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The extra-generator turns beside the regular rounds' medians at the same N: if one more generator
    process does not raise the figures, the generators were not what limited them."""
    rows = []
    for extra in turns:
        if extra["round"] != 0 or "result" not in extra:
            continue
        regular = [
            t["result"]
            for t in turns
            if t["round"] > 0
            and "result" in t
            and t["scenario"] == "fanout"
            and (t["target"], t["subscribers"]) == (extra["target"], extra["subscribers"])
        ]
        if not regular:
            continue

        def median(path: tuple[str, ...], results: list[dict[str, Any]]) -> float | None:
            values = [v for v in (dig(r, path) for r in results) if v is not None]
            return statistics.median(values) if values else None

        row = {"target": extra["target"], "subscribers": extra["subscribers"]}
        for key, path in (
            ("deliveries_per_s", ("burst", "deliveries_per_s")),
            ("latency_p50_ms", ("latency", "last_received_ms", "p50")),
        ):
            row[key] = {
                "generators": extra["generators"],
                "with_one_more": dig(extra["result"], path),
                "regular_median": median(path, regular),
                "regular_generators": extra["generators"] - 1,
            }
        rows.append(row)
    return rows


def peer_versions() -> dict[str, str]:
    """The versions the peers ran with: node, ws (from its package.json), python-websockets."""
    versions: dict[str, str] = {}
    try:
        done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10, check=False)
        versions["node"] = done.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        versions["node"] = "not installed"
    try:
        ws = json.loads((PEERS / "node_modules" / "ws" / "package.json").read_text())
        versions["ws"] = str(ws["version"])
    except (OSError, ValueError, KeyError):
        versions["ws"] = "not installed"
    try:
        import websockets

        versions["websockets"] = websockets.__version__
    except ImportError:
        versions["websockets"] = "not installed"
    return versions


def machine() -> dict[str, Any]:
    return machine_description()


def check_prerequisites(targets: list[str]) -> None:
    if any(t.startswith("node-") for t in targets) and not (PEERS / "node_modules" / "ws").is_dir():
        raise BenchError("the Node peer needs `ws`: run benchmarks/setup-peers first")
    if "py-websockets" in targets:
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise BenchError("py-websockets needs the websockets package (pip install -e '.[dev]')") from None


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"RLIMIT_NOFILE hard limit is {hard}, a target needs {needed} file descriptors for "
            f"{needed - FD_MARGIN} connections: raise it (e.g. `ulimit -Hn {needed}` as root, or "
            f"LimitNOFILE= in systemd; see docs/scaling.md) or use fewer connections"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard != resource.RLIM_INFINITY else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # inherited by the targets and generators
        soft = target
    return int(soft)


def pin_cpus(enabled: bool) -> dict[str, list[int]] | None:
    """The first CPU for the target, the others for this process and the generators (which inherit our
    affinity), so that the load cannot take the target's CPU time. Needs at least two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, cpus[1:])
    return {"target": cpus[:1], "load": cpus[1:]}


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def describe(turn: Turn, result: dict[str, Any]) -> str:
    """One progress line per turn."""
    c = result["connect"]
    head = f"  round {turn.round or '+'} {turn.target:<18} {turn.subscribers:>6,}"
    if turn.scenario == "idle":
        return (
            f"{head} idle: {c['rss_per_connection_bytes'] / 1024:.1f} KiB/conn "
            f"(RSS {c['rss_idle_bytes'] / 2**20:.0f} → {c['rss_connected_bytes'] / 2**20:.0f} MiB), "
            f"connected in {c['seconds']:.1f} s"
        )
    lat, burst = result["latency"]["last_received_ms"], result["burst"]
    return (
        f"{head} p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms | "
        f"{burst['deliveries_per_s']:,.0f} deliveries/s, "
        f"{burst['target_cpu_us_per_delivery']:.2f} µs/delivery "
        f"({burst['verdict']}, busy {burst['window']['target_busy']:.0%}) | "
        f"{c['rss_per_connection_bytes'] / 1024:.1f} KiB/conn"
    )


def wait_quiet(limit: float) -> float:
    """Wait, at most ``limit`` seconds, until other processes leave the machine idle (below DISTURBED_CPUS
    over half a second; this run is idle between turns); the CPUs they used in the last half second."""
    deadline = time.monotonic() + limit
    while True:
        busy, since = machine_busy(), time.monotonic()
        time.sleep(0.5)
        others = (machine_busy() - busy) / (time.monotonic() - since)
        if others < DISTURBED_CPUS or time.monotonic() >= deadline:
            return others


def disturbance(result: dict[str, Any]) -> str | None:
    """Why a fan-out turn's figures are suspect (another program used ≥ 0.2 CPUs in one of its windows)."""
    for name in ("latency", "burst"):
        rest = result.get(name, {}).get("window", {}).get("rest_of_machine_cpus", 0.0)
        if rest >= DISTURBED_CPUS:
            return f"{name} window disturbed: the rest of the machine used {rest:.2f} CPUs"
    return None


def run(args: argparse.Namespace, pinned: dict[str, list[int]] | None) -> tuple[list[dict[str, Any]], float]:
    """Every planned turn that fits in the time limit; a failed turn is recorded and the run goes on, a
    disturbed one is measured again (``--retries``) and the discarded attempt kept with its reason."""
    started = time.monotonic()
    durations: dict[tuple[str, int], float] = {}
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wsgate-hub-bench-") as tmp:
        for turn in plan(args):
            record: dict[str, Any] = {
                "target": turn.target,
                "subscribers": turn.subscribers,
                "round": turn.round,
                "generators": turn.generators,
                "scenario": turn.scenario,
                "discarded": [],
            }
            records.append(record)
            for attempt in range(args.retries + 1):
                expected = durations.get((turn.scenario, turn.subscribers), 0.0)
                if time.monotonic() - started + expected > args.time_limit:
                    why = f"the time limit ({args.time_limit:.0f} s) would be exceeded"
                    record["retry_skipped" if attempt else "skipped"] = why
                    break
                if args.wait_quiet:
                    record["others_cpus_before"] = wait_quiet(args.wait_quiet)
                if attempt:
                    record["discarded"].append(record.pop("result"))
                turn_started = time.monotonic()
                try:
                    record["result"] = run_turn(args, turn, Path(tmp), pinned)
                except (BenchError, TimeoutError, OSError) as exc:
                    record["error"] = f"{exc.__class__.__name__}: {exc}"
                    print(
                        f"  round {turn.round} {turn.target} {turn.subscribers}: {record['error']}",
                        flush=True,
                    )
                    break
                durations[(turn.scenario, turn.subscribers)] = max(time.monotonic() - turn_started, expected)
                print(describe(turn, record["result"]), flush=True)
                reason = disturbance(record["result"])
                if reason is None:
                    break
                record["result"]["disturbed"] = reason
                print(f"    {reason}" + (", measuring again" if attempt < args.retries else ""), flush=True)
    return records, time.monotonic() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, in alternation order, from {', '.join(TARGETS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--subscribers", default="1000,10000", help="comma-separated subscriber counts (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternation (default: 3)")
    parser.add_argument(
        "--latency-publishes",
        type=int,
        default=LATENCY_PUBLISHES,
        help=f"sequential publishes for the latency figures (default: {LATENCY_PUBLISHES})",
    )
    parser.add_argument(
        "--burst-deliveries",
        type=int,
        default=BURST_DELIVERIES,
        help=f"deliveries per burst: publishes = this / N, at least 20 (default: {BURST_DELIVERIES:,})",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=19_000,
        help="idle subscribed connections for the memory figure, 0 to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--generators",
        type=int,
        default=2,
        help="subscriber processes sharing the N connections (default: 2)",
    )
    parser.add_argument(
        "--idle-rounds",
        type=int,
        default=1,
        help="rounds that include the idle-memory turns (default: 1; each takes 15-30 s per target)",
    )
    parser.add_argument(
        "--extra-generator",
        default="",
        metavar="TARGETS",
        help="after the rounds, one more turn for each of these targets at the largest N, with one more "
        "generator process: if the figures do not rise, the generators were not the limit",
    )
    parser.add_argument(
        "--client",
        choices=("c", "python"),
        default="c",
        help="the subscribers: benchmarks/peers/ws_subscribers.c on epoll (compiled on first use into "
        "build/bench/) or the Python protocol on uvloop (default: %(default)s)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not give the target a CPU of its own (by default it gets the first, the load the others)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each turn, wait up to S seconds for other processes to leave the machine idle",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="measure a fan-out turn again, up to this many times, when another program disturbed it",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        help="start no turn that would end after this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--wsgate-src",
        type=Path,
        metavar="DIR",
        help="run the wsgate hub from the package in DIR (e.g. the src/ of a `git worktree` of another "
        "commit) instead of the installed one",
    )
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.wsgate_src and not (args.wsgate_src / "wsgate" / "__init__.py").is_file():
        parser.error(f"--wsgate-src {args.wsgate_src} holds no wsgate package")
    args.targets = [t for t in args.targets.split(",") if t]
    args.extra_generator = [t for t in args.extra_generator.split(",") if t]
    unknown = [t for t in args.targets + args.extra_generator if t not in TARGETS]
    if unknown or not args.targets:
        parser.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    try:
        args.subscribers = [int(n) for n in args.subscribers.split(",") if n]
    except ValueError:
        parser.error("--subscribers takes comma-separated integers")
    if not args.subscribers or not all(1 <= n <= 50_000 for n in args.subscribers):
        parser.error("--subscribers must be between 1 and 50000")
    if not 0 <= args.idle_connections <= 50_000 or not 1 <= args.rounds <= 20 or args.idle_rounds < 0:
        parser.error("--idle-connections must be 0-50000, --rounds 1-20 and --idle-rounds at least 0")
    if not 1 <= args.latency_publishes <= 1000 or args.burst_deliveries < 1:
        parser.error("--latency-publishes must be 1-1000 and --burst-deliveries positive")
    if not 1 <= args.generators <= min(args.subscribers):
        parser.error("--generators must be between 1 and the smallest --subscribers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_prerequisites(args.targets)
        args.native = build_native_client() if args.client == "c" else None
        fd_limit = raise_fd_limit(max([*args.subscribers, args.idle_connections]) + FD_MARGIN)
    except BenchError as exc:
        print(f"hub_fanout: {exc}", file=sys.stderr)
        return 2
    src = args.wsgate_src or BENCH_DIR.parent / "src"
    info = {**machine(), **peer_versions(), "wsgate": source_version(src)}  # before pinning narrows our CPUs
    pinned = pin_cpus(args.pin)
    where = f"target on CPU {pinned['target']}, load on CPUs {pinned['load']}" if pinned else "not pinned"
    print(
        f"hub fan-out: {', '.join(args.targets)} × N = {args.subscribers}, {args.rounds} rounds, "
        f"idle {args.idle_connections:,}; {where}; {info['nproc']} CPUs ({info['cpu_model']})",
        flush=True,
    )

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run_turn's finally stops every process this run started

    signal.signal(signal.SIGTERM, on_signal)
    try:
        turns, elapsed = run(args, pinned)
    except KeyboardInterrupt:
        print("hub_fanout: interrupted", file=sys.stderr)
        return 1
    report = {
        "benchmark": "hub_fanout",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["hub_fanout.py", *(argv if argv is not None else sys.argv[1:])]),
        "targets": args.targets,
        "subscribers": args.subscribers,
        "rounds": args.rounds,
        "latency_publishes": args.latency_publishes,
        "burst_deliveries": args.burst_deliveries,
        "burst_in_flight": BURST_IN_FLIGHT,
        "burst_publishes": {str(n): burst_publishes(n, args.burst_deliveries) for n in args.subscribers},
        "idle_connections": args.idle_connections,
        "idle_rounds": min(args.idle_rounds, args.rounds) if args.idle_connections else 0,
        "generators": args.generators,
        "client": args.client,
        "frame_bytes": frame_bytes(),
        "fd_limit": fd_limit,
        "cpu_pinning": pinned,
        "machine": info,
        "wsgate_src": str(src),
        "elapsed_s": elapsed,
        "summary": summarise(turns),
        "extra_generator_check": extra_generator_check(turns),
        "turns": turns,
    }
    path = args.json or RESULTS_DIR / f"hub_fanout-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(render_summary(report))
    print(f"results: {path} ({elapsed:.0f} s)")
    failed = [t for t in turns if "error" in t]
    return 1 if failed else 0


def frame_bytes() -> int:
    """The size of the frame every subscriber receives (wsgate's envelope; the peers' is the same)."""
    body = json.dumps(payload(100), separators=(",", ":"))
    return len(f'{{"type":"message","channel":"{CHANNEL}","offset":100,"data":{body}}}') + 2


def render_summary(report: dict[str, Any]) -> str:
    """The run's table as Markdown (the same renderer ``benchmarks/report.py`` uses for the docs)."""
    try:
        from benchmarks.report import hub_markdown
    except ModuleNotFoundError:
        from report import hub_markdown  # type: ignore[no-redef,import-not-found]
    return hub_markdown(report)


if __name__ == "__main__":
    sys.exit(main())
