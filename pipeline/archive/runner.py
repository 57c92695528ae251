"""Ray: a session (the cluster's, or a local one this driver starts and stops), and a bounded pool of tasks.

Nothing hangs: a cluster address where no Ray head answers fails in seconds
(:func:`check_reachable`), and so does a task that no node can run and no autoscaler could add a
node for (:func:`placement`); where an autoscaler can, the pool waits for that node, at most
``RayConfig.resource_wait`` seconds. Nothing lingers: a local Ray's processes carry a session mark
(:data:`pipeline.archive.reaper.MARK`) and a reaper process stops them whenever this driver ends, killed
included. Nothing is retried in vain: a task whose error cannot mend on retry (no space, read-only,
permission, refused) returns a :class:`TaskFailure` instead of raising, so Ray neither retries it
nor prints its traceback; an error that may mend (the network) still raises, and Ray retries it.

``OML_RAY_EVENT_FILE``: when set, a line is appended to that file as the local Ray starts
(``ray-starting``) and once it is up (``ray-started``), with the driver's pid and the session's
temporary folder, for tests and tools that must act at those moments.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

from pipeline.archive import reaper as reaper_mod
from pipeline.archive.config import RayConfig

CONNECT_TIMEOUT_S = 5.0
"""How long a cluster address may take to accept a connection and answer as a Ray head."""
WAIT_POLL_S = 1.0
EVENT_FILE = "OML_RAY_EVENT_FILE"
_AUTH_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class ClusterError(Exception):
    """The Ray cluster cannot run the job as asked: no head answers at its address, or no node can
    run one task and none can be added (one line, for the user)."""


class TaskFailure(NamedTuple):
    """What a task returns instead of raising an error that no retry can mend: the one-line
    ``reason``, and ``error`` itself when it stops the whole run (the output takes no more writes)."""

    reason: str
    error: BaseException | None = None


def permanent(exc: BaseException) -> bool:
    """Whether ``exc`` fails again however often it is retried: a file system full, read-only or
    forbidden, a name too long, a file in the way, a missing folder, a refused request; not a
    connection reset, a timeout or an object store's throttling or 5xx, which Ray retries."""
    from pipeline import files, storage

    return files.is_local_failure(exc) or isinstance(exc, storage.StorageRefused)


def _apply(func: Callable[[Any], Any], item: Any) -> Any:
    """The Ray task: one callable (a :class:`UnitEncoder`, an :class:`ImageDecoder`) on one item."""
    try:
        return func(item)
    except Exception as exc:
        if not permanent(exc):
            raise
        from pipeline import files, storage

        return TaskFailure(storage.explain(exc), exc if files.out_of_room(exc) else None)


def _event(name: str) -> None:
    """Append ``NAME PID SESSION_FOLDER`` to the file ``OML_RAY_EVENT_FILE`` names, if any."""
    path = os.environ.get(EVENT_FILE)
    if path:
        with open(path, "a") as f:
            f.write(f"{name} {os.getpid()} {os.environ.get(reaper_mod.MARK, '')}\n")


