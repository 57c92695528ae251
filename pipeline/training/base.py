"""Base rate-distortion training of the default model: files, checkpoints, logs.

The pure pieces (loss, crops, one step) are in :mod:`oml.train`; this module adds
what touches disk: reading the training photos, a JSON-lines log, and a
checkpoint that makes every run resumable (``last.pt``, written atomically).
:func:`run_base_training` trains in this process; :mod:`pipeline.training.ddp` runs the same
steps data-parallel on Ray Train, from the pieces here (:func:`start_run`, :class:`TrainingRun`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from oml.imageio import decode_image
from oml.models.default import OMLHyperprior
from oml.models.weights import TrainingState, Weights, is_constant, load_state, save_training_state, stored_config, weights_under
from oml.train import StepMetrics, configure_optimizers, lr_at, lr_by_time, random_crops, rd_loss, sample_lambdas, train_step
from pipeline import storage



@dataclass(frozen=True)
class BaseTrainConfig:
    data_dir: str
    out_dir: str
    steps: int = 60_000
    batch: int = 8
    crop: int = 128
    lr: float = 3e-4
    aux_lr: float = 1e-3
    warmup: int = 500
    decay_start: int = 40_000
    decay_end: int = 60_000
    final_lr: float = 1e-5
    lambda_low: float = 0.0018
    lambda_high: float = 0.0130
    N: int = 0  # 0: the width of what the run starts from (its last.pt, --init), else 64
    M: int = 0  # 0: likewise, else 128
    seed: int = 0
    holdout_every: int = 50
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 500
    threads: int = 2
    init: str = ""
    ema_decay: float = 0.999
    context_from: str = ""
    device: str = "cpu"
    amp: bool = False
    seconds: float = 0.0
    decay_share: float = 0.25


class TrainingImages(NamedTuple):
    """The photos a run trains on (uint8 ``(3,H,W)``, each at least a crop), the held-out ones, and
    how many training photos were left out for being smaller than a crop."""

    train: list[torch.Tensor]
    held: list[torch.Tensor]
    too_small: int


def load_split(cfg: BaseTrainConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training and held-out images: every ``holdout_every``-th file of the sorted listing is held out."""
    train, held = [], []
    for i, uri in enumerate(storage.list_images(cfg.data_dir)):
        img = decode_image(storage.read_bytes(uri), to_srgb=True)  # what a viewer shows: photos with a profile are learned in sRGB
        (held if cfg.holdout_every and i % cfg.holdout_every == 0 else train).append(img)
    return train, held


@torch.no_grad()
def evaluate(model: OMLHyperprior, images: list[torch.Tensor], lambdas: list[float], size: int = 256) -> list[dict]:
    """Rounded-latent estimate of bpp and PSNR on centre crops, per λ (float32, on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    crops = []
    for img in images:
        _, h, w = img.shape
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(img[:, top : top + size, left : left + size])
    x = torch.stack(crops).to(device).float() / 255.0
    rows = []
    for lmbda in lambdas:
        lm = torch.full((x.shape[0],), lmbda, device=device)
        out = model(x, lm)
        rd = rd_loss(out["x_hat"].clamp(0, 1), x, out["likelihoods"], lm)
        rows.append({"lambda": lmbda, "bpp": round(float(rd.bpp), 4), "psnr": round(float(rd.psnr), 3), "loss": round(float(rd.loss), 4)})
    model.train()
    return rows


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """Exponential moving average of the weights (exported instead of the raw weights)."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and ema[name].shape == value.shape:
            ema[name].lerp_(value, 1.0 - decay)
        else:
            ema[name] = value.detach().clone()


def eval_lambdas(cfg: BaseTrainConfig) -> list[float]:
    """CompressAI's quality λ that lie in the training range (held-out evaluation points)."""
    from oml.models.zoo import MSE_LAMBDAS

    return [lm for lm in MSE_LAMBDAS.values() if cfg.lambda_low * 0.999 <= lm <= cfg.lambda_high * 1.001]


def context_weights(weights_file: str | Path) -> dict[str, torch.Tensor]:
    """The checkerboard context of an oml weights file of the default model (``context.*`` keys,
    float32), to train it jointly with the transforms it was fitted on."""
    found = {"context." + k: v for k, v in weights_under(weights_file, "encoders.0.context.").items()}
    if not found:
        raise ValueError(f"{weights_file} holds no checkerboard context (expected an oml weights file from v3 on)")
    return found


