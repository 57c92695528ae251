"""Invariants of oml.meta: what a meta step touches, the MAML gradients, and that it optimises its objective."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from oml.meta import (
    decode,
    FrozenCode,
    MetaMode,
    MetaTask,
    encode_frozen,
    encoder_quality,
    lambda_step,
    latent_and_bits,
    meta_gradient,
    meta_parameters,
    meta_step,
    prepare_meta,
    sample_task_lambdas,
    task_losses,
)
from oml.models.default import OMLHyperprior
from oml.models.variable_rate import VariableRateModel
from oml.models.zoo import MSE_LAMBDAS

from ..conftest import natural_image

GROUP = {q: MSE_LAMBDAS[q] for q in (1, 2, 3, 4)}


def tiny_model(seed: int = 0, offsets: bool = False) -> VariableRateModel:
    """The default architecture at N=16, M=24, with non-trivial random modulators; with
    ``offsets``, also λ-offset branches of non-trivial weights, and Ψ = the branches."""
    torch.manual_seed(seed)
    net = OMLHyperprior(N=16, M=24, offsets=offsets)
    with torch.no_grad():
        for mod in net.g_s.modulators:
            mod.fc2.weight.normal_(0, 0.3)
        for off in net.g_s.offsets or ():
            off.fc2.weight.normal_(0, 0.3)
    model = VariableRateModel("oml-default", "mean_scale", GROUP, {0: net}, net.g_s, net.M)
    prepare_meta(model, MetaMode.OFFSET if offsets else MetaMode.MAML2)
    return model


def crops(count: int, seed: int, size: int = 64) -> torch.Tensor:
    return torch.stack([natural_image(size, size, seed=seed + i) for i in range(count)]).float() / 255.0


def make_task(model: VariableRateModel, lmbda: float, seed: int) -> MetaTask:
    return MetaTask(lmbda, encode_frozen(model, crops(2, seed), lmbda), encode_frozen(model, crops(2, seed + 10), lmbda))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", list(MetaMode))
def test_a_meta_step_changes_only_the_modulators(mode):
    model = tiny_model()
    psi = meta_parameters(model.synthesis)
    optimizer = torch.optim.Adam(psi.values(), lr=1e-2)
    before = snapshot(model)
    tasks = [make_task(model, lam, seed) for lam, seed in ((0.0018, 0), (0.009, 1))]
    result = meta_step(mode, model.synthesis, psi, optimizer, tasks, inner_lr=1e-2)
    assert all(math.isfinite(v) for v in result)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    psi_keys = {"encoders.0.g_s." + name for name in psi} | {"synthesis." + name for name in psi}
    # Every modulator tensor moves; nothing else (encoder, entropy models, blocks, rate gain, buffers) does.
    assert changed == psi_keys & set(before)
    assert len(changed) == 2 * len(psi)  # the default model holds g_s under both names
    assert not any(name.startswith("rate_gain") for name in psi)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in psi.values()}


def test_first_and_second_order_gradients_differ_and_agree_at_zero_step():
    model = tiny_model()
    psi = meta_parameters(model.synthesis)
    tasks = [make_task(model, 0.0035, 0), make_task(model, 0.0100, 3)]
    g2, _ = meta_gradient(MetaMode.MAML2, model.synthesis, psi, tasks, inner_lr=5e-2)
    g1, _ = meta_gradient(MetaMode.MAML1, model.synthesis, psi, tasks, inner_lr=5e-2)
    flat2, flat1 = torch.cat([g.flatten() for g in g2]), torch.cat([g.flatten() for g in g1])
    assert torch.isfinite(flat2).all() and torch.isfinite(flat1).all()
    assert (flat2 - flat1).norm() > 1e-3 * flat1.norm()
    # With α = 0, Ψ' = Ψ: both MAML variants reduce to the plain gradient of the outer loss.
    z2, _ = meta_gradient(MetaMode.MAML2, model.synthesis, psi, tasks, inner_lr=0.0)
    z1, _ = meta_gradient(MetaMode.MAML1, model.synthesis, psi, tasks, inner_lr=0.0)
    for a, b in zip(z2, z1):
        torch.testing.assert_close(a, b)


def test_second_order_gradient_matches_finite_differences():
    """⟨∇_Ψ L(Ψ − α∇L(Ψ;A); B), v⟩ equals the central difference of that objective along v.

    The frozen encoder's output is computed once; the decoder part runs in float64.
    """
    model = tiny_model()
    task = make_task(model, 0.0067, 0)
    model.double()
    task = task._replace(support=FrozenCode(*(t.double() for t in task.support)), query=FrozenCode(*(t.double() for t in task.query)))
    psi = meta_parameters(model.synthesis)
    alpha = 5e-2
    grads, _ = meta_gradient(MetaMode.MAML2, model.synthesis, psi, [task], alpha)
    first, _ = meta_gradient(MetaMode.MAML1, model.synthesis, psi, [task], alpha)
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in psi.values()]

    def objective(shift: float) -> float:
        moved = {name: (p + shift * v).detach().requires_grad_(True) for (name, p), v in zip(psi.items(), direction)}
        return float(task_losses(MetaMode.MAML2, model.synthesis, moved, task, alpha).after)

    eps = 1e-5
    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    analytic = float(sum((g * v).sum() for g, v in zip(grads, direction)))
    first_order = float(sum((g * v).sum() for g, v in zip(first, direction)))
    assert analytic == pytest.approx(numeric, rel=1e-4)
    assert abs(first_order - numeric) > 10 * abs(analytic - numeric)


def test_online_lambda_step_lowers_each_crops_distortion():
    """A short step along the normalised λ gradient is a descent step for every crop, and moves each crop's λ by exactly that distance in log λ."""
    model = tiny_model()
    psi = meta_parameters(model.synthesis)
    code = make_task(model, 0.0035, 0).support
    before, after, adapted = lambda_step(model.synthesis, psi, code, 0.0035, step=0.02)
    assert (after < before).all()
    moved = (adapted.log() - math.log(0.0035)).norm(dim=1)
    torch.testing.assert_close(moved, torch.full_like(moved, 0.02))
    assert adapted.std(dim=0).sum() > 0  # each crop takes its own step


