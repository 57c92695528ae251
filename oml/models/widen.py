"""Function-preserving widening: a trained model's weights inside a wider copy of its architecture.

The default model's top qualities are capped by the width of its transforms (docs/DESIGN.md,
"What limits the top rates"). Training a wider model from scratch throws away every step the
narrow one took; widening keeps them. Each tensor of the wide model takes the narrow model's
values in its leading slice, and every channel that widening adds starts *muted*:

- its fan-in is freshly initialised, so the new channels compute new, diverse features;
- its fan-out into the narrow model's channels is zero, so no old channel sees it;
  (for a coded channel, the other way round: zero fan-in, live fan-out);
- GDN's cross terms between old and new channels are zero (a fresh GDN's off-diagonal),
  modulators and λ-offset branches give the new channels their identity scales,
  and an entropy bottleneck's new channels get a fresh density.

So the wide model computes exactly what the narrow one did on the narrow one's channels: the
same latent y, the same reconstruction, the same y bits. Channels that are entropy coded (the
hyper-latent z) start at zero instead, with their consumer's fan-out live (``silent_outputs``,
``live_inputs``), so that they cost next to nothing until training gives them a use. The muted weights get gradients from the first step
(their inputs are live), so the added capacity trains with everything else. This is the
zero-fan-out variant of Net2WiderNet (Chen, Goodfellow, Shlens, "Net2Net: Accelerating
Learning via Knowledge Transfer", ICLR 2016, arXiv:1511.05641), which splits units instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from oml.models.variable_rate import VariableRateModel


def widen_into(
    narrow_state: dict[str, torch.Tensor],
    wide: nn.Module,
    skip=lambda key: False,
    silent_outputs: frozenset[str] = frozenset(),
    live_inputs: frozenset[str] = frozenset(),
) -> None:
    """Load ``narrow_state`` into ``wide``, a wider instance of the same architecture, in place.

    Tensors of equal shape are copied; a wider tensor takes the narrow one in its leading slice
    and keeps its fresh initialisation elsewhere, except that a convolution's weights from new
    input channels to old output channels are set to zero (the new channels' fan-out into the
    narrow model). ``skip(key)`` names tensors left as they are (tables derived from the rest).
    Raises ``ValueError`` on a tensor that is missing,
    narrower in the wide model, or of another rank.

    Where the new channels of a layer's output are *coded* (a hyper-latent), live but unused
    values would cost bits: name that convolution in ``silent_outputs`` (its new output
    channels start at exactly zero: zero fan-in and bias) and its consumer in ``live_inputs``
    (the consumer keeps fresh weights from them, so the pair still gets gradients).
    """
    with torch.no_grad():
        for name, module in wide.named_modules():
            prefix = f"{name}." if name else ""
            tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            for local, target in tensors:
                key = prefix + local
                if skip(key) or local in module._non_persistent_buffers_set:
                    continue  # a derived table, or a buffer the module builds itself (a mask)
                if key not in narrow_state:
                    raise ValueError(f"the narrow weights lack {key}")
                old = narrow_state[key].to(target.dtype)
                if old.shape == target.shape:
                    target.copy_(old)
                    continue
                if old.dim() != target.dim() or any(o > n for o, n in zip(old.shape, target.shape)):
                    raise ValueError(f"{key}: {tuple(old.shape)} does not fit in {tuple(target.shape)}")
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    # Conv2d stores (out, in, k, k); ConvTranspose2d stores (in, out, k, k).
                    in_dim, out_dim = (1, 0) if isinstance(module, nn.Conv2d) else (0, 1)
                    if local == "bias":
                        out_dim = 0
                    if name in silent_outputs:  # new outputs start at zero
                        new_out = [slice(None)] * target.dim()
                        new_out[out_dim] = slice(old.shape[out_dim], None)
                        target[tuple(new_out)] = 0
                    if local == "weight" and name not in live_inputs:  # old outputs ignore new inputs
                        mute = [slice(None)] * target.dim()
                        mute[in_dim] = slice(old.shape[in_dim], None)
                        mute[out_dim] = slice(0, old.shape[out_dim])
                        target[tuple(mute)] = 0
                target[tuple(slice(0, n) for n in old.shape)] = old


def widen_default_model(narrow: VariableRateModel, N: int) -> VariableRateModel:
    """The default model ``narrow`` with transforms of ``N`` channels (at least its own), computing
    what it computes: the same y, reconstruction and bits. M stays: a wider latent would change
    every coded symbol's model and the checkerboard context. The hyper-latent's new channels start
    at zero with live fan-out and a borrowed density (:func:`seed_new_densities`)."""
    from oml.models.checkerboard import CheckerboardContext
    from oml.models.zoo import is_derived_buffer, untrained_default_model

    old = narrow.encoders["0"]
    if N < old.N:
        raise ValueError(f"N = {N} is narrower than the model's N = {old.N}")
    wide = untrained_default_model(N, old.M)
    net = wide.encoders["0"]
    if old.context is not None:
        net.context = CheckerboardContext(old.M)
    if narrow.synthesis.offsets is not None:
        wide.synthesis.add_offsets()
    # z is coded: h_a's last convolution starts its new channels at zero, h_s's first reads them live
    widen_into(narrow.state_dict(), wide, skip=is_derived_buffer, silent_outputs=frozenset({"encoders.0.h_a.4"}), live_inputs=frozenset({"encoders.0.h_s.0"}))
    seed_new_densities(net.entropy_bottleneck, old.N)
    wide.update_entropy_models()
    return wide.eval()


@torch.no_grad()
def seed_new_densities(bottleneck: nn.Module, old_channels: int) -> None:
    """Give an entropy bottleneck's channels from ``old_channels`` on the density of the old channel
    that is most certain of its median (a channel training left unused), with median 0: a widened
    hyper-latent's new channels hold 0 and then cost a small fraction of a bit each, where a fresh
    density (spread over ±10) would charge about four bits per value."""
    medians = bottleneck.quantiles[:, :, 1:2].clone()  # (C, 1, 1): each channel's median
    likelihood = bottleneck._likelihood(medians)[0][:old_channels].reshape(-1)
    best = int(likelihood.argmax())
    for param in bottleneck.parameters():
        param[old_channels:] = param[best]
    # 0 is the value they hold, so they dequantise to exactly 0 (the quantile loss moves the
    # median from there once training uses them)
    bottleneck.quantiles[old_channels:, :, 1] = 0.0
    bottleneck.quantiles[old_channels:, :, 0].clamp_(max=-0.5)
    bottleneck.quantiles[old_channels:, :, 2].clamp_(min=0.5)
