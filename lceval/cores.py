"""How many cores lceval may use: one rule for torch's threads and the report's drawing processes."""

from __future__ import annotations

import os


def core_count(setting: int | str = "auto") -> int:
    """A number, or auto = $OMP_NUM_THREADS if set, else the cores this process may run on (its CPU affinity,
    so `taskset` and container limits are honoured)."""
    if setting != "auto":
        return int(setting)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
