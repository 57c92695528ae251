"""What limits the default model's top rates: the transforms alone, with y quantised and not.

    python bench/transform_ceiling.py oml/weights/oml-default.pt      # or a run's last.pt

Eight 256² crops (top-left corners of the first eight Kodak images) go through the analysis
transform g_a and straight into the synthesis g_s at several λ, once with y continuous (no
quantisation: the transforms' own ceiling) and once with y rounded. When the continuous PSNR
is barely above the rounded one, more bits cannot help: the transforms are the limit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    from oml.imageio import decode_image
    from oml.models.default import OMLHyperprior
    from oml.models.weights import TrainingState, Weights, default_training_weights, load_state

    torch.set_num_threads(1)
    state = load_state(argv[0])
    if isinstance(state, Weights):  # a shipped weights file: its training model, as a run resumes from it
        n, m = state.architecture.N, state.architecture.M
        weights, step = default_training_weights(state, n, m)
    elif isinstance(state, TrainingState):  # a run's checkpoint records its widths in its config
        n, m = state.config.get("N", 64), state.config.get("M", 128)
        weights, step = state.ema if state.ema is not None else state.model, state.step
    else:
        raise SystemExit(f"{argv[0]} is neither an oml weights file nor a base-training checkpoint")
    model = OMLHyperprior(n, m)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, strict=False)
    model.eval()
    kodak = sorted((ROOT.parent / "shared" / "data" / "kodak").glob("*.png"))[:8]
    x = torch.stack([decode_image(p.read_bytes())[:, :256, :256] for p in kodak]).float() / 255
    print(f"step {step}: PSNR of g_s(g_a(x)) on {len(kodak)} Kodak crops")
    print("| λ | y continuous | y rounded |\n|---|---|---|")
    with torch.no_grad():
        for lmbda in (0.0018, 0.0067, 0.013, 0.025, 0.0483):
            lm = torch.full((x.shape[0],), lmbda)
            y = model.g_a(x, lm)
            row = []
            for y_hat in (y, torch.round(y)):
                x_hat = model.g_s(y_hat, lm.unsqueeze(1).expand(-1, 4), lm).clamp(0, 1)
                mse = (x_hat - x).pow(2).mean(dim=(1, 2, 3))
                row.append(f"{(-10 * torch.log10(mse)).mean():.2f} dB")
            print(f"| {lmbda} | {row[0]} | {row[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
