"""Rate-distortion training (pure torch): losses, crops, λ sampling, one step.

Loss per sample (CompressAI's convention): ``λ·255²·MSE + bpp``, averaged over
the batch, with a per-sample λ so one batch trains several rates at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn


class RDLoss(NamedTuple):
    """Batch means: total loss, MSE on [0, 1] pixels, bits per pixel, and PSNR (dB)."""

    loss: Tensor
    mse: Tensor
    bpp: Tensor
    psnr: Tensor


def rd_loss(x_hat: Tensor, x: Tensor, likelihoods: dict[str, Tensor], lmbda: Tensor) -> RDLoss:
    """``mean_i(λ_i·255²·MSE_i + bpp_i)`` for x, x̂ ``(B,3,H,W)`` and λ ``(B,)``."""
    num_pixels = x.shape[2] * x.shape[3]
    bits = sum(-torch.log2(p).flatten(1).sum(1) for p in likelihoods.values())
    bpp = bits / num_pixels
    mse = (x_hat - x).pow(2).flatten(1).mean(1)
    loss = (lmbda * 255.0**2 * mse + bpp).mean()
    psnr = (-10.0 * torch.log10(mse.detach().clamp_min(1e-10))).mean()
    return RDLoss(loss, mse.mean(), bpp.mean(), psnr)


def sample_lambdas(batch: int, low: float, high: float, generator: torch.Generator | None = None) -> Tensor:
    """λ ``(batch,)`` drawn log-uniformly from ``[low, high]``."""
    u = torch.rand(batch, generator=generator)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def random_crops(images: Sequence[Tensor], batch: int, size: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch`` random ``size``² crops, randomly flipped, of uint8 images ``(3,H,W)`` → float ``(B,3,size,size)`` in [0, 1]."""
    idx = torch.randint(len(images), (batch,), generator=generator).tolist()
    crops = []
    for i in idx:
        img = images[i]
        _, h, w = img.shape
        if h < size or w < size:
            raise ValueError(f"training image {i} is {w}x{h}, smaller than the crop size {size}")
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = img[:, top : top + size, left : left + size]
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(2)
        crops.append(crop)
    return torch.stack(crops).float().div_(255.0)


def configure_optimizers(model: nn.Module, lr: float, aux_lr: float) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam on the network's parameters and a separate Adam on the entropy bottleneck's quantiles."""
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def lr_at(step: int, base_lr: float, warmup: int, decay_start: int, decay_end: int, final_lr: float) -> float:
    """Linear warm-up, constant, then cosine decay from ``base_lr`` to ``final_lr`` between the two decay steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if step < decay_start:
        return base_lr
    t = min(1.0, (step - decay_start) / max(1, decay_end - decay_start))
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * t))


def lr_by_time(progress: float, base_lr: float, decay_share: float, final_lr: float) -> float:
    """Learning rate at ``progress`` ∈ [0, 1] of a run's time budget: ``base_lr``, then a cosine
    decay to ``final_lr`` over the last ``decay_share`` of the time."""
    start = 1.0 - decay_share
    if progress < start:
        return base_lr
    t = min(1.0, (progress - start) / max(decay_share, 1e-9))
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * t))


class StepMetrics(NamedTuple):
    loss: float
    mse: float
    bpp: float
    psnr: float
    aux: float


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer,
    x: Tensor,
    lmbda: Tensor,
    clip_norm: float = 1.0,
    amp: bool = False,
    forward: nn.Module | None = None,
) -> StepMetrics:
    """One RD step on crops x ``(B,3,H,W)`` with per-sample λ ``(B,)``, plus one auxiliary step.

    ``amp``: run the transforms in bfloat16 (``torch.autocast`` on x's device); the entropy
    models run in float32 either way (the model's own islands), and so does the loss.
    ``forward``: the module that runs the training pass instead of ``model`` itself, e.g. a
    ``DistributedDataParallel`` wrapper of it that averages the gradients across workers (the
    metrics are then this worker's, over its rows of the batch).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = (forward or model)(x, lmbda)
    likelihoods = {k: v.float() for k, v in out["likelihoods"].items()}
    rd = rd_loss(out["x_hat"].float(), x, likelihoods, lmbda)
    rd.loss.backward()
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    optimizer.step()
    aux_optimizer.zero_grad(set_to_none=True)
    aux = model.aux_loss()
    aux.backward()
    aux_optimizer.step()
    return StepMetrics(*(float(v.detach()) for v in (*rd, aux)))


@contextmanager
def global_batch_noise(model: nn.Module, rank: int, world: int) -> Iterator[None]:
    """Within this context, ``model``'s training noise on a worker's share of a global batch is
    the noise that one process training on the whole batch draws for those rows.

    A data-parallel worker ``rank`` of ``world`` trains on rows ``[rank·b, (rank+1)·b)`` of a global
    batch of ``world·b`` crops. Each entropy model draws the uniform noise of the whole batch from
    torch's generator, as one process would (so every worker's generator stays in step with that
    process's), and adds its own rows of it. With the same crops, λ and generator state, the
    workers' averaged gradient is then the one-process gradient up to the order of float sums.
    The noise tensors' batch axis: 0 for the Gaussian conditional's ``(B, M, h, w)``, the last
    for the entropy bottleneck's ``(C, 1, B·h·w)``.
    """
    if world == 1:
        yield
        return
    patched = []
    for module in model.modules():
        if isinstance(module, EntropyBottleneck):
            axis = -1
        elif isinstance(module, GaussianConditional):
            axis = 0
        else:
            continue
        module.quantize = _sharded_quantize(module.quantize, axis, rank, world)
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.quantize


def _sharded_quantize(quantize, axis: int, rank: int, world: int):
    def sharded(inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        if mode != "noise":
            return quantize(inputs, mode, means)
        rows = inputs.shape[axis]
        shape = list(inputs.shape)
        shape[axis] = rows * world
        noise = torch.empty(shape, dtype=inputs.dtype, device=inputs.device).uniform_(-0.5, 0.5)
        return inputs + noise.narrow(axis, rank * rows, rows)

    return sharded
