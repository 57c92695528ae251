"""`oml archive` and `oml restore` on a cluster of three hosts (:mod:`tests.netcluster`), to and from S3:
a worker node killed (its raylet, SIGKILL) or cut off (its link down) mid-job leaves an archive and
a restore bit-identical to an undisturbed run's, nothing lost and nothing twice; local paths are
refused unless said to be shared; requests the cluster can never run fail at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from oml.imageio import encode_png
from tests.conftest import natural_image, png_folder

from .conftest import BUCKET, REPO, finish, oml, start_oml

pytestmark = pytest.mark.multinode

IMAGES = 24


@pytest.fixture(scope="module")
def collection(cluster):
    """``IMAGES`` photos-like images of one tile each under s3://BUCKET/in/."""
    for i in range(IMAGES):
        cluster.fs.pipe_file(f"{BUCKET}/in/{i:02d}.png", encode_png(natural_image(192, 224, seed=100 + i)))
    return f"s3://{BUCKET}/in"


def archive_args(cluster, source: str, output: str, *more: str) -> list[str]:
    # one tile a unit: 24 units, so that both nodes hold several when one is disturbed
    return ["archive", "--input", source, "--output", output, "--address", cluster.address, "--quality", "1", "--effort", "fast",
            "--unit-tiles", "1", "--no-progress", *more]  # fmt: skip


def restore_args(cluster, archive: str, output: str, *more: str) -> list[str]:
    return ["restore", "--input", archive, "--output", output, "--address", cluster.address, "--no-progress", *more]


def contents(cluster, prefix: str, suffix: str = "") -> dict[str, bytes]:
    """relative key → bytes of every object under s3://BUCKET/prefix (ending in ``suffix``)."""
    root = f"{BUCKET}/{prefix}"
    return {key[len(root) + 1 :]: cluster.fs.cat_file(key) for key in cluster.fs.find(root) if key.endswith(suffix)}


def unit_files(cluster, archive: str) -> dict[str, object]:
    """The archive's unit files: Parquet bytes, and done markers without their timings."""
    found: dict[str, object] = {}
    for name, data in contents(cluster, f"{archive}/units").items():
        if name.endswith(".done.json"):
            marker = json.loads(data)
            marker.pop("seconds")
            found[name] = marker
        else:
            found[name] = data
    return found


@pytest.fixture(scope="module")
def reference(cluster, collection):
    """An undisturbed run: the archive's units and the restored PNGs."""
    done = oml(cluster, *archive_args(cluster, collection, f"s3://{BUCKET}/ref/archive"))
    assert done.returncode == 0, done.stderr[-3000:]
    restored = oml(cluster, *restore_args(cluster, f"s3://{BUCKET}/ref/archive", f"s3://{BUCKET}/ref/restored"))
    assert restored.returncode == 0, restored.stderr[-3000:]
    units = unit_files(cluster, "ref/archive")
    pngs = contents(cluster, "ref/restored", ".png")
    assert len(pngs) == IMAGES and len(units) >= IMAGES
    return units, pngs


def check_archive(cluster, prefix: str, log: str, reference) -> None:
    """Every image archived once, the units those of the undisturbed run byte for byte, and a
    restore of it that gives the undisturbed run's PNGs byte for byte."""
    units, pngs = reference
    summary = json.loads(cluster.fs.cat_file(f"{BUCKET}/{prefix}/summary.json"))
    assert (summary["images"], summary["archived"], summary["failed"]) == (IMAGES, IMAGES, 0), log[-3000:]
    assert unit_files(cluster, prefix) == units  # no unit missing, none extra, none different
    listed = oml(cluster, "ls", f"s3://{BUCKET}/{prefix}", "--json")
    assert listed.returncode == 0, listed.stderr
    paths = [json.loads(line)["path"] for line in listed.stdout.splitlines()]
    assert sorted(paths) == [f"{i:02d}.png" for i in range(IMAGES)]  # each image once
    restored = oml(cluster, *restore_args(cluster, f"s3://{BUCKET}/{prefix}", f"s3://{BUCKET}/{prefix}-restored"))
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert contents(cluster, f"{prefix}-restored", ".png") == pngs


def test_archive_survives_a_worker_node_killed_mid_job(nodes, collection, reference, tmp_path):
    log = tmp_path / "archive.log"
    job = start_oml(nodes, log, *archive_args(nodes, collection, f"s3://{BUCKET}/killed/archive"))
    victim = nodes.hosts["w1"]
    nodes.wait_busy(victim, until=job)  # a unit is being coded there
    assert job.poll() is None
    nodes.kill_raylet(victim)
    output = finish(job, log)
    assert job.returncode == 0, output[-3000:]
    assert victim.ip not in nodes.alive_ips()  # the job finished without it
    check_archive(nodes, "killed/archive", output, reference)


