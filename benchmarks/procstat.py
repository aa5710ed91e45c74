"""Reading a process's CPU time and memory from ``/proc`` (Linux), so a benchmark can charge each process for
its own work instead of timing everything from the outside; and what else the benchmarks share about the
programs they run (the commit under test, the C load generators' builds)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these ticks (usually 100 Hz)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time the process (all its threads) has used so far, in seconds.

    Resolution is one clock tick (10 ms at 100 Hz): measure windows of a second or more.
    """
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (comm) is in parentheses and may hold spaces or ')'; the fields after the last ')' are plain.
    fields = raw[raw.rindex(")") + 2 :].split()
    # proc(5) fields 14 (utime) and 15 (stime), counted from 1 with comm as 2: here at index 11 and 12.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, in seconds (see :func:`cpu_times`)."""
    user, system = cpu_times(pid)
    return user + system


def run_delay(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU.

    From ``/proc/<pid>/task/*/schedstat`` (second field, ns). It grows when processes compete for too few
    cores; 0.0 if the kernel keeps no schedstats.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile, or no schedstats
    return total / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of the process, in bytes; 0 if the kernel does not report it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


def write_calls(pid: int) -> int:
    """Write system calls the process has made so far (``syscw`` of ``/proc/<pid>/io``: write, writev and
    their kin, which is how uvloop and Node's libuv send on a socket); 0 if the kernel does not say."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscw:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """Open file descriptors of the process (``/proc/<pid>/fd``): a server holds one per connection."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def meminfo_bytes(field: str) -> int:
    """A machine-wide figure of ``/proc/meminfo`` in bytes (``Slab``: the kernel's object caches, where
    socket, inode and file structures live); 0 if the kernel does not report it."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024  # reported in kB
    return 0


def maps_library(pid: int, name: str) -> bool:
    """Whether a file whose path contains ``name`` is mapped into the process (e.g. ``uvloop/loop``)."""
    with open(f"/proc/{pid}/maps") as maps:
        return any(name in line for line in maps)


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all its descendants (nginx's master and its workers, say), found by reading every
    process's parent id from ``/proc/*/stat``: one process is charged for the workers it forked."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        parents[int(entry.name)] = int(raw[raw.rindex(")") + 2 :].split()[1])  # proc(5) field 4, ppid
    tree = [pid]
    for member in tree:  # grows while it is walked: breadth first
        tree += sorted(child for child, parent in parents.items() if parent == member)
    return tree


def machine_busy() -> float:
    """CPU seconds all CPUs together have spent busy since boot (user, nice, system, irq, softirq, steal:
    everything but idle and iowait), from the first line of ``/proc/stat``. Over a window, this minus the
    CPU time of the processes a benchmark knows is what everything else on the machine used.

    Softirq time is kept in: this kernel charges the softirqs a process runs (on loopback, the receiving half
    of TCP) to that process's system time in ``/proc/<pid>/stat`` but to softirq in ``/proc/stat``; leaving
    it out made the remainder negative by up to 0.7 CPUs."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def machine_description() -> dict[str, Any]:
    """What a benchmark ran on: CPUs usable here, CPU model, kernel, Python, uvloop and aiohttp versions."""
    import aiohttp

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        uvloop_version: str | None = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        uvloop_version = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "aiohttp": aiohttp.__version__,
    }


def source_version(src: Path) -> str:
    """The commit the wsgate under test (the package in ``src``) comes from, with ``+dirty`` when that
    directory has local changes: other work in progress was measured with it."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=src, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except OSError:
        return "unknown"
    return f"{commit}{'+dirty' if dirty else ''}" or "unknown"


def build_c(source: Path, binary: Path) -> str | None:
    """Compile the benchmark program ``source`` into ``binary`` (``cc -O2 -Wall``) when the binary is missing
    or older than its source; ``None`` when it is ready, else what went wrong, for the caller's error."""
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return None
    binary.parent.mkdir(parents=True, exist_ok=True)
    command = ["cc", "-O2", "-Wall", "-o", str(binary), str(source)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        return f"cannot compile {source.name} ({exc}): install gcc"
    if done.returncode != 0:
        return f"compiling {source.name} failed:\n{done.stderr[-2000:]}"
    return None
