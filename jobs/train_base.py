r"""Base rate-distortion training of the default model (resumable: re-run the same command).

    python jobs/train_base.py --data-dir ../shared/data/train --out-dir runs/default \
        --init oml/weights/oml-default.pt

--init takes a checkpoint, a compact resume point or a shipped oml-default weights file: the
shipped file holds the training model whole (the float16 weight average, with its context) and
the step it was taken at, so the model in the repository is where the next run resumes.

OUT_DIR/last.pt (weights, weight average, optimisers, step) is written every
--ckpt-every steps and resumed from when present; OUT_DIR/train_log.jsonl gets the
losses every --log-every steps and held-out numbers every --eval-every steps.

--num-workers W trains data-parallel on W Ray Train workers (DistributedDataParallel; GPUs with
--use-gpu) what one process trains: the global batch --batch is split over the workers, the
learning rate and weight average are one process's. Checkpoints go to OUT_DIR/step_* (OUT_DIR
local or s3://); a failed worker, or the same command run again, resumes from the latest one.
At the end OUT_DIR/last.pt and OUT_DIR/train_log.jsonl are written as in one process:

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_base.py --num-workers 8 --use-gpu --batch 64 --data-dir s3://bucket/train \
        --out-dir s3://bucket/runs/default --init oml/weights/oml-default.pt

It connects to the Ray cluster at --address, else the one in RAY_ADDRESS, else starts a local one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from oml.names import ModelUnavailableError
from pipeline.archive.runner import ClusterError
from pipeline.training.args import add_config_arguments
from pipeline.training.base import BaseTrainConfig, run_base_training
from pipeline.training.ddp import ScaleConfig, run_distributed_training

HELP = {
    "data_dir": "folder of training photos",
    "out_dir": "folder for last.pt and train_log.jsonl",
    "steps": "train until this step",
    "batch": "crops per step",
    "crop": "crop side in pixels (multiple of 64)",
    "lr": "Adam learning rate after warm-up",
    "aux_lr": "learning rate of the entropy bottleneck's quantile loss",
    "warmup": "linear warm-up steps (also after resuming without optimiser state)",
    "decay_start": "cosine decay of the learning rate starts here",
    "decay_end": "and reaches --final-lr here",
    "final_lr": "learning rate at the end of the decay",
    "lambda_low": "smallest training λ (log-uniform per crop)",
    "lambda_high": "largest training λ",
    "N": "channels of the transforms (0: those of the run being resumed or of --init, else 64)",
    "M": "latent channels (0: likewise, else 128)",
    "seed": "random seed of the crops and λ draws",
    "holdout_every": "hold out every n-th photo for validation (0: none)",
    "log_every": "steps between log lines",
    "eval_every": "steps between held-out evaluations",
    "ckpt_every": "steps between checkpoints",
    "threads": "torch CPU threads",
    "init": "start from this checkpoint, compact resume point or oml-default weights file when OUT_DIR has no last.pt",
    "ema_decay": "decay of the exported weight average",
    "device": "cpu, cuda or cuda:K (the photos, the model and its optimiser state move there)",
    "amp": "bfloat16 autocast for the transforms (the entropy models and the loss stay float32)",
    "seconds": "wall-clock budget of this invocation (0: none): it stops with a checkpoint when the time is up, and the learning rate decays over the last --decay-share of the time instead of between --decay-start and --decay-end",
    "decay_share": "with --seconds: the share of the time budget the cosine decay takes",
    "context_from": "train a checkerboard context jointly with the transforms, starting from this oml weights file's context (e.g. oml/weights/oml-default.pt)",
    "num_workers": "data-parallel Ray Train workers (0: train in this process); --batch is split over them",
    "use_gpu": "one GPU per Ray Train worker (with --num-workers)",
    "address": "Ray cluster to run the workers on (empty: the one in RAY_ADDRESS, else a local Ray)",
    "max_failures": "restarts from the latest checkpoint after a worker fails (with --num-workers)",
    "shared_path": "local --data-dir, --out-dir and --init are the same storage on every node of the Ray cluster (NFS, a shared volume); "
    "without it a cluster of several nodes refuses them",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, BaseTrainConfig, HELP)
    add_config_arguments(parser, ScaleConfig, HELP)
    args = vars(parser.parse_args(argv))
    scaling = {f.name for f in dataclasses.fields(ScaleConfig)}
    try:
        cfg = BaseTrainConfig(**{k: v for k, v in args.items() if k not in scaling})
        scale = ScaleConfig(**{k: v for k, v in args.items() if k in scaling})
        print(run_distributed_training(cfg, scale) if scale.num_workers else run_base_training(cfg))
    except (OSError, ValueError, ModelUnavailableError, ClusterError) as exc:
        print(f"train_base: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
