"""CPU seconds spent by a tool, a measure that holds still when other people's jobs load the shared machine.

Wall-clock throughput on a loaded machine mostly measures one's share of the cores; CPU seconds per image measure
the work. img2dataset runs as a child process, so `resource.getrusage(RUSAGE_CHILDREN)` counts it and every
process it waited for. Ray's workers and daemons are not waited for until the cluster stops, so they are read
live from Linux's `/proc` (descendants of this process), before and after the build; the driver's own share is
the main thread's CPU time (the HTTP server serving the images runs in other threads and is not counted for
either tool).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def descendants_cpu(root: int | None = None) -> dict[int, float]:
    """CPU seconds so far of every live descendant of `root` (default: this process), by pid; {} without /proc."""
    root = os.getpid() if root is None else root
    if not Path("/proc/self/stat").exists():
        return {}
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None:
            parent[int(entry)], cpu[int(entry)] = stat
    found: dict[int, float] = {}
    for pid in cpu:
        p = parent.get(pid)
        while p is not None and p != root and p in parent:
            p = parent[p]
        if p == root and pid != root:
            found[pid] = cpu[pid]
    return found


def spent_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the descendants used between two `descendants_cpu` snapshots (new processes from zero)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def by_name(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """`spent_since`, split by process name (`/proc/PID/comm`: `raylet`, `gcs_server`, `ray::process_shar`...)."""
    found: dict[str, float] = {}
    for pid, t in after.items():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "?"
        found[name] = round(found.get(name, 0.0) + t - before.get(pid, 0.0), 2)
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def children_cpu() -> float:
    """User + system CPU seconds of all waited-for child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
