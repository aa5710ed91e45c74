"""The benchmark suite's report: one run's JSON in, the published tables and plots out.

Reads the hub benchmark's results (``hub_fanout.py``'s JSON) and, when the same ``make bench`` run produced
it, the gateway benchmark's (``gateway_bench.py``'s JSON, read as it is), and writes

* ``benchmarks/results/<date>.json``: both, with the machine and the Markdown (git-ignored, like all results);
* PNG plots of the hub figures under ``docs/img/`` (committed: they are the published plots);
* the block of ``docs/performance.md`` between ``<!-- bench:hub:start -->`` and ``<!-- bench:hub:end -->``:
  the machine, the tables and the plots. Nothing else in the document is touched.

Usage: ``.venv/bin/python benchmarks/report.py [--hub PATH] [--gateway PATH] [--no-docs]``
(without ``--hub``: the newest ``benchmarks/results/hub_fanout-*.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DOC = ROOT / "docs" / "performance.md"
IMG_DIR = ROOT / "docs" / "img"
START, END = "<!-- bench:hub:start -->", "<!-- bench:hub:end -->"

TARGET_LABELS = {
    "wsgate": "**wsgate**",
    "node-ws": "Node `ws`",
    "node-ws-preframed": "Node `ws`, pre-framed",
    "py-websockets": "python-websockets",
}
PLOT_LABELS = {
    "wsgate": "wsgate",
    "nginx": "nginx",
    "hpm": "express + HPM",
    "floor": "floor relay",
    "node-ws": "Node ws",
    "node-ws-preframed": "Node ws pre-framed",
    "py-websockets": "py websockets",
}
COLOURS = {
    "wsgate": "#2b6cb0",
    "nginx": "#718096",
    "hpm": "#d69e2e",
    "floor": "#a0aec0",
    "node-ws": "#dd6b20",
    "node-ws-preframed": "#f6ad55",
    "py-websockets": "#38a169",
}

# Rows of the fan-out table: summary key, label, number format.
FANOUT_ROWS: list[tuple[str, str, str]] = [
    ("latency_p50_ms", "**fan-out latency p50** (publish → last subscriber read it), ms", "{:.2f}"),
    ("latency_p99_ms", "fan-out latency p99, ms", "{:.2f}"),
    (
        "written_p50_ms",
        "… written to every subscriber (the control connection read it), p50 / p99, ms",
        "{:.2f}",
    ),
    ("lag_p50_ms", "… last subscriber's read after that, p50 / max, ms", "{:.2f}"),
    ("sequential_cpu_us", "server CPU per delivery, sequential publishes, µs", "{:.2f}"),
    ("sequential_writes", "… write system calls per delivery", "{:.2f}"),
    ("deliveries_per_s", "**deliveries/s**, burst (8 publishes in flight)", "{:,.0f}"),
    ("burst_cpu_us", "**server CPU per delivery, burst**, µs", "{:.2f}"),
    ("burst_user_us", "… of which user / system, µs", "{:.2f}"),
    ("burst_writes", "… write system calls per delivery", "{:.2f}"),
    ("burst_target_busy", "server busy / waiting for a CPU during the burst", "{:.0%}"),
    ("burst_load_cores", "load (subscribers + publisher) during the burst, CPUs", "{:.2f}"),
    ("burst_load_us", "subscribers' CPU per delivery during the burst, µs", "{:.2f}"),
    ("empty_publish_cpu_us", "server CPU per publish to one subscriber (the trigger), µs", "{:.0f}"),
    ("connect_s", "connect and subscribe N, s", "{:.2f}"),
    ("rss_kib_per_connection", "RSS per subscribed connection, KiB", "{:.1f}"),
]
# Rows shown as "a / b" pairs: the second key goes in the same cell.
PAIRED = {
    "written_p50_ms": "written_p99_ms",
    "lag_p50_ms": "lag_max_ms",
    "burst_user_us": "burst_system_us",
    "burst_target_busy": "burst_target_waiting",
}
IDLE_ROWS: list[tuple[str, str, str]] = [
    ("idle_rss_kib_per_connection", "**RSS per idle subscribed connection**, KiB", "{:.1f}"),
    ("idle_rss_idle_mib", "RSS before / after, MiB", "{:.0f}"),
    ("idle_slab_kib_per_connection", "kernel slab per connection (machine-wide, both ends), KiB", "{:.1f}"),
    ("idle_connect_s", "connect and subscribe them all, s", "{:.1f}"),
]
PAIRED["idle_rss_idle_mib"] = "idle_rss_connected_mib"


# --- reading ---------------------------------------------------------------------------------------------


def newest(pattern: str) -> Path | None:
    found = sorted(RESULTS_DIR.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def cell(summary: dict[str, Any], key: str, n: str, target: str) -> dict[str, float] | None:
    value: dict[str, float] | None = summary.get(key, {}).get(n, {}).get(target)
    return value


def median(summary: dict[str, Any], key: str, n: str, target: str) -> float | None:
    found = cell(summary, key, n, target)
    return found["median"] if found else None


# --- Markdown ----------------------------------------------------------------------------------------------


def fmt_cell(summary: dict[str, Any], key: str, n: str, target: str, fmt: str) -> str:
    """``median (min–max)``, or ``a / b`` medians for paired rows, or — when not measured."""
    found = cell(summary, key, n, target)
    if found is None:
        return "—"
    text = fmt.format(found["median"])
    if key in PAIRED:
        other = cell(summary, PAIRED[key], n, target)
        text += " / " + (fmt.format(other["median"]) if other else "—")
    elif found["n"] > 1 and found["min"] != found["max"]:
        text += f" ({fmt.format(found['min'])}–{fmt.format(found['max'])})"
    return f"**{text}**" if target == "wsgate" else text


def table(summary: dict[str, Any], rows: list[tuple[str, str, str]], n: str, targets: list[str]) -> list[str]:
    lines = [
        "| | " + " | ".join(TARGET_LABELS.get(t, t) for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for key, label, fmt in rows:
        if not any(cell(summary, key, n, t) for t in targets):
            continue
        lines.append(f"| {label} | " + " | ".join(fmt_cell(summary, key, n, t, fmt) for t in targets) + " |")
    return lines


def verdict_line(report: dict[str, Any], n: int) -> str:
    """How many bursts at N were target-bound, per target, and what the others were."""
    parts = []
    for target in report["targets"]:
        verdicts = [
            t["result"]["burst"]["verdict"]
            for t in report["turns"]
            if t["target"] == target and t["subscribers"] == n and t["round"] > 0 and "result" in t
            if t["scenario"] == "fanout"
        ]
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        parts.append(
            f"{PLOT_LABELS.get(target, target)} " + ", ".join(f"{c}× {v}" for v, c in counts.items())
        )
    return "; ".join(parts)


def goals(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 7's hub targets, judged on the medians: (goal, measured, met)."""
    s = report["summary"]
    rows: list[tuple[str, str, bool | None]] = []
    for n in map(str, report["subscribers"]):
        for q in ("p50", "p99"):
            ours, node = median(s, f"latency_{q}_ms", n, "wsgate"), median(s, f"latency_{q}_ms", n, "node-ws")
            if ours is not None and node is not None:
                rows.append(
                    (
                        f"fan-out latency {q} at N = {int(n):,} ≤ Node `ws`'s",
                        f"{ours:.2f} ms vs {node:.2f} ms ({ours / node:.2f}×)",
                        ours <= node,
                    )
                )
    big = str(max(report["subscribers"]))
    ours, node = median(s, "burst_cpu_us", big, "wsgate"), median(s, "burst_cpu_us", big, "node-ws")
    if ours is not None:
        rows.append(
            (f"server CPU per delivery at N = {int(big):,}, burst ≤ 3 µs", f"{ours:.2f} µs", ours <= 3)
        )
        if node is not None:
            rows.append(
                (
                    "… ≥ 4× better than Node `ws`'s",
                    f"{node / ours:.1f}× ({node:.2f} µs vs {ours:.2f} µs)",
                    node / ours >= 4,
                )
            )
    idle = report.get("idle_connections")
    kib = median(s, "idle_rss_kib_per_connection", str(idle), "wsgate") if idle else None
    if kib is not None:
        rows.append(
            (
                "< 10 KiB per idle connection beyond the kernel's socket buffers (50,000 asked)",
                f"{kib:.1f} KiB at {idle:,} (50,000 do not fit this machine's file limit)",
                kib < 10,
            )
        )
    return rows


