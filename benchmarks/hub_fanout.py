"""Hub fan-out benchmark: how fast one publish reaches N WebSocket subscribers, and at what CPU cost.

Everything runs on loopback, in separate processes so that each is charged for its own CPU:

* the hub: ``wsgate hub --config <tmp toml>`` (the real CLI, so uvloop when installed), secrets in env vars;
* ``--generators`` subscriber processes, each holding its share of the N WebSocket connections over raw
  asyncio sockets with a minimal client (no aiohttp on the receiving side: it would cost more than the hub);
* this process: it starts the others, publishes with ``POST /api/publish`` and collects the results.

With two or more CPUs the hub gets the first CPU to itself and the load runs on the others (``--no-pin`` to
turn it off), so the load cannot take the hub's CPU time. The last line of the output says whether the burst
was hub-bound (the hub busy nearly all the time, hardly ever waiting for a CPU) or limited by the load.

Measured:

1. fan-out latency: one publish, then the time until the LAST of the N subscribers has read the message;
   sequential publishes, each waits for all N; p50/p99/max.
2. delivery throughput: a burst of publishes (several in flight) → deliveries/s (N × publishes / elapsed) and
   the hub's own CPU time per delivery (utime+stime from /proc/<hub pid>/stat over the burst window).

A subscriber process stamps ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the machine)
when the last of its subscribers has read message n and reports it through a pipe; the latency is the latest
such stamp minus the moment the publish was sent.

Usage: ``.venv/bin/python benchmarks/hub_fanout.py [--subscribers 5000] [--publishes 200] [--json PATH]``
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

import aiohttp

try:
    from benchmarks.procstat import (
        cpu_seconds,
        cpu_times,
        machine_description,
        maps_library,
        rss_bytes,
        run_delay,
    )
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from procstat import (  # type: ignore[no-redef,import-not-found]
        cpu_seconds,
        cpu_times,
        machine_description,
        maps_library,
        rss_bytes,
        run_delay,
    )

HOST = "127.0.0.1"
CHANNEL = "bench"
EMPTY_CHANNEL = "bench-empty"  # nobody subscribes: the hub's cost of a publish without any fan-out
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The first ~15 messages on a fresh connection cost the kernel about twice as much (docs/performance.md).
WARMUP_PUBLISHES = 20
LATENCY_PUBLISHES = 50
EMPTY_PUBLISHES = 1000  # ~0.1 s of hub CPU: ten clock ticks, enough for a rough per-publish figure
BURST_CONCURRENCY = 8  # POSTs in flight during the burst, so the hub never waits for the publisher
CONNECT_CONCURRENCY = 50  # handshakes in flight per generator; far below the hub's listen backlog (1024)
STEP_TIMEOUT = 15.0  # any one awaited step (a publish reaching everybody, a handshake, /healthz)
RUN_TIMEOUT = 110.0  # the whole measurement: `make bench` stays under two minutes
FD_MARGIN = 256  # descriptors beyond one per connection: listeners, pipes, logs, the interpreter's own


class BenchError(Exception):
    """The benchmark could not run or its result would be wrong; the message says why."""


def payload(seq: int) -> dict[str, Any]:
    """A kiosk-sized event: the frame each subscriber receives is about 140 bytes."""
    return {"action": "reload", "seq": seq, "reason": "benchmark", "at": "2026-01-01T00:00:00Z"}


# --- subscriber side (generator processes) -------------------------------------------------------------


def client_frame(opcode: int, body: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3) with a short body (≤ 125 bytes: our commands and pongs)."""
    assert len(body) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(body))
    return bytes((0x80 | opcode, 0x80 | len(body))) + mask + masked


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

    Frames from the server are unmasked and, for this hub, never fragmented. One subscriber per process
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
            assert self.transport is not None
            self.transport.write(
                client_frame(OP_TEXT, json.dumps({"type": "subscribe", "channel": CHANNEL}).encode())
            )
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
        """The hub's heartbeat: answer it, or it closes the connection."""
        assert self.transport is not None
        self.transport.write(client_frame(OP_PONG, payload))

    def close_received(self, code: int) -> None:
        """The hub's close frame: a failure here (a subclass that closes on purpose overrides this)."""
        self.fail(f"the hub closed the connection with code {code}")

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
    if conn.recv() != "go":  # sent once the hub answers /healthz
        return
    run_loop(generate(spec, conn))


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# --- the hub process ---------------------------------------------------------------------------------


