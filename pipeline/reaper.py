"""Stop a local Ray instance's processes when the driver that started it dies without ``ray.shutdown``.

A driver killed by ``SIGKILL`` (or by ``SIGTERM``, whose default action skips ``finally``)
leaves Ray's raylet to notice on its own, and its dashboard and runtime-env agents keep
running for about a minute more. :func:`watch` starts this file as a separate small process
(the standard library only, no Ray, no torch): it records every descendant of the driver once
a second, and when the driver is gone it sends them ``SIGTERM``, then ``SIGKILL`` two seconds
later. A process is identified by its pid *and* its start time, so a recycled pid is never
signalled. Linux only (it reads ``/proc``); elsewhere :func:`watch` does nothing.

Run directly: ``python pipeline/reaper.py DRIVER_PID [PID:START …]`` (the driver's children
to leave alone; exits once the driver has exited and
its descendants have been stopped; nothing is printed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 2.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid → start time."""
    children: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
                start[int(entry)] = stat[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found[child] = start[child]
                todo.append(child)
    return found


def _signal_all(known: dict[int, int], sig: int) -> int:
    """Send ``sig`` to the recorded processes that still run with the same start time."""
    sent = 0
    for pid, started in known.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:
            try:
                os.kill(pid, sig)
                sent += 1
            except OSError:
                pass
    return sent


def reap(driver: int, before: dict[int, int], poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """Record the driver's new descendants while it lives; stop the ones left when it is gone.

    ``before``: the descendants the driver had when it asked for the reaper (pid → start time);
    they are not Ray's and are left alone.
    """
    driver_start = _stat(driver)
    if driver_start is None:
        return
    known: dict[int, int] = {}
    while (stat := _stat(driver)) is not None and stat[1] == driver_start[1]:
        known.update((p, s) for p, s in descendants(driver).items() if before.get(p) != s)
        known.pop(os.getpid(), None)
        time.sleep(poll_s)
    if _signal_all(known, signal.SIGTERM):
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_stat(p) is not None and _stat(p)[1] == s for p, s in known.items()):
            time.sleep(0.1)
        _signal_all(known, signal.SIGKILL)


def watch(driver: int | None = None) -> subprocess.Popen | None:
    """Start the reaper for ``driver`` (default: this process) before it starts Ray.

    Returns None where ``/proc`` is missing. The reaper runs in its own session, so a terminal's
    Ctrl-C or a kill of the driver's process group does not take it down before it has done its
    work; a driver that shuts Ray down itself terminates its reaper (``Popen.terminate``).
    """
    if not Path("/proc/self/stat").exists():
        return None
    driver = driver or os.getpid()
    before = [f"{pid}:{start}" for pid, start in descendants(driver).items()]
    return subprocess.Popen(
        [sys.executable, "-S", str(Path(__file__).resolve()), str(driver), *before],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


if __name__ == "__main__":
    reap(int(sys.argv[1]), dict(tuple(map(int, arg.split(":"))) for arg in sys.argv[2:]))
