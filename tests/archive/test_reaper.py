"""A killed driver's Ray processes are stopped within seconds (pipeline/archive/reaper.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.archive import reaper

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the reaper reads /proc (Linux)")


def alive(pid: int) -> bool:
    return reaper._stat(pid) is not None


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


DRIVER = """
import subprocess, sys, time
from pipeline.archive import reaper
old = subprocess.Popen(["sleep", "300"])                         # the driver's own child, before Ray
watcher = reaper.watch(record=sys.argv[1])
new = subprocess.Popen(["sleep", "300"], start_new_session=True)  # like Ray's agents: own session
print(old.pid, new.pid, watcher.pid, flush=True)
time.sleep(300)
"""


def recorded(path: Path) -> set[int]:
    try:
        return {int(line.split(":")[0]) for line in path.read_text().splitlines()}
    except OSError:
        return set()


def test_a_killed_driver_takes_what_it_started_with_it_and_nothing_else(tmp_path):
    record = tmp_path / "recorded"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(record)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    old, new, watcher = map(int, driver.stdout.readline().split())
    try:
        wait_for(lambda: new in recorded(record), 15, "the reaper to record the driver's new child")
        assert old not in recorded(record)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: not alive(new), 15, "the reaper to stop the driver's new child")
        wait_for(lambda: not alive(watcher), 15, "the reaper to exit")
        assert alive(old), "a child that existed before the reaper started was signalled"
    finally:
        for pid in (old, new):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def session_of(pid: int) -> str | None:
    """The value of the session mark in a process's environment (None: unmarked, or gone)."""
    prefix = f"{reaper.MARK}=".encode()
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode()
    return None


def _live(processes: dict[int, int]) -> dict[int, int]:
    return {pid: start for pid, start in processes.items() if (stat := reaper._stat(pid)) is not None and stat[1] == start}


def test_ray_is_gone_seconds_after_its_driver_is_killed(tmp_path):
    pytest.importorskip("ray")
    from oml.imageio import encode_png

    from ..conftest import natural_image

    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"{i}.png").write_bytes(encode_png(natural_image(256, 256, i)))
    argv = [sys.executable, "jobs/compress.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "arch"),
            "--random-weights", "--steps", "50", "--unit-tiles", "1", "--num-cpus", "1", "--no-progress"]
    record = tmp_path / "recorded"
    env = os.environ | {"OML_REAPER_RECORD": str(record)}
    driver = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def ray_agents() -> list[int]:
            found = []
            for pid in reaper.descendants(driver.pid):
                try:
                    if b"Agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(pid)
                except OSError:
                    pass
            return found

        wait_for(lambda: len(ray_agents()) >= 2, 120, "Ray's dashboard and runtime-env agents")
        ray_processes = reaper.descendants(driver.pid)
        # The event to kill on: the reaper has recorded every one of them (its record file), or
        # they carry the session mark by which it finds them unrecorded.
        def known() -> set[int]:
            session = next((s for s in map(session_of, _live(ray_processes)) if s), None)
            return recorded(record) | (set(reaper.marked(session)) if session else set())

        wait_for(lambda: set(_live(ray_processes)) <= known(), 30, "the reaper to know every Ray process")
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # Ray alone leaves its agents running for about a minute; the reaper stops them in seconds
        wait_for(lambda: not any(alive(p) for p in ray_processes), 20, "every Ray process to stop")
    finally:
        if driver.poll() is None:
            driver.kill()
