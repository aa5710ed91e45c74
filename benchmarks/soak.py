"""Soak: 10,000 kiosks through the gateway to the hub for 10 minutes, with the hub's pings and one publish a
second; memory and file descriptors must stay flat and every kiosk must read every message.

The rig is ``benchmarks/kiosk_swarm.py`` (the same as ``tests/load/test_ten_thousand.py``): a ``wsgate hub``
process, a gateway tier of ``wsgate gateway`` processes minting one token per connection (one process where
the file limit allows two descriptors per connection, else as few as it allows), and generator processes
holding the connections with ``hub_fanout``'s client, which answers the hub's pings and checks the offset of
every message it reads.

Once every kiosk is connected and subscribed, this process publishes through the hub's HTTP API at a steady
``--rate`` for ``--minutes``, and every ``--sample-every`` seconds reads RSS (VmRSS), open file descriptors
and CPU time of every server from ``/proc``. At the end the kiosks close with a close handshake and report
how many messages each read and how many pings it answered.

Pass criteria (exit status 0; 1 otherwise):

* RSS of the hub and of the gateway tier grows less than 5 % between minute 1 and the end;
* no server holds more file descriptors at the end than when the soak began, and after the kiosks leave
  every server is back to its idle count;
* no misses: every kiosk read every message, in order (a gap or a duplicate fails the kiosk's check);
  no connection failed, every close handshake completed (1000), every server stayed up and stopped cleanly;
* the pings ran: every kiosk answered at least one ping per two ping intervals.

It prints a table and writes everything to ``benchmarks/results/soak-<time>.json``.

Usage: ``make soak`` or ``.venv/bin/python benchmarks/soak.py [--minutes 10] [--connections 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

try:
    from benchmarks.hub_fanout import machine, percentile
    from benchmarks.kiosk_swarm import (
        STEP_TIMEOUT,
        BenchError,
        KioskRig,
        Swarmed,
        merge_summaries,
        run_loop,
    )
    from benchmarks.procstat import cpu_seconds, machine_busy, run_delay
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from hub_fanout import machine, percentile  # type: ignore[no-redef,import-not-found]
    from kiosk_swarm import (  # type: ignore[no-redef,import-not-found]
        STEP_TIMEOUT,
        BenchError,
        KioskRig,
        Swarmed,
        merge_summaries,
        run_loop,
    )
    from procstat import cpu_seconds, machine_busy, run_delay  # type: ignore[no-redef,import-not-found]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RSS_GROWTH_LIMIT = 0.05  # RSS may grow less than 5 % between minute 1 and the end
REFERENCE_SECONDS = 60.0  # "minute 1": the sample RSS growth is measured from
MIB = 1024**2


def payload(seq: int) -> dict[str, Any]:
    """A kiosk-sized event (the frame each kiosk reads is about 140 bytes)."""
    return {"action": "announce", "seq": seq, "text": "soak", "at": datetime.now(UTC).isoformat()}


class Sampler:
    """Readings of every server (and the generators' CPU) at moments of the soak."""

    def __init__(self, rig: KioskRig, swarm: Swarmed, started: float) -> None:
        self.rig = rig
        self.swarm = swarm
        self.started = started
        self.rows: list[dict[str, Any]] = []

    def take(self, published: int) -> dict[str, Any]:
        for server in self.rig.servers:
            server.check_alive()
        usage = self.rig.usage()
        tiers = self.rig.tiers(usage)
        row = {
            "t": round(time.monotonic() - self.started, 2),
            "published": published,
            "reached_all": self.swarm.reached(),
            "servers": {name: vars(u) for name, u in usage.items()},
            "hub": vars(tiers["hub"]),
            "gateway": vars(tiers["gateway"]),
            "generators_cpu": sum(cpu_seconds(pid) for pid in self.swarm.pids),
            "own_cpu": cpu_seconds(os.getpid()),
            # Seconds each server was runnable but had no CPU (other processes had it).
            "run_delay": {server.name: run_delay(server.pid) for server in self.rig.servers},
            "machine_busy": machine_busy(),
            "error": self.swarm.error,
        }
        self.rows.append(row)
        return row


def cpu_share(rows: list[dict[str, Any]], i: int, key: str) -> float:
    """Cores used by ``key`` (a tier, ``generators``, or ``others``: everything else on the machine) between
    sample i-1 and i; for ``wait``, the servers' time runnable without a CPU, as a share of the interval."""
    if i == 0:
        return 0.0
    before, after = rows[i - 1], rows[i]
    elapsed = float(after["t"] - before["t"])
    if elapsed <= 0:
        return 0.0

    def used(row: dict[str, Any]) -> float:
        if key in ("hub", "gateway"):
            return float(row[key]["cpu"])
        if key == "generators":
            return float(row["generators_cpu"])
        if key == "wait":
            return float(sum(row["run_delay"].values()))
        ours = row["hub"]["cpu"] + row["gateway"]["cpu"] + row["generators_cpu"] + row["own_cpu"]
        return float(row["machine_busy"] - ours)

    return (used(after) - used(before)) / elapsed


def render_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'t (s)':>7} {'published':>9} {'all read':>8} {'hub RSS':>10} {'gw RSS':>10} "
        f"{'hub fds':>8} {'gw fds':>8} {'hub CPU':>8} {'gw CPU':>8} {'gen CPU':>8} {'others':>8} "
        f"{'waiting':>8}"
    )
    lines = [header, "-" * len(header)]
    for i, row in enumerate(rows):
        lines.append(
            f"{row['t']:>7.0f} {row['published']:>9} {row['reached_all']:>8} "
            f"{row['hub']['rss'] / MIB:>6.1f} MiB {row['gateway']['rss'] / MIB:>6.1f} MiB "
            f"{row['hub']['fds']:>8} {row['gateway']['fds']:>8} "
            f"{cpu_share(rows, i, 'hub'):>7.1%} {cpu_share(rows, i, 'gateway'):>7.1%} "
            f"{cpu_share(rows, i, 'generators'):>7.1%} {cpu_share(rows, i, 'others'):>7.1%} "
            f"{cpu_share(rows, i, 'wait'):>7.1%}"
        )
    return "\n".join(lines)


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = args.connections
    rig = KioskRig(workdir, n, ping_interval=args.ping_interval, gateways=args.gateways)
    swarm: Swarmed | None = None
    result: dict[str, Any] = {"topology": rig.describe()}
    try:
        await rig.start()
        result["uvloop"] = rig.uvloop()
        idle = await rig.idle_usage()
        result["idle"] = {name: vars(u) for name, u in idle.items()}
        print(f"soak: {rig.describe()}; connecting {n} kiosks …", flush=True)
        swarm = Swarmed(rig.gateway_ports, n, args.generators)
        result["connect_seconds"] = await swarm.connect(limit=STEP_TIMEOUT + n / 100)
        connected = rig.usage()
        tiers_idle, tiers_connected = rig.tiers(idle), rig.tiers(connected)
        result["memory_per_connection_bytes"] = {
            tier: (tiers_connected[tier].rss - tiers_idle[tier].rss) / n for tier in ("hub", "gateway")
        }
        print(
            f"soak: {n} kiosks connected in {result['connect_seconds']:.1f} s; "
            f"soaking {args.minutes:g} min, {args.rate:g} publish/s, pings every {args.ping_interval:g} s",
            flush=True,
        )

        publishes = max(1, round(args.minutes * 60 * args.rate))
        started = time.monotonic()
        sampler = Sampler(rig, swarm, started)
        sampler.take(0)
        next_sample = started + args.sample_every
        sent: dict[int, float] = {}
        answered: list[float] = []  # seconds from sending a publish to its answer
        late = 0
        offsets_ok = True
        for seq in range(1, publishes + 1):
            due = started + seq / args.rate
            now = time.monotonic()
            if now < due:
                await asyncio.sleep(due - now)  # the publishing pace, not a wait for a condition
            elif now - due > 0.5:
                late += 1
            sent[seq] = time.monotonic()
            offset = await rig.publish(payload(seq))
            answered.append(time.monotonic() - sent[seq])
            offsets_ok &= offset == seq
            if time.monotonic() >= next_sample and seq < publishes:  # the last one: the end sample
                row = sampler.take(seq)
                next_sample += args.sample_every
                if args.verbose:
                    print(render_table(sampler.rows[-2:]).splitlines()[-1], flush=True)
                elif row["error"] and len(sampler.rows) % 6 == 0:
                    print(f"soak: error reported: {row['error']}", flush=True)
        try:
            await swarm.delivered(publishes, limit=STEP_TIMEOUT)
            delivered_all = True
        except BenchError as exc:
            delivered_all = False
            result["delivery_failure"] = str(exc)
        soak_seconds = time.monotonic() - started
        # Our last publish's HTTP connection may still be closing in the hub: let it go (bounded) first.
        await rig.wait_fds({name: u["fds"] for name, u in sampler.rows[0]["servers"].items()}, limit=5)
        end = sampler.take(publishes)
        first_error = swarm.error

        latencies = [
            max(done[seq] for done in swarm.done) - sent[seq]
            for seq in sent
            if all(seq in done for done in swarm.done)
        ]
        swarm_done = swarm.done
        summary = merge_summaries(await swarm.close())
        after_close = await rig.wait_fds({name: u.fds for name, u in idle.items()}, limit=STEP_TIMEOUT)
        healthy = await rig.healthy()
        rows = sampler.rows
    finally:
        if swarm is not None:
            await swarm.shutdown()
        statuses = await rig.stop()

    # --- verdicts ------------------------------------------------------------------------------------
    reference = min(rows, key=lambda row: abs(row["t"] - REFERENCE_SECONDS))
    growth = {
        tier: (end[tier]["rss"] - reference[tier]["rss"]) / reference[tier]["rss"]
        for tier in ("hub", "gateway")
    }
    fd_growth = {
        name: end["servers"][name]["fds"] - rows[0]["servers"][name]["fds"] for name in rows[0]["servers"]
    }
    misses = sum((publishes - int(got)) * count for got, count in summary["received"].items())
    missing_connections = sum(count for got, count in summary["received"].items() if int(got) != publishes)
    ping_floor = math.floor(soak_seconds / (2 * args.ping_interval))
    cpu = {tier: end[tier]["cpu"] - rows[0][tier]["cpu"] for tier in ("hub", "gateway")} | {
        "generators": end["generators_cpu"] - rows[0]["generators_cpu"],
        "publisher": end["own_cpu"] - rows[0]["own_cpu"],
    }
    # Everything else the machine ran meanwhile (other jobs on a shared box take CPU from the servers).
    cpu["others"] = end["machine_busy"] - rows[0]["machine_busy"] - sum(cpu.values())
    deliveries = publishes * n
    checks = {
        "rss_growth_below_5_percent": all(g < RSS_GROWTH_LIMIT for g in growth.values()),
        "no_fd_growth": all(g <= 0 for g in fd_growth.values()),
        "fds_back_to_idle_after_close": all(
            after_close[name] <= idle_usage["fds"] for name, idle_usage in result["idle"].items()
        ),
        "no_misses": delivered_all and misses == 0 and summary["received"] == {publishes: n},
        "no_errors": first_error is None and summary["errors"] == 0 and offsets_ok,
        "clean_closes": summary["close_codes"] == {"1000": n} and summary["not_closed"] == 0,
        "pings_answered": summary["pings"]["min"] >= ping_floor,
        "servers_stayed_up": healthy and set(statuses.values()) == {0},
    }
    result.update(
        {
            "connections": n,
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "ping_interval_s": args.ping_interval,
            "publishes": publishes,
            "late_publishes": late,
            "soak_seconds": soak_seconds,
            "reference_sample_t": reference["t"],
            "rss": {
                tier: {
                    "start": rows[0][tier]["rss"],
                    "minute_1": reference[tier]["rss"],
                    "end": end[tier]["rss"],
                }
                for tier in ("hub", "gateway")
            },
            "rss_growth": growth,
            "fds": {
                "start": {name: u["fds"] for name, u in rows[0]["servers"].items()},
                "end": {name: u["fds"] for name, u in end["servers"].items()},
                "idle": {name: u["fds"] for name, u in result["idle"].items()},
                "after_close": after_close,
            },
            "fd_growth": fd_growth,
            "cpu_seconds": cpu,
            "cpu_share": {name: used / soak_seconds for name, used in cpu.items()},
            "cpu_us_per_delivery": {tier: cpu[tier] / deliveries * 1e6 for tier in ("hub", "gateway")},
            "delivery_latency_ms": {
                "p50": percentile(latencies, 50) * 1000 if latencies else None,
                "p99": percentile(latencies, 99) * 1000 if latencies else None,
                "max": max(latencies) * 1000 if latencies else None,
                "measured": len(latencies),
            },
            "per_publish_ms": {
                "answered": [round(x * 1000, 1) for x in answered],
                "all_read": [
                    round((max(done[seq] for done in swarm_done) - sent[seq]) * 1000, 1)
                    if all(seq in done for done in swarm_done)
                    else None
                    for seq in sent
                ],
            },
            "server_run_delay_s": {
                name: end["run_delay"][name] - rows[0]["run_delay"][name] for name in end["run_delay"]
            },
            "publish_answered_ms": {
                "p50": percentile(answered, 50) * 1000,
                "p99": percentile(answered, 99) * 1000,
                "max": max(answered) * 1000,
            },
            "misses": misses,
            "connections_with_misses": missing_connections,
            "first_error": first_error,
            "kiosks": summary,
            "ping_floor": ping_floor,
            "exit_statuses": statuses,
            "samples": rows,
            "checks": checks,
            "passed": all(checks.values()),
        }
    )
    return result


