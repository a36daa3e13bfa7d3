"""Cleans up the local Ray instance an ``lceval run`` started when that run is killed.

``ray.shutdown()`` stops the instance when the run ends, fails or is interrupted. After a kill -9 the driver
runs no code, and Ray's agents (its dashboard and runtime-env agents) outlive it for over a minute. So before
starting the instance the driver starts this reaper, in its own session, with a pipe on its stdin. Every half
second the reaper notes the driver's descendants (pid and start time, read from ``/proc``; a look that the
driver's death overlapped does not count). A driver that finishes writes ``done`` and closes the pipe: the
reaper exits. A pipe that closes without ``done`` means the driver died: the reaper kills the descendants it
last saw (Ray's processes, orphaned) and whatever those started since its last look. Linux only; elsewhere no
reaper starts.

    python -m lceval.executors.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import select
import signal
import sys
from pathlib import Path

DONE = b"done\n"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, or None if it is gone."""
    try:  # bytes: a process name is any 15 bytes, not always UTF-8 (a cut multibyte character, or set so)
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(*roots: int) -> dict[int, int]:
    """{pid: start time} of every process below any of ``roots`` (one pass over ``/proc``)."""
    parent, start = {}, {}
    for proc in Path("/proc").glob("[0-9]*"):
        st = _stat(int(proc.name))
        if st is not None:
            parent[int(proc.name)], start[int(proc.name)] = st
    out, frontier = {}, list(roots)
    while frontier:
        p = frontier.pop()
        for child in [c for c, pp in parent.items() if pp == p and c not in out]:
            out[child] = start[child]
            frontier.append(child)
    return out


def watch(driver: int, stdin) -> dict[int, int]:
    """Snapshot the driver's descendants until the pipe closes; {} when the driver said it is done.

    A snapshot counts only if the pipe is still quiet once it is taken. A dying process closes its files
    before its children are handed to init (and Ray's gcs and raylet, bound to the driver's life, get
    their kill), so a snapshot taken while the driver died can miss Ray's agents: it would replace the
    last whole one and they would outlive the run."""
    seen: dict[int, int] = {}
    data = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.5)
        if ready:
            chunk = os.read(stdin.fileno(), 64)
            if not chunk:
                return {} if data.endswith(DONE) else seen
            data += chunk
            continue
        now = {p: t for p, t in descendants(driver).items() if p != os.getpid()}
        if now and not select.select([stdin], [], [], 0)[0]:
            seen = now


def reap(seen: dict[int, int]) -> int:
    """Kill the processes of ``seen`` that are still the same processes (same start time), and every process they
    started since the last look (on a loaded machine Ray's raylet starts its runtime-env agent late, after the
    last snapshot before the driver died)."""
    alive = {pid: start for pid, start in seen.items() if (st := _stat(pid)) is not None and st[1] == start}
    alive.update(descendants(*alive))
    alive.pop(os.getpid(), None)
    killed = 0
    for pid, start in alive.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def start():
    """The reaper of this process's descendants; call ``finish`` on it after ``ray.shutdown()``."""
    import subprocess

    if not Path(f"/proc/{os.getpid()}/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "lceval.executors.reaper", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def finish(proc) -> None:
    """Tell the reaper the driver ended normally (nothing to kill), and let it go."""
    try:
        proc.stdin.write(DONE)
        proc.stdin.close()
    except OSError:
        pass


if __name__ == "__main__":
    reap(watch(int(sys.argv[1]), sys.stdin.buffer))
