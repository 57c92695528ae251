"""The test cluster itself: what a run killed before it could clean up leaves is swept by the next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import netcluster

pytestmark = pytest.mark.multinode
REPO = Path(__file__).resolve().parents[2]

MAKE = """
import time
from tests.netcluster import NetCluster
c = NetCluster(workers=1, cpus=1)
c.make_network()
c._start_ray(c.head)  # a Ray head, left running
print(c.name, flush=True)
time.sleep(600)
"""


def test_what_a_killed_owner_left_is_swept():
    why = netcluster.unavailable()
    if why:
        pytest.skip(f"no namespace cluster here: {why}")
    owner = subprocess.Popen([sys.executable, "-c", MAKE], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        name = owner.stdout.readline().strip()
        assert name.startswith("omlc"), name
        made = netcluster.leftovers(name)
        assert any(m.startswith("pid ") for m in made) and any(m.startswith(f"{name}h") for m in made), made  # a head host, with processes
    finally:
        owner.kill()  # SIGKILL: no close()
        owner.wait()
    assert netcluster.leftovers(name), "the killed owner cleaned up after all"
    assert name in netcluster.sweep()
    assert not netcluster.leftovers(name), netcluster.leftovers(name)
