"""Base training, data-parallel on Ray Train: the steps of :func:`pipeline.training.base.run_base_training`
on W workers.

- A :class:`~ray.train.torch.TorchTrainer` with W workers (one GPU each with ``use_gpu``), each
  holding one replica of the model in ``DistributedDataParallel``: the gradients are averaged
  across workers in the backward pass (gloo on CPU, NCCL on GPU).
- The global batch (``--batch``) is the one a single process would train on: every worker draws
  all of its crops and λ from the same generator, as that process would, and trains on its rows
  ``[rank·b, (rank+1)·b)`` with ``b = batch / W``; the quantisation noise is that process's noise
  for those rows (:func:`oml.train.global_batch_noise`). The learning-rate schedule and the weight
  average (EMA) are those of one process, so W workers train what one process trains, up to the
  order of float sums.
- Checkpoints through Ray Train: every ``--ckpt-every`` steps rank 0 writes ``last.pt`` (weights,
  weight average, optimisers, step, config and the random generators' states) and the log so far
  into a checkpoint ``OUT_DIR/step_<step>`` (local or ``s3://``; the last two are kept).
- Resume: a failed worker (``max_failures`` times) or a re-run of the same command continues from
  the latest checkpoint with the same step, optimisers, weight average and random draws, so it
  ends where an uninterrupted run ends. Without a checkpoint a run starts as one process does: from
  ``OUT_DIR/last.pt``, else ``--init``, else fresh, its model's initial weights and training noise
  seeded with ``--seed``.

At the end the driver writes ``OUT_DIR/last.pt`` and ``OUT_DIR/train_log.jsonl`` (the same files
as one process writes), from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oml.models.weights import TrainingState, load_state, save_training_state
from oml.train import global_batch_noise, train_step
from pipeline import storage
from pipeline.training.raytrain import average_across_workers, fit, from_rank0, report_checkpoint
from pipeline.training.base import (
    BaseTrainConfig,
    TrainingRun,
    _resume_state,
    eval_lambdas,
    evaluate,
    load_training_images,
    log_line,
    resolve_widths,
    start_event,
    start_run,
    training_device,
    update_ema,
    window_mean,
)

STATE_FILE = "last.pt"
LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class ScaleConfig:
    """Where base training runs: in this process (``num_workers`` 0) or on that many Ray Train
    workers, on GPUs with ``use_gpu``, on the cluster at ``address`` (else the one in
    ``RAY_ADDRESS``, else a local Ray), restarted from the latest checkpoint up to ``max_failures``
    times. ``shared_path``: local paths are the same storage on every node (else refused on a
    cluster of several nodes)."""

    num_workers: int = 0
    use_gpu: bool = False
    address: str = ""
    max_failures: int = 2
    shared_path: bool = False

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.max_failures < 0:
            raise ValueError("--num-workers and --max-failures must be >= 0")
        if not self.num_workers and (self.use_gpu or self.address):
            raise ValueError("--use-gpu and --address are for Ray Train workers (--num-workers W >= 1); in one process use --device cuda")


def _check(cfg: BaseTrainConfig, scale: ScaleConfig) -> None:
    """Settings a data-parallel run cannot take, refused before Ray starts."""
    if cfg.batch % scale.num_workers:
        raise ValueError(f"--batch {cfg.batch} does not split evenly over {scale.num_workers} workers")
    if cfg.device != "cpu":
        raise ValueError("with --num-workers each worker's device is a CPU, or a GPU with --use-gpu: leave --device at cpu")


def _resolve_paths(cfg: BaseTrainConfig) -> BaseTrainConfig:
    """Local paths made absolute: Ray workers do not run in the driver's working directory."""
    return dataclasses.replace(
        cfg,
        data_dir=storage.normalize(cfg.data_dir),
        out_dir=storage.normalize(cfg.out_dir),
        init=storage.normalize(cfg.init) if cfg.init else "",
        context_from=storage.normalize(cfg.context_from) if cfg.context_from else "",
    )