def machine_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    pinning = report.get("cpu_pinning")
    where = (
        f"server on CPU {pinning['target'][0]}, subscribers and publisher on CPU "
        + ", ".join(map(str, pinning["load"]))
        if pinning
        else "not pinned"
    )
    return [
        f"Measured {report['when'][:10]} with `{report['command']}` ({report['elapsed_s']:.0f} s), "
        f"wsgate at `{m.get('wsgate', '?')}`: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, uvloop {m.get('uvloop')}, aiohttp {m['aiohttp']}; Node.js {m.get('node')} "
        f"with ws {m.get('ws')}; python-websockets {m.get('websockets')}. {where[0].upper()}{where[1:]}. "
        f"{report['frame_bytes']}-byte frames; subscribers: "
        f"{'the C client' if report.get('client') == 'c' else 'the Python client'} in "
        f"{report['generators']} processes.",
    ]


def hub_markdown(report: dict[str, Any], plots: list[Path] | None = None) -> str:
    """The hub section's generated block: machine, fan-out tables per N, idle memory, goals, plots."""
    s, targets = report["summary"], report["targets"]
    lines = [*machine_lines(report), ""]
    rounds = report["rounds"]
    for n in report["subscribers"]:
        lines += [
            f"**{n:,} subscribers**: median of {rounds} rounds (min–max); "
            f"{report['latency_publishes']} sequential publishes for latency, "
            f"a burst of {report['burst_publishes'][str(n)]} publishes for throughput.",
            "",
            *table(s, FANOUT_ROWS, str(n), targets),
            "",
            f"Bursts: {verdict_line(report, n)}.",
            "",
        ]
    idle, idle_rounds = report.get("idle_connections"), report.get("idle_rounds", 0)
    if idle and idle_rounds:
        lines += [
            f"**{idle:,} idle subscribed connections** on one server process "
            f"({'median of ' + str(idle_rounds) + ' rounds' if idle_rounds > 1 else 'one round'}):",
            "",
            *table(s, IDLE_ROWS, str(idle), targets),
            "",
        ]
    checks = report.get("extra_generator_check") or []
    if checks:
        lines.append("**One more generator process** (one turn each, at the largest N):")
        lines.append("")
        for row in checks:
            d, lat = row["deliveries_per_s"], row["latency_p50_ms"]
            lines.append(
                f"- {PLOT_LABELS.get(row['target'], row['target'])}, {row['subscribers']:,}: "
                f"{d['with_one_more']:,.0f} deliveries/s with {d['generators']} generators against "
                f"{d['regular_median']:,.0f} with {d['regular_generators']}; latency p50 "
                f"{lat['with_one_more']:.2f} ms against {lat['regular_median']:.2f} ms."
            )
        lines.append("")
    rows = goals(report)
    if rows:
        lines += ["| issue 7 target (hub) | measured | |", "|---|---|---|"]
        lines += [
            f"| {goal} | {measured} | {'met' if met else '**not met**'} |" for goal, measured, met in rows
        ]
        lines.append("")
    for plot in plots or []:
        lines.append(f"![{plot.stem}](img/{plot.name})")
    return "\n".join(lines).rstrip() + "\n"


