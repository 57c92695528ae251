"""Hostile and careless inputs against the commands a user runs; prints the probe table of docs/RESULTS.md.

    python bench/probes.py            # about 3 minutes on 2 cores

Each probe builds its input in a fresh temporary folder, runs ``oml`` or a Ray job in this
process (one local Ray instance shared by the job probes), and is judged from outside:

- ``error`` probes pass when the exit status is non-zero, stderr says what is wrong in a line
  that starts with the command's name and ``error``/``failed``/``desync``…, no traceback
  escaped, no input file changed, nothing was written outside the output folder, and no
  request reached the local HTTP server that forged rows point at;
- ``ok`` probes (inputs that are odd but valid) pass when the exit status is 0 and what the
  probe checks afterwards holds (for example three outputs for three colliding names);
- ``manifest`` probes (Ray jobs) pass when the exit status is non-zero and the bad item is
  named, with a reason, in the job's summary or manifest, while the rest is restored.

A probe fails on anything else, including an exception out of the command. Prints one line per
probe, then the table per category; exit status 1 if any probe failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import shutil
import struct
import sys
import tempfile
import threading
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

HITS: list[str] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        HITS.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@dataclass
class Probe:
    category: str
    name: str
    expect: str  # "error" | "ok" | "manifest"
    build: Callable[[Path], tuple[str, list[str]]]  # folder → (tool, argv)
    check: Callable[[Path, str], str | None] | None = None  # folder, stdout+stderr → why it failed


# ------------------------------------------------------------------ inputs


def photo(w: int = 96, h: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    return Image.fromarray((base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def header_only_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def jpeg_claiming_12000(scan: bool) -> bytes:
    data = bytearray(encoded(Image.new("RGB", (16, 16), (90, 120, 200)), "JPEG"))
    struct.pack_into(">HH", data, data.find(b"\xff\xc0") + 5, 12000, 12000)
    if not scan:
        sos = data.find(b"\xff\xda")
        data = data[: sos + 2 + struct.unpack_from(">H", data, sos + 2)[0]] + b"\xff\xd9"
    return bytes(data)


def header_only_tiff() -> bytes:
    tiff = bytearray(encoded(Image.new("RGB", (16, 16)), "TIFF", compression="tiff_deflate"))
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    for k in range(struct.unpack_from("<H", tiff, ifd)[0]):
        tag, kind = struct.unpack_from("<HH", tiff, ifd + 2 + 12 * k)
        if tag in (256, 257, 278):
            struct.pack_into("<H" if kind == 3 else "<I", tiff, ifd + 2 + 12 * k + 8, 12000)
    return bytes(tiff)


def header_only_webp() -> bytes:
    webp = bytearray(encoded(Image.new("RGB", (16, 16), (1, 2, 3)), "WEBP", quality=50))
    struct.pack_into("<HH", webp, webp.find(b"VP8 ") + 14, 12000, 12000)
    return bytes(webp)


def animated(fmt: str) -> bytes:
    frames = [photo(40, 30, 0), photo(40, 30, 1)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


_CODED: dict[str, bytes] = {}


def coded(adapted: bool = False) -> bytes:
    """A small .oml file of the shipped model (adapted: with a PSNR λ* set)."""
    key = "adapted" if adapted else "plain"
    if key not in _CODED:
        from oml import codec
        from oml.models.zoo import load_model

        import torch

        from oml.adapt import AdaptConfig

        image = torch.from_numpy(np.asarray(photo(96, 80)).transpose(2, 0, 1).copy())
        model = load_model("oml-default", 1)
        _CODED[key] = codec.encode(model, image, quality=1, adapt_config=AdaptConfig(steps=2 if adapted else 0)).data
    return _CODED[key]


def forged(**change) -> bytes:
    from oml import codec

    header, records = codec.read(coded())
    return codec.write(header.__class__(**{**header.__dict__, **change}), records)


def forged_z(shape: tuple[int, int]) -> bytes:
    from oml import codec

    header, records = codec.read(coded())
    return codec.write(header, [records[0]._replace(z_shape=shape)])


def flipped_latent() -> bytes:
    from oml import codec

    header, records = codec.read(coded())
    strings = bytearray(records[0].strings[0])
    strings[len(strings) // 2] ^= 0x10
    return codec.write(header, [records[0]._replace(strings=[bytes(strings), *records[0].strings[1:]])])


def weights_file(kind: str) -> bytes:
    import torch

    if kind == "random":
        return np.random.default_rng(0).bytes(4096)
    if kind == "empty":
        return b""
    if kind == "text":
        return b"these are not weights\n"
    buf = io.BytesIO()
    if kind == "missing-keys":
        torch.save({"format": "oml-weights/1", "state_dict": {}}, buf)
    elif kind == "wrong-shapes":
        from oml.models.zoo import default_weights_path, read_weights

        state = read_weights(default_weights_path())  # whole weights, also when the shipped file is an overlay
        name = next(k for k, v in state["state_dict"].items() if v.ndim == 4)
        state["state_dict"][name] = torch.zeros(3, 3, 3, 3, dtype=state["state_dict"][name].dtype)
        torch.save(state, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ CLI probes


def compress_one(name: str, data: bytes | Callable[[], bytes], *extra: str) -> Callable[[Path], tuple[str, list[str]]]:
    def build(d: Path) -> tuple[str, list[str]]:
        src = write(d / "in", name, data() if callable(data) else data)
        return "oml", ["compress", str(src), "-o", str(d / "out" / "x.oml"), "-q", "1", *extra]

    return build


def decompress_one(data: Callable[[], bytes], *extra: str) -> Callable[[Path], tuple[str, list[str]]]:
    def build(d: Path) -> tuple[str, list[str]]:
        src = write(d / "in", "x.oml", data())
        return "oml", ["decompress", str(src), "-o", str(d / "out" / "x.png"), *extra]

    return build


def with_weights(kind: str) -> Callable[[Path], tuple[str, list[str]]]:
    def build(d: Path) -> tuple[str, list[str]]:
        src = write(d / "in", "a.png", encoded(photo(), "PNG"))
        weights = write(d / "in", "w.pt", weights_file(kind))
        return "oml", ["compress", str(src), "-o", str(d / "out" / "a.oml"), "--weights", str(weights)]

    return build


def input_is_output(d: Path) -> tuple[str, list[str]]:
    src = write(d / "in", "p.png", encoded(photo(), "PNG"))
    return "oml", ["compress", str(src), "-o", str(src)]


def decode_onto_input(d: Path) -> tuple[str, list[str]]:
    src = write(d / "in", "x.oml", coded())
    return "oml", ["decompress", str(src), "-o", str(src)]


def colliding_names(d: Path) -> tuple[str, list[str]]:
    img = photo()
    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.png.png", "PNG")):
        write(d / "in", name, encoded(img, fmt))
    return "oml", ["compress", str(d / "in"), "-o", str(d / "out"), "-q", "1"]


def three_outputs(d: Path, _: str) -> str | None:
    made = sorted(p.name for p in (d / "out").iterdir())
    return None if len(made) == 3 else f"expected three files, got {made}"


def symlinked(d: Path) -> tuple[str, list[str]]:
    real = write(d / "elsewhere", "b.png", encoded(photo(), "PNG"))
    (d / "in").mkdir()
    (d / "in" / "link.png").symlink_to(real)
    (d / "in" / "loop").symlink_to(d / "in")
    return "oml", ["compress", str(d / "in"), "-o", str(d / "out"), "-q", "1"]


def one_output(d: Path, _: str) -> str | None:
    made = sorted(p.name for p in (d / "out").rglob("*.oml"))
    return None if len(made) == 1 else f"expected one file, got {made}"


def cli_probes() -> list[Probe]:
    png = encoded(photo(), "PNG")
    p = [
        Probe("image inputs", "empty file", "error", compress_one("a.png", b"")),
        Probe("image inputs", "random bytes", "error", compress_one("a.png", np.random.default_rng(1).bytes(3000))),
        Probe("image inputs", "truncated PNG", "error", compress_one("a.png", png[: len(png) // 2])),
        Probe("image inputs", "text named .jpg", "error", compress_one("a.jpg", b"hello\n")),
        Probe("image inputs", "header-only PNG 12000²", "error", compress_one("a.png", header_only_png)),
        Probe("image inputs", "header-only JPEG 12000²", "error", compress_one("a.jpg", lambda: jpeg_claiming_12000(False))),
        Probe("image inputs", "JPEG with a 16² scan claiming 12000²", "error", compress_one("a.jpg", lambda: jpeg_claiming_12000(True))),
        Probe("image inputs", "header-only TIFF 12000²", "error", compress_one("a.tif", header_only_tiff)),
        Probe("image inputs", "header-only WebP 12000²", "error", compress_one("a.webp", header_only_webp)),
        Probe("image inputs", "animated GIF", "error", compress_one("a.gif", lambda: animated("GIF"))),
        Probe("image inputs", "animated WebP", "error", compress_one("a.webp", lambda: animated("WEBP"))),
        Probe("image inputs", "over --max-pixels", "error", compress_one("a.png", png, "--max-pixels", "1000")),
        Probe("image inputs", "missing input", "error", lambda d: ("oml", ["compress", str(d / "nope.png"), "-o", str(d / "out" / "x.oml")])),
        Probe("image inputs", "symlinked file and a link loop", "ok", symlinked, one_output),
        Probe("arguments", "--tile 70016", "error", compress_one("a.png", png, "--tile", "70016")),
        Probe("arguments", "--tile 100", "error", compress_one("a.png", png, "--tile", "100")),
        Probe("arguments", "--quality 99", "error", compress_one("a.png", png, "--quality", "99")),
        Probe("arguments", "--lmbda -1", "error", lambda d: ("oml", ["compress", str(write(d / "in", "a.png", png)), "-o", str(d / "out" / "x.oml"), "--lmbda", "-1"])),
        Probe("arguments", "--steps -3", "error", compress_one("a.png", png, "--steps", "-3")),
        Probe("outputs", "compress onto its input", "error", input_is_output),
        Probe("outputs", "decompress onto its input", "error", decode_onto_input),
        Probe("outputs", "a.png, a.jpg, a.png.png", "ok", colliding_names, three_outputs),
    ]
    for kind in ("random", "empty", "text", "missing-keys", "wrong-shapes"):
        p.append(Probe("weights files", f"--weights {kind}", "error", with_weights(kind)))
    p.append(Probe("weights files", "--weights missing", "error", lambda d: ("oml", ["compress", str(write(d / "in", "a.png", png)), "-o", str(d / "out" / "a.oml"), "--weights", str(d / "none.pt")])))
    forgeries = {
        "header 60000²": lambda: forged(height=60000, width=60000),
        "header 65535²·64 px grid": lambda: forged(height=65535 * 64, width=65535 * 64, tile=64, num_tiles=65535**2),
        "header 0×0": lambda: forged(height=0, width=0, num_tiles=0),
        "no metric sets": lambda: forged(metrics=()),
        "tile 65472": lambda: forged(tile=65472),
        "zero modulators": lambda: forged(num_lambdas=0),
        "z shape 0×0": lambda: forged_z((0, 0)),
        "z shape 65535²": lambda: forged_z((65535, 65535)),
        "another model id (no download)": lambda: forged(model="mbt2018-mean"),
        "one bit flipped in a latent string": flipped_latent,
        "truncated file": lambda: coded()[: len(coded()) // 2],
        "empty file": lambda: b"",
        "random bytes": lambda: np.random.default_rng(2).bytes(500),
    }
    for name, make in forgeries.items():
        p.append(Probe(".oml files (valid checksums)", name, "error", decompress_one(make)))
    p.append(Probe(".oml files (valid checksums)", "over --max-pixels", "error", decompress_one(coded, "--max-pixels", "100")))
    p.append(Probe(".oml files (valid checksums)", "--region outside the image", "error", decompress_one(coded, "--region", "0,0,100000,1")))
    p.append(Probe(".oml files (valid checksums)", "--metric ms-ssim on a file without it", "error", decompress_one(lambda: coded(True), "--metric", "ms-ssim")))
    p.append(Probe(".oml files (valid checksums)", "--metric plain on an adapted file", "ok", decompress_one(lambda: coded(True), "--metric", "plain")))
    return p


# ------------------------------------------------------------------ Ray job probes


_ARCHIVE: dict[str, Path] = {}


def job(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_archive(base: Path) -> Path:
    inp = base / "photos"
    write(inp, "a.png", encoded(photo(64, 64, 0), "PNG"))
    write(inp, "sub/b.png", encoded(photo(96, 64, 1), "PNG"))
    write(inp, "sub/c.jpg", encoded(photo(64, 80, 2), "JPEG", quality=95))
    out = base / "archive"
    code = job("compress").main(["--input", str(inp), "--output", str(out), "--quality", "1", "--unit-tiles", "1", "--no-progress"])
    assert code == 0, "the reference archive could not be made"
    return out


def rewrite(copy: Path, index: int, kind: str, edit: Callable[[dict], None]) -> None:
    """Unit ``index``'s ``kind`` rows (``tiles``, ``images``) through ``edit``, the file and its marker re-sealed as a forger would."""
    from pipeline.archive import schema

    path = unit_file(copy, index, f".{kind}.parquet")
    table = pq.read_table(path).to_pylist()
    for row in table:
        edit(row)
    data = schema.to_parquet(table, schema.TILE_SCHEMA if kind == "tiles" else schema.IMAGE_SCHEMA)
    path.write_bytes(data)
    marker = unit_file(copy, index, ".done.json")
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {f"{kind}_bytes": len(data), f"{kind}_sha256": schema.sha256(data)}))