def _resume_state(source: Path | bytes, cfg: BaseTrainConfig, origin: str | None = None) -> TrainingState:
    """What a run starts from: a checkpoint (``last.pt``, a compact resume point) as it is, or a
    shipped oml weights file of the default model read as a compact resume point
    (:func:`oml.models.weights.default_training_weights`). ``source``: a path, or the bytes of
    the file ``origin`` names."""
    from oml.models.weights import default_training_weights

    state = load_state(source, origin)
    if isinstance(state, Weights):
        weights, steps = default_training_weights(state, cfg.N, cfg.M)
        return TrainingState(weights, steps, compact=True)
    if not isinstance(state, TrainingState):
        raise ValueError(f"{origin or source} is not a training checkpoint, resume point or oml weights file")
    return state


def training_device(name: str) -> torch.device:
    """The device a run trains on: ``cpu``, ``cuda`` or ``cuda:K``, checked before any work."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (expected cpu, cuda or cuda:K)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this torch sees no CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 convolutions and products: Ampere and later
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # one crop size for the whole run
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r} (expected cpu, cuda or cuda:K)")
    return device


def _start_point(cfg: BaseTrainConfig) -> Path | None:
    """What a run starts from: its own ``last.pt`` when there is one, else ``--init``, else nothing."""
    last = Path(cfg.out_dir) / "last.pt"
    return last if last.exists() else Path(cfg.init) if cfg.init else None


def resolve_widths(cfg: BaseTrainConfig) -> BaseTrainConfig:
    """``cfg`` with N and M set: a width left at 0 is that of what the run starts from
    (:func:`_start_point`: a checkpoint or weights file records its widths in ``config``), else the
    default model's first widths (64, 128)."""
    if cfg.N and cfg.M:
        return cfg
    source = _start_point(cfg)
    found = stored_config(source) if source is not None and source.is_file() else {}
    return dataclasses.replace(cfg, N=cfg.N or int(found.get("N", 64)), M=cfg.M or int(found.get("M", 128)))


def load_training_images(cfg: BaseTrainConfig) -> TrainingImages:
    """:func:`load_split`, without the training photos too small for a crop."""
    train_imgs, held_imgs = load_split(cfg)
    small = sum(1 for img in train_imgs if min(img.shape[1:]) < cfg.crop)
    train_imgs = [img for img in train_imgs if min(img.shape[1:]) >= cfg.crop]  # no crop fits in them
    if not train_imgs:
        raise ValueError(f"no training image in {cfg.data_dir} is at least {cfg.crop}x{cfg.crop} (--crop)")
    return TrainingImages(train_imgs, held_imgs, small)