@contextmanager
def _keeping_sigterm() -> Iterator[None]:
    """Put back the ``SIGTERM`` handler that ``ray.init`` replaces with one that aborts the driver
    (no ``finally`` runs, no shutdown): the caller's own handler, or the default action."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Use the Ray already initialised here, else connect (address / ``RAY_ADDRESS``) or start a local one.

    Raises:
        ClusterError: an address where no Ray head answers.
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the archiving pipeline needs Ray: pip install 'oml-archive[pipeline]'") from exc
    if ray.is_initialized():
        yield ray
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address, "--address" if cfg.address else "RAY_ADDRESS")
        _forget_cached_token()  # a token this process loaded for an earlier session is not this cluster's
        try:
            with _keeping_sigterm():
                ray.init(address=cfg.address, log_to_driver=True, logging_level=logging.WARNING)  # no "Connecting to…" lines around an error
            yield ray
        finally:
            ray.shutdown()
        return
    with _local_ray(ray, cfg):
        yield ray


def joins_cluster(cfg: RayConfig) -> bool:
    """Whether the job runs on a Ray cluster (an address, ``RAY_ADDRESS``, or a Ray this process has
    already joined) rather than on a local Ray it starts itself."""
    ray = sys.modules.get("ray")
    return bool(cfg.address or os.environ.get("RAY_ADDRESS")) or bool(ray is not None and ray.is_initialized())


def check_shared_paths(ray: Any, locations: Mapping[str, str | None], shared: bool = False, say_shared: str = "add --shared-path") -> None:
    """Refuse a local path (``locations``: flag → path or URI) on a cluster of several nodes, or one an
    autoscaler may grow, unless ``shared`` says that every node mounts it at the same place (the
    jobs' ``--shared-path``; ``say_shared`` names it in the message): each node's tasks would otherwise
    read and write their own disk there.

    Raises:
        ClusterError: such a path, in one line.
    """
    from pipeline import storage

    local = [(flag, uri) for flag, uri in locations.items() if uri and storage.is_local(uri)]
    if not local or shared:
        return
    nodes, _, autoscaling = cluster_view(ray)
    if len(nodes) < 2 and not autoscaling:
        return
    flag, uri = local[0]
    grows = " and an autoscaler that may add more" if autoscaling else ""
    raise ClusterError(
        f"{flag} {uri} is a local path, but the Ray cluster has {len(nodes)} node{'s' * (len(nodes) != 1)}{grows}: "
        "each node's tasks would read and write their own disk there; give an s3:// URI, "
        f"or {say_shared} if every node mounts that path at the same place (NFS, a shared volume)"
    )


@contextmanager
def cluster_checked(cfg: RayConfig, locations: Mapping[str, str | None]) -> Iterator[None]:
    """On a Ray cluster, join it now, before the job writes anything, and refuse local paths its nodes
    do not share (:func:`check_shared_paths`) and a task no node can ever run (:func:`check_placement`);
    the job's own :func:`ray_session` then reuses this connection. Without a cluster, nothing: a
    local Ray is one node, started when tasks need it."""
    if not joins_cluster(cfg):
        yield
        return
    with ray_session(cfg) as ray:
        check_shared_paths(ray, locations, cfg.shared_path)
        check_placement(ray, cfg)
        yield


@contextmanager
def _local_ray(ray: Any, cfg: RayConfig) -> Iterator[None]:
    """A local Ray whose files all lie in a fresh temporary folder (its authentication token too:
    Ray would otherwise write one to ``~/.ray/auth_token``), whose processes carry the session mark,
    and which is gone when this ends, however it ends."""
    temp = tempfile.mkdtemp(prefix="oml-ray-")
    saved = {k: os.environ.get(k) for k in (reaper_mod.MARK, *_AUTH_VARIABLES)}
    reaper = None
    try:
        os.environ[reaper_mod.MARK] = temp
        if not any(os.environ.get(k) for k in _AUTH_VARIABLES):
            token = os.path.join(temp, "auth_token")
            with open(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(secrets.token_hex(32))
            os.environ["RAY_AUTH_TOKEN_PATH"] = token
            _forget_cached_token()
        # stops the local instance if this driver is killed; OML_REAPER_RECORD names a file where it
        # lists, after every poll, what it would stop (for inspection and tests)
        reaper = reaper_mod.watch(session=temp, remove=temp, record=os.environ.get("OML_REAPER_RECORD") or None)
        _event("ray-starting")
        with _keeping_sigterm():
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True, _temp_dir=temp)
        _event("ray-started")
        yield
    finally:
        try:
            ray.shutdown()  # also after an interrupted or failed ray.init
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _forget_cached_token()  # a later Ray in this process must not present this session's token
            if reaper is not None:
                reaper_mod.release(reaper)  # stops whatever of the session is left, removes its folder
            else:
                shutil.rmtree(temp, ignore_errors=True)


def _forget_cached_token() -> None:
    """Ray keeps the first authentication token it loads for the life of the process; a later
    session in the same process (a new local Ray, another cluster) may need another."""
    try:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def check_reachable(address: str, source: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ClusterError` unless a Ray head (its GCS) answers at ``address`` within
    ``timeout`` seconds. ``ray.init`` itself would retry a dead address for minutes.

    ``address``: ``HOST:PORT`` or ``ray://HOST:PORT`` (Ray Client: only the connection is
    checked); ``auto`` and ``local`` are Ray's to resolve. ``source``: where it came from, for the message.
    """
    if address in ("auto", "local"):
        return
    scheme, _, target = address.rpartition("://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # Ray's own parser reports what is wrong with it
    host = host.strip("[]")
    where = f"{address} ({source})"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc)).lower()
        raise ClusterError(f"no Ray cluster answers at {where}: {why}; start one (ray start --head) or give its head's address") from None
    if scheme or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED):
                raise ClusterError(f"{where} accepts connections but no Ray head answers there ({exc.code().name.lower()}); give the head's GCS address (port 6379 by default)") from None
            # any other answer (say, unauthenticated) comes from a Ray head: ray.init takes it from here


