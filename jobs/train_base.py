"""Base rate-distortion training of the default model (resumable).

    python jobs/train_base.py --data ../shared/data/train --out runs/default
"""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.train import BaseTrainConfig, run_base_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(BaseTrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, type=str)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = BaseTrainConfig(**vars(args))
    print(run_base_training(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
