"""The namespace cluster the ``multinode`` tests share: a Ray head and two worker nodes of 2 CPUs,
each a network namespace of its own (:mod:`tests.netcluster`), and a moto S3 endpoint on the
bridge that all of them reach. A test that kills or cuts off a node gets it back, fresh, afterwards."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import netcluster

BUCKET = "oml-cluster"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster():
    why = netcluster.unavailable()
    if why:
        pytest.skip(f"no namespace cluster here: {why}")
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    netcluster.sweep()  # what a killed earlier run left
    made = netcluster.NetCluster(workers=2, cpus=2)
    server = None
    try:
        made.make_network()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
        server = moto_server.ThreadedMotoServer(ip_address=made.bridge_ip, port=0, verbose=False)
        server.start()
        made.s3_env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{made.bridge_ip}:{server.get_host_and_port()[1]}",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        made.ray_env.update(made.s3_env)
        made.start_ray()
        made.fs = s3fs.S3FileSystem(
            key="testing", secret="testing-secret", client_kwargs={"endpoint_url": made.s3_env["AWS_ENDPOINT_URL"]}, skip_instance_cache=True
        )
        made.fs.mkdir(BUCKET)
        yield made
    finally:
        made.close()
        if server is not None:
            server.stop()
    assert not made.leftovers(), made.leftovers()


@pytest.fixture
def nodes(cluster):
    """The cluster, with every node that the test killed or cut off started again after it."""
    try:
        yield cluster
    finally:
        for host in cluster.worker_hosts:
            if host.ip in cluster._dead:
                cluster.revive(host)


def oml(cluster, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``oml ARGV`` run on the head host against the cluster, as a job driver there would."""
    return subprocess.run(cluster.command(cluster.head, [str(netcluster.BIN / "oml"), *argv]), env=cluster.ray_env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def start_on_head(cluster, log: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``argv`` started on the head host (output to ``log``), as a job driver there would run."""
    with open(log, "wb") as out:
        return subprocess.Popen(cluster.command(cluster.head, argv), env={**cluster.ray_env, **(env or {})}, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def start_oml(cluster, log: Path, *argv: str) -> subprocess.Popen:
    return start_on_head(cluster, log, [str(netcluster.BIN / "oml"), *argv])


def finish(job: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        job.wait(timeout)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, 9)
            job.wait()
    return log.read_text(errors="replace")


def wait_for(predicate, timeout: float, what: str, job: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if job is not None and job.poll() is not None:
            raise AssertionError(f"the job ended before {what}: " + (log.read_text(errors='replace')[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:g} s")
        time.sleep(0.2)


