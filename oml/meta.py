"""MAML meta-training of the decoder's modulator parameters Ψ (paper §3.2, Eq. 4).

A task ``T_j`` is one rate-distortion trade-off ``λ_j`` with the loss
``L_j = λ_j·255²·MSE + bpp`` (CompressAI's convention). Eq. 4 trains Ψ so
that one gradient step on a task's data improves that task::

    Ψ'_j = Ψ − α ∇_Ψ L_j(Ψ; A_j)                  (inner step, mini-batch A_j)
    min_Ψ  Σ_j L_j(Ψ'_j; B_j)                      (outer loss, mini-batch B_j of the same task)

What is trained: Ψ is the parameters of ``ModulatedSynthesis.modulators``, the
K modulators whose λ^k online adaptation later moves (Eq. 5). Everything else
is frozen: the encoders, the entropy models, the decoding blocks, and also the
default model's rate gain ``r(λ_t)``. The rate gain is the decoder half of the
encoder's latent gain (they were trained as a pair), it is never adapted, and
keeping it fixed makes ``prefix(ŷ, λ_t) = block_1(r(λ_t)·ŷ)`` independent of Ψ,
so each mini-batch runs the encoder and the first decoding block once, under
``no_grad``, and only :meth:`ModulatedSynthesis.suffix` is differentiated.

The frozen encoder codes a mini-batch as at test time: ŷ is the rounded
latent (``round(y − μ) + μ``) and the rate is the entropy models' estimate for
it. The rate does not depend on Ψ, so only the distortion term drives the
gradients; it is kept in the loss so the reported values are the paper's L_j.

Tasks: λ_j is drawn from the quality group's λ set, or log-uniformly between
its smallest and largest value. A λ-conditioned encoder codes at λ_t = λ_j; a
per-quality encoder codes at the group quality whose λ is nearest to λ_j in
log scale, and the decoder's modulators are driven by λ_j (the situation online
adaptation creates: λ^k ≠ λ_t).

Three modes (:class:`MetaMode`): second-order MAML (Eq. 4 exactly), its
first-order approximation (the inner gradient is treated as a constant, so the
meta-gradient is ``∇_Ψ' L_j(Ψ'; B_j)``), and the ablation baseline, plain
multi-λ training of the same Ψ on both mini-batches with no inner step.

A fourth mode goes beyond the paper: ``online`` (adaptation-aware
meta-learning). Eq. 4's inner step moves Ψ, but at compression time Ψ is fixed
and what moves is each tile's λ vector (Eq. 5). The online mode trains Ψ for
that situation: every crop takes one inner step on its own λ vector, in log λ,
along the normalised gradient of its distortion, and the outer loss is the
mean of the task loss before and after that step, differentiated through the
step (second order). Ψ learns λ^k responses that one λ step can use, while
decoding at λ_t stays trained. (Measured, docs/MODELS.md: it buys larger
adaptation gains with worse plain decoding, partly through a shortcut, a shift
shared by all images that the step then undoes.)

A fifth mode, ``offset``, closes that shortcut: Ψ is not the modulators but
λ-offset branches added to them (:class:`~oml.models.modulator.LambdaOffset`),
which are exactly 0 at λ^k = λ_t. Plain decoding cannot change, so the
objective is the loss after the λ step alone, and whatever is learnt is a
response to λ^k ≠ λ_t that online adaptation can use.

References:

- W. Jiang, W. Wang, S. Li, S. Liu, "Online Meta Adaptation for Variable-Rate Learned
  Image Compression", arXiv preprint, 16 Nov 2021.
- C. Finn, P. Abbeel, S. Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML 2017 (arXiv:1703.03400).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from oml.models.synthesis import ModulatedSynthesis
from oml.models.variable_rate import VariableRateModel

META_PREFIX = "modulators."
OFFSET_PREFIX = "offsets."


class MetaMode(str, Enum):
    """How Ψ is trained."""

    MAML2 = "maml2"  # second-order MAML: differentiate through the inner step (Eq. 4)
    MAML1 = "maml1"  # first-order MAML: the inner gradient is a constant
    MULTI = "multi"  # ablation baseline: plain multi-λ training, no inner step
    ONLINE = "online"  # adaptation-aware: the inner step moves each crop's λ vector (Eq. 5), not Ψ
    OFFSET = "offset"  # online's inner step, training only the λ-offset branches: plain decoding unchanged


class FrozenCode(NamedTuple):
    """One mini-batch as the frozen encoder leaves it.

    ``x``: the crops ``(B,3,H,W)`` in [0, 1]; ``h``: ``synthesis.prefix(ŷ, λ_t)``
    ``(B,C,h,w)``; ``bpp``: estimated bits per pixel of each crop ``(B,)``;
    ``lmbda_t``: the coded λ_t of each crop ``(B,)``.
    """

    x: Tensor
    h: Tensor
    bpp: Tensor
    lmbda_t: Tensor


class MetaTask(NamedTuple):
    """Task T_j: its λ_j, the inner step's mini-batch A_j and the outer loss's mini-batch B_j."""

    lmbda: float
    support: FrozenCode
    query: FrozenCode


class TaskLosses(NamedTuple):
    """One task's objective (differentiable) and detached diagnostics.

    ``objective``: the scalar whose Ψ-gradient is the task's meta-gradient;
    ``before``: ``L_j(Ψ; A_j)``; ``after``: ``L_j(Ψ'; B_j)`` (``L_j(Ψ; B_j)`` in
    multi-λ mode); ``mse``: the MSE behind ``after``; ``bpp``: mean rate of B_j.
    """

    objective: Tensor
    before: Tensor
    after: Tensor
    mse: Tensor
    bpp: Tensor


class MetaStepResult(NamedTuple):
    """Means over the step's tasks: losses (λ·255²·MSE + bpp), MSE on [0, 1] pixels,
    PSNR (dB) of that MSE, bpp, and the L2 norm of the (averaged) meta-gradient."""

    loss_before: float
    loss_after: float
    mse: float
    psnr: float
    bpp: float
    grad_norm: float


def meta_parameters(synthesis: ModulatedSynthesis, mode: MetaMode | str = MetaMode.MAML2) -> dict[str, nn.Parameter]:
    """Ψ, keyed by their names inside ``synthesis``: the modulators' parameters, or in
    ``offset`` mode the λ-offset branches' (which the decoder must have)."""
    prefix = META_PREFIX
    if MetaMode(mode) is MetaMode.OFFSET:
        if synthesis.offsets is None:
            raise ValueError("meta mode 'offset' needs a decoder with λ-offset branches (ModulatedSynthesis(offsets=True))")
        prefix = OFFSET_PREFIX
    return {name: p for name, p in synthesis.named_parameters() if name.startswith(prefix)}