def restore(damage: Callable[[Path], None], *extra: str, onto_sources: bool = False) -> Callable[[Path], tuple[str, list[str]]]:
    def build(d: Path) -> tuple[str, list[str]]:
        copy = d / "in" / "archive"
        shutil.copytree(_ARCHIVE["root"], copy)
        damage(copy)
        out = _ARCHIVE["root"].parent / "photos" if onto_sources else d / "out"
        _ARCHIVE["photos"] = json.dumps(files(_ARCHIVE["root"].parent / "photos"))
        return "decompress", ["--input", str(copy), "--output", str(out), "--no-progress", *extra]

    return build


def named_in_summary(word: str) -> Callable[[Path, str], str | None]:
    def check(d: Path, text: str) -> str | None:
        summary = d / "out" / "decompress-summary.json"
        body = summary.read_text() if summary.exists() else text
        return None if word in body else f"{word!r} not named in the summary or output"

    return check


def sources_untouched(d: Path, _: str) -> str | None:
    now = json.dumps(files(_ARCHIVE["root"].parent / "photos"))
    return None if now == _ARCHIVE["photos"] else "the archived originals were changed"


def unit_file(copy: Path, i: int, suffix: str) -> Path:
    return copy / "units" / f"unit-{i:06d}{suffix}"


