"""Ray Train plumbing shared by the training loops (:mod:`pipeline.training.ddp`, :mod:`pipeline.training.meta`).

- :func:`fit`: a :class:`~ray.train.torch.TorchTrainer` whose checkpoints go to
  ``storage_path/name`` (local or ``s3://``), keeping the last two, and which restarts its workers
  from the latest checkpoint after up to ``max_failures`` failures. Re-running the same run (same
  ``storage_path`` and ``name``) resumes from that checkpoint too (``ray.train.get_checkpoint``).
- :func:`report_checkpoint`: rank 0 writes a checkpoint's files, every worker reports.
- :func:`average_across_workers`: an in-place mean over the workers (one all-reduce).

Ray is imported inside the functions: importing this module starts nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch


def average_across_workers(tensors: list[torch.Tensor]) -> None:
    """In-place mean over the data-parallel workers, in one all-reduce (unchanged without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every worker (one broadcast), for decisions all of them must share."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    shared = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared)


def report_checkpoint(metrics: dict, step: int, write: Callable[[Path], None] | None) -> None:
    """Report ``metrics`` with a checkpoint named ``step_<step>``: the worker given ``write`` (rank 0)
    writes the checkpoint's files into a folder; every worker takes part in the report."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        saved = None
        if write is not None:
            write(Path(folder))
            saved = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"step_{step:08d}")


def fit(
    loop: Callable[[dict], None], loop_config: dict, *, name: str, storage_path: str, num_workers: int, use_gpu: bool, max_failures: int,
    paths: Mapping[str, str | None] | None = None, shared_path: bool = False,
):
    """Run ``loop(loop_config)`` on ``num_workers`` Ray Train workers (one GPU each with ``use_gpu``)
    and return the :class:`ray.train.Result`, whose ``checkpoint`` is the latest one.

    ``paths`` (flag → path or URI, default ``storage_path`` alone): what the workers read and write;
    on a cluster of several nodes a local one is refused unless ``shared_path`` says every node mounts it.

    Raises:
        RuntimeError: the run ended without a checkpoint.
        ClusterError: a local path on a cluster of several nodes (without ``shared_path``).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.archive.runner import check_shared_paths

    if not ray.is_initialized():
        ray.init()  # the cluster in RAY_ADDRESS, else a local Ray: what the trainer would start
    check_shared_paths(ray, paths if paths is not None else {"--storage-path": storage_path}, shared_path)

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {name!r} under {storage_path} ended without a checkpoint")
    return result