def prepare_meta(model: VariableRateModel, mode: MetaMode | str = MetaMode.MAML2) -> dict[str, nn.Parameter]:
    """Freeze everything but Ψ, put the model in eval mode (rounding quantisers) and return Ψ."""
    model.eval()
    model.requires_grad_(False)
    psi = meta_parameters(model.synthesis, mode)
    for p in psi.values():
        p.requires_grad_(True)
    return psi


def sample_task_lambdas(
    count: int,
    group_lambdas: Sequence[float],
    discrete_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> list[float]:
    """``count`` task λ: each is one of ``group_lambdas`` with probability
    ``discrete_fraction``, else log-uniform between their minimum and maximum."""
    if not group_lambdas or min(group_lambdas) <= 0:
        raise ValueError(f"group_lambdas must be positive values, got {list(group_lambdas)}")
    if not 0.0 <= discrete_fraction <= 1.0:
        raise ValueError(f"discrete_fraction must be in [0, 1], got {discrete_fraction}")
    low, high = math.log(min(group_lambdas)), math.log(max(group_lambdas))
    out = []
    for _ in range(count):
        pick, u = torch.rand(2, generator=generator).tolist()
        if pick < discrete_fraction:
            out.append(float(group_lambdas[int(torch.randint(len(group_lambdas), (1,), generator=generator))]))
        else:
            out.append(math.exp(low + u * (high - low)))
    return out


def encoder_quality(model: VariableRateModel, lmbda: float) -> tuple[int, float]:
    """(quality, λ_t) that codes task λ: λ itself for a conditional encoder, else the loaded
    encoder whose λ is nearest in log scale (ties: the lower quality)."""
    if model.conditional:
        return 0, float(lmbda)
    loaded = [q for q in model.lambdas if str(q) in model.encoders]
    if not loaded:
        raise ValueError(f"{model.name} has no encoder of its group {sorted(model.lambdas)} loaded")
    quality = min(loaded, key=lambda q: (abs(math.log(model.lambdas[q] / lmbda)), q))
    return quality, model.lambdas[quality]


def _bits(likelihoods: Tensor) -> Tensor:
    return -torch.log2(likelihoods).flatten(1).sum(1)


def latent_and_bits(kind: str, m: nn.Module, y: Tensor) -> tuple[Tensor, Tensor]:
    """Rounded latent ŷ ``(B,M,h,w)`` and estimated bits of ``(ŷ, ẑ)`` per image ``(B,)``.

    ``m`` holds the hyperprior modules; it must be in eval mode so the quantisers
    round. The autoregressive kind estimates in one parallel pass (CompressAI's
    eval-mode forward: context from ``round(y)``), not the serial coder's exact ŷ.
    """
    gc = m.gaussian_conditional
    z = m.h_a(torch.abs(y) if kind == "scale" else y)
    z_hat, z_likelihoods = m.entropy_bottleneck(z)
    params = m.h_s(z_hat)
    if kind == "scale":
        y_hat, y_likelihoods = gc(y, params)
    elif kind == "mean_scale":
        scales, means = params.chunk(2, 1)
        y_hat, y_likelihoods = gc(y, scales, means=means)
    elif kind == "checkerboard":
        scales, means = m.context(y, params)
        y_hat, y_likelihoods = gc(y, scales, means=means)
    elif kind == "autoregressive":
        ctx = m.context_prediction(torch.round(y))
        scales, means = m.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
        y_hat, y_likelihoods = gc(y, scales, means=means)
    else:
        raise ValueError(f"unknown latent kind {kind!r}")
    return y_hat, _bits(y_likelihoods) + _bits(z_likelihoods)


@torch.no_grad()
def encode_frozen(model: VariableRateModel, x: Tensor, lmbda: float) -> FrozenCode:
    """Run the frozen encoder, entropy models and first decoding block on crops x ``(B,3,H,W)`` for task λ."""
    if x.shape[-2] % 64 or x.shape[-1] % 64:
        raise ValueError(f"crop sides must be multiples of 64 (the hyperprior's stride), got {tuple(x.shape[-2:])}")
    quality, lmbda_t = encoder_quality(model, lmbda)
    y = model.analyze(x, quality, lmbda_t)
    y_hat, bits = latent_and_bits(model.kind, model.encoders[str(quality)], y)
    coded = torch.full((x.shape[0],), lmbda_t, dtype=x.dtype, device=x.device)
    h = model.synthesis.prefix(y_hat, coded)
    return FrozenCode(x, h, bits / (x.shape[-2] * x.shape[-1]), coded)


class _Suffix(nn.Module):
    """``synthesis.suffix`` as a module's forward, so ``functional_call`` can swap Ψ in."""

    def __init__(self, synthesis: ModulatedSynthesis) -> None:
        super().__init__()
        self.synthesis = synthesis

    def forward(self, h: Tensor, lambdas: Tensor, lmbda_t: Tensor) -> Tensor:
        return self.synthesis.suffix(h, lambdas, lmbda_t)


def decode(synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], code: FrozenCode, lmbda: float | Tensor) -> Tensor:
    """x̂ ``(B,3,H,W)`` of ``code`` with the modulators' parameters replaced by ``psi``;
    ``lmbda``: one value for λ^1 = … = λ^K, or λ vectors ``(B,K)``."""
    if not isinstance(lmbda, Tensor):
        lmbda = torch.full((code.h.shape[0], synthesis.num_lambdas), lmbda, dtype=code.h.dtype, device=code.h.device)
    params = {"synthesis." + name: value for name, value in psi.items()}
    return functional_call(_Suffix(synthesis), params, (code.h, lmbda, code.lmbda_t))


