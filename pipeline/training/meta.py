"""MAML meta-training of the decoder's modulators on Ray Train (paper Eq. 4).

The algorithm is :mod:`oml.meta`; this module adds the distributed loop:

- a :class:`~ray.train.torch.TorchTrainer` with ``ScalingConfig(num_workers, use_gpu)``:
  every worker loads the frozen base model, samples its own tasks from its own
  shard of the training photos, and the meta-gradients are averaged across
  workers with one all-reduce per step (gloo on CPU, NCCL on GPU), so Ψ and the
  optimiser stay identical on every worker. (DDP is not used: it cannot follow
  MAML's ``autograd.grad`` through the inner step.)
- metrics (averaged over workers) for every step in a metric log that each
  checkpoint carries, and through ``ray.train.report`` as means over the last
  ``report_every`` steps and at every checkpoint. (Ray Train's controller takes
  one report per worker per poll, every 2 s by default, and a worker blocks
  until its previous report is taken: reporting each step of a fast loop would
  cap it at one step per poll.)
- a checkpoint every ``ckpt_every`` steps under ``storage_path/name`` (local or
  ``s3://``) holding Ψ, the optimiser, the step and the metric log;
- resume: Ray Train finds the run's latest checkpoint under the same
  ``storage_path`` and ``name``, so re-running the same command after a kill
  continues from it (``ray.train.get_checkpoint``). A run that has already
  reached ``steps`` only rewrites its outputs.

At the end the driver writes an oml weights file (the base model with the
meta-trained modulators) and the JSON-lines metric log beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from oml.imageio import decode_image
from oml.meta import MetaMode, MetaStepResult, MetaTask, encode_frozen, meta_step, prepare_meta, sample_task_lambdas
from oml.models.variable_rate import VariableRateModel
from oml.models.weights import MetaState, TrainingState, Weights, load_meta_state, load_state, save_meta_state
from oml.models.zoo import DEFAULT_MODEL, is_derived_buffer, load_model, save_weights
from oml.train import random_crops
from pipeline import storage
from pipeline.training.raytrain import average_across_workers, fit, report_checkpoint


STATE_FILE = "meta_state.pt"
# Settings that define what is trained: a resumed run must keep them (steps, workers, paths may change).
_FIXED_ON_RESUME = ("model", "quality", "weights", "pretrained", "crop", "batch", "tasks_per_step", "inner_lr", "lambda_step", "outer_lr", "mode", "discrete_fraction", "clip_norm", "seed")


@dataclass(frozen=True)
class MetaTrainConfig:
    """Meta-training settings.

    Base model: ``weights`` is an oml weights file or a base-training checkpoint
    (a dict ``{"model": state_dict}``, default model only), local or a URL;
    empty: ``model``'s zoo weights (``pretrained``) or random weights.
    ``quality`` picks the quality group. ``batch`` crops make one mini-batch;
    every worker runs ``tasks_per_step`` tasks per step, so a step averages over
    ``tasks_per_step × num_workers`` tasks. ``output`` (the weights file)
    defaults to ``storage_path/name/<model>-meta-<mode>.pt``; the metric log is
    written beside it as ``<output>.log.jsonl`` without the ``.pt``.
    """

    model: str = DEFAULT_MODEL
    quality: int = 1
    weights: str = ""
    pretrained: bool = True
    data_dir: str = "../shared/data/train"
    crop: int = 256
    batch: int = 2
    steps: int = 2000
    tasks_per_step: int = 2
    inner_lr: float = 1e-3
    lambda_step: float = 0.5
    outer_lr: float = 1e-4
    mode: str = MetaMode.MAML2.value
    discrete_fraction: float = 0.5
    clip_norm: float = 0.0
    seed: int = 0
    storage_path: str = "runs/meta"
    name: str = "oml-meta"
    output: str = ""
    num_workers: int = 2
    use_gpu: bool = False
    ray: bool = True
    threads: int = 1
    ckpt_every: int = 50
    report_every: int = 10
    max_failures: int = 2
    shared_path: bool = False

    def __post_init__(self) -> None:
        MetaMode(self.mode)
        if self.crop % 64:
            raise ValueError(f"crop must be a multiple of 64, got {self.crop}")
        for field in ("batch", "steps", "tasks_per_step", "ckpt_every", "report_every", "threads"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1 (Ray Train keeps no checkpoints in local mode)")


class MetaTrainResult(NamedTuple):
    """Where the outputs went, the last step, and the last step's metrics."""

    weights: str
    log: str
    checkpoint: str
    step: int
    metrics: dict


