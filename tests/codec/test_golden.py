"""Golden results of the shipped model: two Kodak crops, two qualities, plain and adapted.

``tests/expected/golden.json`` holds, per case, the SHA-256 of the exact ``.oml`` bytes, their
length, bpp and PSNR of the decoded image against the crop. Any change to the shipped weights,
the format, the entropy coder, the tiling or the adaptation changes them: regenerate on purpose
and say why in the commit::

    python tests/codec/test_golden.py --update

The bytes depend on the encoder's float arithmetic (the analysis transform rounds y), so they are
compared exactly on a CPU of the kind they were recorded on (``torch.backends.cpu``'s capability,
1 thread); on another kind, bpp and PSNR must agree within 0.5 % and 0.02 dB.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "tests" / "expected" / "golden.json"
# (image, top, left, height, width): a textured centre crop, and a crop that is not a multiple of
# the 64-pixel latent stride, so padding and boundary crops are part of the bytes
CROPS = [("kodim05.png", 128, 192, 256, 256), ("kodim23.png", 40, 100, 200, 300)]
QUALITIES = (1, 4)
STEPS = (0, 5)


def case_id(name: str, quality: int, steps: int) -> str:
    return f"{name.removesuffix('.png')}-q{quality}-steps{steps}"


def compute(kodak: dict[str, Path]) -> dict[str, dict]:
    from oml import codec
    from oml.adapt import AdaptConfig
    from oml.imageio import decode_image
    from oml.metrics import psnr
    from oml.models.zoo import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for name, top, left, h, w in CROPS:
            crop = decode_image(kodak[name].read_bytes())[:, top : top + h, left : left + w].contiguous()
            for q in QUALITIES:
                model = load_model("oml-default", q)
                for steps in STEPS:
                    data = codec.encode(model, crop, quality=q, adapt_config=AdaptConfig(steps=steps)).data
                    restored = codec.decode(model, data)
                    results[case_id(name, q, steps)] = {
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                        "bpp": round(8 * len(data) / (h * w), 5),
                        "psnr": round(float(psnr(restored.float().div(255).unsqueeze(0), crop.float().div(255).unsqueeze(0))), 4),
                    }
        return results
    finally:
        torch.set_num_threads(threads)


def capability() -> str:
    return str(torch.backends.cpu.get_cpu_capability())


def test_the_shipped_model_reproduces_its_golden_results():
    from ..conftest import kodak_image

    expected = json.loads(EXPECTED.read_text())
    got = compute({name: kodak_image(name) for name, *_ in CROPS})
    assert set(got) == set(expected["cases"])
    for case, want in expected["cases"].items():
        have = got[case]
        assert abs(have["psnr"] - want["psnr"]) <= 0.02, (case, have, want)
        assert abs(have["bpp"] - want["bpp"]) <= 0.005 * want["bpp"], (case, have, want)
        if capability() == expected["cpu_capability"]:
            assert have == want, f"{case}: the bytes changed; if on purpose, run python tests/codec/test_golden.py --update and say why in the commit"
    adapted = [got[case_id(n, q, 5)]["psnr"] - got[case_id(n, q, 0)]["psnr"] for n, *_ in CROPS for q in QUALITIES]
    assert all(gain >= 0 for gain in adapted)  # the encoder's re-check never keeps a worse λ*


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/codec/test_golden.py --update   (rewrites tests/expected/golden.json)")
    sys.path.insert(0, str(ROOT))
    kodak = ROOT.parent / "shared" / "data" / "kodak"
    cases = compute({name: kodak / name for name, *_ in CROPS})
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps({"cpu_capability": capability(), "cases": cases}, indent=1) + "\n")
    for case, r in cases.items():
        print(f"{case:24} {r['bytes']:6d} B  {r['bpp']:.4f} bpp  {r['psnr']:.2f} dB  {r['sha256'][:16]}")