def task_loss(x_hat: Tensor, code: FrozenCode, lmbda: float) -> tuple[Tensor, Tensor]:
    """``L_j = mean_i(λ_j·255²·MSE_i + bpp_i)`` and the batch-mean MSE."""
    mse = F.mse_loss(x_hat, code.x, reduction="none").flatten(1).mean(1)
    return (lmbda * 255.0**2 * mse + code.bpp).mean(), mse.mean()


def inner_step(
    synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask, inner_lr: float, create_graph: bool
) -> tuple[dict[str, Tensor], Tensor]:
    """``Ψ' = Ψ − α ∇_Ψ L_j(Ψ; A_j)`` and ``L_j(Ψ; A_j)``.

    With ``create_graph`` Ψ' stays a differentiable function of Ψ through the
    gradient (second order); without it the gradient is a constant and
    ``∂Ψ'/∂Ψ = I`` (first order).
    """
    loss, _ = task_loss(decode(synthesis, psi, task.support, task.lmbda), task.support, task.lmbda)
    grads = torch.autograd.grad(loss, list(psi.values()), create_graph=create_graph)
    adapted = {name: p - inner_lr * g for (name, p), g in zip(psi.items(), grads)}
    return adapted, loss.detach()


def maml_losses(
    synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask, inner_lr: float, second_order: bool
) -> TaskLosses:
    """Eq. 4 for one task: the outer loss ``L_j(Ψ'; B_j)`` after one inner step on A_j."""
    adapted, before = inner_step(synthesis, psi, task, inner_lr, create_graph=second_order)
    after, mse = task_loss(decode(synthesis, adapted, task.query, task.lmbda), task.query, task.lmbda)
    return TaskLosses(after, before, after.detach(), mse.detach(), task.query.bpp.mean())


