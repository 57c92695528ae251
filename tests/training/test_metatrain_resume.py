"""``jobs/metatrain.py`` killed mid-run on Ray Train (2 CPU workers) resumes from its checkpoint when re-run.

The test starts a 2-CPU Ray instance and runs the job twice as a separate
driver process attached to it (``RAY_ADDRESS``), as on a cluster: the first
driver is killed with SIGKILL once Ray Train has registered its first checkpoint
(the event it waits on), which also ends its Ray Train controller and workers;
the second, the same command, resumes. The first run is asked for far more steps
than it can take before the kill, so the kill never races the run's end; the
second asks for 20 steps past the last checkpoint (a resumed run may change
--steps).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oml.models.weights import load_meta_state, load_weights

from ..conftest import png_folder

pytest.importorskip("ray.train")

REPO = Path(__file__).resolve().parents[2]
FIRST_STEPS = 100_000  # never reached: the first run is killed at its first checkpoint
NAME = "resume"


@pytest.fixture(scope="module")
def ray_address():
    import ray

    ray.init(num_cpus=2, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (the job's driver and anything it started)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _stop_session(sid: int, grace_s: float = 30.0) -> None:
    """Wait for the job's processes to exit, then kill any left over, one pid at a time."""
    deadline = time.time() + grace_s
    while _session_pids(sid) and time.time() < deadline:
        time.sleep(0.5)
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _checkpoint_logs(run_dir: Path) -> dict[int, list[dict]]:
    logs = {}
    for folder in run_dir.glob("step_*"):
        state = folder / "meta_state.pt"
        if state.exists():
            logs[int(folder.name[len("step_") :])] = load_meta_state(state).log
    return logs


@pytest.mark.slow
def test_killed_metatrain_resumes_from_its_checkpoint(tmp_path, ray_address):
    data = png_folder(tmp_path / "data", 4, 96, 128)
    storage = tmp_path / "store"
    run_dir = storage / NAME
    def cmd(steps: int) -> list[str]:
        return [
            sys.executable, "jobs/metatrain.py", "--no-pretrained", "--data-dir", str(data), "--crop", "64",
            "--batch", "1", "--tasks-per-step", "1", "--steps", str(steps), "--ckpt-every", "10", "--report-every", "10",
            "--num-workers", "2", "--mode", "maml2", "--storage-path", str(storage), "--name", NAME,
        ]  # fmt: skip
    env = os.environ | {"RAY_ADDRESS": ray_address, "OMP_NUM_THREADS": "1"}

    # First run: kill the job once Ray has registered a checkpoint.
    with open(tmp_path / "first.log", "wb") as out:
        first = subprocess.Popen(cmd(FIRST_STEPS), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        deadline = time.time() + 300  # generous: a busy machine (a training run beside the tests) needs it
        while not (snapshot.exists() and "step_" in snapshot.read_text()):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        _stop_session(first.pid)
    assert first.returncode == -signal.SIGKILL
    killed = _checkpoint_logs(run_dir)
    assert killed
    steps = max(killed) + 20

    # Second run: the same command continues from the latest checkpoint and finishes.
    second = subprocess.Popen(cmd(steps), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = second.communicate(timeout=150)[0].decode(errors="replace")
    finally:
        second.kill()
        _stop_session(second.pid)
    assert second.returncode == 0, output[-3000:]
    resumed = {int(s) for s in re.findall(r"resumed from step (\d+)", output)}
    assert len(resumed) == 1 and resumed <= set(killed), (resumed, sorted(killed))
    start = resumed.pop()
    assert start > 0

    log = [json.loads(line) for line in (run_dir / "oml-default-meta-maml2.log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, steps + 1))
    # The first run's steps are kept as it logged them (timings included), not recomputed.
    assert log[:start] == killed[start]
    assert all(row["s_per_step"] > 0 and torch.isfinite(torch.tensor(row["loss_after"])) for row in log)

    from oml.models.zoo import load_model

    model = load_model("oml-default", weights=run_dir / "oml-default-meta-maml2.pt")
    final = load_meta_state(sorted(run_dir.glob("step_*"))[-1] / "meta_state.pt")
    assert final.step == steps
    for key, value in final.synthesis.items():
        torch.testing.assert_close(model.synthesis.state_dict()[key], value)


@pytest.mark.slow  # about a minute on 2 cores, most of it Ray Train starting up
def test_without_ray_one_process_trains_what_a_one_worker_ray_run_trains(tmp_path, ray_address):
    """``--no-ray`` (a GPU machine without Ray) draws the same tasks and takes the same steps as a
    one-worker Ray Train run: both write the same λ-offset branches, the same log and the base's step."""
    from oml.models.zoo import load_model, save_weights
    from pipeline.training.meta import MetaTrainConfig, load_base_model, run_metatrain, run_metatrain_here

    data = png_folder(tmp_path / "data", 3, 96, 128)
    base = tmp_path / "base.pt"
    save_weights(load_base_model(MetaTrainConfig(pretrained=False, seed=1)), base, trained_steps=42)
    common = dict(weights=str(base), data_dir=str(data), crop=64, batch=1, tasks_per_step=2, steps=3, mode="offset",
                  outer_lr=1e-2, num_workers=1, storage_path=str(tmp_path / "store"), ckpt_every=3, report_every=1)  # fmt: skip
    on_ray = run_metatrain(MetaTrainConfig(name="ray", **common))
    here = run_metatrain_here(MetaTrainConfig(name="here", ray=False, **common))
    a, b = (load_model("oml-default", weights=r.weights) for r in (on_ray, here))
    offsets = [k for k in a.synthesis.state_dict() if k.startswith("offsets.")]
    assert offsets
    for key in offsets:
        torch.testing.assert_close(a.synthesis.state_dict()[key], b.synthesis.state_dict()[key], rtol=1e-5, atol=1e-7)
    assert not torch.equal(a.synthesis.state_dict()[offsets[-1]], load_base_model(MetaTrainConfig(weights=str(base), mode="offset")).synthesis.state_dict()[offsets[-1]])
    rows = [[json.loads(line) for line in Path(r.log).read_text().splitlines()] for r in (on_ray, here)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3]
    for x, y in zip(*rows):
        assert x["loss_before"] == pytest.approx(y["loss_before"], rel=1e-5)
    assert load_weights(here.weights).trained_steps == 42
    with pytest.raises(ValueError, match="--num-workers 1"):
        run_metatrain_here(MetaTrainConfig(name="two", ray=False, **(common | {"num_workers": 2})))