def gateway_markdown(gateway: dict[str, Any]) -> str:
    """The gateway benchmark's summary as a plain table (keys as it names them), for the run's report."""
    summary, targets = gateway.get("summary", {}), gateway.get("targets", [])
    lines = ["| | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for key, by_target in summary.items():
        cells = []
        for target in targets:
            found = by_target.get(target) if isinstance(by_target, dict) else None
            cells.append(
                "—" if not found else f"{found['median']:,.3g} ({found['min']:,.3g}–{found['max']:,.3g})"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- plots -------------------------------------------------------------------------------------------------


def bar_groups(axis: Any, report: dict[str, Any], groups: list[tuple[str, str, str]]) -> None:
    """Bars per target within each group — (summary key, N, label) — with min–max whiskers."""
    targets = report["targets"]
    width = 0.8 / len(targets)
    for i, target in enumerate(targets):
        cells = [cell(report["summary"], key, n, target) for key, n, _ in groups]
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(groups))]
        heights = [c["median"] if c else 0 for c in cells]
        errors = [
            [c["median"] - c["min"] if c else 0 for c in cells],
            [c["max"] - c["median"] if c else 0 for c in cells],
        ]
        axis.bar(
            xs, heights, width, yerr=errors, capsize=3, color=COLOURS.get(target), label=PLOT_LABELS[target]
        )
    axis.set_xticks(range(len(groups)), [label for _, _, label in groups])
    axis.grid(axis="y", alpha=0.3)


