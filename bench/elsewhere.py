"""Decode .oml files as another machine would: other float results, same bytes.

Run as a subprocess (the CPU-kernel variables only act at start-up)::

    ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=1 \\
        python bench/elsewhere.py jobs.json --perturb none

``jobs.json`` is a list of ``{"model", "quality", "weights", "input", "output"}``; each
job's reconstruction is written to ``output`` (``.npy``, uint8 ``(3, H, W)``) and a status
line per job to stdout as JSON: ``{"input", "status": "ok" | "desync" | "error", "reason"}``.

Perturbations of the float arithmetic, on top of whatever the environment does:

- ``tf32``: every float32 convolution rounds its operands to TF32 (10-bit mantissa), as cuDNN
  does by default on Ampere and later GPUs;
- ``float64``: every float32 convolution is computed in float64 and rounded back;
- ``--float-hyper``: the fixed-point hyper-decoders compute their convolutions in float32
  (the integer path switched off), to show what the exact arithmetic protects against.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32's 10-bit mantissa (nearest, ties away from zero)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _perturbed(original, mode: str):
    def conv(x, weight, bias=None, *args, **kwargs):
        if x.dtype != torch.float32:
            return original(x, weight, bias, *args, **kwargs)
        if mode == "tf32":
            return original(_tf32(x), _tf32(weight), bias, *args, **kwargs)
        out = original(x.double(), weight.double(), None if bias is None else bias.double(), *args, **kwargs)
        return out.float()

    return conv


def perturb(mode: str, float_hyper: bool) -> None:
    """Install the perturbations in this process."""
    if mode != "none":
        F.conv2d = _perturbed(F.conv2d, mode)
        F.conv_transpose2d = _perturbed(F.conv_transpose2d, mode)
    if float_hyper:
        from oml.models import exact

        def float_call(self, x):
            scale = math.ldexp(1.0, -exact.FRACTION_BITS)
            w = (self.weight * (self.inverse.view(1, -1, 1, 1) if self.transposed else self.inverse.view(-1, 1, 1, 1))).float()
            b = (self.bias * self.inverse * scale).float()
            xf = (x * scale).float()
            if self.transposed:
                y = F.conv_transpose2d(xf, w, b, self.stride, self.padding, self.output_padding)
            else:
                y = F.conv2d(xf, w, b, self.stride, self.padding)
            return exact.to_fixed(y)

        exact._Conv.__call__ = float_call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("jobs", help="JSON list of decode jobs")
    parser.add_argument("--perturb", choices=("none", "tf32", "float64"), default="none")
    parser.add_argument("--float-hyper", action="store_true", help="switch the integer hyper-decoder path off")
    args = parser.parse_args(argv)
    perturb(args.perturb, args.float_hyper)
    from oml import codec
    from oml.models.zoo import load_model

    models: dict = {}
    for job in json.loads(Path(args.jobs).read_text()):
        key = (job["model"], job["quality"], job["weights"])
        if key not in models:
            models[key] = load_model(job["model"], job["quality"], weights=job["weights"])
        try:
            image = codec.decode(models[key], Path(job["input"]).read_bytes())
        except codec.DesyncError as exc:
            print(json.dumps({"input": job["input"], "status": "desync", "reason": str(exc)}), flush=True)
            continue
        except (codec.CodecError, ValueError) as exc:
            print(json.dumps({"input": job["input"], "status": "error", "reason": str(exc)}), flush=True)
            continue
        np.save(job["output"], image.numpy())
        print(json.dumps({"input": job["input"], "status": "ok", "reason": ""}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
