"""The archive jobs on Ray stop instead of hanging and leave nothing behind: an impossible request
fails in seconds (bad counts while parsing, a dead address, no node that can run a task), Ctrl-C
and SIGTERM stop a run that can be resumed, a killed driver's Ray is gone in seconds, Ray's files
stay in its own temporary folder, and an error no retry can mend is reported once, quietly."""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oml.imageio import encode_png

from ..conftest import natural_image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ray = pytest.importorskip("ray")
runner = pytest.importorskip("pipeline.archive.runner")
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes in /proc (Linux)")

FAST = ["--random-weights", "--quality", "2", "--tile", "128", "--no-progress"]


def make_images(folder: Path, count: int, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i:02d}.png").write_bytes(encode_png(natural_image(size, size, i)))
    return folder


def tagged(tag: str) -> list[int]:
    """The live processes whose environment holds ``OML_TEST_RUN=tag``: those a run started (its
    Ray's included, which inherit the driver's environment), whoever their parent is now."""
    entry, found = f"OML_TEST_RUN={tag}".encode(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(pid))
        except OSError:
            continue
    return sorted(found)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environment(tmp_path: Path, tag: str, **extra: str) -> dict[str, str]:
    """A run's environment: tagged, HOME an empty folder (nothing may be written there), no cluster."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "OML_TEST_RUN": tag, "HOME": str(home), "OMP_NUM_THREADS": "1", **extra}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)
    return env


def kill_tagged(tag: str) -> None:
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def events(path: Path) -> dict[str, list[str]]:
    try:
        return {line.split()[0]: line.split()[1:] for line in path.read_text().splitlines() if line.strip()}
    except FileNotFoundError:
        return {}


# --- 1. impossible requests --------------------------------------------------------------------

@pytest.mark.parametrize(
    "job, flags, named",
    [
        ("compress", ["--workers", "0"], "--workers"),
        ("compress", ["--num-cpus", "0"], "--num-cpus"),
        ("compress", ["--num-gpus", "-1"], "--num-gpus"),
        ("compress", ["--cpus-per-worker", "-2"], "--cpus-per-worker"),
        ("compress", ["--cpus-per-worker", "0"], "--cpus-per-worker"),
        ("compress", ["--max-retries", "-1"], "--max-retries"),
        ("compress", ["--unit-tiles", "0"], "--unit-tiles"),
        ("compress", ["--resource-wait", "-5"], "--resource-wait"),
        ("decompress", ["--band-tiles", "0"], "--band-tiles"),
        ("decompress", ["--workers", "-3"], "--workers"),
        ("decompress", ["--num-cpus", "0"], "--num-cpus"),
    ],
)  # fmt: skip
def test_counts_no_run_can_use_are_refused_while_parsing(tmp_path, capsys, job, flags, named):
    from pipeline.cli.archive import archive_parser, restore_parser

    parser = (archive_parser if job == "compress" else restore_parser)(job)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--input", str(tmp_path), "--output", str(tmp_path / "o"), *flags])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert stop.value.code == 2 and len(errors) == 1 and f"argument {named}:" in errors[0], errors


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["port 1", "closed port", "RAY_ADDRESS", "silent listener"])
def test_an_address_where_no_ray_head_answers_fails_in_seconds(tmp_path, capsys, monkeypatch, how):
    """Before, ``ray.init`` retried such an address for minutes; now the job answers in one line, exit 2."""
    from pipeline.cli.archive import job_main

    listener = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    address = {"port 1": "127.0.0.1:1", "closed port": f"127.0.0.1:{closed_port()}", "RAY_ADDRESS": f"127.0.0.1:{closed_port()}",
               "silent listener": f"127.0.0.1:{listener.getsockname()[1]}"}[how]  # fmt: skip
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    flags = []
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        flags = ["--address", address]
    inp = make_images(tmp_path / "in", 1)
    start = time.monotonic()
    try:
        status = job_main("archive", "compress", ["--input", str(inp), "--output", str(tmp_path / "arch"), *FAST, *flags])
    finally:
        listener.close()
    seconds = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and not ray.is_initialized()
    assert err[-1].startswith("compress: error: ") and address in err[-1] and "Traceback" not in "\n".join(err), err
    assert ("RAY_ADDRESS" if how == "RAY_ADDRESS" else "--address") in err[-1]
    assert seconds < 30, f"{seconds:.1f} s"


def test_a_task_no_node_of_a_local_ray_can_run_fails_at_once():
    """A local Ray (and a `ray start` cluster) has no autoscaler: its nodes are all there is, and a
    task no node can hold is refused before any is submitted (before, it waited for ever)."""
    from pipeline.archive.config import RayConfig

    done = []
    with runner.ray_session(RayConfig(num_cpus=1)) as session:
        for cfg in (RayConfig(num_cpus=1, gpus_per_worker=1), RayConfig(num_cpus=1, cpus_per_worker=64)):
            start = time.monotonic()
            with pytest.raises(runner.ClusterError, match="no node of the Ray cluster can run a task") as error:
                runner.run_tasks(session, cfg, abs, [1, 2], done.append, lambda item, why: done.append(why))
            assert time.monotonic() - start < 10
            assert ("GPU 1" if cfg.gpus_per_worker else "CPU 64") in str(error.value) and "\n" not in str(error.value)
        runner.run_tasks(session, RayConfig(num_cpus=1), abs, [-1, -2], done.append, lambda item, why: done.append(why))
    assert sorted(done) == [1, 2]


def test_oml_archive_asking_for_a_gpu_a_local_ray_lacks_exits_2_in_one_line(tmp_path):
    tag = secrets.token_hex(4)
    inp = make_images(tmp_path / "in", 2)
    env = environment(tmp_path, tag, OML_RAY_EVENT_FILE=str(tmp_path / "events"))
    start = time.monotonic()
    try:
        run = subprocess.run([str(BIN / "oml"), "archive", "--input", str(inp), "--output", str(tmp_path / "arch"), *FAST, "--num-cpus", "1",
                              "--num-gpus", "1"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        ended = time.monotonic()
        started = (tmp_path / "events").stat().st_mtime  # the last event: the local Ray is up
        after_start = time.time() - started - (time.monotonic() - ended)
        assert run.returncode == 2, run.stderr[-2000:]
        errors = [line for line in run.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "GPU 1" in errors[0] and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert after_start < 20, f"{after_start:.1f} s from the local Ray being up to the exit"
        assert ended - start < 120
        assert not (tmp_path / "home" / ".ray").exists()  # Ray's token went to its own temporary folder
        assert wait_for(lambda: not tagged(tag), 10, "the run's processes to end") is True
    finally:
        kill_tagged(tag)


# --- 1b. a cluster's autoscaler: wait for the node it can add, refuse what no node type has ------

NODE_TYPES_OF_CLUSTER_YAML = [
    runner.NodeType("head", {"CPU": 0}, 1),
    runner.NodeType("gpu_worker", {"CPU": 8, "GPU": 1}, 8),
]
HEAD_ONLY = [{"CPU": 0.0, "memory": 1e10, "node:__internal_head__": 1.0}]


@pytest.mark.parametrize(
    "request_, nodes, node_types, autoscaling, verdict",
    [
        ({"CPU": 4, "GPU": 1}, HEAD_ONLY, NODE_TYPES_OF_CLUSTER_YAML, True, "wait"),  # GPU workers start at min_workers 0
        ({"CPU": 1, "GPU": 0}, HEAD_ONLY, NODE_TYPES_OF_CLUSTER_YAML, True, "wait"),
        ({"CPU": 4, "GPU": 2}, HEAD_ONLY, NODE_TYPES_OF_CLUSTER_YAML, True, "never"),  # no node type has 2 GPUs
        ({"CPU": 16, "GPU": 1}, HEAD_ONLY, NODE_TYPES_OF_CLUSTER_YAML, True, "never"),
        ({"CPU": 4, "GPU": 1}, HEAD_ONLY, [runner.NodeType("gpu_worker", {"CPU": 8, "GPU": 1}, 0)], True, "never"),  # may start none
        ({"CPU": 4, "GPU": 1}, [*HEAD_ONLY, {"CPU": 8.0, "GPU": 1.0}], NODE_TYPES_OF_CLUSTER_YAML, True, "ready"),
        ({"CPU": 4, "GPU": 1}, HEAD_ONLY, None, True, "wait"),  # an autoscaler whose node types are not published
        ({"CPU": 1, "GPU": 1}, [{"CPU": 2.0}], None, False, "never"),  # a local Ray, a `ray start` cluster
        ({"CPU": 2, "GPU": 0}, [{"CPU": 2.0}], None, False, "ready"),
        ({"CPU": 1.5, "GPU": 0.5}, [{"CPU": 2.0, "GPU": 1.0}], None, False, "ready"),
    ],
)  # fmt: skip
def test_placement_waits_only_for_what_an_autoscaler_can_add(request_, nodes, node_types, autoscaling, verdict):
    assert runner.placement(request_, nodes, node_types, autoscaling) == verdict


def test_a_launchers_autoscaler_is_told_from_the_read_only_one_every_head_runs():
    """``__autoscaling_status`` as Ray's monitor publishes it: node types named by the cluster
    config under `ray up` (cluster.yaml: head, gpu_worker), ``node_<id>`` on any other head."""
    node_id = "911300bc0d6a9dbfceac117fd74899df34c80fda01efe018d4d125da"
    read_only = {"autoscaler_report": {"active_nodes": {f"node_{node_id}": 1}, "pending_launches": {},
                                       "node_type_mapping": {node_id: f"node_{node_id}"}, "legacy": True}}  # fmt: skip
    launcher = {"autoscaler_report": {"active_nodes": {"head": 1}, "pending_launches": {"gpu_worker": 2},
                                      "node_type_mapping": {"10.0.0.5": "head"}, "legacy": True}}  # fmt: skip
    assert not runner.launcher_managed(read_only) and not runner.launcher_managed({})
    assert runner.launcher_managed(launcher)


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head` on 127.0.0.1 (2 CPUs, no GPU, no autoscaler) that the test stops."""
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    temp_dir = Path(f"/tmp/omlh{secrets.token_hex(3)}")  # short: Ray's socket paths must stay under 108 bytes
    tag = secrets.token_hex(4)
    env = {**environment(tmp_path, tag), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    for _ in range(3):
        port = closed_port()
        head = subprocess.run([str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
                               "--include-dashboard", "false", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
                               "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        if head.returncode == 0:
            break
    else:
        pytest.fail(f"ray start failed: {head.stderr[-2000:]}")
    try:
        yield {"address": f"127.0.0.1:{port}", "env": env, "tag": tag, "temp_dir": temp_dir}
    finally:
        kill_tagged(tag)  # only this head's processes: never `ray stop`, which stops every Ray here
        wait_for(lambda: not tagged(tag), 20, "the head's processes to end")
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_ray_start_cluster_refuses_at_once_and_an_autoscaled_one_waits_as_long_as_asked(tmp_path, ray_head):
    """Against a real head: no autoscaler, a GPU task is refused at once (exit 2); once the GCS holds
    node groups (what an autoscaler reports) with a GPU type, the job waits --resource-wait seconds
    for such a node, saying so, then gives up (exit 2); a type no group has is refused at once; and
    a node that joins while the job waits (as the autoscaler's would) runs it to the end."""
    inp = make_images(tmp_path / "in", 1)

    def archive(*flags: str) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        run = subprocess.run([sys.executable, "jobs/compress.py", "--input", str(inp), "--output", str(tmp_path / "arch"), *FAST,
                              "--address", ray_head["address"], *flags], env=ray_head["env"], cwd=ROOT,
                             capture_output=True, text=True, timeout=180)  # fmt: skip
        return run, time.monotonic() - start

    run, _ = archive("--num-gpus", "1")
    assert run.returncode == 2 and "has no autoscaler" in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "arch").exists()  # refused on joining the cluster, before the plan is written

    report = (  # what an autoscaler (v2) tells the GCS: the node groups it may start, here cluster.yaml's GPU workers
        "from ray._raylet import GcsClient\nfrom ray.core.generated import autoscaler_pb2\n"
        "config = autoscaler_pb2.ClusterConfig()\n"
        "group = config.node_group_configs.add(name='gpu_worker', min_count=0, max_count=8)\n"
        "group.resources.update({'CPU': 8, 'GPU': 1})\n"
        "config.node_group_configs.add(name='cpu_worker', min_count=0, max_count=2).resources.update({'CPU': 4})\n"
        f"GcsClient(address={ray_head['address']!r}).report_cluster_config(config.SerializeToString())\n"
    )
    subprocess.run([sys.executable, "-c", report], env=ray_head["env"], check=True, timeout=60)

    # a cluster that may grow refuses local paths; this one's nodes would all be this host, so say so
    run, _ = archive("--num-gpus", "1", "--resource-wait", "3")
    assert run.returncode == 2 and "an autoscaler that may add more" in run.stderr and "--shared-path" in run.stderr, run.stderr[-2000:]
    assert "waiting" not in run.stderr

    run, seconds = archive("--num-gpus", "1", "--resource-wait", "3", "--shared-path")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "waiting up to 3 s" in run.stderr and "joined the Ray cluster within 3 s" in run.stderr.splitlines()[-1], run.stderr[-2000:]
    run, _ = archive("--num-gpus", "2", "--resource-wait", "600", "--shared-path")
    assert run.returncode == 2 and "no node type its autoscaler may start has them" in run.stderr, run.stderr[-2000:]
    assert "waiting" not in run.stderr

    job = subprocess.Popen([sys.executable, "jobs/compress.py", "--input", str(inp), "--output", str(tmp_path / "arch"), *FAST,
                            "--address", ray_head["address"], "--cpus-per-worker", "4", "--resource-wait", "300", "--shared-path"],
                           env=ray_head["env"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        said = ""
        while "waiting up to 300 s" not in said and (line := job.stderr.readline()):  # the job says it waits
            said += line
        assert "waiting up to 300 s" in said, said[-2000:]
        subprocess.run([str(BIN / "ray"), "start", "--address", ray_head["address"], "--num-cpus", "4", "--node-ip-address", "127.0.0.1",
                        "--temp-dir", str(ray_head["temp_dir"]), "--disable-usage-stats"],
                       env=ray_head["env"], check=True, capture_output=True, timeout=120)  # fmt: skip
        out, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0 and "archived 1 of 1 images" in out, err[-2000:]


# --- 2. Ctrl-C and SIGTERM -------------------------------------------------------------------

def stop_midway(argv: list[str], env: dict[str, str], started, sig: int, ignore_sigint: bool = False, cwd: Path = ROOT) -> tuple[int, float, str]:
    """Run ``argv``; once ``started()`` is true (an event of the run, never a delay), send ``sig``.
    Returns the exit status, the seconds from the signal to the exit, and standard error."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None)  # fmt: skip
    try:
        wait_for(lambda: started() or proc.poll() is not None, 120, "the run to get going")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        return proc.returncode, time.monotonic() - sent, err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_ctrl_c_stops_an_archive_in_seconds_and_the_same_command_finishes_it(tmp_path):
    """Started as a script's background job is (SIGINT inherited as ignored: the case that once ran
    on to the end and exited 0), `oml archive` stops within seconds of SIGINT with exit 130, its Ray
    with it; the same command then completes the archive, which restores and verifies."""
    tag = secrets.token_hex(4)
    inp = make_images(tmp_path / "in", 6, size=256)  # 4 tiles of 128 each: 24 units of 1 tile
    arch, out = tmp_path / "arch", tmp_path / "png"
    env = environment(tmp_path, tag)
    archive = [str(BIN / "oml"), "archive", "--input", str(inp), "--output", str(arch), *FAST, "--unit-tiles", "1", "--num-cpus", "1"]
    try:
        status, seconds, err = stop_midway(archive, env, lambda: list((arch / "units").glob("unit-*.done.json")), signal.SIGINT, ignore_sigint=True)
        committed = len(list((arch / "units").glob("unit-*.done.json")))
        assert status == 130 and "interrupted by SIGINT" in err and "Traceback" not in err, err[-2000:]
        assert seconds < 15, f"{seconds:.1f} s from SIGINT to the exit"
        assert 1 <= committed < 24, committed  # stopped mid-run
        assert wait_for(lambda: not tagged(tag), 10, "the run's Ray processes to end")

        resumed = subprocess.run(archive, env=env, capture_output=True, text=True, timeout=400)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"{committed} already committed" in resumed.stdout and "archived 6 of 6 images" in resumed.stdout
        restored = subprocess.run([str(BIN / "oml"), "restore", "--input", str(arch), "--output", str(out), "--verify", "--no-progress",
                                   "--num-cpus", "1"], env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
        assert restored.returncode == 0 and "restored 6 of 6 images; 0 failed, 0 differ" in restored.stdout, restored.stderr[-2000:]
        assert not [p for p in (arch / "units").iterdir() if p.name.startswith(".")]  # no temporaries left
    finally:
        kill_tagged(tag)
    assert not (tmp_path / "home" / ".ray").exists()


@pytest.mark.slow
def test_ctrl_c_and_sigterm_stop_a_restore_in_seconds(tmp_path):
    """`oml restore` (banded: many small tasks) stops within seconds of SIGINT with exit 130, and of
    SIGTERM with 143 (Ray's driver would abort on it: exit 134, no shutdown), its Ray with it."""
    from pipeline.cli.archive import job_main

    tag = secrets.token_hex(4)
    inp = make_images(tmp_path / "in", 4, size=256)
    arch = tmp_path / "arch"
    assert job_main("archive", "compress", ["--input", str(inp), "--output", str(arch), *FAST, "--num-cpus", "1"]) == 0
    env = environment(tmp_path, tag)
    try:
        for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            out = tmp_path / f"png-{name}"
            restore = [sys.executable, "jobs/decompress.py", "--input", str(arch), "--output", str(out), "--no-progress", "--num-cpus", "1",
                       "--band-tiles", "1", "--workers", "1"]  # fmt: skip
            status, seconds, err = stop_midway(restore, env, lambda: list(out.glob("*.png")), sig)
            assert status == 128 + sig and f"interrupted by {name}" in err and "Traceback" not in err, err[-2000:]
            assert seconds < 15, f"{seconds:.1f} s from {name} to the exit"
            assert len(list(out.glob("*.png"))) < 4  # stopped mid-run
            assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no partial file left
            assert wait_for(lambda: not tagged(tag), 10, "the restore's Ray processes to end")
    finally:
        kill_tagged(tag)


# --- 3. a driver killed at any moment leaves no Ray behind ---------------------------------------

DRIVER = """
import os, sys, time
from pipeline.archive.config import RayConfig
from pipeline.archive.runner import ray_session

with ray_session(RayConfig(num_cpus=1)) as ray:
    @ray.remote
    def work(path):
        open(path, "w").close()
        time.sleep(300)
    ray.get(work.remote(sys.argv[1]))
"""


@pytest.mark.parametrize(
    "moment, sig",
    [
        ("ray-starting", "SIGKILL"),
        ("first Ray process", "SIGKILL"),
        ("ray-started", "SIGKILL"),
        ("task running", "SIGKILL"),
        ("first Ray process", "SIGINT"),  # Ctrl-C in the middle of ray.init
    ],
)  # fmt: skip
def test_a_driver_killed_at_any_moment_leaves_no_ray_process_behind(tmp_path, moment, sig):
    """SIGKILL of the driver as Ray starts, once its first process runs, once it is up, while a
    task runs; SIGINT while ray.init runs (the driver then ends by itself). Every process of that
    session (GCS, raylet, workers, agents) ends within seconds, and its temporary folder is removed."""
    tag = secrets.token_hex(4)
    event_file, running = tmp_path / "events", tmp_path / "running"
    env = environment(tmp_path, tag, OML_RAY_EVENT_FILE=str(event_file))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(running)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        reached = {
            "ray-starting": lambda: "ray-starting" in events(event_file),
            "first Ray process": lambda: any("gcs_server" in command(p) for p in tagged(tag)),  # the first Ray starts
            "ray-started": lambda: "ray-started" in events(event_file),
            "task running": running.exists,
        }[moment]
        wait_for(lambda: reached() or driver.poll() is not None, 120, moment)
        assert driver.poll() is None, "the driver ended before the moment came"
        driver.send_signal(getattr(signal, sig))
        driver.wait(60)
        killed = time.monotonic()
        left = [command(p)[:60] for p in tagged(tag)]
        wait_for(lambda: not tagged(tag), 90, "every process of the killed driver's Ray to end")
        seconds = time.monotonic() - killed
        assert seconds < 10, f"{seconds:.1f} s until the last of {left} ended"
        session = events(event_file)["ray-starting"][1]
        wait_for(lambda: not Path(session).exists(), 5, "the session's temporary folder to be removed")
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_tagged(tag)


# --- 4. Ray's files stay in its temporary folder ---------------------------------------------

def test_a_local_ray_writes_nothing_to_home_and_leaves_no_folder(tmp_path):
    """Ray writes a new local instance's authentication token to ~/.ray/auth_token unless a token
    is named (RAY_AUTH_TOKEN_PATH): the session names one in its own temporary folder, removed with it."""
    tag = secrets.token_hex(4)
    env = environment(tmp_path, tag, OML_RAY_EVENT_FILE=str(tmp_path / "events"))
    code = ("from pipeline.archive.config import RayConfig\nfrom pipeline.archive.runner import ray_session\n"
            "with ray_session(RayConfig(num_cpus=1)) as ray:\n    assert ray.get(ray.put(7)) == 7\n")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not list((tmp_path / "home").iterdir())
    session = events(tmp_path / "events")["ray-started"][1]
    assert session and not Path(session).exists()
    assert not tagged(tag)


# --- 5. an error no retry mends: tried once, one line, no traceback --------------------------------

IN_CREATE = 0x100


class Created:
    """Counts the files created in a folder (inotify), whoever creates them."""

    def __init__(self, folder: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0 and self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_CREATE) >= 0

    def names(self) -> list[str]:
        found = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return found
        while data:
            _, _, _, length = struct.unpack_from("iIII", data)
            found.append(data[16 : 16 + length].rstrip(b"\0").decode())
            data = data[16 + length :]
        return found

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a full tmpfs (root)")
def test_a_full_disk_stops_the_archive_after_one_try_in_one_line(tmp_path):
    """The units' folder on a tmpfs filled to the last byte: a unit's write fails with ENOSPC,
    which no retry mends. Before, Ray retried each unit 3 times more and printed the worker's
    traceback each time; now the unit is tried once (one temporary file created there, counted by
    inotify), the run stops with one line (exit 1) and no traceback, and nothing is left there."""
    tag = secrets.token_hex(4)
    inp = make_images(tmp_path / "in", 2)
    arch = tmp_path / "arch"
    units = arch / "units"
    units.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(units)], check=True)
    try:
        with open(units / "filler", "wb", buffering=0) as f:  # fill it
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        created = Created(units)
        run = subprocess.run([str(BIN / "oml"), "archive", "--input", str(inp), "--output", str(arch), *FAST, "--num-cpus", "1"],
                             env=environment(tmp_path, tag), capture_output=True, text=True, timeout=240)  # fmt: skip
        names = created.names()
        created.close()
        leftover = sorted(p.name for p in units.iterdir())
    finally:
        kill_tagged(tag)
        subprocess.run(["umount", "-l", str(units)], check=False)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr + run.stdout and "retries remaining" not in run.stdout + run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no space left on device" in errors[0].lower(), run.stderr[-2000:]
    assert len(names) == 1, f"the unit was tried {len(names)} times: {names}"
    assert leftover == ["filler"]
    assert json.loads((arch / "plan.json").read_text())  # what was written before stays