def flip_footer(copy: Path) -> None:
    path = unit_file(copy, 1, ".tiles.parquet")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    path.write_bytes(bytes(data))


def flip_row_latent(copy: Path) -> None:
    """One byte of a.png's first latent string changed, and the tile's hash re-sealed as a forger would."""
    from oml import codec
    from pipeline.archive import schema

    header = schema.header_of(pq.read_table(unit_file(copy, 0, ".images.parquet")).to_pylist()[0])

    def edit(row: dict) -> None:
        if row["path"] == "a.png":
            latent = bytearray(row["strings"][0])
            latent[len(latent) // 2] ^= 0x04
            row["strings"][0] = bytes(latent)
            row["record_sha256"] = schema.digest(codec.pack_tile(schema.record_of(row, header)))

    rewrite(copy, 0, "tiles", edit)


def job_probes(port: int) -> list[Probe]:
    def row_path(value: str) -> Callable[[Path], None]:
        return lambda copy: rewrite(copy, 0, "images", lambda row: row.update(path=value) if row["path"] == "a.png" else None)

    def row_source(value: Callable[[Path], str]) -> Callable[[Path], None]:
        return lambda copy: [rewrite(copy, i, "images", lambda row: row.update(source=value(copy))) for i in range(3)]

    return [
        Probe("archive rows", "path ../../escaped.png", "manifest", restore(row_path("../../escaped.png")), named_in_summary("unsafe path")),
        Probe("archive rows", "absolute path", "manifest", restore(row_path("/tmp/oml-probe-absolute.png")), named_in_summary("unsafe path")),
        Probe("archive rows", "source http://127.0.0.1 under --verify", "ok", restore(row_source(lambda c: f"http://127.0.0.1:{port}/fetch-me"), "--verify")),
        Probe("archive rows", "source /etc/shadow under --verify", "ok", restore(row_source(lambda c: "/etc/shadow"), "--verify")),
        Probe("archive rows", "a flipped latent byte, checksums re-sealed", "manifest", restore(flip_row_latent), named_in_summary("a.png")),
        Probe("units and markers", "tiles Parquet file truncated", "manifest", restore(lambda c: unit_file(c, 1, ".tiles.parquet").write_bytes(unit_file(c, 1, ".tiles.parquet").read_bytes()[:100])), named_in_summary("Parquet")),
        Probe("units and markers", "tiles Parquet file missing", "manifest", restore(lambda c: unit_file(c, 1, ".tiles.parquet").unlink()), named_in_summary("missing")),
        Probe("units and markers", "images Parquet file missing", "manifest", restore(lambda c: unit_file(c, 1, ".images.parquet").unlink()), named_in_summary("missing")),
        Probe("units and markers", "one bit flipped in a Parquet footer", "manifest", restore(flip_footer), named_in_summary("unit 1")),
        Probe("units and markers", "marker {}", "manifest", restore(lambda c: unit_file(c, 1, ".done.json").write_text("{}")), named_in_summary("marker")),
        Probe("units and markers", "truncated marker", "manifest", restore(lambda c: unit_file(c, 1, ".done.json").write_text('{"format": "oml-arch')), named_in_summary("marker")),
        Probe("units and markers", "marker deleted", "manifest", restore(lambda c: unit_file(c, 1, ".done.json").unlink()), named_in_summary("not committed")),
        Probe("outputs", "restore into the folder the archive was made from", "error", restore(lambda c: None, onto_sources=True), sources_untouched),
        Probe("outputs", "jobs: --tile 70016", "error", lambda d: ("compress", ["--input", str(write(d / "in", "a.png", encoded(photo(), "PNG"))), "--output", str(d / "out"), "--tile", "70016", "--no-progress"])),
        Probe("outputs", "jobs: a folder that is not an archive", "error", lambda d: ("decompress", ["--input", str((d / "in").mkdir() or d / "in"), "--output", str(d / "out"), "--no-progress"])),
    ]


# ------------------------------------------------------------------ careless use (kills, disks, depths, hangs)


def sixteen_bit_png(level: int, rgb: bool) -> bytes:
    """A real 16-bit PNG (greyscale or RGB) whose every sample is ``level`` plus a gentle ramp."""
    h, w = 48, 64
    ramp = (np.arange(w)[None, :] * 3 + np.arange(h)[:, None]).astype(np.int64)
    plane = np.clip(level + ramp, 0, 65535)
    arr = (np.stack([plane] * 3, axis=-1) if rgb else plane).astype(">u2")  # PNG samples are big-endian
    raw = b"".join(b"\0" + arr[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if rgb else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def float_tiff() -> bytes:
    values = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    return encoded(Image.fromarray(values, mode="F"), "TIFF")


def wide_gamut_jpeg() -> bytes:
    """A JPEG carrying an ICC profile that is not sRGB (a LAB profile: colour-managed viewers show
    other colours if the profile is dropped)."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
    return encoded(photo(), "JPEG", quality=95, icc_profile=profile.tobytes())


def mean_level_within(expected: float, tolerance: float) -> Callable[[Path, str], str | None]:
    def check(d: Path, _: str) -> str | None:
        from pipeline.cli import main as oml_main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = oml_main(["decompress", str(d / "out" / "x.oml"), "-o", str(d / "out" / "x.png")])
        if code != 0:
            return "the coded file does not decompress"
        mean = float(np.asarray(Image.open(d / "out" / "x.png"), dtype=np.float64).mean())
        return None if abs(mean - expected) <= tolerance else f"restored mean level {mean:.1f}, expected {expected:.1f} ± {tolerance}"

    return check


def expected_mean_8bit(level: int) -> float:
    h, w = 48, 64
    ramp = (np.arange(w)[None, :] * 3 + np.arange(h)[:, None]).astype(np.int64)
    return float(np.round(np.clip(level + ramp, 0, 65535) / 257).mean())


def restore_into_link_to_sources(d: Path) -> tuple[str, list[str]]:
    (d / "out").mkdir()
    link = d / "out" / "photos-link"
    link.symlink_to(_ARCHIVE["root"].parent / "photos")
    _ARCHIVE["photos"] = json.dumps(files(_ARCHIVE["root"].parent / "photos"))
    return "decompress", ["--input", str(_ARCHIVE["root"]), "--output", str(link), "--no-progress"]


def restore_over_other_file(d: Path) -> tuple[str, list[str]]:
    write(d / "out", "a.png", encoded(photo(30, 30, 9), "PNG"))
    return "decompress", ["--input", str(_ARCHIVE["root"]), "--output", str(d / "out"), "--no-progress"]


def file_unchanged(name: str) -> Callable[[Path, str], str | None]:
    def check(d: Path, _: str) -> str | None:
        return None if (d / "out" / name).read_bytes() == encoded(photo(30, 30, 9), "PNG") else f"{name} was overwritten"

    return check


def both(*checks: Callable[[Path, str], str | None]) -> Callable[[Path, str], str | None]:
    return lambda d, text: next((why for why in (c(d, text) for c in checks) if why), None)


def copy_archive(d: Path) -> Path:
    copy = d / "in" / "archive"
    shutil.copytree(_ARCHIVE["root"], copy)
    return copy


def without_plan(d: Path) -> tuple[str, list[str]]:
    copy = copy_archive(d)
    (copy / "plan.json").unlink()
    return "decompress", ["--input", str(copy), "--output", str(d / "out"), "--no-progress", "--verify"]


def all_restored(count: int) -> Callable[[Path, str], str | None]:
    def check(d: Path, _: str) -> str | None:
        made = sorted(str(p.relative_to(d / "out")) for p in (d / "out").rglob("*.png"))
        return None if len(made) == count else f"expected {count} restored images, got {made}"

    return check


def changed_source(d: Path) -> tuple[str, list[str]]:
    """--verify --sources against a copy of the sources where one file changed (same size)."""
    sources = d / "in" / "sources"
    shutil.copytree(_ARCHIVE["root"].parent / "photos", sources)
    data = bytearray((sources / "a.png").read_bytes())
    img = Image.open(io.BytesIO(bytes(data))).convert("RGB")
    edited = encoded(Image.eval(img, lambda v: 255 - v), "PNG")
    (sources / "a.png").write_bytes(edited)
    return "decompress", ["--input", str(_ARCHIVE["root"]), "--output", str(d / "out"), "--no-progress", "--verify", "--sources", str(sources)]


def edited_between_runs(d: Path) -> tuple[str, list[str]]:
    """An archive whose run was killed after some units (a marker removed), then a source edited in
    place keeping its byte size, then the same command again."""
    inp = d / "in" / "photos"
    shutil.copytree(_ARCHIVE["root"].parent / "photos", inp)
    out = d / "out" / "archive"
    argv = ["--input", str(inp), "--output", str(out), "--quality", "1", "--unit-tiles", "1", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert job("compress").main(argv) == 0
    for marker in sorted((out / "units").glob("*.done.json"))[1:]:
        marker.unlink()  # as if killed after the first unit
    path = inp / "sub" / "b.png"
    size = path.stat().st_size
    # other pixels, the same byte size: the top half inverted, stored without compression (level 0)
    # would be larger, so the image is re-encoded and padded with a text chunk to the old size
    img = np.asarray(Image.open(path).convert("RGB")).copy()
    img[: img.shape[0] // 2] = 255 - img[: img.shape[0] // 2]
    edited = encoded(Image.fromarray(img), "PNG", optimize=True)
    pad = size - len(edited) - 12 - 5
    if pad >= 0:
        edited = edited[:-12] + png_chunk(b"tEXt", b"note\0" + b"x" * pad) + edited[-12:]
    path.write_bytes(edited)
    _ARCHIVE["edited_same_size"] = len(edited) == size
    return "compress", argv


def named_and_same_size(word: str) -> Callable[[Path, str], str | None]:
    def check(d: Path, text: str) -> str | None:
        if not _ARCHIVE.get("edited_same_size"):
            return "the probe could not keep the edited file's size"
        manifest = d / "out" / "archive" / "manifest.json"
        body = text + (manifest.read_text() if manifest.exists() else "")
        return None if word in body else f"{word!r} not named"

    return check


def long_name_round_trip(d: Path) -> tuple[str, list[str]]:
    name = "p" * 246 + ".png"  # 250 bytes: the longest names a file system takes are 255
    write(d / "in" / "photos", name, encoded(photo(), "PNG"))
    return "run", [lambda: _archive_and_restore(d)]


def _archive_and_restore(d: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = job("compress").main(["--input", str(d / "in" / "photos"), "--output", str(d / "out" / "archive"), "--quality", "1", "--no-progress"])
        if code == 0:
            code = job("decompress").main(["--input", str(d / "out" / "archive"), "--output", str(d / "out" / "restored"), "--no-progress"])
    return code, out.getvalue()


def restored_named(count: int) -> Callable[[Path, str], str | None]:
    def check(d: Path, _: str) -> str | None:
        made = list((d / "out" / "restored").glob("*.png")) if (d / "out" / "restored").exists() else []
        return None if len(made) == count else f"{len(made)} restored, expected {count}"

    return check


def timed_subprocess(argv: list[str], seconds: float, env: dict | None = None) -> Callable[[], tuple[int, str]]:
    """Run a command line in a child process; its exit status, and its output with a line when it
    ran over ``seconds``."""
    import os
    import subprocess
    import time

    def run() -> tuple[int, str]:
        start = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            return 0, f"still running after {seconds + 60:.0f} s"
        took = time.monotonic() - start
        text = done.stdout + done.stderr
        if took > seconds:
            text += f"\ntook {took:.0f} s, more than {seconds:.0f} s"
            return 0, text
        return done.returncode, text

    return run


def oml_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def careless_probes() -> list[Probe]:
    png = encoded(photo(), "PNG")
    tiny = lambda d: str(write(d / "in", "a.png", png).parent)  # noqa: E731
    archive = lambda *extra: lambda d: ("run", [timed_subprocess(oml_argv("archive", "--input", tiny(d), "--output", str(d / "out"), "--random-weights", "--no-progress", *extra), 30)])  # noqa: E731
    return [
        Probe("careless use", "restore into a symlink to the sources", "error", restore_into_link_to_sources, sources_untouched),
        Probe("careless use", "restore over a different existing file", "manifest", restore_over_other_file, both(file_unchanged("a.png"), named_in_summary("a.png"))),
        Probe("careless use", "source edited (same size) between a kill and the re-run", "manifest", edited_between_runs, named_and_same_size("b.png")),
        Probe("careless use", "dark 16-bit greyscale PNG", "ok", compress_one("x.png", lambda: sixteen_bit_png(40, False), "-q", "6"), mean_level_within(expected_mean_8bit(40), 2.0)),
        Probe("careless use", "dark 16-bit RGB PNG", "ok", compress_one("x.png", lambda: sixteen_bit_png(40, True), "-q", "6"), mean_level_within(expected_mean_8bit(40), 2.0)),
        Probe("careless use", "float TIFF in [0, 1] with no declared range", "error", compress_one("x.tif", float_tiff)),
        Probe("careless use", "JPEG with a non-sRGB ICC profile", "error", compress_one("x.jpg", wide_gamut_jpeg)),
        Probe("careless use", "--verify --sources with a changed source", "manifest", changed_source, named_in_summary("a.png")),
        Probe("careless use", "--psnr-tolerance nan", "error", lambda d: ("decompress", ["--input", str(_ARCHIVE["root"]), "--output", str(d / "out"), "--verify", "--psnr-tolerance", "nan"])),
        Probe("careless use", "--psnr-tolerance -1", "error", lambda d: ("decompress", ["--input", str(_ARCHIVE["root"]), "--output", str(d / "out"), "--verify", "--psnr-tolerance", "-1"])),
        Probe("careless use", "--steps 10^9", "error", compress_one("a.png", png, "--steps", str(10**9))),
        Probe("careless use", "--refine 10^9", "error", compress_one("a.png", png, "--refine", str(10**9))),
        Probe("careless use", "compress -o ''", "error", lambda d: ("oml", ["compress", str(write(d / "in", "a.png", png)), "-o", ""])),
        Probe("careless use", "archive --output ''", "error", lambda d: ("compress", ["--input", tiny(d), "--output", ""])),
        Probe("careless use", "restore without plan.json", "ok", without_plan, all_restored(3)),
        Probe("careless use", "a 250-byte file name, archived and restored", "ok", long_name_round_trip, restored_named(1)),
        Probe("careless use", "archive --num-gpus 1 without GPUs (< 30 s)", "error", archive("--num-gpus", "1")),
        Probe("careless use", "archive --cpus-per-worker 4096 (< 30 s)", "error", archive("--cpus-per-worker", "4096")),
        Probe("careless use", "archive --num-cpus 0 (< 30 s)", "error", archive("--num-cpus", "0")),
        Probe("careless use", "archive --address 127.0.0.1:1 (< 30 s)", "error", archive("--address", "127.0.0.1:1")),
        Probe("careless use", "archive onto an output that is a file", "error", lambda d: ("compress", ["--input", tiny(d), "--output", str(write(d / "out", "file", b"x")), "--random-weights", "--no-progress"])),
    ]


# ------------------------------------------------------------------ running


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def run_probe(probe: Probe, base: Path, index: int) -> tuple[bool, str]:
    d = base / f"probe-{index:03d}"
    d.mkdir()
    tool, argv = probe.build(d)
    before = files(d)
    HITS.clear()
    out, err = io.StringIO(), io.StringIO()
    crashed = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if tool == "oml":
                from pipeline.cli import main as oml_main

                code = oml_main(argv)
            elif tool == "run":  # a child process or a sequence of commands: (exit status, output)
                code, child = argv[0]()
                print(child, file=sys.stderr)
            else:
                code = job(tool).main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - any escape is the finding
            crashed = traceback.format_exc(limit=3).strip().splitlines()[-1]
            code = None
    text = out.getvalue() + err.getvalue()
    after = files(d)
    why = []
    if crashed:
        why.append(f"exception escaped: {crashed}")
    if "Traceback" in text:
        why.append("traceback printed")
    changed = [p for p, h in before.items() if after.get(p) != h and not p.startswith("out")]
    if changed:
        why.append(f"inputs changed: {changed}")
    new = [p for p in after if p not in before and not p.startswith("out/") and not p.startswith("in/archive/")]
    if new:
        why.append(f"written outside the output: {new}")
    if Path("/tmp/oml-probe-absolute.png").exists() or (base / "escaped.png").exists():
        why.append("a row placed a file outside the output")
    if HITS:
        why.append(f"network requests: {HITS}")
    if probe.expect in ("error", "manifest") and code in (0, None):
        why.append(f"exit status {code}")
    if probe.expect == "error" and not any(("error" in line or "failed" in line or "desync" in line or "damaged" in line) for line in err.getvalue().splitlines()):
        why.append("no error line on stderr")
    if probe.expect == "ok" and code != 0:
        why.append(f"exit status {code}: {err.getvalue().strip()[-200:]}")
    if probe.check and not crashed:
        try:
            problem = probe.check(d, text)
        except OSError as exc:
            problem = f"check failed: {exc}"
        if problem:
            why.append(problem)
    first_error = next((line for line in err.getvalue().splitlines() if "error" in line or "failed" in line), "")
    return not why, "; ".join(why) if why else (first_error[:110] or f"exit {code}")


def main() -> int:
    import warnings

    warnings.simplefilter("ignore")
    import ray

    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from pipeline.archive import reaper

    watcher = reaper.watch()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[bool]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                _ARCHIVE["root"] = make_archive(base / "reference")
            for index, probe in enumerate(cli_probes() + job_probes(server.server_port) + careless_probes()):
                ok, note = run_probe(probe, base, index)
                results.setdefault(probe.category, []).append(ok)
                print(f"{'clean' if ok else 'FAIL ':5}  {probe.category:28} {probe.name:42} {note}", flush=True)
    finally:
        ray.shutdown()
        server.shutdown()
        if watcher is not None:
            watcher.terminate()
    print("\n| inputs | probes | clean | failures |\n|---|---|---|---|")
    for category, oks in results.items():
        print(f"| {category} | {len(oks)} | {sum(oks)} | {len(oks) - sum(oks)} |")
    total = [ok for oks in results.values() for ok in oks]
    print(f"| **all** | **{len(total)}** | **{sum(total)}** | **{len(total) - sum(total)}** |")
    return 0 if all(total) else 1


if __name__ == "__main__":
    raise SystemExit(main())
