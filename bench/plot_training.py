"""Plot the default model's training log: held-out PSNR and bpp per λ, and the learning rate, against the step.

A run that changed the model's width, the batch or the device is marked by a dashed line with
what it changed to (v9: N = 128, batch 16, on a GPU).

    python bench/plot_training.py docs/data/training/default/train_log.jsonl docs/data/training_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _changes(rows: list[dict]) -> list[tuple[int, str]]:
    """(step, label) where a run started with another width, batch or device than the run before."""
    found, last = [], None
    for r in rows:
        if r.get("event") != "start":
            continue
        cfg = r.get("config", {})
        now = (cfg.get("N", 64), cfg.get("batch"), str(cfg.get("device", "cpu")).split(":")[0])
        if last is not None and now != last:
            found.append((r["step"], f"N={now[0]}, batch {now[1]}, {now[2]}"))
        last = now
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="train_log.jsonl of jobs/train_base.py")
    parser.add_argument("output", help="PNG to write")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval" in r]
    steps = [r for r in rows if "lr" in r]
    if not evals:
        parser.error(f"{args.log} has no held-out evaluations")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_psnr, ax_bpp, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    for i, lmbda in enumerate(e["lambda"] for e in evals[-1]["eval"]):
        # λ values added later in training (q5, q6) start where they were first evaluated
        points = [(r["step"], e) for r in evals for e in r["eval"] if e["lambda"] == lmbda]
        ax_psnr.plot([s for s, _ in points], [e["psnr"] for _, e in points], "o-", ms=3, color=f"C{i}", label=f"λ={lmbda}")
        ax_bpp.plot([s for s, _ in points], [e["bpp"] for _, e in points], "o-", ms=3, color=f"C{i}", label=f"λ={lmbda}")
    ax_lr.plot([r["step"] for r in steps], [r["lr"] for r in steps], "-", color="k")
    ax_psnr.set(xlabel="step", ylabel="PSNR (dB)", title="held-out photos, 256² centre crops")
    ax_bpp.set(xlabel="step", ylabel="bpp (estimated)", title="held-out rate")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule", yscale="log")
    for step, label in _changes(rows):
        for ax in (ax_psnr, ax_bpp, ax_lr):
            ax.axvline(step, color="0.5", ls="--", lw=0.8)
        ax_bpp.annotate(label + " → ", (step, 0.02), xycoords=("data", "axes fraction"), fontsize=7, ha="right", va="bottom", color="0.3")
    for ax in (ax_psnr, ax_bpp, ax_lr):
        ax.grid(alpha=0.3)
    ax_psnr.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    plt.close(fig)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
