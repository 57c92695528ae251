"""Print the Markdown tables of docs/RESULTS.md from the JSON files the measurement commands write.

    python bench/results_tables.py            # all tables whose data exist under docs/data

Nothing is measured here: every number is read from ``docs/data`` (``oml eval``'s rd.json,
``bench/adapt_study.py``'s summaries, ``bench/meta_ablation.py``'s table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def eval_tables(rd: dict) -> str:
    curve = next(v for k, v in rd["curves"].items() if k.startswith("oml-default") and k.endswith("N=0"))
    lines = ["| quality | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) | encode s/img | decode s/img |", "|---|---|---|---|---|---|---|"]
    for p in curve:
        q = p["setting"].split()[1]
        lines.append(f"| {q[1:]} | {p['bpp']:.3f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | {p['ms_ssim_db']:.2f} | {p['encode_s']:.2f} | {p['decode_s']:.2f} |")
    lines += ["", "| anchor | BD-rate |", "|---|---|"]
    names = {"jpeg": "JPEG (Pillow, 4:2:0)", "webp": "WebP (Pillow, method 6)", "avif": "AVIF (Pillow)"}
    for key, value in rd["bd_rate_percent"].items():
        anchor = key.split(" vs ", 1)[1]
        lines.append(f"| {names.get(anchor, anchor)} | {value:+.1f} % |")
    return "\n".join(lines)


def _default_curve(rd: dict) -> list[dict]:
    return next(v for k, v in rd["curves"].items() if k.startswith("oml-default") and k.endswith("N=0"))


def versus_table(rd: dict, earlier: dict[str, dict]) -> str:
    """BD-rate of the current default curve over q1–q4 and over every quality, against the
    baselines in ``rd`` and against earlier versions' curves (``label → rd.json``)."""
    from oml.metrics import bd_rate

    curve = _default_curve(rd)
    anchors = {k: v for k, v in rd["curves"].items() if not k.startswith("oml-default")}
    versions = {label: _default_curve(d) for label, d in earlier.items()}
    lines = ["| against | q1–q4 | q1–q6 |", "|---|---|---|"]
    for name, all_points in (anchors | versions).items():
        cells = []
        for cut in (4, len(curve)):
            mine = curve[:cut]
            points = all_points[:cut] if name in versions else all_points  # a version: the same qualities
            try:
                cells.append(f"{bd_rate([p['bpp'] for p in points], [p['psnr'] for p in points], [p['bpp'] for p in mine], [p['psnr'] for p in mine]):+.1f} %")
            except ValueError:
                cells.append("n/a")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def adapt_table(summary: dict) -> str:
    record = sorted({int(k[2:]) for row in summary["by_quality"].values() for k in row if k.startswith("N=")})
    unit = "PSNR" if summary["metric"] == "psnr" else "MS-SSIM dB"
    head = ["quality", "bpp", f"{unit} N=0"] + [f"Δ N={n}" for n in record] + [f"tiles improved N={n}" for n in record] + ["tiles worse", "adapt time / encode time " + " / ".join(f"N={n}" for n in record)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q, row in sorted(summary["by_quality"].items(), key=lambda kv: int(kv[0])):
        cells = [q, f"{row['bpp']:.3f}", f"{row['db_at_0']:.2f}"]
        cells += [f"{row[f'N={n}']['mean_gain_db']:+.3f}" for n in record]
        cells += [f"{100 * row[f'N={n}']['tiles_improved']:.1f} %" for n in record]
        cells.append(str(max(row[f"N={n}"]["tiles_worse"] for n in record)))
        cells.append(" / ".join(f"{row[f'N={n}']['adapt_over_encode_time']:.1f}×" for n in record))
        lines.append("| " + " | ".join(cells) + " |")
    bd = summary.get("bd_rate_percent", {})
    lines += ["", "BD-rate of adaptation against none: " + ", ".join(f"{k}: **{v:+.2f} %**" if isinstance(v, float) else f"{k}: {v}" for k, v in bd.items())]
    lines.append("Smallest per-image gain: " + ", ".join(
        f"q{q} " + " / ".join(f"{row[f'N={n}']['min_image_gain_db']:+.3f}" for n in record) for q, row in sorted(summary["by_quality"].items(), key=lambda kv: int(kv[0]))
    ) + f" (N = {', '.join(map(str, record))})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "docs" / "data"))
    parser.add_argument("--against", nargs="*", default=[], metavar="LABEL=RD_JSON",
                        help="earlier versions' rd.json (e.g. v2=<(git show REV:docs/data/kodak_rd/rd.json)) for a BD-rate table")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if args.against:
        earlier = {}
        for item in args.against:
            label, _, path = item.partition("=")
            earlier[label] = json.loads(Path(path).read_text())
        rd = json.loads((data / "kodak_rd" / "rd.json").read_text())
        print("### BD-rate of the current default model, q1–q4 and all its qualities\n")
        print(versus_table(rd, earlier) + "\n")
    sections = [
        ("Kodak rate-distortion (oml eval)", data / "kodak_rd" / "rd.json", lambda d: eval_tables(d)),
        ("Adaptation, PSNR target", data / "adapt_psnr_summary.json", adapt_table),
        ("Adaptation, MS-SSIM target (v1)", data / "msssim" / "adapt_ms-ssim_summary.json", adapt_table),
        ("Adaptation, MS-SSIM target (v2)", data / "msssim-v2" / "adapt_ms-ssim_summary.json", adapt_table),
    ]
    for title, path, render in sections:
        if path.exists():
            print(f"### {title} ({path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})\n")
            print(render(json.loads(path.read_text())) + "\n")
    ablation = data / "ablation" / "ablation.md"
    if ablation.exists():
        print(f"### Meta-training ablation ({ablation.relative_to(ROOT) if ablation.is_relative_to(ROOT) else ablation})\n")
        print(ablation.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