def load_shard(data_dir: str, crop: int, rank: int, world: int) -> list[torch.Tensor]:
    """This worker's images ``(3,H,W)`` uint8: every ``world``-th file from ``rank``, those smaller than ``crop`` left out."""
    images = [decode_image(storage.read_bytes(uri), to_srgb=True) for uri in storage.list_images(data_dir)[rank::world]]
    usable = [img for img in images if min(img.shape[1:]) >= crop]
    if not usable:
        raise ValueError(f"worker {rank}: none of its {len(images)} images in {data_dir} is at least {crop}×{crop}")
    return usable


def _from_training_checkpoint(state: TrainingState, origin: str) -> VariableRateModel:
    """The default model from a base-training checkpoint ``{"model": OMLHyperprior state_dict, ...}``."""
    model = load_model(DEFAULT_MODEL, pretrained=False)
    # The coder tables are rebuilt from the weights (a training checkpoint's are stale or empty),
    # so they are left out, past CompressAI's load_state_dict, which insists on them.
    weights = {k: v for k, v in state.model.items() if not is_derived_buffer(k)}
    missing, unexpected = torch.nn.Module.load_state_dict(model.encoders["0"], weights, strict=False)
    missing = [k for k in missing if not is_derived_buffer(k)]
    if missing or unexpected:
        raise ValueError(f"{origin} does not match {DEFAULT_MODEL}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.update_entropy_models()
    return model.eval()


def load_base_model(cfg: MetaTrainConfig) -> VariableRateModel:
    """The frozen base model of the run (see :class:`MetaTrainConfig` for the sources); in
    ``offset`` mode with fresh λ-offset branches unless its weights have some."""
    torch.manual_seed(cfg.seed)  # random weights (pretrained=False) must match on every worker
    model = _load_base(cfg)
    if MetaMode(cfg.mode) is MetaMode.OFFSET and model.synthesis.offsets is None:
        model.synthesis.add_offsets()
    return model


def _read_base(cfg: MetaTrainConfig) -> Weights | TrainingState:
    """``cfg.weights``: an oml weights file (a local overlay finds its base beside it) or a
    base-training checkpoint, local or a URL."""
    source = storage.normalize(cfg.weights) if storage.is_local(cfg.weights) else storage.read_bytes(cfg.weights)
    state = load_state(source, cfg.weights)
    if not isinstance(state, Weights | TrainingState):
        raise ValueError(f"{cfg.weights} is a meta-training checkpoint, not an oml weights file or base-training checkpoint")
    return state


def base_trained_steps(cfg: MetaTrainConfig) -> int | None:
    """The base-training step of ``cfg.weights`` (a default-model weights file or checkpoint), or
    None: the meta-trained file records it too, so base training can resume from that file."""
    if not cfg.weights:
        return None
    state = _read_base(cfg)
    return state.trained_steps if isinstance(state, Weights) else state.step


def _load_base(cfg: MetaTrainConfig) -> VariableRateModel:
    if not cfg.weights:
        return load_model(cfg.model, cfg.quality, pretrained=cfg.pretrained, all_qualities=True)
    state = _read_base(cfg)
    if isinstance(state, TrainingState):
        if cfg.model != DEFAULT_MODEL:
            raise ValueError(f"{cfg.weights} is a base-training checkpoint of {DEFAULT_MODEL}, not of {cfg.model}")
        return _from_training_checkpoint(state, cfg.weights)
    return load_model(cfg.model, cfg.quality, weights=state)


def _check_resumable(saved: dict, cfg: MetaTrainConfig) -> None:
    changed = [k for k in _FIXED_ON_RESUME if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise ValueError(
            f"the checkpoint of run {cfg.name!r} was made with other settings ({', '.join(changed)}); "
            "resume with the same settings or start a new run with another --name"
        )


def _sample_tasks(model: VariableRateModel, images: list[torch.Tensor], cfg: MetaTrainConfig, gen: torch.Generator, device: torch.device) -> list[MetaTask]:
    group = sorted(model.lambdas.values())
    tasks = []
    for lmbda in sample_task_lambdas(cfg.tasks_per_step, group, cfg.discrete_fraction, gen):
        support, query = (random_crops(images, cfg.batch, cfg.crop, gen).to(device) for _ in range(2))
        tasks.append(MetaTask(lmbda, encode_frozen(model, support, lmbda), encode_frozen(model, query, lmbda)))
    return tasks


def _mean_metrics(result: MetaStepResult, device: torch.device) -> dict[str, float]:
    values = torch.tensor(result, dtype=torch.float64, device=device)
    average_across_workers([values])
    metrics = dict(zip(result._fields, values.tolist()))
    metrics["psnr"] = -10.0 * math.log10(max(metrics["mse"], 1e-10))
    return metrics


def _restore(checkpoint, cfg: MetaTrainConfig, model: VariableRateModel, optimizer: torch.optim.Optimizer, device: torch.device) -> list[dict]:
    """Load Ψ and the optimiser from a Ray checkpoint (if any); returns the metric log, one row per step done."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        state = load_meta_state(Path(folder) / STATE_FILE, map_location=device)
    _check_resumable(state.config, cfg)
    model.synthesis.load_state_dict(state.synthesis)
    optimizer.load_state_dict(state.optimizer)
    if len(state.log) != state.step:
        raise ValueError(f"corrupt checkpoint: step {state.step} but {len(state.log)} logged steps")
    return list(state.log)


def _train_loop(loop_config: dict) -> None:
    """One Ray Train worker: load, resume, meta-train, report and checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = MetaTrainConfig(**loop_config)
    torch.set_num_threads(cfg.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    model = load_base_model(cfg).to(device)
    psi = prepare_meta(model, cfg.mode)
    optimizer = torch.optim.Adam(psi.values(), lr=cfg.outer_lr)
    log = _restore(ray.train.get_checkpoint(), cfg, model, optimizer, device)
    step, reported = len(log), len(log)
    if step and rank == 0:
        print(f"resumed from step {step}", flush=True)
    images = load_shard(cfg.data_dir, cfg.crop, rank, world)
    mode = MetaMode(cfg.mode)
    while step < cfg.steps:
        log.append(_one_step(cfg, mode, model, psi, optimizer, images, rank, step, device))
        step += 1
        at_checkpoint = step % cfg.ckpt_every == 0 or step == cfg.steps
        if at_checkpoint or step % cfg.report_every == 0:
            window = _window_mean(log[reported:])
            reported = len(log)
            if rank == 0:
                print(json.dumps({k: round(v, 5) for k, v in window.items()}), flush=True)
            if at_checkpoint:
                state = MetaState(model.synthesis.state_dict(), optimizer.state_dict(), step, log, dataclasses.asdict(cfg))
                report_checkpoint(window, step, (lambda folder, state=state: save_meta_state(state, folder / STATE_FILE)) if rank == 0 else None)
            else:
                ray.train.report(window)


def _one_step(cfg: MetaTrainConfig, mode: MetaMode, model: VariableRateModel, psi: dict, optimizer: torch.optim.Optimizer, images: list[torch.Tensor], rank: int, step: int, device: torch.device) -> dict:
    """Meta-step ``step + 1`` of this worker; returns its metric row."""
    # Seeded by step so a resumed run draws what an uninterrupted one would have.
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 7_919 + step)
    t0 = time.time()
    tasks = _sample_tasks(model, images, cfg, gen, device)
    result = meta_step(mode, model.synthesis, psi, optimizer, tasks, cfg.inner_lr, average_across_workers, cfg.clip_norm, cfg.lambda_step)
    return {"step": step + 1, **_mean_metrics(result, device), "s_per_step": time.time() - t0}


def run_metatrain_here(cfg: MetaTrainConfig) -> MetaTrainResult:
    """The same meta-training as one worker in this process, without Ray: for a machine that has a
    GPU but no Ray (``scripts/train_gpu.sh``). It keeps no checkpoints (a killed run
    starts over) and draws exactly what a one-worker Ray run draws, so both write the same Ψ."""
    if cfg.num_workers != 1:
        raise ValueError(f"--no-ray runs one worker in this process: pass --num-workers 1, not {cfg.num_workers}")
    cfg = _resolve_paths(cfg)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.use_gpu else "cpu")
    model = load_base_model(cfg).to(device)
    psi = prepare_meta(model, cfg.mode)
    optimizer = torch.optim.Adam(psi.values(), lr=cfg.outer_lr)
    images = load_shard(cfg.data_dir, cfg.crop, 0, 1)
    log: list[dict] = []
    for step in range(cfg.steps):
        log.append(_one_step(cfg, MetaMode(cfg.mode), model, psi, optimizer, images, 0, step, device))
        if (step + 1) % cfg.report_every == 0 or step + 1 == cfg.steps:
            print(json.dumps({k: round(v, 5) for k, v in _window_mean(log[-cfg.report_every :]).items()}), flush=True)
    state = {"synthesis": {k: v.cpu() for k, v in model.synthesis.state_dict().items()}, "log": log}
    model.cpu()
    log_path = _write_outputs(model, state, cfg.output, base_trained_steps(cfg))
    return MetaTrainResult(cfg.output, log_path, "", cfg.steps, log[-1])


def _window_mean(rows: list[dict]) -> dict[str, float]:
    """Means of the per-step metrics since the last report, labelled with the last step."""
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in rows[-1] if key != "step"}
    return {"step": rows[-1]["step"], **mean}