HUB_CONFIG = """\
[hub]
listen = "{host}:{port}"
allowed_origins = []
allow_missing_origin = true
broker = "memory://"
history = {{ size = 100, ttl = "10m" }}
limits = {{ max_connections = {max_connections} }}

[[hub.tokens]]
name = "bench"
token = "${{WSGATE_BENCH_TOKEN}}"
subscribe = ["{channel}"]
publish = []

[hub.publish_api]
tokens = ["${{WSGATE_BENCH_PUBLISH_TOKEN}}"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wsgate_command() -> list[str]:
    script = Path(sys.executable).with_name("wsgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsgate"]


class HubProcess:
    def __init__(self, workdir: Path, port: int, max_connections: int) -> None:
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.token = secrets.token_urlsafe(24)
        self.publish_token = secrets.token_urlsafe(24)
        self.config_path = workdir / "hub.toml"
        self.config_path.write_text(
            HUB_CONFIG.format(host=HOST, port=port, max_connections=max_connections, channel=CHANNEL)
        )
        self.log_path = workdir / "hub.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = dict(os.environ, WSGATE_BENCH_TOKEN=self.token, WSGATE_BENCH_PUBLISH_TOKEN=self.publish_token)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*wsgate_command(), "hub", "--config", str(self.config_path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no hub log)"

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(f"the hub exited with status {self.process.returncode}:\n{self.log_tail()}")

    async def wait_healthy(self, http: aiohttp.ClientSession) -> None:
        """Poll /healthz until it answers 200 (no fixed sleep: the hub says when it is serving)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        status: object = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                async with http.get(self.url + "/healthz") as response:
                    if response.status == 200:
                        return
                    status = response.status
            except aiohttp.ClientError as exc:
                status = exc.__class__.__name__
            await asyncio.sleep(0.02)
        raise BenchError(f"the hub did not answer /healthz within {STEP_TIMEOUT:.0f}s ({status})")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # graceful: drain, as an operator would stop it
        try:
            self.process.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the generators, seen from here ------------------------------------------------------------------


class Generators:
    """The subscriber processes and what they report."""

    def __init__(
        self, specs: Sequence[Any], target: Callable[[Any, Connection], None] = generator_main
    ) -> None:
        """One process per spec, running ``target(spec, pipe)`` (:func:`generator_main` unless another
        module brings its own generator, speaking the same messages)."""
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
        self.ready: list[float | None] = [None] * len(specs)
        self.done: list[dict[int, float]] = [{} for _ in specs]
        self.summaries: list[dict[str, int] | None] = [None] * len(specs)
        self.error: str | None = None
        self.changed = asyncio.Event()

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
                message = conn.recv()
                kind = message[0]
                if kind == "done":
                    self.done[index][message[1]] = message[2]
                elif kind == "ready":
                    self.ready[index] = message[1]
                elif kind == "summary":
                    self.summaries[index] = message[1]
                elif kind == "error" and self.error is None:
                    self.error = f"generator {index}: {message[1]}"
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if self.summaries[index] is None and self.error is None:
                self.error = f"generator {index} exited unexpectedly"
        self.changed.set()

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


# --- measurement -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


class Publisher:
    def __init__(self, http: aiohttp.ClientSession, hub: HubProcess) -> None:
        self.http = http
        self.url = hub.url + "/api/publish"
        self.headers = {"Authorization": f"Bearer {hub.publish_token}", "Content-Type": "application/json"}

    async def publish(self, channel: str, seq: int) -> int:
        body = json.dumps({"channel": channel, "data": payload(seq)}).encode()
        async with self.http.post(self.url, data=body, headers=self.headers) as response:
            if response.status != 200:
                raise BenchError(f"publish answered {response.status}: {(await response.text())[:200]}")
            answer = await response.json()
            return int(answer["offset"])

    async def burst(self, channel: str, first_seq: int, count: int) -> None:
        """``count`` publishes with BURST_CONCURRENCY in flight, in order of sequence number."""
        sequence = iter(range(first_seq, first_seq + count))

        async def worker() -> None:
            for seq in sequence:
                await self.publish(channel, seq)

        async with asyncio.TaskGroup() as group:
            for _ in range(BURST_CONCURRENCY):
                group.create_task(worker())


