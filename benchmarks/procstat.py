"""Reading another process's CPU time and memory from ``/proc`` (Linux), so a benchmark can charge each process
for its own work instead of timing everything from the outside."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these ticks (usually 100 Hz)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process (all its threads) has used so far, in seconds.

    Resolution is one clock tick (10 ms at 100 Hz): measure windows of a second or more.
    """
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (comm) is in parentheses and may hold spaces or ')'; the fields after the last ')' are plain.
    fields = raw[raw.rindex(")") + 2 :].split()
    # Fields 14 (utime) and 15 (stime) of proc(5), counted from 1 with comm as 2: here at index 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of the process, in bytes; 0 if the kernel does not report it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


def maps_library(pid: int, name: str) -> bool:
    """Whether a shared object whose path contains ``name`` is mapped into the process (e.g. ``uvloop/loop``)."""
    with open(f"/proc/{pid}/maps") as maps:
        return any(name in line for line in maps)
