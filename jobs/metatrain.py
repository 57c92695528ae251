"""MAML meta-training of the decoder's modulators on Ray Train (resumable: re-run the same command).

    python jobs/metatrain.py --weights runs/default/last.pt --storage-path runs/meta --name maml2
    python jobs/metatrain.py --weights runs/default/last.pt --mode multi --name multi   # ablation
    python jobs/metatrain.py --weights oml/weights/oml-default.pt --mode offset --no-ray --num-workers 1 --use-gpu
    python jobs/metatrain.py --model mbt2018-mean --quality 5 --num-workers 8 --use-gpu \\
        --storage-path s3://bucket/meta --data-dir s3://bucket/train

Connects to the Ray cluster in RAY_ADDRESS, or starts a local one.
"""

from __future__ import annotations

import argparse
import sys

from oml.meta import MetaMode
from oml.names import ModelUnavailableError
from pipeline.archive.runner import ClusterError
from pipeline.training.args import add_config_arguments
from pipeline.training.meta import MetaTrainConfig, run_metatrain, run_metatrain_here


HELP = {
    "weights": "oml weights file or base-training checkpoint (runs/default/last.pt); empty: the zoo's weights",
    "mode": "maml2: second-order MAML (Eq. 4); maml1: first-order; multi: plain multi-λ training (ablation); "
    "online: adaptation-aware, the inner step moves each crop's λ vector as online adaptation does; "
    "offset: online's objective, training only added λ-offset branches, so plain decoding stays exactly as it was",
    "inner_lr": "MAML's inner step size on the modulators' parameters",
    "lambda_step": "online and offset modes' inner step: distance moved in log λ along the normalised distortion gradient",
    "tasks_per_step": "tasks per worker per step",
    "batch": "crops per mini-batch (A and B of each task)",
    "storage_path": "checkpoints go to STORAGE_PATH/NAME (local or s3://); re-running the same command resumes",
    "output": "weights file to write (default: STORAGE_PATH/NAME/<model>-meta-<mode>.pt)",
    "report_every": "steps per ray.train.report (every step is in the metric log)",
    "shared_path": "local --data-dir, --storage-path and --weights are the same storage on every node of the Ray cluster "
    "(NFS, a shared volume); without it a cluster of several nodes refuses them",
    "ray": "run on Ray Train; --no-ray: one worker in this process, on the GPU with --use-gpu, without checkpoints "
    "(a GPU machine without Ray; the same result as a one-worker Ray run)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, MetaTrainConfig, HELP, {"mode": [m.value for m in MetaMode]})
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = MetaTrainConfig(**vars(args))
        result = (run_metatrain if cfg.ray else run_metatrain_here)(cfg)
    except (OSError, ValueError, ModelUnavailableError, ClusterError) as exc:
        print(f"metatrain: {exc}", file=sys.stderr)
        return 2
    print(f"step {result.step}: weights {result.weights}, log {result.log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