def multi_lambda_losses(synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask) -> TaskLosses:
    """Ablation baseline: ``(L_j(Ψ; A_j) + L_j(Ψ; B_j)) / 2``, no inner step (same data as MAML)."""
    before, _ = task_loss(decode(synthesis, psi, task.support, task.lmbda), task.support, task.lmbda)
    after, mse = task_loss(decode(synthesis, psi, task.query, task.lmbda), task.query, task.lmbda)
    return TaskLosses((before + after) / 2, before.detach(), after.detach(), mse.detach(), task.query.bpp.mean())


def lambda_step(
    synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], code: FrozenCode, lmbda: float, step: float | Sequence[float]
) -> tuple[Tensor, Tensor, Tensor]:
    """One differentiable λ-vector step per crop, as online adaptation takes it.

    From λ^1 = … = λ^K = λ, each crop moves its log λ vector by ``step`` along
    the normalised gradient of its MSE; the step stays a function of Ψ
    (``create_graph``). Several step lengths make a line search, as the
    adaptation's step-size probes do: each crop keeps the length whose MSE is
    lowest. Returns the MSE per crop ``(B,)`` before and after, and the adapted
    λ vectors ``(B,K)``.
    """
    steps = [float(step)] if isinstance(step, (int, float)) else [float(s) for s in step]
    shape = (code.h.shape[0], synthesis.num_lambdas)
    log_lambdas = torch.full(shape, math.log(lmbda), dtype=code.h.dtype, device=code.h.device, requires_grad=True)
    before = F.mse_loss(decode(synthesis, psi, code, log_lambdas.exp()), code.x, reduction="none").flatten(1).mean(1)
    (grad,) = torch.autograd.grad(before.sum(), log_lambdas, create_graph=True)
    direction = grad / (grad.norm(dim=1, keepdim=True) + 1e-12)
    candidates = torch.stack([(log_lambdas - s * direction).exp() for s in steps], 1)  # (B, S, K)
    errors = torch.stack(
        [F.mse_loss(decode(synthesis, psi, code, candidates[:, i]), code.x, reduction="none").flatten(1).mean(1) for i in range(len(steps))], 1
    )
    after, best = errors.min(1)
    return before, after, candidates[torch.arange(shape[0], device=best.device), best]


# The offset mode's line search: these multiples of the λ step (a distance in log λ).
OFFSET_STEP_LADDER = (1 / 9, 1 / 3, 1.0, 3.0)


def _join(a: FrozenCode, b: FrozenCode) -> FrozenCode:
    return FrozenCode(*(torch.cat(pair) for pair in zip(a, b)))


