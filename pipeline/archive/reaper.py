"""Stop a local Ray instance's processes when the driver that started it dies, or is done with it.

A driver killed by ``SIGKILL`` (or one that dies in the middle of ``ray.init``) leaves Ray's
processes to notice on their own: its raylet's workers and its dashboard and runtime-env agents
keep running for about a minute more. :func:`watch` starts this file as a separate small process
(the standard library only, no Ray, no torch) before the driver starts Ray. The driver puts a
session mark in its environment (``OML_RAY_SESSION``, :data:`MARK`) first, so every process Ray
starts for it carries the mark, whoever its parent is by then; the reaper also records every
descendant of the driver once a second. When the driver is gone, or closes the reaper's standard
input (:func:`release`, after ``ray.shutdown``), the reaper sends ``SIGTERM`` to all of them, those
that appear meanwhile included, then ``SIGKILL`` two seconds later, and removes the session's
temporary folder when it was given one. A process is identified by its pid *and* its start time,
so a recycled pid is never signalled, and a process of another Ray (without this session's mark)
is never touched. Linux only (it reads ``/proc``); elsewhere :func:`watch` does nothing.

Run directly: ``python pipeline/archive/reaper.py DRIVER_PID [--session MARK] [--remove FOLDER] [--record FILE] [PID:START …]``
(the driver's children to leave alone; exits once the driver has exited or closed its standard
input, and the processes have been stopped; nothing is printed). ``--record FILE``: after every
poll, FILE is replaced by the processes recorded so far, one ``PID:START`` a line (what a kill of
the driver would stop besides the marked ones; tests wait on it instead of sleeping).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 2.0
MARK = "OML_RAY_SESSION"
"""The environment variable that marks a local Ray session's processes (its value: the session's
temporary folder, unique to the driver's run)."""


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


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid → start time."""
    children: dict[int, list[int]] = {}
    start: dict[int, int] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
            start[pid] = stat[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found[child] = start[child]
                todo.append(child)
    return found


def marked(session: str) -> dict[int, int]:
    """Every live process of the session: whose environment holds ``MARK=session``."""
    return marked_by(MARK, session)


def marked_by(variable: str, value: str) -> dict[int, int]:
    """Every live process whose environment holds ``variable=value``: pid → start time (processes
    of other users, whose environment cannot be read, are not looked at)."""
    entry = f"{variable}={value}".encode()
    found = {}
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            stat = _stat(pid)
            if stat is not None:
                found[pid] = stat[1]
    return found


def _alive(known: dict[int, int]) -> dict[int, int]:
    """The recorded processes that still run with the same start time."""
    return {pid: started for pid, started in known.items() if (stat := _stat(pid)) is not None and stat[1] == started}


def _signal_all(known: dict[int, int], sig: int) -> int:
    sent = 0
    for pid in _alive(known):
        try:
            os.kill(pid, sig)
            sent += 1
        except OSError:
            pass
    return sent


def stop(known: dict[int, int], session: str | None, spare: set[int], grace_s: float = GRACE_S) -> None:
    """``SIGTERM`` to ``known`` and to the session's marked processes, those that appear within
    ``grace_s`` included; then ``SIGKILL`` to those left, until none is left (``2 * grace_s`` at most)."""

    def left() -> dict[int, int]:
        found = dict(known)
        if session:
            found.update(marked(session))
        return {pid: s for pid, s in _alive(found).items() if pid not in spare}

    termed: set[int] = set()
    deadline = time.monotonic() + grace_s
    while (now := left()) and time.monotonic() < deadline:
        _signal_all({p: s for p, s in now.items() if p not in termed}, signal.SIGTERM)
        termed.update(now)
        time.sleep(0.1)
    deadline = time.monotonic() + 2 * grace_s
    while (now := left()) and time.monotonic() < deadline:
        _signal_all(now, signal.SIGKILL)
        time.sleep(0.1)


def _released(poll_s: float) -> bool:
    """Whether standard input reached its end within ``poll_s`` (the driver closed it, or died)."""
    try:
        ready, _, _ = select.select([0], [], [], poll_s)
        return bool(ready) and not os.read(0, 64)
    except (OSError, ValueError):  # no standard input to watch
        time.sleep(poll_s)
        return False


def _write_record(path: str, known: dict[int, int]) -> None:
    """Replace ``path`` by ``known`` as ``PID:START`` lines, atomically (a reader never sees half a list)."""
    part = f"{path}.{os.getpid()}.part"
    try:
        Path(part).write_text("".join(f"{pid}:{start}\n" for pid, start in sorted(known.items())))
        os.replace(part, path)
    except OSError:
        pass


def reap(
    driver: int, before: dict[int, int], session: str | None = None, remove: str | None = None, record: str | None = None,
    poll_s: float = POLL_S, grace_s: float = GRACE_S,
) -> None:
    """Record the driver's new descendants while it lives and holds on; then stop them and the
    session's marked processes, and remove ``remove`` (the session's temporary folder).

    ``before``: the descendants the driver had when it asked for the reaper (pid → start time);
    they are not Ray's and are left alone. ``record``: a file rewritten after every poll with what
    is recorded (``PID:START`` lines).
    """
    driver_start = _stat(driver)
    known: dict[int, int] = {}
    while driver_start is not None and (stat := _stat(driver)) is not None and stat[1] == driver_start[1]:
        known.update((p, s) for p, s in descendants(driver).items() if before.get(p) != s)
        if record:
            _write_record(record, known)
        if _released(poll_s):  # the driver is done with Ray, or died
            if (stat := _stat(driver)) is not None and stat[1] == driver_start[1]:
                known = {}  # it lives on: only what carries the session's mark is Ray's
            break
    stop(known, session, {os.getpid(), driver}, grace_s)
    if remove:
        shutil.rmtree(remove, ignore_errors=True)


def watch(driver: int | None = None, session: str | None = None, remove: str | None = None, record: str | None = None) -> subprocess.Popen | None:
    """Start the reaper for ``driver`` (default: this process) before it starts Ray.

    ``session``: the value of :data:`MARK` that the driver gives Ray's processes; ``remove``: a
    folder to delete once they are stopped; ``record``: a file that lists what is recorded, after
    every poll. Returns None where ``/proc`` is missing. The reaper runs
    in its own session, so a terminal's Ctrl-C or a kill of the driver's process group does not
    take it down before it has done its work; a driver that is done with Ray calls :func:`release`.
    """
    if not Path("/proc/self/stat").exists():
        return None
    driver = driver or os.getpid()
    before = [f"{pid}:{start}" for pid, start in descendants(driver).items()]
    options = [*(["--session", session] if session else []), *(["--remove", remove] if remove else []), *(["--record", record] if record else [])]
    return subprocess.Popen(
        [sys.executable, "-S", str(Path(__file__).resolve()), str(driver), *options, *before],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def release(reaper: subprocess.Popen | None, timeout: float = 3 * GRACE_S + POLL_S) -> None:
    """Tell the reaper that the driver is done with Ray (after ``ray.shutdown``): it stops what is
    left of the session and exits; wait for it, at most ``timeout`` seconds."""
    if reaper is None:
        return
    try:
        reaper.stdin.close()
    except OSError:
        pass
    try:
        reaper.wait(timeout)
    except subprocess.TimeoutExpired:
        pass  # it goes on alone, in its own session


def _main(argv: list[str]) -> None:
    driver, options, before = int(argv[0]), {}, {}
    rest = iter(argv[1:])
    for arg in rest:
        if arg in ("--session", "--remove", "--record"):
            options[arg[2:]] = next(rest)
        else:
            pid, start = map(int, arg.split(":"))
            before[pid] = start
    reap(driver, before, **options)


if __name__ == "__main__":
    _main(sys.argv[1:])