def _resolve_paths(cfg: MetaTrainConfig) -> MetaTrainConfig:
    """Local paths made absolute: Ray workers do not run in the driver's working directory."""
    root = storage.normalize(cfg.storage_path)
    return dataclasses.replace(
        cfg,
        data_dir=storage.normalize(cfg.data_dir),
        weights=storage.normalize(cfg.weights) if cfg.weights else "",
        storage_path=root,
        output=storage.normalize(cfg.output) if cfg.output else storage.join(root, cfg.name, f"{cfg.model}-meta-{cfg.mode}.pt"),
    )


def _write_outputs(model: VariableRateModel, state: dict, weights: str, trained_steps: int | None) -> str:
    """The oml weights file with the checkpoint's decoder (and the base's training step), and the
    metric log beside it; returns the log's path."""
    model.synthesis.load_state_dict(state["synthesis"])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "weights.pt"
        save_weights(model, local, trained_steps=trained_steps)
        storage.write_bytes(weights, local.read_bytes())
    log = weights.removesuffix(".pt") + ".log.jsonl"
    storage.write_bytes(log, "".join(json.dumps(row) + "\n" for row in state["log"]).encode())
    return log


def run_metatrain(cfg: MetaTrainConfig) -> MetaTrainResult:
    """Meta-train (or resume) the run ``cfg.name`` under ``cfg.storage_path`` and write the weights file."""
    cfg = _resolve_paths(cfg)
    # Fail here, before any worker starts, on a missing base model or data folder.
    model = load_base_model(cfg)
    storage.list_images(cfg.data_dir)
    paths = {"--data-dir": cfg.data_dir, "--storage-path": cfg.storage_path, "--weights": cfg.weights or None}  # the driver writes --output
    result = fit(_train_loop, dataclasses.asdict(cfg), name=cfg.name, storage_path=cfg.storage_path, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                 max_failures=cfg.max_failures, paths=paths, shared_path=cfg.shared_path)  # fmt: skip
    with result.checkpoint.as_directory() as folder:
        state = load_meta_state(Path(folder) / STATE_FILE)
    log = _write_outputs(model, state.as_dict(), cfg.output, base_trained_steps(cfg))
    return MetaTrainResult(cfg.output, log, result.checkpoint.path, state.step, state.log[-1])