def _run_place(out_dir: str) -> tuple[str, str]:
    """Ray Train's ``storage_path`` and run ``name`` whose run folder is ``out_dir``."""
    parent, name = out_dir.rstrip("/").rsplit("/", 1) if not storage.is_local(out_dir) else (str(Path(out_dir).parent), Path(out_dir).name)
    if not name or parent.endswith(":/"):
        raise ValueError(f"--out-dir {out_dir} must be a folder inside a folder or bucket (the run's checkpoints go there)")
    return parent, name


def _start_uri(cfg: BaseTrainConfig) -> str:
    """What a run without a checkpoint of its own starts from: ``OUT_DIR/last.pt`` when there is
    one, else ``--init``, else nothing (``""``)."""
    last = storage.join(cfg.out_dir, STATE_FILE)
    return last if storage.exists(last) else cfg.init


def _read_start(uri: str, cfg: BaseTrainConfig) -> TrainingState:
    """The state at ``uri`` (local, or read whole from an object store) as a run starts from it."""
    return _resume_state(Path(uri) if storage.is_local(uri) else storage.read_bytes(uri), cfg, origin=uri)


def _restore(checkpoint) -> tuple[TrainingState, list[dict]] | None:
    """The state and log rows of a Ray checkpoint (None without one)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        state = load_state(Path(folder) / STATE_FILE)
        rows = [json.loads(line) for line in (Path(folder) / LOG_FILE).read_text().splitlines()]
    if not isinstance(state, TrainingState) or state.rng is None:
        raise ValueError(f"{checkpoint.path} is not a checkpoint of data-parallel base training")
    return state, rows


def _rng_state(run: TrainingRun, device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"crops": run.gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng_state(run: TrainingRun, rng: dict[str, torch.Tensor], device: torch.device) -> None:
    run.gen.set_state(rng["crops"])
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _replicate(run: TrainingRun, device: torch.device) -> torch.nn.Module:
    """The model in ``DistributedDataParallel`` (itself on one worker). The entropy bottleneck's
    quantiles are left out: only the auxiliary loss trains them, from weights every worker has
    alike, so each worker takes the same auxiliary step. Buffers never change in training."""
    import ray.train.torch

    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        run.model, [name for name, _ in run.model.named_parameters() if name.endswith(".quantiles")]
    )
    return ray.train.torch.prepare_model(run.model, move_to_device=device, parallel_strategy_kwargs={"forward_sync_buffers": False})


def _train_loop(loop_config: dict) -> None:
    """One Ray Train worker: start or resume, train its rows of each global batch, checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = BaseTrainConfig(**loop_config["train"])
    torch.set_num_threads(cfg.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = training_device(str(ray.train.torch.get_device()))
    images = load_training_images(cfg)
    restored = _restore(ray.train.get_checkpoint())
    if restored is not None:
        state, log = restored
    else:
        start = loop_config["start"]
        state, log = (_read_start(start, cfg) if start else None), [json.loads(line) for line in loop_config["log"].splitlines()]
    torch.manual_seed(cfg.seed)  # a fresh model's weights and the training noise: alike on every worker
    run = start_run(cfg, state, images.train, device)
    if restored is not None:
        _set_rng_state(run, state.rng, device)
        if rank == 0:
            print(f"resumed from step {run.step}", flush=True)
    log.append(start_event(cfg, run.step, images) | {"workers": world})
    replica = _replicate(run, device)
    per_worker = cfg.batch // world
    rows = slice(rank * per_worker, (rank + 1) * per_worker)
    held_lambdas = eval_lambdas(cfg)
    t0, acc = time.time(), []
    saved_at = run.step if restored is not None else None
    with global_batch_noise(run.model, rank, world):
        while run.step < cfg.steps:
            progress = from_rank0((time.time() - loop_config["began"]) / cfg.seconds, device) if cfg.seconds > 0 else 0.0
            if progress >= 1.0:  # a time-budgeted run (--seconds) ends here, with a checkpoint
                log.append({"event": "time_up", "step": run.step, "seconds": cfg.seconds})
                break
            lr = run.set_lr(cfg, progress)
            x, lmbda = run.draw_batch(cfg, device, rows)
            acc.append(train_step(run.model, run.optimizer, run.aux_optimizer, x, lmbda, amp=cfg.amp, forward=replica))
            update_ema(run.ema, run.model, cfg.ema_decay)
            run.step += 1
            if run.step % cfg.log_every == 0:
                log.append(log_line(run.step, lr, _mean_over_workers(window_mean(acc), device), (time.time() - t0) / len(acc)))
                if rank == 0:
                    print(json.dumps(log[-1]), flush=True)
                t0, acc = time.time(), []
            if run.step % cfg.eval_every == 0 and images.held and rank == 0:
                log.append({"step": run.step, "eval": evaluate(run.model, images.held, held_lambdas)})
            if run.step % cfg.ckpt_every == 0 or run.step == cfg.steps:
                _checkpoint(run, cfg, log, rank, device)
                saved_at = run.step
    if saved_at != run.step:  # stopped by the time budget, or started at --steps already
        _checkpoint(run, cfg, log, rank, device)


def _mean_over_workers(mean: dict[str, float], device: torch.device) -> dict[str, float]:
    """A worker's metric means over its rows, averaged over the workers: the global batch's means."""
    values = torch.tensor(list(mean.values()), dtype=torch.float64, device=device)
    average_across_workers([values])
    return dict(zip(mean, values.tolist()))


def _checkpoint(run: TrainingRun, cfg: BaseTrainConfig, log: list[dict], rank: int, device: torch.device) -> None:
    """Report a checkpoint of the run (written by rank 0) with the last logged metrics."""
    rng = _rng_state(run, device)

    def write(folder: Path) -> None:
        save_training_state(run.checkpoint(cfg, rng), folder / STATE_FILE)
        (folder / LOG_FILE).write_text("".join(json.dumps(row) + "\n" for row in log))

    metrics = next((row for row in reversed(log) if "loss" in row), {})
    report_checkpoint({**metrics, "step": run.step}, run.step, write if rank == 0 else None)


def run_distributed_training(cfg: BaseTrainConfig, scale: ScaleConfig) -> str:
    """Train (or resume) the default model on ``scale.num_workers`` Ray Train workers; returns the
    URI of the ``last.pt`` written into ``cfg.out_dir`` (local or ``s3://``)."""
    import ray

    _check(cfg, scale)
    cfg = _resolve_paths(resolve_widths(cfg))
    storage_path, name = _run_place(cfg.out_dir)
    # Fail here, before any worker starts, on a missing data folder or an unusable starting point.
    storage.list_images(cfg.data_dir)
    start = _start_uri(cfg)
    if start:
        _read_start(start, cfg)
    log_uri = storage.join(cfg.out_dir, LOG_FILE)
    earlier_log = storage.read_bytes(log_uri).decode() if storage.exists(log_uri) else ""
    if scale.address and not ray.is_initialized():
        ray.init(address=scale.address)
    loop_config = {"train": dataclasses.asdict(cfg), "start": start, "log": earlier_log, "began": time.time()}
    paths = {"--data-dir": cfg.data_dir, "--out-dir": cfg.out_dir, "--init": start or None}
    result = fit(_train_loop, loop_config, name=name, storage_path=storage_path, num_workers=scale.num_workers, use_gpu=scale.use_gpu,
                 max_failures=scale.max_failures, paths=paths, shared_path=scale.shared_path)  # fmt: skip
    with result.checkpoint.as_directory() as folder:
        state_bytes, log_bytes = (Path(folder) / STATE_FILE).read_bytes(), (Path(folder) / LOG_FILE).read_bytes()
    last = storage.join(cfg.out_dir, STATE_FILE)
    storage.write_bytes(last, state_bytes)
    storage.write_bytes(log_uri, log_bytes)
    return last