def directional_derivatives(mode: MetaMode, model: VariableRateModel, task: MetaTask, step: float, seed: int):
    """In float64: the meta-gradient of ``mode``'s objective along a random direction, and its
    central difference; also returns Ψ and the task as float64."""
    model.double()
    task = task._replace(support=FrozenCode(*(t.double() for t in task.support)), query=FrozenCode(*(t.double() for t in task.query)))
    psi = meta_parameters(model.synthesis, mode)
    (grads, _) = meta_gradient(mode, model.synthesis, psi, [task], 0.0, step)
    gen = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in psi.values()]

    def objective(shift: float) -> float:
        moved = {name: (p + shift * v).detach() for (name, p), v in zip(psi.items(), direction)}
        return float(task_losses(mode, model.synthesis, moved, task, 0.0, step).objective.detach())

    eps = 1e-5
    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    analytic = float(sum((g * v).sum() for g, v in zip(grads, direction)))
    return analytic, numeric, psi, task, direction


def test_online_meta_gradient_differentiates_through_the_lambda_step():
    """The online objective's Ψ-gradient matches central differences (float64), and differs from
    the gradient that treats the adapted λ as a constant."""
    model = tiny_model()
    step = 0.3
    analytic, numeric, psi, task, direction = directional_derivatives(MetaMode.ONLINE, model, make_task(model, 0.0067, 0), step, 2)
    assert analytic == pytest.approx(numeric, rel=1e-4)
    # Treating each λ' as a constant (no path through the step) gives another gradient.
    code = FrozenCode(*(torch.cat(pair) for pair in zip(task.support, task.query)))
    _, _, adapted = lambda_step(model.synthesis, psi, code, task.lmbda, step)
    terms = [torch.nn.functional.mse_loss(decode(model.synthesis, psi, code, lambdas), code.x) for lambdas in (task.lmbda, adapted.detach())]
    constant = torch.autograd.grad(task.lmbda * 255.0**2 * sum(terms) / 2, list(psi.values()))
    first_order = float(sum((g * v).sum() for g, v in zip(constant, direction)))
    assert abs(first_order - numeric) > 10 * abs(analytic - numeric)