def _losses_around_step(
    synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask, step: float | Sequence[float]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``L_j(λ)`` and ``L_j(λ')`` over the crops of A_j and B_j together, λ' being each crop's vector
    after one :func:`lambda_step`; also the MSE after the step and the mean rate."""
    code = _join(task.support, task.query)
    mse0, mse1, _ = lambda_step(synthesis, psi, code, task.lmbda, step)
    before = (task.lmbda * 255.0**2 * mse0 + code.bpp).mean()
    after = (task.lmbda * 255.0**2 * mse1 + code.bpp).mean()
    return before, after, mse1.mean(), code.bpp.mean()


def online_losses(synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask, step: float) -> TaskLosses:
    """Adaptation-aware objective: ``(L_j(λ) + L_j(λ'))/2`` over the crops of A_j and B_j
    together, λ' being each crop's vector after one :func:`lambda_step`."""
    before, after, mse, bpp = _losses_around_step(synthesis, psi, task, step)
    return TaskLosses((before + after) / 2, before.detach(), after.detach(), mse.detach(), bpp)


def offset_losses(synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask, step: float) -> TaskLosses:
    """``offset`` mode: ``L_j(λ')`` after one :func:`lambda_step` with a line search over
    ``step`` × :data:`OFFSET_STEP_LADDER`, over the crops of A_j and B_j.

    Ψ is the λ-offset branches, which are 0 at λ^k = λ_t: ``L_j(λ_t)`` does not
    depend on Ψ (up to float16 rounding of λ_t), so the loss after the step is the
    whole objective and plain decoding cannot get worse.
    """
    before, after, mse, bpp = _losses_around_step(synthesis, psi, task, [step * m for m in OFFSET_STEP_LADDER])
    return TaskLosses(after, before.detach(), after.detach(), mse.detach(), bpp)


def task_losses(
    mode: MetaMode, synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], task: MetaTask, inner_lr: float, lambda_step_size: float = 0.5
) -> TaskLosses:
    """The objective of ``mode`` for one task (``lambda_step_size``: the online mode's step in log λ)."""
    mode = MetaMode(mode)
    if mode is MetaMode.MULTI:
        return multi_lambda_losses(synthesis, psi, task)
    if mode is MetaMode.ONLINE:
        return online_losses(synthesis, psi, task, lambda_step_size)
    if mode is MetaMode.OFFSET:
        return offset_losses(synthesis, psi, task, lambda_step_size)
    return maml_losses(synthesis, psi, task, inner_lr, second_order=mode is MetaMode.MAML2)


def meta_gradient(
    mode: MetaMode, synthesis: ModulatedSynthesis, psi: Mapping[str, Tensor], tasks: Sequence[MetaTask], inner_lr: float, lambda_step_size: float = 0.5
) -> tuple[list[Tensor], list[TaskLosses]]:
    """``∇_Ψ (1/J) Σ_j objective_j``, one task's graph at a time, and each task's losses."""
    if not tasks:
        raise ValueError("a meta step needs at least one task")
    total = [torch.zeros_like(p) for p in psi.values()]
    losses = []
    for task in tasks:
        result = task_losses(mode, synthesis, psi, task, inner_lr, lambda_step_size)
        grads = torch.autograd.grad(result.objective, list(psi.values()))
        for acc, g in zip(total, grads):
            acc.add_(g, alpha=1.0 / len(tasks))
        losses.append(result._replace(objective=result.objective.detach()))
    return total, losses


def meta_step(
    mode: MetaMode,
    synthesis: ModulatedSynthesis,
    psi: Mapping[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    tasks: Sequence[MetaTask],
    inner_lr: float,
    reduce_gradients: Callable[[list[Tensor]], None] | None = None,
    clip_norm: float = 0.0,
    lambda_step_size: float = 0.5,
) -> MetaStepResult:
    """One outer update of Ψ over ``tasks``.

    Args:
        mode: see :class:`MetaMode`.
        synthesis: the modulated decoder that Ψ belongs to.
        psi: :func:`prepare_meta`'s parameters; ``optimizer`` updates exactly these.
        tasks: the step's tasks (J of them).
        inner_lr: α of the inner step on Ψ (MAML modes only).
        reduce_gradients: averages the gradients in place across data-parallel
            workers before the update (``None``: a single process).
        clip_norm: clip the meta-gradient to this L2 norm (0: no clipping).
        lambda_step_size: the online mode's inner step, a distance in log λ.
    """
    grads, losses = meta_gradient(mode, synthesis, psi, tasks, inner_lr, lambda_step_size)
    if reduce_gradients is not None:
        reduce_gradients(grads)
    for p, g in zip(psi.values(), grads):
        p.grad = g
    norm = torch.nn.utils.clip_grad_norm_(list(psi.values()), clip_norm if clip_norm > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mean = {field: float(torch.stack([getattr(t, field) for t in losses]).mean()) for field in ("before", "after", "mse", "bpp")}
    return MetaStepResult(
        loss_before=mean["before"],
        loss_after=mean["after"],
        mse=mean["mse"],
        psnr=-10.0 * math.log10(max(mean["mse"], 1e-10)),
        bpp=mean["bpp"],
        grad_norm=float(norm),
    )
