"""Ray: a session (the cluster's, or a local one this driver starts and stops), and a bounded pool of tasks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pipeline import reaper as reaper_mod
from pipeline.archive.config import RayConfig


def _apply(func: Callable[[Any], Any], item: Any) -> Any:
    """The Ray task: one callable (a :class:`ShardEncoder`, a :class:`ShardDecoder`) on one item."""
    return func(item)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Use the Ray already initialised here, else connect (address / ``RAY_ADDRESS``) or start a local one."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the archiving pipeline needs Ray: pip install 'oml-archive[pipeline]'") from exc
    if ray.is_initialized():
        yield ray
        return
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address, log_to_driver=True)
        reaper = None
    else:
        reaper = reaper_mod.watch()  # stops the local instance if this driver is killed
        try:
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
        except BaseException:
            if reaper is not None:
                reaper.terminate()
            raise
    try:
        yield ray
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.terminate()
            reaper.wait()


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
    ``func``'s per-process cache keeps for the next unit.
    """
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
        ready, _ = ray.wait(list(running), num_returns=1)
        item = running.pop(ready[0])
        try:
            on_done(ray.get(ready[0]))
        except ray.exceptions.RayError as exc:
            on_error(item, one_line(exc))


def one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
