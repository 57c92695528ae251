"""``oml eval``: rate-distortion of a model on a folder of images, against classic codecs.

Every bpp counts every byte written (header, λ*, checksum included); PSNR is on
8-bit RGB, averaged over images, as is MS-SSIM. BD-rates use
:func:`oml.metrics.bd_rate` (cubic fit of log-rate against PSNR).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from oml import baselines, codec
from oml.adapt import AdaptConfig
from oml.effort import coding_effort
from oml.imageio import IMAGE_SUFFIXES, ImageDecodeError, decode_image
from oml.metrics import bd_rate, ms_ssim, ms_ssim_db, psnr
from oml.models.zoo import DEFAULT_MODEL, load_model
from oml.refine import RefineConfig
from pipeline.published import PUBLISHED_KODAK



@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate; one curve per encoder effort in ``efforts`` (:mod:`oml.effort`), then one per
    pair of the paper's adaptation iterations (``steps``) and latent-refinement iterations (``refine``).
    ``baselines_from``: an earlier ``rd.json`` (with per-image points) whose anchors' points are
    taken instead of encoding them again (:func:`earlier_baseline_points`)."""

    inputs: str
    output: str
    model: str = DEFAULT_MODEL
    weights: str | None = None
    qualities: tuple[int, ...] = (1, 2, 3, 4)
    steps: tuple[int, ...] = (0,)
    refine: tuple[int, ...] = (0,)
    metric: str = "psnr"
    efforts: tuple[str, ...] = ()
    baselines: tuple[str, ...] = baselines.STRONGEST
    per_image: bool = False
    limit: int = 0
    baselines_from: str | None = None


class ImagePoint(NamedTuple):
    """One image at one setting."""

    image: str
    setting: str
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float
    tiles: int
    tiles_improved: int


class CurvePoint(NamedTuple):
    """Means over images at one setting."""

    setting: str
    bpp: float
    psnr: float
    ms_ssim: float
    ms_ssim_db: float
    encode_s: float
    decode_s: float
    tiles_improved: float