@dataclass
class TrainingRun:
    """A run between two steps: the model, its two optimisers and weight average, the steps done,
    the generator of the crops and λ, and the training photos (on the model's device).
    ``fresh_optimizer_at``: the step a fresh optimiser started at (0: none), re-warmed from there."""

    model: OMLHyperprior
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor]
    step: int
    gen: torch.Generator
    images: list[torch.Tensor]
    fresh_optimizer_at: int = 0

    def set_lr(self, cfg: BaseTrainConfig, progress: float) -> float:
        """Set and return the learning rate of the next step; ``progress``: the share of the time
        budget spent (``--seconds``; unused without one)."""
        if cfg.seconds > 0:
            lr = lr_by_time(progress, cfg.lr, cfg.decay_share, cfg.final_lr) * min(1.0, (self.step + 1) / cfg.warmup)
        else:
            lr = lr_at(self.step, cfg.lr, cfg.warmup, cfg.decay_start, cfg.decay_end, cfg.final_lr)
        if self.fresh_optimizer_at:
            lr *= min(1.0, (self.step - self.fresh_optimizer_at + 1) / cfg.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def draw_batch(self, cfg: BaseTrainConfig, device: torch.device, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch's crops ``(B,3,crop,crop)`` and λ ``(B,)`` on ``device``: all ``--batch``
        of them are drawn, ``rows`` of them kept (a data-parallel worker's share)."""
        x = random_crops(self.images, cfg.batch, cfg.crop, self.gen)[rows].to(device, non_blocking=True)
        lmbda = sample_lambdas(cfg.batch, cfg.lambda_low, cfg.lambda_high, self.gen)[rows].to(device)
        return x, lmbda

    def checkpoint(self, cfg: BaseTrainConfig, rng: dict | None = None) -> TrainingState:
        return TrainingState(self.model.state_dict(), self.step, dataclasses.asdict(cfg), self.ema, self.optimizer.state_dict(), self.aux_optimizer.state_dict(), rng=rng)


def start_run(cfg: BaseTrainConfig, state: TrainingState | None, train_imgs: list[torch.Tensor], device: torch.device) -> TrainingRun:
    """The model, optimisers, weight average and generator of a run, fresh or from ``state`` (see
    :func:`_resume_state`), on ``device``. A fresh model's weights come from torch's generator."""
    has_context = bool(cfg.context_from) or (state is not None and any(k.startswith("context.") for k in state.model))
    model = OMLHyperprior(cfg.N, cfg.M, context=has_context)
    optimizer, aux_optimizer = configure_optimizers(model, cfg.lr, cfg.aux_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, fresh_optimizer_at = 0, 0
    if cfg.context_from:  # joint training starts from a trained context (a checkpoint's own one wins below)
        model.load_state_dict({**model.state_dict(), **context_weights(cfg.context_from)})
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if state is not None:
        # A full checkpoint resumes exactly; a committed one (no optimizer state) or a shipped
        # weights file resumes weights, average and step, and re-warms a fresh optimizer.
        # Architecture constants (the likelihood and scale lower bounds) are the model's own: a
        # float16 resume point holds the 1e-9 likelihood bound as 0, which lets log2(0) through.
        weights = {k: v for k, v in state.model.items() if not is_constant(k)}
        weights.update({k: v for k, v in model.state_dict().items() if is_constant(k)})
        if not any(k.startswith("context.") for k in weights):
            weights.update({k: v for k, v in model.state_dict().items() if k.startswith("context.")})
        model.load_state_dict(weights)
        ema = state.ema if state.ema is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in model.state_dict().items():  # a context that joins the run starts its average here
            ema.setdefault(k, v.detach().clone())
        step = state.step
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
            aux_optimizer.load_state_dict(state.aux_optimizer)
        else:
            fresh_optimizer_at = step
        gen.manual_seed(cfg.seed + step)
    if device.type != "cpu":
        train_imgs = [img.to(device) for img in train_imgs]  # uint8 photos live on the GPU: crops cost no copy
        model.to(device)
        ema = {k: v.to(device) for k, v in ema.items()}
        for opt in (optimizer, aux_optimizer):  # a resumed optimizer's moments follow their parameters
            for moments in opt.state.values():
                for k, v in moments.items():
                    if isinstance(v, torch.Tensor) and k != "step":
                        moments[k] = v.to(device)
    return TrainingRun(model, optimizer, aux_optimizer, ema, step, gen, train_imgs, fresh_optimizer_at)


def start_event(cfg: BaseTrainConfig, step: int, images: TrainingImages) -> dict:
    """The log's line for the start (or resumption) of a run at ``step``."""
    return {"event": "start", "step": step, "config": dataclasses.asdict(cfg), "train_images": len(images.train), "too_small_for_crop": images.too_small, "held_out": len(images.held), "time": time.time()}


def window_mean(acc: list[StepMetrics]) -> dict[str, float]:
    """The mean of each metric over the steps since the last log line."""
    return {k: sum(getattr(m, k) for m in acc) / len(acc) for k in acc[0]._fields}


def log_line(step: int, lr: float, mean: dict[str, float], s_per_step: float) -> dict:
    return {"step": step, "lr": lr, **{k: round(v, 5) for k, v in mean.items()}, "s_per_step": round(s_per_step, 4)}


def run_base_training(cfg: BaseTrainConfig) -> Path:
    """Train (or resume) the default model in this process; returns the path of ``last.pt``."""
    cfg = resolve_widths(cfg)
    torch.set_num_threads(cfg.threads)
    device = training_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "last.pt", out / "train_log.jsonl"
    images = load_training_images(cfg)
    source = _start_point(cfg)
    run = start_run(cfg, _resume_state(source, cfg) if source is not None else None, images.train, device)
    held_lambdas = eval_lambdas(cfg)
    with open(log_path, "a") as log:
        log.write(json.dumps(start_event(cfg, run.step, images)) + "\n")
        t0, acc = time.time(), []
        began = time.monotonic()
        while run.step < cfg.steps:
            progress = (time.monotonic() - began) / cfg.seconds if cfg.seconds > 0 else 0.0
            if progress >= 1.0:  # a time-budgeted run (--seconds) ends here, with a checkpoint
                save_training_state(run.checkpoint(cfg), ckpt_path)
                log.write(json.dumps({"event": "time_up", "step": run.step, "seconds": cfg.seconds}) + "\n")
                break
            lr = run.set_lr(cfg, progress)
            x, lmbda = run.draw_batch(cfg, device)
            acc.append(train_step(run.model, run.optimizer, run.aux_optimizer, x, lmbda, amp=cfg.amp))
            update_ema(run.ema, run.model, cfg.ema_decay)
            run.step += 1
            if run.step % cfg.log_every == 0:
                log.write(json.dumps(log_line(run.step, lr, window_mean(acc), (time.time() - t0) / len(acc))) + "\n")
                log.flush()
                t0, acc = time.time(), []
            if run.step % cfg.eval_every == 0 and images.held:
                log.write(json.dumps({"step": run.step, "eval": evaluate(run.model, images.held, held_lambdas)}) + "\n")
                log.flush()
            if run.step % cfg.ckpt_every == 0 or run.step == cfg.steps:
                save_training_state(run.checkpoint(cfg), ckpt_path)
    return ckpt_path


def export_default_weights(checkpoint: str | Path, out_path: str | Path, half: bool = True, ema: bool = True, offsets_from: str | Path | None = None) -> Path:
    """Turn a base-training checkpoint (``last.pt``) into the default model's oml weights file.

    ``ema``: export the moving average of the weights (when the checkpoint has one).
    An oml weights file of the default model (``jobs/metatrain.py`` writes float32
    ones) is re-saved in the chosen precision. ``offsets_from``: an oml weights file whose
    λ-offset branches the exported decoder takes over (a fine-tuned decoder keeps the branches
    meta-trained on its starting point; plain decoding never uses them).
    """
    from oml.models.zoo import is_derived_buffer, load_model, untrained_default_model

    state = load_state(checkpoint)
    if isinstance(state, Weights):
        return _save_default(load_model("oml-default", weights=state), out_path, half, state.trained_steps)
    if not isinstance(state, TrainingState):
        raise ValueError(f"{checkpoint} is not a base-training checkpoint or oml weights file")
    cfg = state.config
    model = untrained_default_model(int(cfg.get("N", 64)), int(cfg.get("M", 128)))  # the weights file records N, M
    source = state.ema if ema and state.ema is not None else state.model
    if any(k.startswith("context.") for k in source):  # trained jointly with a checkerboard context
        from oml.models.checkerboard import CheckerboardContext

        model.encoders["0"].context = CheckerboardContext(model.encoders["0"].M)
    weights = {k: v for k, v in source.items() if not is_derived_buffer(k)}
    missing, unexpected = torch.nn.Module.load_state_dict(model.encoders["0"], weights, strict=False)
    if unexpected or any(not is_derived_buffer(k) for k in missing):
        raise ValueError(f"{checkpoint} does not match the default architecture")
    if offsets_from:
        branches = weights_under(offsets_from, "synthesis.offsets.")
        if not branches:
            raise ValueError(f"{offsets_from} holds no λ-offset branches")
        model.synthesis.add_offsets()
        model.synthesis.offsets.load_state_dict(branches)
    model.update_entropy_models()
    return _save_default(model, out_path, half, state.step)


def widen_default_weights(source: str | Path, out_path: str | Path, N: int, seed: int = 0) -> Path:
    """Write a copy of an oml-default weights file whose transforms have ``N`` channels and which
    computes what the source computes (:func:`oml.models.widen.widen_default_model`). The copy
    keeps the source's checkerboard context, λ-offset branches and trained step, so
    ``jobs/train_base.py --init OUT`` trains the added channels from where the narrow model stopped.
    ``seed`` draws the added channels' fresh weights: the same call writes the same file."""
    from oml.models.widen import widen_default_model
    from oml.models.zoo import default_training_weights, load_model

    if Path(out_path).resolve() == Path(source).resolve():
        raise ValueError(f"{out_path} is the file being widened: write the wide copy elsewhere")
    narrow = load_model("oml-default", weights=source)
    net = narrow.encoders["0"]
    _, steps = default_training_weights(source, net.N, net.M)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wide = widen_default_model(narrow, N)
    return _save_default(wide, out_path, half=True, trained_steps=steps)


def _save_default(model, out_path: str | Path, half: bool, trained_steps: int | None = None) -> Path:
    from oml.models.zoo import save_weights

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if half and any(p.dtype != torch.float16 and not torch.equal(p, p.half().float()) for p in model.parameters()):
        with torch.no_grad():  # the stored tables must be those of the stored (rounded) weights
            for p in model.parameters():
                p.copy_(p.half().float())
        model.update_entropy_models()
    save_weights(model, out_path, torch.float16 if half else torch.float32, trained_steps)
    return out_path


def save_resume_point(checkpoint: str | Path, out_path: str | Path) -> Path:
    """A compact copy of a training checkpoint to commit: the weight average in float16 as the
    weights to resume from, the step and the config (no optimizer state, no second copy).

    Resuming re-warms a fresh optimizer and restarts the average from these weights; the average
    is what gets exported, and float16 is how the model ships, so nothing a user sees is lost
    (docs/DESIGN.md, "Compact resume points"). About a quarter of a full checkpoint without its optimizer.
    """
    state = load_state(checkpoint)
    if not isinstance(state, TrainingState):
        raise ValueError(f"{checkpoint} is not a base-training checkpoint (no model state): no resume point to write")
    weights = state.ema if state.ema is not None else state.model
    compact = {k: (v.half() if v.is_floating_point() and not is_constant(k) else v) for k, v in weights.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_training_state(TrainingState(compact, state.step, state.config, compact=True), out_path)
    return out_path
