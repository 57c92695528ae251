r"""Train a checkerboard context on a frozen default model and write its weights file (v3).

    python jobs/train_context.py --data-dir ../shared/data/train --out-dir runs/context \
        --weights weights/oml-default-v2.pt

Latents of random crops are computed once with the frozen model; the context then
trains on rate alone (minutes on two CPU cores). OUT_DIR/oml-default.pt holds the
input weights unchanged plus the context (float16); OUT_DIR/context_log.jsonl the
training curve. Measure it with ``python bench/checkerboard_study.py``.
"""

from __future__ import annotations

import argparse
import sys

from oml.names import ModelUnavailableError
from pipeline.training.args import add_config_arguments
from pipeline.training.context import ContextTrainConfig, run_context_training

HELP = {
    "data_dir": "folder of training photos",
    "out_dir": "folder for oml-default.pt and context_log.jsonl",
    "weights": "default-model weights without a context (default: the shipped file)",
    "steps": "Adam steps",
    "batch": "latents per step",
    "crop": "crop side in pixels (multiple of 64)",
    "crops_per_image": "latents computed per training photo",
    "lr": "Adam learning rate at the start of the cosine decay",
    "final_lr": "learning rate at the end",
    "rate": "rate quantiser: noise (y + U(-1/2, 1/2)) or round (straight-through)",
    "holdout_every": "leave out every n-th photo, as base training holds it out (0: none)",
    "seed": "random seed of the crops, λ draws and batches",
    "threads": "torch CPU threads",
    "log_every": "steps between log lines",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, ContextTrainConfig, HELP)
    args = parser.parse_args(argv)
    try:
        print(run_context_training(ContextTrainConfig(**vars(args))))
    except (OSError, ValueError, ModelUnavailableError) as exc:
        print(f"train_context: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