def plot(report: dict[str, Any], img_dir: Path) -> list[Path]:
    """Three small PNGs: latency, CPU per delivery, memory per connection."""
    import matplotlib

    matplotlib.use("Agg")  # no display; PNG files only
    import matplotlib.pyplot as plt

    sizes = [str(n) for n in report["subscribers"]]
    img_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    figure, axes = plt.subplots(1, len(sizes), figsize=(8, 3.2), squeeze=False)
    for axis, n in zip(axes[0], sizes, strict=True):
        bar_groups(axis, report, [("latency_p50_ms", n, "p50"), ("latency_p99_ms", n, "p99")])
        axis.set_title(f"publish → last of {int(n):,} subscribers read it (ms)", fontsize=9)
    legend_on_top(axes[0][0], report)
    paths.append(save(figure, img_dir / "hub-latency.png"))

    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, key, title in zip(
        axes,
        ("burst_cpu_us", "sequential_cpu_us"),
        ("burst, 8 in flight", "sequential publishes"),
        strict=True,
    ):
        bar_groups(axis, report, [(key, n, f"{int(n):,} subscribers") for n in sizes])
        axis.set_title(f"server CPU per delivery (µs), {title}", fontsize=9)
    axes[0].axhline(3, color="grey", linestyle="--", linewidth=1)
    axes[0].text(-0.45, 3.1, "target 3 µs", fontsize=7, color="grey")
    legend_on_top(axes[0], report)
    paths.append(save(figure, img_dir / "hub-cpu.png"))

    figure, axis = plt.subplots(figsize=(8, 3.2))
    groups = [("rss_kib_per_connection", n, f"{int(n):,} (fan-out turns)") for n in sizes]
    idle = report.get("idle_connections")
    if idle and report.get("idle_rounds"):
        groups.append(("idle_rss_kib_per_connection", str(idle), f"{idle:,} idle"))
    bar_groups(axis, report, groups)
    axis.axhline(10, color="grey", linestyle="--", linewidth=1)
    axis.set_title("server RSS per subscribed connection (KiB; kernel memory not included)", fontsize=9)
    legend_on_top(axis, report)
    paths.append(save(figure, img_dir / "hub-memory.png"))
    return paths


# Panels of the gateway plot: (summary key, title, target line for wsgate or None).
GATEWAY_PANELS: list[tuple[str, str, float | None]] = [
    ("echo_cpu", "proxy CPU per relayed message (µs)", None),
    ("hs_conc_cpu", "proxy CPU per handshake, 20 concurrent (µs)", None),
    ("idle_kib", "memory per idle tunnel (KiB)", 4.0),
]