class NodeType(NamedTuple):
    """A kind of node an autoscaler may start: its resources per node and how many it may run (-1: no limit)."""

    name: str
    resources: Mapping[str, float]
    max_count: int


Verdict = Literal["ready", "wait", "never"]


def fits(resources: Mapping[str, float], request: Mapping[str, float]) -> bool:
    """Whether a node with ``resources`` can hold one task asking for ``request``."""
    return all(resources.get(name, 0.0) >= amount for name, amount in request.items() if amount > 0)


def placement(request: Mapping[str, float], nodes: Sequence[Mapping[str, float]], node_types: Sequence[NodeType] | None, autoscaling: bool) -> Verdict:
    """Whether a task asking for ``request`` can run on one of the live ``nodes`` now (``ready``),
    on a node an autoscaler can still add (``wait``), or ``never``.

    ``node_types``: what the cluster's autoscaler may start, where it says (``None``: unknown).
    ``autoscaling``: whether an autoscaler manages the cluster at all; one whose node types are
    unknown gets the benefit of the doubt (``wait``, bounded by the caller). A cluster without one
    (a local Ray, a ``ray start`` cluster) has only its current nodes.
    """
    if any(fits(node, request) for node in nodes):
        return "ready"
    if node_types is not None:
        return "wait" if any(t.max_count != 0 and fits(t.resources, request) for t in node_types) else "never"
    return "wait" if autoscaling else "never"


_READONLY_TYPE = re.compile(r"node_[0-9a-f]+")


def launcher_managed(status: Mapping[str, Any]) -> bool:
    """Whether the autoscaler status the monitor publishes (``__autoscaling_status``) is that of an
    autoscaler with a cluster config (``ray up``), rather than of the read-only one Ray runs on
    every other head, which names each node ``node_<id>`` and can start none."""
    report = status.get("autoscaler_report") or {}
    names = {*(report.get("active_nodes") or {}), *(report.get("pending_launches") or {}), *(report.get("node_type_mapping") or {}).values()}
    return any(not _READONLY_TYPE.fullmatch(str(name)) for name in names)


