"""The job scripts: argument parsing, a direct run (local Ray), `ray job submit` to a local head, cluster.yaml."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from oml.imageio import encode_png

from ..conftest import natural_image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytest.importorskip("ray")


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(root: Path, bad: bool = False) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(encode_png(natural_image(64, 96, 0)))
    (root / "sub" / "b.png").write_bytes(encode_png(natural_image(130, 70, 1)))
    if bad:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but no more")
    return root


ARGS = ["--quality", "2", "--steps", "1", "--random-weights", "--tile", "128", "--unit-tiles", "1", "--no-progress"]


@pytest.mark.parametrize("name", ["compress", "decompress"])
def test_jobs_do_nothing_at_import_and_have_help(name):
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('job', {str(ROOT / 'jobs' / (name + '.py'))!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = [m for m in ('ray', 'torch', 'pipeline.archive') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--input" in out.stdout and "--output" in out.stdout


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert load_job("compress").main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert load_job("decompress").main(["--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2


def test_direct_run_starts_a_local_ray_and_reports_failures(tmp_path, capsys):
    import ray

    inp = make_inputs(tmp_path / "in", bad=True)
    out = tmp_path / "archive"
    status = load_job("compress").main(["--input", str(inp), "--output", str(out), "--num-cpus", "2", *ARGS])
    assert not ray.is_initialized()  # the Ray it started is shut down again
    text = capsys.readouterr().out
    assert status == 1 and "archived 2 of 3 images" in text and "1 failed" in text
    assert json.loads((out / "summary.json").read_text())["failed"] == 1
    status = load_job("decompress").main(["--input", str(out), "--output", str(tmp_path / "png"), "--verify", "--num-cpus", "2", "--no-progress"])
    assert status == 0 and (tmp_path / "png" / "sub" / "b.png").is_file()


def _wait_for_dashboard(port: int, head: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with status {head.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # answering (authentication required): it is up
        except OSError:
            time.sleep(1)
    raise TimeoutError("the Ray dashboard did not come up")


def _stop(head: subprocess.Popen) -> None:
    """Stop only the head this test started: its process group (``ray stop`` would stop every Ray here)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(wait)
            time.sleep(2)  # the group's other processes exit after the head
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_ray_job_submit_end_to_end(tmp_path):
    inp = make_inputs(tmp_path / "in")
    out = tmp_path / "archive"
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    temp_dir = Path(f"/tmp/omlt{secrets.token_hex(3)}")  # short: Ray's socket paths must stay under 108 bytes
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `python` in the entrypoint is this interpreter
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_ADDRESS", None)

    def start_head() -> tuple[subprocess.Popen, int]:
        """``ray start`` takes port numbers, not bound sockets: if another process takes a port
        between free_port() and Ray binding it, the head exits, and the test starts another."""
        for _ in range(3):
            gcs, dashboard = free_port(), free_port()
            head = subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "2", "--include-dashboard", "true",
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--node-ip-address", "127.0.0.1",
                 "--temp-dir", str(temp_dir), "--disable-usage-stats"],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                _wait_for_dashboard(dashboard, head)
                return head, dashboard
            except RuntimeError:  # exited: a port was taken
                _stop(head)
        raise RuntimeError("ray start failed three times")

    head, dashboard = start_head()
    try:
        # The job server can answer before its agent has registered ("No available agent to
        # submit job, please try again later"): nothing was submitted then, so try again.
        deadline = time.monotonic() + 90
        while True:
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
                 "python", "jobs/compress.py", "--input", str(inp), "--output", str(out), *ARGS],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=400,
            )  # fmt: skip
            if submit.returncode == 0 or "No available agent" not in submit.stderr + submit.stdout or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        _stop(head)
        leftover = subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True, text=True).stdout.split()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "archived 2 of 2 images" in submit.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["archived"], summary["failed"], summary["units"]["committed"]) == (2, 0, 3)  # a.png 1 tile, sub/b.png 2
    assert sorted(p.name for p in (out / "units").glob("*.done.json")) == [f"unit-00000{i}.done.json" for i in range(3)]
    assert not leftover, f"processes of the test's Ray head still running: {leftover}"


def test_cluster_yaml_passes_rays_own_validation():
    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(config)
    prepared = prepare_config(config)
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in types.values())
    assert any("pip install -e" in c and "pipeline" in c for c in prepared["setup_commands"])
    assert prepared["file_mounts"] == {"~/oml": "."}
    # The workers read and write S3: without an instance profile they have no credentials at all.
    for name, node in types.items():
        if name != prepared["head_node_type"]:
            assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name


def test_an_unreachable_object_store_is_one_line(monkeypatch, capsys):
    """An S3 endpoint that is down (a closed port on 127.0.0.1): one line, exit 1, no traceback."""
    port = free_port()  # nothing listens there
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
                        "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():  # loopback only: no instance-metadata lookup
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # instances made earlier in this process read other variables
    assert load_job("compress").main(["--input", "s3://bucket/in", "--output", "s3://bucket/out", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("compress: error: storage unreachable") == 1 and "Traceback" not in err


def test_working_dir_upload_holds_what_jobs_run_and_stays_far_below_rays_limit(tmp_path):
    """What ``ray job submit --working-dir .`` uploads, zipped by Ray's own packaging with the
    excludes it applies (its defaults, .gitignore, .rayignore): the code and every released weights
    file (the package's and the older ones in weights/: old archives restore on the cluster), no
    history, docs or tests, and under half of the size at which Ray starts to warn (its hard limit
    is twice that)."""
    import zipfile

    from ray._private import ray_constants
    from ray._private.runtime_env import packaging

    package = tmp_path / "upload.zip"
    packaging.create_package(str(ROOT), package, include_gitignore=True, excludes=ray_constants.get_runtime_env_default_excludes())
    names = set(zipfile.ZipFile(package).namelist())
    weights = {p.relative_to(ROOT).as_posix() for p in [*(ROOT / "oml" / "weights").glob("*"), *(ROOT / "weights").glob("*.pt")]}
    assert {"jobs/compress.py", "jobs/decompress.py", "oml/codec.py", "pipeline/cli/archive.py"} | weights <= names
    assert not [n for n in names if n.split("/")[0] in (".git", ".venv", "docs", "tests", "bench", "runs", "training")]
    assert package.stat().st_size < packaging.PACKAGE_SIZE_WARNING / 2
