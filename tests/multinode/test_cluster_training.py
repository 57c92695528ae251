"""Training on Ray Train across the hosts of the namespace cluster (:mod:`tests.netcluster`): a worker
node killed (its raylet, SIGKILL) mid-run, and the run goes on from its last checkpoint on the
node left and finishes. Base training (``jobs/train_base.py --num-workers 2``) ends with the very
state of a run that lost no node; meta-training (``jobs/metatrain.py``) ends at its last step.

The run folders are on the local disk, which every host of the namespace cluster shares (as
nodes of a real cluster share an NFS mount): the jobs are told so with ``--shared-path``, and
refuse those paths without it. Each worker node has 2 CPUs, so the two workers fit on the node left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oml.models.weights import load_training_state
from tests.conftest import png_folder
from tests.training.test_train_ddp import _starts

from .conftest import REPO, finish, start_on_head, wait_for

pytestmark = pytest.mark.multinode
pytest.importorskip("ray.train")


def _job(cluster, argv: list[str], log: Path) -> subprocess.Popen:
    """A training job's driver on the head host, as `ray job submit` would run it there."""
    return start_on_head(cluster, log, [sys.executable, *argv], {"RAY_ADDRESS": cluster.address})


def _checkpointed(run_dir: Path) -> bool:
    try:
        return "step_" in (run_dir / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return False


def _kill_the_training_node(cluster, job: subprocess.Popen, log: Path, run_dir: Path):
    """Once a checkpoint is registered, SIGKILL the raylet of a node that runs a training worker."""
    wait_for(lambda: _checkpointed(run_dir), 300, "a checkpoint", job, log)
    wait_for(lambda: any(cluster.busy(h, "ray::RayTrainWorker") for h in cluster.worker_hosts), 60, "a training worker", job, log)
    victim = next(h for h in cluster.worker_hosts if cluster.busy(h, "ray::RayTrainWorker"))
    assert job.poll() is None, "the run ended before the kill"
    cluster.kill_raylet(victim)
    return victim


def test_base_training_survives_a_worker_node_killed(nodes, tmp_path):
    data = png_folder(tmp_path / "data", 4, 96, 128)

    def argv(out: Path) -> list[str]:
        return [str(REPO / "jobs" / "train_base.py"), "--num-workers", "2", "--max-failures", "1", "--data-dir", str(data), "--out-dir", str(out),
                "--steps", "30", "--batch", "4", "--crop", "64", "--N", "16", "--M", "24", "--warmup", "3", "--holdout-every", "0",
                "--log-every", "1", "--ckpt-every", "2", "--threads", "1", "--shared-path"]  # fmt: skip

    refused_log = tmp_path / "refused.log"
    refused = _job(nodes, argv(tmp_path / "refused")[:-1], refused_log)
    output = finish(refused, refused_log)
    lines = [line for line in output.splitlines() if line.strip() and "FutureWarning" not in line and "warnings.warn" not in line]
    assert refused.returncode == 2 and lines[-1].startswith("train_base: --data-dir") and "--shared-path" in lines[-1], output[-3000:]
    assert not (tmp_path / "refused").exists()

    plain_log = tmp_path / "plain.log"
    plain = _job(nodes, argv(tmp_path / "plain"), plain_log)
    output = finish(plain, plain_log)
    assert plain.returncode == 0, output[-3000:]

    log = tmp_path / "killed.log"
    job = _job(nodes, argv(tmp_path / "killed"), log)
    victim = _kill_the_training_node(nodes, job, log, tmp_path / "killed")
    output = finish(job, log)
    assert job.returncode == 0, output[-3000:]
    assert victim.ip not in nodes.alive_ips()
    starts = _starts(tmp_path / "killed")
    assert len(starts) == 2 and starts[0] == 0 and 2 <= starts[1] < 30, starts  # went on from a checkpoint, not from scratch
    a, b = (load_training_state(tmp_path / name / "last.pt") for name in ("plain", "killed"))
    assert a.step == b.step == 30
    for part in ("model", "ema"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), part


def test_meta_training_survives_a_worker_node_killed(nodes, tmp_path):
    from oml.models.weights import load_meta_state

    data = png_folder(tmp_path / "data", 4, 96, 128)
    store, name, steps = tmp_path / "store", "cluster", 60
    argv = [str(REPO / "jobs" / "metatrain.py"), "--no-pretrained", "--data-dir", str(data), "--crop", "64", "--batch", "1",
            "--tasks-per-step", "1", "--steps", str(steps), "--ckpt-every", "5", "--report-every", "5", "--num-workers", "2",
            "--mode", "maml2", "--storage-path", str(store), "--name", name, "--shared-path"]  # fmt: skip
    log = tmp_path / "meta.log"
    job = _job(nodes, argv, log)
    victim = _kill_the_training_node(nodes, job, log, store / name)
    output = finish(job, log)
    assert job.returncode == 0, output[-3000:]
    assert victim.ip not in nodes.alive_ips()
    resumed = {int(s) for s in __import__("re").findall(r"resumed from step (\d+)", output)}
    assert resumed and min(resumed) > 0, output[-3000:]  # the restarted workers went on from a checkpoint
    final = load_meta_state(sorted((store / name).glob("step_*"))[-1] / "meta_state.pt")
    assert final.step == steps
    rows = [json.loads(line) for line in (store / name / "oml-default-meta-maml2.log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, steps + 1))  # every step once
    assert os.path.exists(store / name / "oml-default-meta-maml2.pt")