def test_inner_step_lowers_the_support_loss():
    model = tiny_model()
    psi = meta_parameters(model.synthesis)
    task = make_task(model, 0.0130, 0)
    support_only = task._replace(query=task.support)
    losses = task_losses(MetaMode.MAML1, model.synthesis, psi, support_only, inner_lr=1e-2)
    assert losses.after < losses.before


@pytest.mark.parametrize("mode", list(MetaMode))
def test_meta_training_lowers_its_objective_on_a_fixed_task(mode):
    """Repeated meta steps on one task at a fixed λ lower that task's objective (post-adaptation loss for MAML)."""
    model = tiny_model()
    psi = meta_parameters(model.synthesis)
    optimizer = torch.optim.Adam(psi.values(), lr=1e-2)
    task = make_task(model, 0.0067, 0)

    def objective() -> float:
        return float(task_losses(mode, model.synthesis, psi, task, inner_lr=1e-2).objective.detach())

    start = objective()
    for _ in range(15):
        meta_step(mode, model.synthesis, psi, optimizer, [task], inner_lr=1e-2)
    assert objective() < 0.9 * start


def test_gradients_are_averaged_through_the_reduce_hook():
    model = tiny_model()
    psi = meta_parameters(model.synthesis)
    optimizer = torch.optim.SGD(psi.values(), lr=1.0)
    seen = []

    def halve(grads):
        seen.append([g.clone() for g in grads])
        for g in grads:
            g.mul_(0.5)

    start = {k: p.detach().clone() for k, p in psi.items()}
    meta_step(MetaMode.MAML1, model.synthesis, psi, optimizer, [make_task(model, 0.005, 0)], 1e-2, reduce_gradients=halve)
    for (name, p), g in zip(psi.items(), seen[0]):
        torch.testing.assert_close(p.detach(), start[name] - 0.5 * g)


def test_task_lambdas_cover_the_group_set_and_the_range_between():
    lambdas = list(GROUP.values())
    gen = torch.Generator().manual_seed(0)
    drawn = sample_task_lambdas(400, lambdas, 0.5, gen)
    assert all(min(lambdas) <= lam <= max(lambdas) for lam in drawn)
    discrete = sum(lam in lambdas for lam in drawn)
    assert 150 < discrete < 250
    assert set(sample_task_lambdas(50, lambdas, 1.0, gen)) <= set(lambdas)
    continuous = sample_task_lambdas(2000, lambdas, 0.0, gen)
    logs = torch.tensor([math.log(lam) for lam in continuous])
    mid = (math.log(min(lambdas)) + math.log(max(lambdas))) / 2
    assert 0.45 < float((logs < mid).double().mean()) < 0.55  # log-uniform: half below the log midpoint
    with pytest.raises(ValueError, match="positive values"):
        sample_task_lambdas(1, [], 0.5)
    with pytest.raises(ValueError, match="discrete_fraction"):
        sample_task_lambdas(1, lambdas, 1.5)


def test_per_quality_encoders_code_at_the_nearest_lambda_in_log_scale():
    per_quality = SimpleNamespace(name="m", conditional=False, lambdas=GROUP, encoders={"1": None, "2": None, "3": None, "4": None})
    assert encoder_quality(per_quality, 0.0018) == (1, 0.0018)
    assert encoder_quality(per_quality, 0.0024) == (1, 0.0018)  # log-nearer to 0.0018 than to 0.0035
    assert encoder_quality(per_quality, 0.0026) == (2, 0.0035)
    assert encoder_quality(per_quality, 0.0100) == (4, 0.0130)
    assert encoder_quality(SimpleNamespace(conditional=True, lambdas=GROUP), 0.0042) == (0, 0.0042)
    only_top = SimpleNamespace(name="m", conditional=False, lambdas=GROUP, encoders={"4": None})
    assert encoder_quality(only_top, 0.0018) == (4, 0.0130)
    with pytest.raises(ValueError, match="no encoder"):
        encoder_quality(SimpleNamespace(name="m", conditional=False, lambdas=GROUP, encoders={}), 0.0018)