def test_archive_survives_a_worker_node_cut_off_mid_job(nodes, collection, reference, tmp_path):
    log = tmp_path / "archive.log"
    job = start_oml(nodes, log, *archive_args(nodes, collection, f"s3://{BUCKET}/cut/archive"))
    victim = nodes.hosts["w2"]
    nodes.wait_busy(victim, until=job)
    assert job.poll() is None
    nodes.cut(victim)  # its tasks can reach neither the head nor the store: they hang there
    output = finish(job, log)
    assert job.returncode == 0, output[-3000:]
    assert victim.ip not in nodes.alive_ips()
    check_archive(nodes, "cut/archive", output, reference)


def test_restore_survives_a_worker_node_killed_mid_job(nodes, reference, tmp_path):
    log = tmp_path / "restore.log"
    job = start_oml(nodes, log, *restore_args(nodes, f"s3://{BUCKET}/ref/archive", f"s3://{BUCKET}/restore-killed"))
    victim = nodes.hosts["w2"]
    nodes.wait_busy(victim, until=job)
    assert job.poll() is None
    nodes.kill_raylet(victim)
    output = finish(job, log)
    assert job.returncode == 0, output[-3000:]
    summary = json.loads(nodes.fs.cat_file(f"{BUCKET}/restore-killed/decompress-summary.json"))
    assert (summary["selected"], summary["restored"], summary["failed"]) == (IMAGES, IMAGES, 0)
    assert contents(nodes, "restore-killed", ".png") == reference[1]


def test_local_paths_are_refused_on_a_cluster_unless_shared(cluster, tmp_path):
    source = png_folder(tmp_path / "photos", 2, 64, 64)
    archive = tmp_path / "archive"
    start = time.monotonic()
    refused = oml(cluster, *archive_args(cluster, str(source), str(archive)))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert time.monotonic() - start < 30
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shared-path" in lines[0] and "3 nodes" in lines[0], refused.stderr
    assert not archive.exists()  # refused before anything was written
    remote_in = oml(cluster, *archive_args(cluster, f"s3://{BUCKET}/in", str(archive)))
    assert remote_in.returncode == 2 and "--output" in remote_in.stderr and not archive.exists()

    # the hosts here do share this file system: said so, the job runs
    shared = oml(cluster, *archive_args(cluster, str(source), str(archive), "--shared-path"))
    assert shared.returncode == 0, shared.stderr[-3000:]
    restored = tmp_path / "restored"
    refused = oml(cluster, *restore_args(cluster, str(archive), str(restored)))
    assert refused.returncode == 2 and "--shared-path" in refused.stderr and not restored.exists()
    ok = oml(cluster, *restore_args(cluster, str(archive), str(restored), "--shared-path"))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert sorted(p.name for p in restored.glob("*.png")) == ["0.png", "1.png"]

    # Ray Data's reader of an archive, from a driver on the cluster: the same rule
    read = (f"import ray\nfrom pipeline.archive.runner import ClusterError\nfrom pipeline.dataset import read_archive\n"
            f"ray.init(address={cluster.address!r}, logging_level='WARNING')\n"
            f"try:\n    read_archive({str(archive)!r})\nexcept ClusterError as error:\n    print('refused:', error)\n"
            f"print('rows:', read_archive({str(archive)!r}, shared_path=True).count())\n")  # fmt: skip
    done = subprocess.run(cluster.command(cluster.head, [sys.executable, "-c", read]), env=cluster.ray_env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: uri " in done.stdout and "shared_path=True" in done.stdout and "rows: 2" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "case",
    ["gpus", "cpus", "no-head", "no-host"],
)
def test_what_the_cluster_can_never_run_fails_at_once(cluster, collection, case):
    """Exit 2 with one line within 30 s: resources no node has (and no autoscaler can add), an
    address where a host answers but no Ray head does, an address where nothing answers."""
    address = {"no-head": f"{cluster.bridge_ip}:6379", "no-host": f"{cluster.subnet}.250:6379"}.get(case, cluster.address)
    extra = {"gpus": ["--num-gpus", "1"], "cpus": ["--cpus-per-worker", "3"]}.get(case, [])
    args = archive_args(cluster, collection, f"s3://{BUCKET}/never-{case}", *extra)
    args[args.index("--address") + 1] = address
    start = time.monotonic()
    done = oml(cluster, *args, timeout=120)
    took = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    assert took < 30, took
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("oml archive: error:"), done.stderr
    assert not cluster.fs.exists(f"{BUCKET}/never-{case}")  # refused before anything was written
