"""Data-parallel base training on Ray Train (``jobs/train_base.py --num-workers W``).

W CPU workers train what one process trains: the same crops, λ and quantisation noise per global
batch, the gradients averaged by DistributedDataParallel. A worker killed mid-run is restarted
from the latest checkpoint and the run ends where an uninterrupted one ends. ``ray job submit``
runs the job on a `ray start` cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from oml.models.weights import load_training_state
from pipeline.training.base import BaseTrainConfig, run_base_training

from ..conftest import natural_image

pytest.importorskip("ray.train")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this module's runs (never one found elsewhere on the machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


def _config(tmp_path: Path, name: str, **kw) -> BaseTrainConfig:
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for i in range(3):
            Image.fromarray(natural_image(80, 96, seed=i).permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    settings = dict(steps=5, batch=4, crop=64, N=16, M=24, warmup=2, decay_start=3, decay_end=6, holdout_every=0, log_every=1, eval_every=100, ckpt_every=2, threads=1)
    return BaseTrainConfig(data_dir=str(data), out_dir=str(tmp_path / name), **{**settings, **kw})


METRICS = ("loss", "bpp", "mse", "psnr", "aux")


def _losses(out: Path) -> dict[int, dict[str, float]]:
    """Step → the logged training metrics."""
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {row["step"]: {k: row[k] for k in METRICS} for row in rows if "loss" in row}


def _starts(out: Path) -> list[int]:
    return [row["step"] for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if row.get("event") == "start"]


def test_a_workers_rows_of_the_noise_are_those_one_process_draws_for_them():
    """Within ``global_batch_noise`` each of 2 workers adds to its half of a batch the noise one
    process adds to that half, and leaves torch's generator where that process leaves it."""
    from oml.models.default import OMLHyperprior
    from oml.train import global_batch_noise

    torch.manual_seed(1)
    model = OMLHyperprior(16, 24).train()
    x, lm = torch.rand(4, 3, 64, 64), torch.full((4,), 0.01)
    torch.manual_seed(7)
    whole = model(x, lm)["likelihoods"]
    after = torch.get_rng_state()
    for rank in range(2):
        rows = slice(2 * rank, 2 * rank + 2)
        torch.manual_seed(7)
        with global_batch_noise(model, rank, 2):
            part = model(x[rows], lm[rows])["likelihoods"]
        assert torch.equal(torch.get_rng_state(), after)
        for name in ("y", "z"):
            torch.testing.assert_close(part[name], whole[name][rows], rtol=1e-5, atol=0)
    assert "quantize" not in vars(model.entropy_bottleneck) and "quantize" not in vars(model.gaussian_conditional)
    torch.manual_seed(7)
    alone = model(x[:2], lm[:2])["likelihoods"]  # a half-batch's own noise: other values
    assert not torch.allclose(alone["y"], whole["y"][:2], rtol=1e-3)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--use-gpu"], "--num-workers"),
        (["--address", "127.0.0.1:1"], "--num-workers"),
        (["--num-workers", "3", "--batch", "4"], "does not split evenly over 3 workers"),
        (["--num-workers", "2", "--device", "cuda"], "leave --device at cpu"),
        (["--num-workers", "-1"], "must be >= 0"),
    ],
)
def test_impossible_scaling_requests_are_one_line_before_ray_starts(tmp_path, capsys, flags, message):
    import runpy

    job = runpy.run_path(str(REPO / "jobs" / "train_base.py"), run_name="job")
    status = job["main"](["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("train_base: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_two_workers_train_what_one_process_trains(tmp_path, local_ray):
    """W = 2 against W = 0 at the same global batch of 4, 5 steps: the same loss curve (every logged
    metric: loss, its rate term bpp, mse, aux) and the same weights, up to float reduction order.

    Measured: every metric equal to the log's 5 decimals, weights within 4e-8. The bounds, 1e-4
    relative (plus 2e-5, two units of the log's rounding) and 1e-6 on the weights, are far from
    what a different draw gives: a worker's own half-batch noise moves bpp by 0.7-5 % (the loss,
    at these λ mostly distortion, by 1e-5) and the weights by more than 1e-6; other crops move all."""
    from pipeline.training.ddp import ScaleConfig, run_distributed_training

    torch.manual_seed(0)  # one process's model and noise come from torch's generator; workers seed it with --seed
    one = run_base_training(_config(tmp_path, "one"))
    two = Path(run_distributed_training(_config(tmp_path, "two"), ScaleConfig(num_workers=2)))
    assert two == tmp_path / "two" / "last.pt"
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert list(a) == list(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=2e-5), (step, a[step], b[step])
    x, y = load_training_state(one), load_training_state(two)
    assert x.step == y.step == 5 and y.rng is not None and y.optimizer is not None
    for part in ("model", "ema"):
        for key, value in getattr(x, part).items():
            torch.testing.assert_close(getattr(y, part)[key], value, rtol=1e-4, atol=1e-6, msg=f"{part} {key}")
    assert sorted(p.name for p in (tmp_path / "two").glob("step_*")) == ["step_00000004", "step_00000005"]
    assert _starts(tmp_path / "two") == [0]


def _ray_train_workers() -> list[int]:
    """This process's Ray Train worker processes (its descendants named RayTrainWorker)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                if b"RayTrainWorker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                pass
    return sorted(found)


def _kill_a_worker_after_checkpoint(run_dir: Path, step: int, killed: list, timeout: float = 300) -> None:
    """Once Ray Train has registered the checkpoint of ``step`` (its snapshot names it), SIGKILL one
    of the run's worker processes; ``killed`` gets its pid and the checkpoints registered by then."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            registered = snapshot.read_text()
        except OSError:
            registered = ""
        if f"step_{step:08d}" in registered:
            workers = _ray_train_workers()
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed.append((workers[0], registered))
            return
        time.sleep(0.02)


@pytest.mark.slow  # about 2 minutes on 2 busy cores: two 2-worker runs and a restart
def test_a_killed_worker_resumes_from_the_last_checkpoint_and_ends_where_an_unkilled_run_ends(tmp_path, local_ray):
    """A worker SIGKILLed after checkpoint 2 of 8: Ray Train restarts the workers from the latest
    checkpoint (step, weights, optimisers, weight average and random generators), and the run ends
    at step 8 with the very state of a run that was never interrupted."""
    from pipeline.training.ddp import ScaleConfig, run_distributed_training

    scale = ScaleConfig(num_workers=2, max_failures=1)
    plain = load_training_state(run_distributed_training(_config(tmp_path, "plain", steps=8, warmup=3, decay_start=4, decay_end=8), scale))
    killed: list = []
    watcher = threading.Thread(target=_kill_a_worker_after_checkpoint, args=(tmp_path / "killed", 2, killed), daemon=True)
    watcher.start()
    resumed = load_training_state(run_distributed_training(_config(tmp_path, "killed", steps=8, warmup=3, decay_start=4, decay_end=8), scale))
    watcher.join()
    assert killed, "no worker was killed"
    starts = _starts(tmp_path / "killed")
    assert len(starts) == 2 and starts[0] == 0 and 2 <= starts[1] < 8, starts  # resumed from a checkpoint, not from scratch
    assert plain.step == resumed.step == 8
    for part in ("model", "ema"):
        x, y = getattr(plain, part), getattr(resumed, part)
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), part
    for part in ("optimizer", "aux_optimizer"):
        x, y = getattr(plain, part)["state"], getattr(resumed, part)["state"]
        assert x.keys() == y.keys() and all(torch.equal(x[i][m], y[i][m]) for i in x for m in x[i]), part
    for name, state in plain.rng.items():
        assert torch.equal(state, resumed.rng[name]), name
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "plain")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow  # about 2 minutes on 2 busy cores: a Ray head, a job driver and two workers
def test_ray_job_submit_trains_on_two_workers_of_a_ray_start_cluster(tmp_path):
    """`ray job submit -- python jobs/train_base.py --num-workers 2` against a `ray start` head on
    127.0.0.1: the job succeeds and its last.pt exports to a weights file that loads."""
    from oml.models.zoo import load_model
    from pipeline.archive.reaper import marked_by
    from pipeline.training.base import export_default_weights

    cfg = _config(tmp_path, "out", steps=3)
    tag = secrets.token_hex(6)
    temp_dir = Path(f"/tmp/omlt{tag}")  # short: Ray's socket paths must stay under 108 bytes
    token = tmp_path / "token"  # the head answers this test's job submissions only
    token.write_text(secrets.token_hex(32))
    (tmp_path / "home").mkdir()  # no user-wide Ray settings or token
    env = {**os.environ, "OML_TEST_RAY_HEAD": tag, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path / "home"),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, client, agent, agent_grpc, metrics, runtime_env = _free_ports(7)
    ray = str(Path(sys.executable).parent / "ray")
    try:
        head = subprocess.run(
            [ray, "start", "--head", "--port", str(gcs), "--num-cpus", "2", "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
             "--temp-dir", str(temp_dir), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
             "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
             "--runtime-env-agent-port", str(runtime_env), "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert head.returncode == 0, head.stderr[-3000:]
        job = subprocess.run(
            [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", sys.executable, str(REPO / "jobs" / "train_base.py"),
             "--num-workers", "2", "--data-dir", cfg.data_dir, "--out-dir", cfg.out_dir, "--steps", "3", "--batch", "4", "--crop", "64",
             "--N", "16", "--M", "24", "--holdout-every", "0", "--log-every", "1", "--ckpt-every", "2", "--threads", "1"],
            env=env, capture_output=True, text=True, timeout=420,
        )  # fmt: skip
        assert job.returncode == 0 and "succeeded" in job.stdout, (job.stdout + job.stderr)[-4000:]
    finally:
        for pid in marked_by("OML_TEST_RAY_HEAD", tag):  # only this head's processes: never `ray stop`
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    state = load_training_state(Path(cfg.out_dir) / "last.pt")
    assert state.step == 3 and state.rng is not None
    model = load_model("oml-default", weights=export_default_weights(Path(cfg.out_dir) / "last.pt", tmp_path / "exported.pt"))
    assert (model.encoders["0"].N, model.encoders["0"].M) == (16, 24)
    assert _starts(Path(cfg.out_dir)) == [0] and sorted(_losses(Path(cfg.out_dir))) == [1, 2, 3]