def _images(cfg: EvalConfig) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
    """The readable images (name, uint8 ``(3,H,W)``) and each one's file SHA-256."""
    folder = Path(cfg.inputs)
    if not folder.is_dir():
        raise ValueError(f"{cfg.inputs} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if cfg.limit:
        paths = paths[: cfg.limit]
    if not paths:
        raise ValueError(f"no images in {cfg.inputs}")
    images, hashes = [], {}
    for p in paths:
        try:
            data = p.read_bytes()
            images.append((p.name, decode_image(data)))
            hashes[p.name] = hashlib.sha256(data).hexdigest()
        except (ImageDecodeError, OSError) as exc:  # one bad file must not void the whole evaluation
            print(f"eval: skipped {p}: {exc}", file=sys.stderr)
    if not images:
        raise ValueError(f"no readable images in {cfg.inputs}")
    return images, hashes


def _quality(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return float(psnr(a, b)), float(ms_ssim(a.unsqueeze(0), b.unsqueeze(0))[0])


def _model_points(cfg: EvalConfig, images, bar) -> list[ImagePoint]:
    model = load_model(cfg.model, cfg.qualities[0], weights=cfg.weights, all_qualities=True)
    points = []
    for label, adapt_cfg, refine_cfg in _settings(cfg):
        for q in cfg.qualities:
            setting = f"{cfg.model} q{q} {label}"
            for name, image in images:
                t0 = time.perf_counter()
                enc = codec.encode(model, image, quality=q, adapt_config=adapt_cfg, refine_config=refine_cfg)
                t1 = time.perf_counter()
                recon = codec.decode(model, enc.data)
                t2 = time.perf_counter()
                if not torch.equal(recon, enc.reconstruction):
                    raise RuntimeError(f"{name}: decoder output differs from the encoder's reconstruction")
                p, s = _quality(recon, image)
                h, w = image.shape[1:]
                improved = int(sum(t.psnr_after > t.psnr_before for t in enc.tiles))
                points.append(ImagePoint(name, setting, 8 * len(enc.data) / (h * w), p, s, t1 - t0, t2 - t1, len(enc.tiles), improved))
                bar.update()
    return points


def _settings(cfg: EvalConfig) -> list[tuple[str, AdaptConfig, RefineConfig]]:
    """(curve label, adaptation, refinement) of every model curve."""
    out = []
    for name in cfg.efforts:
        effort = coding_effort(name, (cfg.metric,))
        out.append((f"effort={name}", effort.adapt, effort.refine))
    for steps, iterations in itertools.product(cfg.steps, cfg.refine):
        out.append((f"N={steps}" + (f" R={iterations}" if iterations else ""), AdaptConfig(steps=steps, metrics=(cfg.metric,)), RefineConfig(iterations)))
    return out


def _available(names: tuple[str, ...]) -> tuple[dict[str, dict], dict[str, str]]:
    """The anchors that can be encoded here (their settings and versions), and why each other is skipped."""
    found, skipped = {}, {}
    for name in names:
        try:
            found[name] = baselines.describe(name)
        except baselines.CodecUnavailableError as exc:
            skipped[name] = str(exc)
            print(f"oml eval: note: anchor {name} skipped: {exc}", file=sys.stderr)
    return found, skipped


def _baseline_points(names, images, bar) -> list[ImagePoint]:
    points = []
    for name_codec in names:
        for q in baselines.DEFAULT_QUALITIES[name_codec]:
            for name, image in images:
                t0 = time.perf_counter()
                data = baselines.encode(image, name_codec, q)
                t1 = time.perf_counter()
                recon = baselines.decode(data)
                t2 = time.perf_counter()
                p, s = _quality(recon, image)
                h, w = image.shape[1:]
                points.append(ImagePoint(name, f"{name_codec} q{q}", 8 * len(data) / (h * w), p, s, t1 - t0, t2 - t1, 0, 0))
                bar.update()
    return points


def earlier_baseline_points(path: str | Path, found: dict[str, dict], hashes: dict[str, str]) -> tuple[list[ImagePoint], list[str]]:
    """The points of the anchors in ``found`` that an earlier ``rd.json`` (``path``, written with
    ``--per-image``) measured on the same images, and the anchors it cannot give, which are encoded
    again: one it lacks, one whose encoder settings or library versions differ from ``found``'s, or one
    missing a point. Same images: the same names and, when the earlier file records them, the same
    SHA-256 (files written before checksums were recorded are matched by name, with a note).

    Raises:
        ValueError: the file is not an rd.json with per-image points, or it measured other images.
    """
    try:
        earlier = json.loads(Path(path).read_text())
        per_image = earlier["per_image"]
        recorded = earlier.get("anchors", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--baselines-from {path}: not an rd.json with per-image points (oml eval --per-image): {exc}") from None
    names = {p["image"] for p in per_image}
    theirs = earlier.get("image_sha256")
    if theirs is not None and theirs != hashes:
        raise ValueError(f"--baselines-from {path}: measured on other images (their SHA-256 differ)")
    if theirs is None:
        if names != set(hashes):
            raise ValueError(f"--baselines-from {path}: measured on other images ({len(names)} names, {len(names & set(hashes))} of them here)")
        print(f"oml eval: note: {path} records no image checksums; its anchors are taken for the images of the same names", file=sys.stderr)
    points, again = [], []
    fields = ImagePoint._fields
    for name_codec, settings in found.items():
        wanted = [(image, f"{name_codec} q{q}") for q in baselines.DEFAULT_QUALITIES[name_codec] for image in hashes]
        have = {(p["image"], p["setting"]): p for p in per_image if curve_name(p["setting"]) == name_codec}
        if recorded.get(name_codec) != json.loads(json.dumps(settings)) or any(key not in have for key in wanted):
            print(f"oml eval: note: anchor {name_codec} is encoded again: {path} has it with other settings or versions, or not for every image", file=sys.stderr)
            again.append(name_codec)
            continue
        points += [ImagePoint(*(have[key][f] for f in fields)) for key in wanted]
    return points, again


def summarize(points: list[ImagePoint]) -> list[CurvePoint]:
    """Mean over images for each setting, in first-seen order."""
    settings = list(dict.fromkeys(p.setting for p in points))
    out = []
    for setting in settings:
        group = [p for p in points if p.setting == setting]
        mean = {f: sum(getattr(p, f) for p in group) / len(group) for f in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")}
        tiles = sum(p.tiles for p in group)
        out.append(CurvePoint(
            setting, mean["bpp"], mean["psnr"], mean["ms_ssim"], float(ms_ssim_db(min(mean["ms_ssim"], 1 - 1e-12))),
            mean["encode_s"], mean["decode_s"], sum(p.tiles_improved for p in group) / tiles if tiles else 0.0,
        ))
    return out


def curve_name(setting: str) -> str:
    """``"oml-default q3 N=5"`` → ``"oml-default N=5"``; ``"jpeg q50"`` → ``"jpeg"``."""
    parts = setting.split(" ")
    return " ".join(p for p in parts if not (p.startswith("q") and p[1:].isdigit()))


def curves(summary: list[CurvePoint]) -> dict[str, list[CurvePoint]]:
    out: dict[str, list[CurvePoint]] = {}
    for point in summary:
        out.setdefault(curve_name(point.setting), []).append(point)
    return out


def bd_rates(by_curve: dict[str, list[CurvePoint]], model_curves: list[str], anchors: dict[str, tuple[list[float], list[float]]]) -> dict[str, float | str]:
    """BD-rate (%) of each model curve against each anchor (rates, PSNRs), and of every later model
    curve against the first (e.g. adapted or refined against plain coding); negative = fewer bits.
    Each is computed over the PSNR range both curves cover (:func:`overlap`)."""
    out: dict[str, float | str] = {}
    first = sorted(by_curve[model_curves[0]], key=lambda p: p.bpp) if model_curves else []
    for i, name in enumerate(model_curves):
        pts = sorted(by_curve[name], key=lambda p: p.bpp)
        own = {model_curves[0]: ([p.bpp for p in first], [p.psnr for p in first])} if i else {}
        for anchor, (rate, dist) in (own | anchors).items():
            try:
                out[f"{name} vs {anchor}"] = round(bd_rate(rate, dist, [p.bpp for p in pts], [p.psnr for p in pts]), 2)
            except ValueError as exc:
                out[f"{name} vs {anchor}"] = f"n/a: {exc}"
    return out


def overlap(pairs: dict[str, tuple[list[float], list[float]]], by_curve: dict[str, list[CurvePoint]], model_curves: list[str]) -> dict[str, list[float] | None]:
    """The PSNR range (dB) over which each model curve is compared with each anchor: where both have points."""
    out: dict[str, list[float] | None] = {}
    for i, name in enumerate(model_curves):
        own = [p.psnr for p in by_curve[name]]
        first = {model_curves[0]: [p.psnr for p in by_curve[model_curves[0]]]} if i else {}
        for anchor, dist in (first | {k: v[1] for k, v in pairs.items()}).items():
            low, high = max(min(own), min(dist)), min(max(own), max(dist))
            out[f"{name} vs {anchor}"] = [round(low, 3), round(high, 3)] if low < high else None
    return out


def plot(by_curve: dict[str, list[CurvePoint]], path: Path, title: str, published: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name, pts in by_curve.items():
        pts = sorted(pts, key=lambda p: p.bpp)
        style = "o-" if not any(name.startswith(c) for c in baselines.CODECS) else "s--"
        axes[0].plot([p.bpp for p in pts], [p.psnr for p in pts], style, label=name, markersize=4)
        axes[1].plot([p.bpp for p in pts], [p.ms_ssim_db for p in pts], style, label=name, markersize=4)
    if published:
        for name, ref in PUBLISHED_KODAK.items():
            axes[0].plot(ref["bpp"], ref["psnr"], "x:", label=f"{name} (published)", markersize=5)
            axes[1].plot(ref["bpp"], [float(ms_ssim_db(v)) for v in ref["ms_ssim"]], "x:", label=f"{name} (published)", markersize=5)
    for ax, ylabel in zip(axes, ("PSNR-RGB (dB)", "MS-SSIM (dB)")):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate, write ``rd.json`` and ``rd.png`` under ``cfg.output``; returns the JSON."""
    images, hashes = _images(cfg)
    found, skipped = _available(cfg.baselines)
    reused, encode = [], list(found)
    if cfg.baselines_from:
        reused, encode = earlier_baseline_points(cfg.baselines_from, found, hashes)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    total = len(images) * (len(_settings(cfg)) * len(cfg.qualities) + sum(len(baselines.DEFAULT_QUALITIES[c]) for c in encode))
    with tqdm(total=total, desc="eval", unit="code", file=sys.stderr) as bar:
        points = _model_points(cfg, images, bar)
        fresh = _baseline_points(tuple(encode), images, bar)
        for name_codec in found:  # the anchors in the order asked, taken or encoded
            points += [p for p in reused + fresh if curve_name(p.setting) == name_codec]
    summary = summarize(points)
    by_curve = curves(summary)
    model_curves = [c for c in by_curve if c.startswith(cfg.model)]
    anchors = {c: ([p.bpp for p in by_curve[c]], [p.psnr for p in by_curve[c]]) for c in found}
    kodak = Path(cfg.inputs).name == "kodak" and len(images) == 24
    if kodak:
        anchors.update({f"{k} (published)": (v["bpp"], v["psnr"]) for k, v in PUBLISHED_KODAK.items()})
    result = {
        "config": dataclasses.asdict(cfg),
        "images": len(images),
        "image_sha256": hashes,
        "curves": {name: [p._asdict() for p in pts] for name, pts in by_curve.items()},
        "bd_rate_percent": bd_rates(by_curve, model_curves, anchors),
        "bd_rate_psnr_range_db": overlap(anchors, by_curve, model_curves),
        "anchors": found,
        "anchors_skipped": skipped,
        "anchors_from": {"file": str(cfg.baselines_from), "taken": [c for c in found if c not in encode]} if cfg.baselines_from else None,
    }
    if cfg.per_image:
        result["per_image"] = [p._asdict() for p in points]
    (out / "rd.json").write_text(json.dumps(result, indent=1))
    plot(by_curve, out / "rd.png", f"{cfg.model} on {Path(cfg.inputs).name} ({len(images)} images)", kodak)
    return result
