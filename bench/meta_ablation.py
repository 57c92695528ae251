"""Meta-training ablation on Kodak: the same base decoder with differently trained modulators.

Each variant is an oml weights file of the default model (same encoder, same
decoding blocks; only the modulators Ψ, or their λ-offset branches, differ). For each, ``bench/adapt_study.py``
codes Kodak at the given qualities and adapts every tile, so one run gives the
plain rate-distortion point (N = 0) and the gain of online adaptation at each
recorded N. Variants already measured (their summary exists) are not re-run, so
an interrupted ablation resumes. Writes ``<out>/ablation.json``,
``<out>/ablation.md`` (a table) and ``<out>/ablation.png``.

    python bench/meta_ablation.py --out docs/data/ablation \\
        base=runs/meta/base.pt multi=runs/meta/multi/oml-default-meta-multi.pt \\
        maml2=runs/meta/maml2/oml-default-meta-maml2.pt online=runs/meta/online/oml-default-meta-online.pt \\
        offset=runs/meta/offset/oml-default-meta-offset.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from oml.metrics import bd_rate  # noqa: E402

import adapt_study  # noqa: E402


def _variant(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHTS, got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no weights file {path}")
    return name, path


def run_variant(name: str, weights: str, out: Path, args: argparse.Namespace) -> dict:
    folder = out / name
    summary_path = folder / f"adapt_{args.metric}_summary.json"
    if not summary_path.exists():
        argv = ["--weights", weights, "--out", str(folder), "--metric", args.metric, "--workers", str(args.workers),
                "--qualities", *map(str, args.qualities), "--record", *map(str, args.record)]
        if args.limit:
            argv += ["--limit", str(args.limit)]
        if args.kodak:
            argv += ["--kodak", args.kodak]
        adapt_study.main(argv)
    return json.loads(summary_path.read_text())


def table(results: dict[str, dict], reference: str, record: list[int], metric: str) -> tuple[str, dict]:
    """Markdown table and the numbers behind it: per variant, N = 0 curve, BD-rate against the reference, gains."""
    unit = "PSNR dB" if metric == "psnr" else "MS-SSIM dB"
    ref = results[reference]["by_quality"]
    qualities = sorted(ref, key=int)
    header = ["variant", f"{unit} at N=0 (q{qualities[0]}…q{qualities[-1]})", f"BD-rate N=0 vs {reference}"]
    for n in record:
        header += [f"mean gain N={n} (q{qualities[0]}…q{qualities[-1]})", f"BD-rate N={n} vs {reference} N=0"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    numbers = {}
    ref_rates = [ref[q]["bpp"] for q in qualities]
    ref_db = [ref[q]["db_at_0"] for q in qualities]
    for name, summary in results.items():
        rows = summary["by_quality"]
        rates = [rows[q]["bpp"] for q in qualities]
        db0 = [rows[q]["db_at_0"] for q in qualities]
        entry = {"bpp": rates, "db_at_0": db0, "bd_rate_n0": bd_rate(ref_rates, ref_db, rates, db0)}
        cells = [name, " / ".join(f"{v:.2f}" for v in db0), f"{entry['bd_rate_n0']:+.2f}%"]
        for n in record:
            gains = [rows[q][f"N={n}"]["mean_gain_db"] for q in qualities]
            adapted = [d + g for d, g in zip(db0, gains)]
            entry[f"gain_n{n}"] = gains
            entry[f"bd_rate_n{n}"] = bd_rate(ref_rates, ref_db, rates, adapted)
            entry[f"tiles_worse_n{n}"] = sum(rows[q][f"N={n}"]["tiles_worse"] for q in qualities)
            cells += [" / ".join(f"{g:+.3f}" for g in gains), f"{entry[f'bd_rate_n{n}']:+.2f}%"]
        numbers[name] = entry
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", numbers


def plot(numbers: dict[str, dict], record: list[int], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, entry) in enumerate(numbers.items()):
        color = f"C{i}"
        axes[0].plot(entry["bpp"], entry["db_at_0"], "o--", color=color, label=f"{name}, N=0")
        n = max(record)
        axes[0].plot(entry["bpp"], [d + g for d, g in zip(entry["db_at_0"], entry[f"gain_n{n}"])], "s-", color=color, label=f"{name}, N={n}")
        for n in record:
            axes[1].plot(entry["bpp"], entry[f"gain_n{n}"], "o-" if n == max(record) else "x:", color=color, label=f"{name}, N={n}")
    unit = "PSNR" if metric == "psnr" else "MS-SSIM"
    axes[0].set(xlabel="bpp", ylabel=f"{unit} (dB)", title="Kodak: plain decoding and after adaptation")
    axes[1].set(xlabel="bpp", ylabel=f"mean {unit} gain of adaptation (dB)", title="Gain of online adaptation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=_variant, metavar="NAME=WEIGHTS", help="the first is the reference")
    parser.add_argument("--out", default="docs/data/ablation")
    parser.add_argument("--kodak", default="")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--record", type=int, nargs="+", default=[5])
    parser.add_argument("--metric", default="psnr", choices=["psnr", "ms-ssim"])
    parser.add_argument("--limit", type=int, default=0, help="first N images only")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if len(args.qualities) < 4:
        parser.error("BD-rates need 4 or more qualities")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_variant(name, weights, out, args) for name, weights in args.variants}
    text, numbers = table(results, args.variants[0][0], args.record, args.metric)
    command = "python bench/meta_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "ablation.json").write_text(json.dumps({"command": command, "weights": dict(args.variants), "variants": numbers}, indent=1))
    (out / "ablation.md").write_text(text)
    plot(numbers, args.record, args.metric, out / "ablation.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
