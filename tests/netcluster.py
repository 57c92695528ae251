"""A Ray cluster of several hosts on one machine, for the ``multinode`` tests and ``bench/nodes.py``.

Each host is a network namespace of its own (``ip netns``), joined to a bridge in the root
namespace by a veth pair, with an address on a /24 of the test's choosing: one head (``ray start
--head``, no CPUs: the job drivers run there and no task does) and worker nodes (``ray start
--address``). The root namespace holds the bridge's address, where the tests' S3 endpoint
(moto) listens: the storage every host reaches. The hosts share one file system, as
hosts with an NFS mount would; their networks and Ray processes are their own, so a node can be
killed (its raylet, SIGKILL) or cut off (its veth taken down) alone.

Everything made here has the run's own name (``omlc<hex>``) and is removed by :meth:`NetCluster.close`,
which the fixtures call however the test ends: every process in the namespaces, the namespaces,
the veths, the bridge, the Ray folders. Needs root and ``ip``; :func:`unavailable` says why not.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
GCS_PORT = 6379
DASHBOARD_PORT = 8265
TIMEOUTS = {
    # the GCS declares a silent node dead after ~3 s instead of ~30 s (Ray's defaults: a check every
    # 3 s, 10 s to answer, 5 misses): a lost node's tasks are retried without the test waiting
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    # a call in flight to a node cut off gets no reset, only silence: gRPC gives up on it after its
    # keepalive ping goes unanswered, which Ray sends after 300 s and waits 120 s for by default
    # (measured: an archive with a node cut off took 438 s with those, 32 s with these; the
    # recommended cluster settings are in cluster.yaml)
    "RAY_grpc_client_keepalive_time_ms": "5000",
    "RAY_grpc_client_keepalive_timeout_ms": "5000",
}


def unavailable() -> str | None:
    """Why a cluster of namespaces cannot be made here (``None``: it can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"omlp{secrets.token_hex(3)}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` is not allowed here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=check)


@dataclass
class Host:
    """One host: its namespace, its address, its end of the bridge, its Ray folder and processes."""

    name: str
    netns: str
    ip: str
    veth: str
    cpus: int
    temp: str = ""
    ray: subprocess.Popen | None = None
    cpu_set: str | None = None

    def pids(self) -> list[int]:
        return _netns_pids(self.netns)

    def processes(self) -> dict[int, str]:
        """pid → command line of every process in this host's namespace."""
        found = {}
        for pid in self.pids():
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                pass
        return found


@dataclass
class NetCluster:
    """``workers`` Ray worker nodes of ``cpus`` CPUs each and a head of none, on a bridge of their own.

    ``env``: variables for every Ray process (and so every task), such as the S3 endpoint and keys.
    ``cpu_sets``: per worker, the CPUs (``taskset`` list) its processes may run on.
    """

    workers: int = 2
    cpus: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    cpu_sets: Sequence[str] | None = None
    _dead: set = field(default_factory=set)  # addresses of hosts killed or cut off, not yet revived

    def __post_init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"omlc{tag}"
        octets = secrets.randbelow(200) + 20, secrets.randbelow(250) + 1
        self.subnet = f"10.{octets[0]}.{octets[1]}"
        self.bridge_ip = f"{self.subnet}.1"
        self.bridge = f"{self.name}b"
        self.root = tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp")  # short: Ray's socket paths stay under 108 bytes
        Path(self.root, "owner").write_text(str(os.getpid()))  # for sweep(), should this process die without close()
        token = Path(self.root, "auth_token")
        token.write_text(secrets.token_hex(32))
        self.token = token.read_text()
        self.ray_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "OMP_NUM_THREADS": "1",
            **TIMEOUTS,
            **self.env,
        }
        self.hosts: dict[str, Host] = {}

    # --- hosts -------------------------------------------------------------------------------

    @property
    def head(self) -> Host:
        return self.hosts["head"]

    @property
    def worker_hosts(self) -> list[Host]:
        return [h for n, h in self.hosts.items() if n != "head"]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    def _add_host(self, name: str, index: int, cpus: int, cpu_set: str | None = None) -> Host:
        host = Host(name, f"{self.name}{name[0]}{index}", f"{self.subnet}.{index + 1}", f"{self.name}v{index}", cpus, cpu_set=cpu_set)
        _ip("netns", "add", host.netns)
        self.hosts[name] = host
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def start(self) -> NetCluster:
        """Make the network, then start Ray on it; return once every node is alive."""
        self.make_network()
        self.start_ray()
        return self

    def make_network(self) -> None:
        """The bridge (the root namespace's end: :attr:`bridge_ip`) and a namespace per host."""
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self._add_host("head", 1, 0)
        for i in range(self.workers):
            self._add_host(f"w{i + 1}", i + 2, self.cpus, self.cpu_sets[i] if self.cpu_sets else None)

    def start_ray(self) -> None:
        """The head, then the workers (with :attr:`ray_env`); return once every node is alive."""
        self._start_ray(self.head)
        for host in self.worker_hosts:
            self._start_ray(host)
        self.wait_alive(len(self.hosts))

    def _start_ray(self, host: Host) -> None:
        host.temp = tempfile.mkdtemp(prefix=f"{host.name}-", dir=self.root)
        if host.name == "head":
            role = ["--head", "--port", str(GCS_PORT), "--include-dashboard", "true", "--dashboard-host", host.ip, "--dashboard-port", str(DASHBOARD_PORT)]
        else:
            role = ["--address", self.address]
        argv = [str(BIN / "ray"), "start", "--block", *role, "--node-ip-address", host.ip, "--num-cpus", str(host.cpus),
                "--temp-dir", host.temp, "--disable-usage-stats"]  # fmt: skip
        if host.cpu_set:
            argv = ["taskset", "-c", host.cpu_set, *argv]
        log = open(Path(host.temp, "ray-start.log"), "wb")
        host.ray = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], env=self.ray_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    # --- what the head says --------------------------------------------------------------------

    def api(self, path: str, timeout: float = 5.0) -> dict:
        """GET the head's dashboard API (from the root namespace, across the bridge)."""
        request = urllib.request.Request(f"http://{self.head.ip}:{DASHBOARD_PORT}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.load(answer)

    def nodes(self) -> list[dict]:
        """The cluster's nodes as the head's state API lists them (``state``: ALIVE or DEAD)."""
        return self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]

    def alive_ips(self) -> set[str]:
        return {n["node_ip"] for n in self.nodes() if n["state"] == "ALIVE"}

    def wait_alive(self, count: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for host in self.hosts.values():
                if host.ray is not None and host.ray.poll() is not None and host.ip not in self._dead:
                    raise RuntimeError(f"ray start on {host.name} exited with {host.ray.returncode}: {self.log(host)[-2000:]}")
            try:
                alive = self.alive_ips()
                if len(alive) >= count:
                    return
                last = alive
            except OSError as exc:  # the dashboard is not up yet
                last = exc
            time.sleep(1)
        raise RuntimeError(f"the cluster did not have {count} live nodes within {timeout:g} s: {last}")

    def wait_dead(self, host: Host, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while host.ip in self.alive_ips():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the head still counts {host.name} alive after {timeout:g} s")
            time.sleep(0.5)

    def log(self, host: Host) -> str:
        try:
            return Path(host.temp, "ray-start.log").read_text(errors="replace")
        except OSError:
            return ""

    # --- running and disturbing ----------------------------------------------------------------

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", host.netns, *argv]

    def busy(self, host: Host, title: str = "ray::_apply") -> bool:
        """Whether a Ray worker on ``host`` is running a task of that title (Ray names the process after it)."""
        return any(cmd.startswith(title) for cmd in host.processes().values())

    def wait_busy(self, host: Host, title: str = "ray::_apply", timeout: float = 120.0, until: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not self.busy(host, title):
            if until is not None and until.poll() is not None:
                raise RuntimeError(f"the job ended before any task ran on {host.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {title} ran on {host.name} within {timeout:g} s")
            time.sleep(0.2)

    def kill_raylet(self, host: Host) -> int:
        """SIGKILL ``host``'s raylet (its workers go with it); the pid killed."""
        raylets = [pid for pid, cmd in host.processes().items() if cmd.split(" ")[0].endswith("/raylet")]
        if not raylets:
            raise RuntimeError(f"no raylet on {host.name}")
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        self._dead.add(host.ip)
        return raylets[0]

    def cut(self, host: Host) -> None:
        """Take ``host``'s link to the bridge down: it reaches nothing and nothing reaches it."""
        _ip("link", "set", host.veth, "down")
        self._dead.add(host.ip)

    def revive(self, host: Host) -> None:
        """Whatever happened to ``host``: stop all of it, reconnect it and start a fresh Ray node there."""
        self._stop_host(host)
        _ip("link", "set", host.veth, "up")
        self._dead.discard(host.ip)
        self._start_ray(host)
        deadline = time.monotonic() + 120
        while host.ip not in self.alive_ips():  # the dead node's record stays DEAD; a new one joins
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.name} did not rejoin: {self.log(host)[-2000:]}")
            time.sleep(1)

    def _stop_host(self, host: Host) -> None:
        _kill_all(host.netns)
        if host.ray is not None:
            try:
                host.ray.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Remove everything this cluster made, whatever state it is in."""
        try:
            for host in reversed(list(self.hosts.values())):
                self._stop_host(host)
        finally:
            _remove(self.name, self.root)

    def leftovers(self) -> list[str]:
        """What of this cluster is still on the machine (empty after :meth:`close`)."""
        return leftovers(self.name)

    def __enter__(self) -> NetCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep() -> list[str]:
    """Remove what clusters of processes that died without :meth:`NetCluster.close` (SIGKILL) left:
    their namespaces and everything running in them, veths, bridges, folders. Returns their names."""
    swept = []
    for root in Path("/tmp").glob("omlc*-*"):
        try:
            owner = int((root / "owner").read_text())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{owner}").exists():
            continue
        name = root.name.split("-", 1)[0]
        _remove(name, str(root))
        swept.append(name)
    return swept


def leftovers(name: str) -> list[str]:
    """What of the cluster ``name`` is on the machine: namespaces, links, the processes in those
    namespaces or naming its folder, its folder."""
    spaces = _named(_ip("netns", "list", check=False).stdout.split(), name)
    left = spaces + _named(_links(), name)
    left += [f"pid {p}" for netns in spaces for p in _netns_pids(netns)]
    roots = [str(p) for p in Path("/tmp").glob(f"{name}-*")]
    left += [f"pid {p}" for root in roots for p in _pgrep(root)]
    return left + roots


def _remove(name: str, root: str) -> None:
    """Stop every process in the namespaces of the cluster ``name``, delete them, its links, its folder."""
    for netns in _named(_ip("netns", "list", check=False).stdout.split(), name):
        _kill_all(netns)
        _ip("netns", "delete", netns, check=False)
    for link in _named(_links(), name):  # veths outlive their namespace's end while a process holds it
        _ip("link", "delete", link, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _named(names: list[str], name: str) -> list[str]:
    return [n for n in names if n.startswith(name)]


def _links() -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link", check=False).stdout.splitlines()]


def _netns_pids(netns: str) -> list[int]:
    return [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split() if p.isdigit()]


def _kill_all(netns: str) -> None:
    """SIGKILL every process in ``netns`` until none is left (a dying raylet may still start one)."""
    for _ in range(20):
        pids = [p for p in _netns_pids(netns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]