def cpu_of(pids: list[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


async def measure(args: argparse.Namespace, hub: HubProcess, generators: Generators) -> dict[str, Any]:
    n = args.subscribers
    timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=BURST_CONCURRENCY)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await hub.wait_healthy(http)
        uvloop_in_hub = maps_library(hub.pid, "uvloop/loop")
        rss_idle = rss_bytes(hub.pid)
        generators.attach()
        generators.go()

        # Connect every subscriber.
        started = time.monotonic()
        await generators.wait(
            lambda: all(r is not None for r in generators.ready),
            f"{n} subscribers to connect and subscribe",
            limit=STEP_TIMEOUT + n / 100,
        )
        connect_seconds = time.monotonic() - started
        rss_connected = rss_bytes(hub.pid)
        publisher = Publisher(http, hub)
        seq = 0

        # 1. Latency: sequential publishes, each waits for all N subscribers.
        latencies: list[float] = []
        answered: list[float] = []
        latency_cpu = latency_wait = 0.0
        for i in range(WARMUP_PUBLISHES + args.latency_publishes):
            seq += 1
            if i == WARMUP_PUBLISHES:
                latency_cpu, latency_wait = cpu_seconds(hub.pid), run_delay(hub.pid)
            sent = time.monotonic()
            offset = await publisher.publish(CHANNEL, seq)
            answer = time.monotonic()
            last = await generators.delivered(seq)
            if offset != seq:
                raise BenchError(f"publish {seq} got offset {offset}: something else publishes on {CHANNEL}")
            if i >= WARMUP_PUBLISHES:
                latencies.append(last - sent)
                answered.append(answer - sent)
        latency_cpu = cpu_seconds(hub.pid) - latency_cpu
        latency_wait = run_delay(hub.pid) - latency_wait

        # 2a. The hub's cost of a publish that reaches nobody (HTTP request + history), for comparison.
        empty_cpu = cpu_seconds(hub.pid)
        empty_started = time.monotonic()
        await publisher.burst(EMPTY_CHANNEL, 1, EMPTY_PUBLISHES)
        empty_elapsed = time.monotonic() - empty_started
        empty_cpu = cpu_seconds(hub.pid) - empty_cpu

        # 2b. Throughput: a burst to all N subscribers.
        gen_pids = generators.pids
        hub_before, gen_cpu, own_cpu = cpu_times(hub.pid), cpu_of(gen_pids), cpu_seconds(os.getpid())
        hub_wait, gen_wait = run_delay(hub.pid), [run_delay(pid) for pid in gen_pids]
        burst_started = time.monotonic()
        await publisher.burst(CHANNEL, seq + 1, args.publishes)
        burst_answered = time.monotonic()
        seq += args.publishes
        burst_done = await generators.delivered(seq, limit=STEP_TIMEOUT + n * args.publishes / 20_000)
        hub_user, hub_sys = (
            after - before for after, before in zip(cpu_times(hub.pid), hub_before, strict=True)
        )
        hub_cpu = hub_user + hub_sys
        hub_wait = run_delay(hub.pid) - hub_wait
        gen_wait = [run_delay(pid) - before for pid, before in zip(gen_pids, gen_wait, strict=True)]
        gen_cpu = [after - before for after, before in zip(cpu_of(gen_pids), gen_cpu, strict=True)]
        own_cpu = cpu_seconds(os.getpid()) - own_cpu
        elapsed = burst_done - burst_started

        # Every subscriber read exactly every message.
        generators.stop()
        await generators.wait(lambda: all(s is not None for s in generators.summaries), "generator summaries")
        generators.detach()
        for index, summary in enumerate(generators.summaries):
            assert summary is not None
            if summary["min"] != seq or summary["max"] != seq or summary["errors"]:
                raise BenchError(f"generator {index}: expected {seq} messages per subscriber, got {summary}")

    deliveries = n * args.publishes
    lags = [last - answer for last, answer in zip(latencies, answered, strict=True)]
    ms = 1000.0
    return {
        "connect": {
            "seconds": connect_seconds,
            "hub_rss_idle_bytes": rss_idle,
            "hub_rss_connected_bytes": rss_connected,
            "hub_rss_per_connection_bytes": (rss_connected - rss_idle) / n,
        },
        "latency": {
            "publishes": len(latencies),
            "warmup_publishes": WARMUP_PUBLISHES,
            "last_received_ms": {
                "p50": percentile(latencies, 50) * ms,
                "p99": percentile(latencies, 99) * ms,
                "max": max(latencies) * ms,
                "min": min(latencies) * ms,
            },
            "publish_answered_ms": {
                "p50": percentile(answered, 50) * ms,
                "p99": percentile(answered, 99) * ms,
            },
            "last_read_after_answer_ms": {
                "p50": percentile(lags, 50) * ms,
                "max": max(lags) * ms,
            },
            "hub_cpu_ms_per_publish": latency_cpu / len(latencies) * ms,
            "hub_run_delay_ms_per_publish": latency_wait / len(latencies) * ms,
            "samples_ms": [round(x * ms, 3) for x in latencies],
        },
        "throughput": {
            "publishes": args.publishes,
            "in_flight": BURST_CONCURRENCY,
            "deliveries": deliveries,
            "elapsed_s": elapsed,
            "publishes_answered_s": burst_answered - burst_started,
            "deliveries_per_s": deliveries / elapsed,
            "hub_cpu_s": hub_cpu,
            "hub_cpu_us_per_delivery": hub_cpu / deliveries * 1e6,
            "hub_cpu_share": hub_cpu / elapsed,
            "hub_user_s": hub_user,
            "hub_system_s": hub_sys,
            "hub_run_delay_s": hub_wait,
            "generator_run_delay_s": gen_wait,
            "generator_cpu_s": gen_cpu,
            "generator_cpu_share": [c / elapsed for c in gen_cpu],
            "publisher_cpu_s": own_cpu,
            "publisher_cpu_share": own_cpu / elapsed,
        },
        "publish_without_subscribers": {
            "publishes": EMPTY_PUBLISHES,
            "elapsed_s": empty_elapsed,
            "hub_cpu_s": empty_cpu,
            "hub_cpu_us_per_publish": empty_cpu / EMPTY_PUBLISHES * 1e6,
        },
        "hub_uvloop": uvloop_in_hub,
    }


def bottleneck_check(
    result: dict[str, Any], nproc: int, pinned: dict[str, list[int]] | None
) -> tuple[bool, str]:
    """Was the hub the limit of the burst?

    It was when it kept its CPU busy and seldom waited for one: a faster load generator could then not have
    made it deliver more. If it idled, the subscribers (or the publisher) were the limit; if it waited for a
    CPU, other processes (the load when not pinned, or anything else) competed for its core. Either way
    the figures would understate the hub.
    """
    t = result["throughput"]
    elapsed = t["elapsed_s"]
    hub_share = t["hub_cpu_share"]
    hub_wait = t["hub_run_delay_s"] / elapsed
    load_cores = (sum(t["generator_cpu_s"]) + t["publisher_cpu_s"]) / elapsed
    where = f"on CPUs {pinned['load']}, hub on CPU {pinned['hub'][0]}" if pinned else f"sharing {nproc} CPUs"
    detail = (
        f"hub busy {hub_share:.0%} of the burst and waiting for a CPU {hub_wait:.0%}; "
        f"generators + publisher used {load_cores:.2f} cores {where}"
    )
    if hub_share >= 0.9 and hub_wait < 0.05:
        return True, f"hub-bound ({detail})"
    if hub_share + hub_wait >= 0.9:
        return (
            False,
            f"NOT hub-bound: other processes took CPU from the hub; figures understate it ({detail})",
        )
    return False, f"NOT hub-bound: the hub idled, the load generator was the limit ({detail})"


# --- running and reporting ---------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"RLIMIT_NOFILE hard limit is {hard}, the hub needs {needed} file descriptors for "
            f"{needed - FD_MARGIN} subscribers: raise it (e.g. `ulimit -Hn {needed}` as root, or "
            f"LimitNOFILE= in systemd) or use fewer --subscribers"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard != resource.RLIM_INFINITY else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # inherited by the hub and generators
        soft = target
    return int(soft)


def machine() -> dict[str, Any]:
    return machine_description()


def render(
    args: argparse.Namespace,
    info: dict[str, Any],
    r: dict[str, Any],
    pinned: dict[str, list[int]] | None,
    verdict: str,
) -> str:
    n = args.subscribers
    lat, thr, empty, conn = r["latency"], r["throughput"], r["publish_without_subscribers"], r["connect"]
    last, ans, lag = lat["last_received_ms"], lat["publish_answered_ms"], lat["last_read_after_answer_ms"]
    deliveries = thr["deliveries"]

    def row(label: str, *values: str) -> str:
        return f"  {label:<44}" + "".join(f"{v:>11}" for v in values)

    def us(seconds: float) -> str:
        return f"{seconds / deliveries * 1e6:.2f} µs"

    hub_where = f"pinned to CPU {pinned['hub'][0]}" if pinned else "not pinned"
    load_where = f"on CPUs {pinned['load']}" if pinned else "not pinned"
    return "\n".join(
        [
            f"wsgate hub fan-out benchmark: {n} subscribers over loopback ({HOST})",
            f"  hub      wsgate hub, {'uvloop' if r['hub_uvloop'] else 'asyncio (no uvloop)'}, {hub_where}",
            f"  load     {args.generators} subscriber processes + this publisher, {load_where}",
            f"  machine  {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
            f"uvloop {info['uvloop'] or 'not installed'}, aiohttp {info['aiohttp']}",
            "",
            f"connect: {n} subscribers (handshake + subscribe) in {conn['seconds']:.2f} s; hub RSS "
            f"{conn['hub_rss_connected_bytes'] / 2**20:.1f} MiB "
            f"(+{conn['hub_rss_per_connection_bytes'] / 1024:.1f} KiB per connection)",
            "",
            f"fan-out latency ({lat['publishes']} sequential publishes, "
            f"after {lat['warmup_publishes']} to warm up)",
            row("", "p50", "p99", "max"),
            row(
                f"publish → last of {n} subscribers read it",
                f"{last['p50']:.2f} ms",
                f"{last['p99']:.2f} ms",
                f"{last['max']:.2f} ms",
            ),
            row("publish → POST /api/publish answered", f"{ans['p50']:.2f} ms", f"{ans['p99']:.2f} ms"),
            row("last read minus POST answered", f"{lag['p50']:.2f} ms", "", f"{lag['max']:.2f} ms"),
            row(
                "hub CPU per publish (per subscriber)",
                f"{lat['hub_cpu_ms_per_publish']:.2f} ms",
                f"({lat['hub_cpu_ms_per_publish'] * 1000 / n:.2f} µs)",
            ),
            row("hub waiting for a CPU, per publish", f"{lat['hub_run_delay_ms_per_publish']:.2f} ms"),
            "",
            f"delivery throughput ({thr['publishes']} publishes, {thr['in_flight']} in flight, "
            f"× {n} subscribers = {deliveries:,} deliveries)",
            row("elapsed, first POST → last read", f"{thr['elapsed_s']:.3f} s"),
            row("deliveries/s", f"{thr['deliveries_per_s']:,.0f}"),
            row("hub CPU per delivery (user + system)", us(thr["hub_cpu_s"])),
            row("  of which user / system", us(thr["hub_user_s"]), us(thr["hub_system_s"])),
            row(
                "hub busy / waiting for a CPU",
                f"{thr['hub_cpu_share']:.0%}",
                f"{thr['hub_run_delay_s'] / thr['elapsed_s']:.0%}",
            ),
            row(
                f"hub CPU per publish to nobody ({empty['publishes']}×)",
                f"{empty['hub_cpu_us_per_publish']:.0f} µs",
            ),
            row("generators busy", *(f"{share:.0%}" for share in thr["generator_cpu_share"])),
            row("publisher busy", f"{thr['publisher_cpu_share']:.0%}"),
            "",
            f"bottleneck check: {verdict}",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=1000, help="WebSocket subscribers (default: 1000)")
    parser.add_argument(
        "--publishes", type=int, default=200, help="publishes in the throughput burst (default: 200)"
    )
    parser.add_argument(
        "--latency-publishes",
        type=int,
        default=LATENCY_PUBLISHES,
        help=f"sequential publishes for the latency figures (default: {LATENCY_PUBLISHES})",
    )
    parser.add_argument(
        "--generators",
        type=int,
        default=2,
        help="subscriber processes sharing the N connections (default: 2)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not give the hub a CPU of its own (by default it gets the first, the load the others)",
    )
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if not 1 <= args.subscribers <= 50_000:
        parser.error("--subscribers must be between 1 and 50000")
    if not 1 <= args.publishes <= 10_000 or not 1 <= args.latency_publishes <= 1000:
        parser.error("--publishes must be 1-10000 and --latency-publishes 1-1000")
    if not 1 <= args.generators <= args.subscribers:
        parser.error("--generators must be between 1 and --subscribers")
    return args


def pin(hub_pid: int) -> dict[str, list[int]] | None:
    """Give the hub a CPU of its own and keep this process and the generators (which inherit our affinity)
    on the others, so that the load cannot steal the hub's CPU time. Needs at least two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(hub_pid, cpus[:1])
    os.sched_setaffinity(0, cpus[1:])
    return {"hub": cpus[:1], "load": cpus[1:]}


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fd_limit = raise_fd_limit(args.subscribers + FD_MARGIN)
    except BenchError as exc:
        print(f"hub_fanout: {exc}", file=sys.stderr)
        return 2
    info = machine()
    with tempfile.TemporaryDirectory(prefix="wsgate-bench-") as tmp:
        hub = HubProcess(Path(tmp), free_port(), max_connections=args.subscribers + FD_MARGIN)
        generators: Generators | None = None
        pinned: dict[str, list[int]] | None = None
        try:
            hub.start()
            pinned = pin(hub.pid) if args.pin else None
            specs = [
                GeneratorSpec(i, hub.port, hub.token, count)
                for i, count in enumerate(split(args.subscribers, args.generators))
            ]
            generators = Generators(specs)

            async def run() -> dict[str, Any]:
                assert generators is not None
                async with asyncio.timeout(RUN_TIMEOUT):
                    return await measure(args, hub, generators)

            result = run_loop(run())
        except (BenchError, TimeoutError, OSError, aiohttp.ClientError) as exc:
            text = str(exc) or f"the run took longer than {RUN_TIMEOUT:.0f}s"
            print(f"hub_fanout: {exc.__class__.__name__}: {text}", file=sys.stderr)
            return 1
        finally:
            if generators is not None:
                generators.stop()
                generators.join()
            hub.stop()

    hub_bound, verdict = bottleneck_check(result, info["nproc"], pinned)
    report = {
        "benchmark": "hub_fanout",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "subscribers": args.subscribers,
        "generators": args.generators,
        "frame_bytes": len(
            b'{"type":"message","channel":"bench","offset":100,"data":'
            + json.dumps(payload(100), separators=(",", ":")).encode()
            + b"}"
        )
        + 2,
        "fd_limit": fd_limit,
        "cpu_pinning": pinned,
        "machine": info,
        **result,
        "hub_bound": hub_bound,
        "bottleneck_check": verdict,
    }
    print(render(args, info, result, pinned, verdict))
    path = args.json or RESULTS_DIR / f"hub_fanout-{datetime.now():%Y%m%d-%H%M%S}-{args.subscribers}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