def cluster_view(ray: Any) -> tuple[list[Mapping[str, float]], list[NodeType] | None, bool]:
    """The live nodes' resources, the node types an autoscaler may start (``None``: not said),
    and whether an autoscaler may add nodes: from the node groups that an autoscaler reports to the
    GCS (Ray's cluster config), else from the status the cluster-launcher's autoscaler publishes."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # not every Ray keeps one
        config = None
    if config is not None and config.node_group_configs:
        types = [NodeType(g.name, dict(g.resources), g.max_count) for g in config.node_group_configs]
        return nodes, types, any(t.max_count != 0 for t in types)
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        status = json.loads(raw) if raw else {}
    except Exception:
        status = {}
    return nodes, None, launcher_managed(status) if isinstance(status, dict) else False


def _amounts(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {resources.get(name, 0):g}" for name in ("CPU", "GPU"))


def _task_request(cfg: RayConfig) -> dict[str, float]:
    return {"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker}


def check_placement(ray: Any, cfg: RayConfig) -> str:
    """Whether a node can run a task as ``cfg`` asks: ``"ready"`` (one can now) or ``"wait"`` (an
    autoscaler may add one).

    Raises:
        ClusterError: no node can run one, and none that could will ever be added.
    """
    request = _task_request(cfg)
    nodes, types, autoscaling = cluster_view(ray)
    verdict = placement(request, nodes, types, autoscaling)
    if verdict == "never":
        asked = f"--cpus-per-worker {cfg.cpus_per_worker:g} --num-gpus {cfg.gpus_per_worker:g}"
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        why = "and no node type its autoscaler may start has them" if types is not None else "and it has no autoscaler to add one"
        raise ClusterError(
            f"no node of the Ray cluster can run a task ({asked}: {_amounts(request)} each): "
            f"the largest has {_amounts(largest)}, {why}; ask for less, or run on a cluster that has them"
        )
    return verdict


def _await_placement(ray: Any, cfg: RayConfig) -> float | None:
    """None when a node can run a task now; the deadline of the wait for an autoscaler's node otherwise.

    Raises:
        ClusterError: no node can run one, and none that could will ever be added.
    """
    if check_placement(ray, cfg) == "ready":
        return None
    print(f"waiting up to {cfg.resource_wait:g} s (--resource-wait) for the autoscaler to add a node with {_amounts(_task_request(cfg))} for a task", file=sys.stderr, flush=True)
    return time.monotonic() + cfg.resource_wait


def run_tasks(
    ray: Any,
    cfg: RayConfig,
    func: Callable[[Any], Any],
    items: Sequence[Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[Any, str], None],
) -> None:
    """Run ``func(item)`` as Ray tasks, at most ``cfg.num_workers`` at once; report each outcome as it arrives.

    Resources are set per call with ``.options()``, never in ``ray.remote(...)``: a function declared
    with GPUs gets ``max_calls=1`` (a fresh process per task), which would reload the model that
    ``func``'s per-process cache keeps for the next unit. A worker that dies, or an ``OSError`` that
    may mend, is retried ``cfg.max_retries`` times; a :class:`TaskFailure` is not.

    Raises:
        ClusterError: no node can run a task, and none arrives within ``cfg.resource_wait`` seconds.
        OSError: a task found that the output takes no more writes (full, read-only): the run stops.
    """
    request = _task_request(cfg)
    waiting_until = _await_placement(ray, cfg)
    remote = ray.remote(_apply).options(
        num_cpus=cfg.cpus_per_worker,
        num_gpus=cfg.gpus_per_worker,
        max_retries=cfg.max_retries,
        retry_exceptions=[OSError],
    )
    limit = cfg.num_workers or len(items)
    func_ref = ray.put(func)
    queue, running = list(items), {}
    while queue or running:
        while queue and len(running) < limit:
            item = queue.pop(0)
            running[remote.remote(func_ref, item)] = item
        ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_POLL_S)
        if not ready:
            if waiting_until is not None:
                if any(fits(node["Resources"], request) for node in ray.nodes() if node.get("Alive")):
                    waiting_until = None
                elif time.monotonic() > waiting_until:
                    raise ClusterError(f"no node with {_amounts(request)} joined the Ray cluster within {cfg.resource_wait:g} s (--resource-wait)")
            continue
        item = running.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            on_error(item, one_line(exc))
            continue
        if isinstance(outcome, TaskFailure):
            if outcome.error is not None:
                raise outcome.error
            on_error(item, outcome.reason)
        else:
            on_done(outcome)


def one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