def render(result: dict[str, Any]) -> str:
    rss, growth, fds, cpu = result["rss"], result["rss_growth"], result["fds"], result["cpu_share"]
    latency = result["delivery_latency_ms"]
    per_conn = result["memory_per_connection_bytes"]
    kiosks = result["kiosks"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    lines = [
        "",
        render_table(result["samples"]),
        "",
        f"soak of {result['connections']} kiosks ({result['topology']}), {result['soak_seconds']:.0f} s, "
        f"{result['publishes']} publishes ({result['late_publishes']} late), pings every "
        f"{result['ping_interval_s']:g} s",
        f"  memory per connection (RSS growth / N while connecting): hub {per_conn['hub'] / 1024:.2f} KiB, "
        f"gateway {per_conn['gateway'] / 1024:.2f} KiB",
    ]
    for tier in ("hub", "gateway"):
        lines.append(
            f"  {tier:8} RSS {rss[tier]['start'] / MIB:.1f} MiB at the start, "
            f"{rss[tier]['minute_1'] / MIB:.1f} MiB at t={result['reference_sample_t']:.0f} s, "
            f"{rss[tier]['end'] / MIB:.1f} MiB at the end: {growth[tier]:+.2%}; "
            f"CPU {cpu[tier]:.1%} of a core, {result['cpu_us_per_delivery'][tier]:.1f} µs per delivery"
        )
    lines += [
        f"  fds at the start {fds['start']}, at the end {fds['end']}, idle {fds['idle']}, "
        f"after the kiosks left {fds['after_close']}",
        f"  generators CPU {cpu['generators']:.1%} of a core, publisher {cpu['publisher']:.1%}; "
        f"other processes on the machine {cpu['others']:.1%}; servers waiting for a CPU "
        + ", ".join(f"{name} {delay:.1f} s" for name, delay in result["server_run_delay_s"].items()),
        f"  messages: {result['misses']} missed ({result['connections_with_misses']} kiosks short), "
        f"read counts {kiosks['received']}; publish → all read p50 {ms(latency['p50'])}, "
        f"p99 {ms(latency['p99'])}, max {ms(latency['max'])}; publish answered p50 "
        f"{ms(result['publish_answered_ms']['p50'])}, max {ms(result['publish_answered_ms']['max'])}",
        f"  pings answered per kiosk: min {kiosks['pings']['min']}, max {kiosks['pings']['max']} "
        f"(at least {result['ping_floor']} required); close codes {kiosks['close_codes']}, "
        f"not closed {kiosks['not_closed']}; errors {kiosks['errors']}, "
        f"first: {result['first_error'] or '-'}",
        f"  exit statuses {result['exit_statuses']}",
        "",
    ]
    lines += [f"  {'PASS' if ok else 'FAIL'}  {name}" for name, ok in result["checks"].items()]
    lines.append(f"soak: {'PASSED' if result['passed'] else 'FAILED'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10_000, help="kiosks (default: 10000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default: 10)")
    parser.add_argument("--rate", type=float, default=1.0, help="publishes per second (default: 1)")
    parser.add_argument(
        "--ping-interval", type=float, default=20.0, help="the hub's limits.ping_interval, s (default: 20)"
    )
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="seconds between samples (default: 10)"
    )
    parser.add_argument("--generators", type=int, default=2, help="generator processes (default: 2)")
    parser.add_argument(
        "--gateways",
        type=int,
        help="gateway processes (default: as few as the file limit allows, 1 if it can)",
    )
    parser.add_argument("--verbose", action="store_true", help="print each sample as it is taken")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 30_000:
        parser.error("--connections must be between 1 and 30000")
    if not 0.5 <= args.minutes <= 120:
        parser.error("--minutes must be between 0.5 and 120")
    if not 0.1 <= args.rate <= 100 or not 1 <= args.ping_interval <= 600 or not 1 <= args.sample_every <= 600:
        parser.error("--rate must be 0.1-100, --ping-interval and --sample-every 1-600")
    if not 1 <= args.generators <= 16 or (args.gateways is not None and not 1 <= args.gateways <= 8):
        parser.error("--generators must be 1-16, --gateways 1-8")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Everything is bounded: connecting, the soak itself, and the close and shutdown after it.
    limit = STEP_TIMEOUT + args.connections / 100 + args.minutes * 60 + 300

    async def bounded(workdir: Path) -> dict[str, Any]:
        async with asyncio.timeout(limit):
            return await soak(args, workdir)

    with tempfile.TemporaryDirectory(prefix="wsgate-soak-") as tmp:
        try:
            result = run_loop(bounded(Path(tmp)))
        except (BenchError, TimeoutError, OSError, aiohttp.ClientError) as exc:
            text = str(exc) or f"the run took longer than {limit:.0f}s"
            print(f"soak: {exc.__class__.__name__}: {text}", file=sys.stderr)
            for log in sorted(Path(tmp).glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-5:]
                print(f"--- {log.name} (last lines)\n" + "\n".join(tail), file=sys.stderr)
            return 1
    report = {
        "benchmark": "soak",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"platform": platform.platform()},
        **result,
    }
    print(render(result))
    path = args.json or RESULTS_DIR / f"soak-{datetime.now():%Y%m%d-%H%M%S}-{args.connections}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