def plot_gateway(gateway: dict[str, Any], img_dir: Path) -> Path:
    """One PNG of the gateway benchmark's per-unit costs, for the proxies (the direct target has none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proxies = [t for t in gateway["targets"] if t != "direct"]
    img_dir.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(GATEWAY_PANELS), figsize=(9, 3.2))
    for axis, (key, title, target_line) in zip(axes, GATEWAY_PANELS, strict=True):
        cells = [gateway["summary"].get(key, {}).get(proxy) for proxy in proxies]
        heights = [c["median"] if c else 0 for c in cells]
        errors = [
            [c["median"] - c["min"] if c else 0 for c in cells],
            [c["max"] - c["median"] if c else 0 for c in cells],
        ]
        axis.bar(
            range(len(proxies)),
            heights,
            yerr=errors,
            capsize=3,
            color=[COLOURS.get(proxy) for proxy in proxies],
        )
        axis.set_xticks(range(len(proxies)), [PLOT_LABELS.get(proxy, proxy) for proxy in proxies], fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
        if target_line is not None:
            axis.axhline(target_line, color="grey", linestyle="--", linewidth=1)
    return save(figure, img_dir / "gateway-costs.png")


def legend_on_top(axis: Any, report: dict[str, Any]) -> None:
    """The legend in one row above the bars, with the y axis stretched to make room for it."""
    axis.legend(fontsize=7, loc="upper center", ncol=len(report["targets"]))
    axis.set_ylim(0, axis.get_ylim()[1] * 1.2)


def save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


# --- writing -----------------------------------------------------------------------------------------------


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the hub markers replaced by ``block``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"report: {DOC} has no {START} … {END} block to rewrite")
    return pattern.sub(lambda _: f"{START}\n{block}{END}", text, count=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--hub", type=Path, help="hub_fanout.py's JSON (default: the newest in results/)")
    parser.add_argument("--gateway", type=Path, help="gateway_bench.py's JSON of the same run, if any")
    parser.add_argument(
        "--out", type=Path, help="the combined JSON (default: benchmarks/results/<date>.json)"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="the document whose hub block is rewritten")
    parser.add_argument(
        "--img", type=Path, default=IMG_DIR, help="where the PNG plots go (default: docs/img)"
    )
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only; no plots, no docs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hub_path = args.hub or newest("hub_fanout-*.json")
    hub = load(hub_path)
    if hub is None or "summary" not in hub or "turns" not in hub:
        print(f"report: no hub results at {hub_path} (run benchmarks/hub_fanout.py first)", file=sys.stderr)
        return 2
    gateway = load(args.gateway)
    if args.gateway and gateway is None:
        print(f"report: no gateway results at {args.gateway}; reporting the hub only", file=sys.stderr)

    plots = [] if args.no_docs else plot(hub, args.img)
    markdown = hub_markdown(hub, plots)
    if gateway and not args.no_docs:
        plots.append(plot_gateway(gateway, args.img))  # linked from docs/performance.md's gateway section
    if not args.no_docs:
        args.doc.write_text(replace_block(args.doc.read_text(), markdown))
    gateway_md = gateway_markdown(gateway) if gateway else None
    out = args.out or RESULTS_DIR / f"{datetime.now():%Y-%m-%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    combined = {
        "when": hub["when"],
        "machine": hub["machine"],
        "sources": {"hub": str(hub_path), "gateway": str(args.gateway) if gateway else None},
        "hub": hub,
        "gateway": gateway,
        "markdown": {"hub": markdown, "gateway": gateway_md},
        "plots": [str(p) for p in plots],
    }
    out.write_text(json.dumps(combined, indent=2) + "\n")
    print(markdown)
    if gateway_md:
        print("Gateway (gateway_bench.py summary, medians with min–max):\n\n" + gateway_md)
    print(f"report: {out}" + ("" if args.no_docs else f"; {args.doc} and {len(plots)} plots in {args.img}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