def test_frozen_code_uses_the_test_time_latent():
    """The decoder input seen in meta-training is the ŷ the codec transmits, up to the codec's
    fixed-point means (a few 2^-16; a symbol may round the other way where y − μ is that close to .5)."""
    model = tiny_model()
    model.update_entropy_models()
    x = crops(1, 5)
    lam = 0.0042
    code = encode_frozen(model, x, lam)
    y_hat = model.encode_latent(x, 0, lam).y_hat
    y_float, _ = latent_and_bits("mean_scale", model.encoders["0"], model.analyze(x, 0, lam))
    diff = (y_hat - y_float).abs()
    assert float((diff > 1e-4).float().mean()) < 1e-3 and 0 < float(diff[diff <= 1e-4].max()) <= 1e-4
    torch.testing.assert_close(code.h, model.synthesis.prefix(y_float, torch.tensor([lam])))
    assert code.bpp.shape == (1,) and float(code.bpp) > 0


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean", "mbt2018"])
def test_rate_estimate_matches_compressai_eval_forward(name):
    """For each latent kind the bits equal CompressAI's own eval-mode likelihoods."""
    from compressai.zoo import image_models

    from oml.models.zoo import ZOO

    torch.manual_seed(0)
    base = image_models[name](quality=1, metric="mse", pretrained=False).eval()
    x = crops(1, 2)
    with torch.no_grad():
        out = base(x)
        expected = sum(-torch.log2(p).flatten(1).sum(1) for p in out["likelihoods"].values())
        _, bits = latent_and_bits(ZOO[name].kind, base, base.g_a(x))
    torch.testing.assert_close(bits, expected, rtol=1e-5, atol=1e-2)


def test_offset_mode_trains_only_the_offset_branches_and_keeps_plain_decoding():
    model = tiny_model(offsets=True)
    psi = meta_parameters(model.synthesis, MetaMode.OFFSET)
    assert psi and all(name.startswith("offsets.") for name in psi)
    assert all(p.requires_grad == name.startswith("offsets.") for name, p in model.synthesis.named_parameters())
    y = torch.randn(1, 24, 4, 4)
    lam = 0.0067
    plain_lambdas = torch.full((1, 4), lam).half().float()
    before_plain = model.synthesize(y, plain_lambdas, lam)
    moved = plain_lambdas * torch.tensor([2.0, 0.5, 1.0, 3.0])
    before_moved = model.synthesize(y, moved, lam)
    state = snapshot(model)
    optimizer = torch.optim.Adam(psi.values(), lr=1e-2)
    for seed in range(3):
        meta_step(MetaMode.OFFSET, model.synthesis, psi, optimizer, [make_task(model, lam, seed)], 0.0, lambda_step_size=0.5)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(".offsets." in k or k.startswith("offsets.") for k in changed)
    assert torch.equal(model.synthesize(y, plain_lambdas, lam), before_plain)
    assert not torch.equal(model.synthesize(y, moved, lam), before_moved)


def test_offset_meta_gradient_matches_finite_differences():
    """Through the λ step and its line search (the best of four lengths per crop)."""
    model = tiny_model(offsets=True)
    analytic, numeric, *_ = directional_derivatives(MetaMode.OFFSET, model, make_task(model, 0.0035, 3), 0.4, 5)
    assert analytic != 0.0
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_offset_mode_needs_offset_branches():
    with pytest.raises(ValueError, match="offset"):
        meta_parameters(tiny_model().synthesis, MetaMode.OFFSET)
