"""The oml command as a user runs it (random-weight default model through --weights)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oml import codec
from oml.adapt import AdaptConfig
from oml.models.zoo import save_weights
from pipeline.cli import main

from ..conftest import natural_image


@pytest.fixture(scope="module")
def weights(tmp_path_factory, random_default_model):
    path = tmp_path_factory.mktemp("w") / "random.pt"
    save_weights(random_default_model, path)
    return str(path)


def _png(path, image):
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def test_single_file_round_trip(tmp_path, weights, capsys):
    src = tmp_path / "a.png"
    _png(src, natural_image(80, 120))
    assert main(["compress", str(src), "-o", str(tmp_path / "a.oml"), "--weights", weights, "-q", "2"]) == 0
    assert "bpp" in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "a.oml"), "-o", str(tmp_path / "a_out.png"), "--weights", weights]) == 0
    restored = np.asarray(Image.open(tmp_path / "a_out.png"))
    assert restored.shape == (80, 120, 3)
    assert main(["info", str(tmp_path / "a.oml"), "--tiles"]) == 0
    out = capsys.readouterr().out
    assert "oml-default" in out and "quality 2" in out and "tile (0,0)" in out


def test_folder_with_bad_files_processes_the_rest(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    _png(folder / "good.png", natural_image(40, 50))
    _png(folder / "sub" / "good2.png", natural_image(30, 20, seed=2))
    (folder / "empty.png").write_bytes(b"")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    code = main(["compress", str(folder), "-o", str(tmp_path / "out"), "--weights", weights])
    err = capsys.readouterr().err
    assert code == 1
    assert "empty.png: empty file" in err and "broken.jpg" in err and "2 of 4 files failed" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.oml")) == ["good.oml", "good2.oml"]
    assert main(["decompress", str(tmp_path / "out"), "-o", str(tmp_path / "png"), "--weights", weights]) == 0
    assert (tmp_path / "png" / "sub" / "good2.png").exists()


def test_user_mistakes_are_one_line(tmp_path, weights, capsys):
    assert main(["compress", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.oml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    src = tmp_path / "a.png"
    _png(src, natural_image(16, 16))
    assert main(["compress", str(src), "-o", str(tmp_path / "x.oml"), "--weights", weights, "-q", "7"]) == 2
    assert "qualities" in capsys.readouterr().err
    (tmp_path / "junk.oml").write_bytes(b"junk")
    assert main(["decompress", str(tmp_path / "junk.oml"), "-o", str(tmp_path / "j.png"), "--weights", weights]) == 1
    assert "not an oml-coded image" in capsys.readouterr().err


def test_decoded_file_matches_encoder_reconstruction(tmp_path, weights, random_default_model):
    src = tmp_path / "a.png"
    image = natural_image(70, 530)
    _png(src, image)
    assert main(["compress", str(src), "-o", str(tmp_path / "a.oml"), "--weights", weights, "--steps", "3", "-q", "1"]) == 0
    assert main(["decompress", str(tmp_path / "a.oml"), "-o", str(tmp_path / "a.png.out.png"), "--weights", weights]) == 0
    restored = torch.from_numpy(np.asarray(Image.open(tmp_path / "a.png.out.png")).copy()).permute(2, 0, 1)
    # the encoder's own reconstruction, computed here, not the decoder the CLI also calls
    encoded = codec.encode(random_default_model, image, quality=1, adapt_config=AdaptConfig(steps=3))
    assert torch.equal(restored, encoded.reconstruction)


def test_a_damaged_symbol_stream_is_reported_as_desync(tmp_path, capsys):
    """A byte changed inside a tile's y string, with the file's checksum made valid again: the
    decoder's symbol check names the file and tile, exit status 1, no image written (shipped
    model: a random one codes almost nothing but zeros, which survive damage)."""
    src = tmp_path / "a.png"
    _png(src, natural_image(128, 128))
    coded = tmp_path / "a.oml"
    assert main(["compress", str(src), "-o", str(coded)]) == 0
    header, records = codec.read(coded.read_bytes())
    y = bytearray(records[0].strings[0])
    y[len(y) // 2] ^= 0x5A
    records[0] = records[0]._replace(strings=[bytes(y), records[0].strings[1]])
    coded.write_bytes(codec.write(header, records))
    capsys.readouterr()
    assert main(["decompress", str(coded), "-o", str(tmp_path / "out.png")]) == 1
    err = capsys.readouterr().err
    assert f"error: {coded}: desync in tile 0 (top 0, left 0)" in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()
    assert main(["info", str(coded)]) == 0
    assert "portable: exact integer entropy decoding" in capsys.readouterr().out


def test_an_input_is_never_an_output(tmp_path, weights, capsys):
    src = tmp_path / "p.png"
    _png(src, natural_image(40, 40))
    original = src.read_bytes()
    assert main(["compress", str(src), "-o", str(src), "--weights", weights]) == 2
    assert "is also an input" in capsys.readouterr().err and src.read_bytes() == original
    coded = tmp_path / "p.oml"
    assert main(["compress", str(src), "-o", str(coded), "--weights", weights]) == 0
    data = coded.read_bytes()
    assert main(["decompress", str(coded), "-o", str(coded), "--weights", weights]) == 2
    assert "is also an input" in capsys.readouterr().err and coded.read_bytes() == data


def test_decoding_never_downloads_the_model_a_file_names(tmp_path, monkeypatch, capsys):
    """A header naming a CompressAI model whose weights are not cached: a one-line error, no fetch."""
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("decoder tried to download"))
    header = codec.Header(2, "mbt2018-mean", bytes(8), 3, 0.0067, 64, 64, 512, 4, ("plain",), 1)
    record = codec.TileRecord((1, 1), [b"", b""], torch.zeros(1, 4, dtype=torch.float16), 0)
    forged = tmp_path / "forged.oml"
    forged.write_bytes(codec.write(header, [record]))
    assert main(["decompress", str(forged), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert "not in the local cache" in err and "never downloads" in err and "Traceback" not in err


def _forged_weights(path, weights, edit):
    state = torch.load(weights, weights_only=True)
    edit(state["state_dict"])
    torch.save(state, path)


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("random", lambda p, w: p.write_bytes(bytes(range(256)) * 4), "not an oml weights file"),
        ("empty", lambda p, w: p.write_bytes(b""), "not an oml weights file"),
        ("text", lambda p, w: p.write_text("weights"), "not an oml weights file"),
        ("no-name", lambda p, w: torch.save({"format": "oml-weights/1", "state_dict": {}}, p), "damaged oml weights file"),
        ("missing", lambda p, w: _forged_weights(p, w, lambda sd: sd.pop(next(k for k in sd if "g_a" in k))), "missing tensors"),
        ("shape", lambda p, w: _forged_weights(p, w, lambda sd: sd.update({next(k for k in sd if k.endswith("weight")): torch.zeros(3, 3)})), "size mismatch"),
        ("cdf-shape", lambda p, w: _forged_weights(p, w, lambda sd: sd.update({next(k for k in sd if k.endswith("gaussian_conditional._quantized_cdf")): torch.zeros(2, 2, dtype=torch.int32)})), "inconsistent shapes"),
        ("cdf-values", lambda p, w: _forged_weights(p, w, lambda sd: sd[next(k for k in sd if k.endswith("entropy_bottleneck._quantized_cdf"))].mul_(-1)), "not a valid table"),
    ],
)
def test_bad_weights_files_are_one_line_errors(tmp_path, weights, capsys, name, make, message):
    """Each of these crashed or segfaulted the range coder before; now: exit 2, one line."""
    bad = tmp_path / f"{name}.pt"
    make(bad, weights)
    src = tmp_path / "a.png"
    _png(src, natural_image(64, 64))
    assert main(["compress", str(src), "-o", str(tmp_path / "a.oml"), "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "a.oml").exists()


def test_folders_with_link_loops_are_walked_once(tmp_path, weights):
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png", natural_image(32, 32))
    (folder / "loop").symlink_to(folder)
    assert main(["compress", str(folder), "-o", str(tmp_path / "out"), "--weights", weights]) == 0
    assert [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.oml")] == ["a.oml"]


def test_help_and_argument_errors_load_no_model_code():
    """--help and argument parsing import neither torch nor CompressAI (4 s before, well under 1 s now)."""
    import subprocess
    import sys

    code = "import sys, pipeline.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'compressai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _options(parser) -> dict[str, tuple]:
    """Every option string of a parser with what it parses: (dest, default, choices, type, nargs)."""
    return {s: (a.dest, a.default, a.choices, a.type, a.nargs) for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


def _sub(name: str):
    from pipeline.cli import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices[name]


def test_the_archive_takes_every_coding_flag_of_compress_and_the_jobs_are_oml_archive_and_restore():
    """One front end: `oml archive` has each of `oml compress`'s coding flags with the same meaning, and
    jobs/compress.py / jobs/decompress.py parse exactly as `oml archive` / `oml restore`."""
    import importlib.util

    compress, archive, restore = _options(_sub("compress")), _options(_sub("archive")), _options(_sub("restore"))
    coding = {k: v for k, v in compress.items() if k not in ("-o", "--output")}
    assert {k: archive.get(k) for k in coding} == coding
    assert {"--input", "--output", "--address", "--num-gpus", "--unit-tiles"} <= set(archive)
    for name, sub in (("compress", archive), ("decompress", restore)):
        spec = importlib.util.spec_from_file_location(f"job_{name}", Path(__file__).resolve().parents[2] / "jobs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert _options(module.build_parser()) == sub


def test_the_light_names_match_the_modules_that_use_them():
    from oml import adapt, codec, imageio, names, tiling
    from oml.models import zoo

    assert tuple(zoo.ZOO) == names.MODEL_IDS and zoo.DEFAULT_MODEL in zoo.ZOO
    assert adapt.METRICS is names.METRICS and codec.PLAIN == names.PLAIN and tiling.TILE == names.TILE
    assert imageio.IMAGE_SUFFIXES is names.IMAGE_SUFFIXES and zoo.ModelUnavailableError is names.ModelUnavailableError


def test_colliding_names_in_a_folder_get_distinct_outputs_both_ways(tmp_path, weights):
    """a.png, a.jpg and a.png.png used to stop the whole run: now each gets its own .oml and PNG."""
    (tmp_path / "in").mkdir()
    for i, (name, fmt) in enumerate([("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.png.png", "PNG")]):
        Image.fromarray(natural_image(48, 64, i).permute(1, 2, 0).numpy()).save(tmp_path / "in" / name, format=fmt)
    assert main(["compress", str(tmp_path / "in"), "-o", str(tmp_path / "coded"), "--weights", weights, "-q", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "coded").iterdir()) == ["a.jpg.oml", "a.png.2.oml", "a.png.oml"]
    assert main(["decompress", str(tmp_path / "coded"), "-o", str(tmp_path / "png"), "--weights", weights]) == 0
    assert len(list((tmp_path / "png").iterdir())) == 3


def test_region_decode_equals_the_window_of_a_full_decode(tmp_path, weights, capsys):
    """--region decodes only the tiles the window overlaps (here 4 of 12), and its pixels are
    those of the full decode; a window outside the image is one line, nothing written."""
    _png(tmp_path / "a.png", natural_image(300, 400, 3))
    assert main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.oml"), "--weights", weights, "-q", "2", "--tile", "128"]) == 0
    assert main(["decompress", str(tmp_path / "a.oml"), "-o", str(tmp_path / "full.png"), "--weights", weights]) == 0
    full = np.asarray(Image.open(tmp_path / "full.png"))
    for left, top, width, height in [(100, 90, 60, 70), (0, 0, 400, 300), (399, 299, 1, 1)]:
        region = f"{left},{top},{width},{height}"
        assert main(["decompress", str(tmp_path / "a.oml"), "-o", str(tmp_path / "w.png"), "--weights", weights, "--region", region]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / "w.png")), full[top : top + height, left : left + width])
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "a.oml"), "-o", str(tmp_path / "x.png"), "--weights", weights, "--region", "350,0,51,10"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[0].endswith("region 350,0,51,10 (left,top,width,height) is not inside the 400x300 image")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit):
        main(["decompress", str(tmp_path / "a.oml"), "-o", str(tmp_path / "x.png"), "--region", "1,2,3"])
    assert "not LEFT,TOP,WIDTH,HEIGHT" in capsys.readouterr().err


def test_region_decode_decodes_only_the_overlapped_tiles(random_default_model, monkeypatch):
    image = natural_image(300, 400, 3)
    data = codec.encode(random_default_model, image, quality=2, tile_size=128).data
    decoded: list[int] = []
    real = codec.decode_tile_latent
    monkeypatch.setattr(codec, "decode_tile_latent", lambda m, h, r, number, t: decoded.append(number) or real(m, h, r, number, t))
    window = codec.decode_region(random_default_model, data, codec.tiling.Region(100, 90, 60, 70))
    assert decoded == [0, 1, 4, 5] and window.shape == (3, 70, 60)


# --------------------------------------------------------------------------- nothing lost


@pytest.mark.parametrize(
    "argv,message",
    [
        (["compress", "{src}", "-o", ""], "-o/--output is empty"),
        (["compress", "", "-o", "{out}"], "an input is empty"),
        (["decompress", "{coded}", "-o", ""], "-o/--output is empty"),
        (["decompress", "", "-o", "{out}"], "an input is empty"),
    ],
)
def test_an_empty_output_or_input_is_one_line_and_writes_nothing(tmp_path, weights, monkeypatch, capsys, argv, message):
    """'' is no name: it used to mean the current folder (``-o ''`` wrote ./a.oml, exit 0; an
    input '' took every image or .oml file there)."""
    src = tmp_path / "a.png"
    _png(src, natural_image(32, 32))
    coded = tmp_path / "a.oml"
    assert main(["compress", str(src), "-o", str(coded), "--weights", weights]) == 0
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    _png(work / "c.png", natural_image(32, 32, 1))
    (work / "c.oml").write_bytes(coded.read_bytes())
    capsys.readouterr()
    argv = [a.format(src=src, coded=coded, out=tmp_path / "out") for a in argv]
    assert main([*argv, "--weights", weights]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == ["c.oml", "c.png"] and not (tmp_path / "out").exists()


def test_decompress_into_a_folder_never_replaces_a_different_file(tmp_path, weights, capsys):
    """`oml decompress coded/ -o photos/` where photos/ holds the originals under the outputs'
    names (here through a symbolic link to it): each original is left as it was and named (exit 1).
    A repeated decompress into a fresh folder changes nothing (exit 0); --overwrite replaces."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        _png(photos / name, natural_image(40, 56, i))
    originals = {p.name: p.read_bytes() for p in photos.iterdir()}
    assert main(["compress", str(photos), "-o", str(tmp_path / "coded"), "--weights", weights, "-q", "1"]) == 0
    link = tmp_path / "photos-link"
    link.symlink_to(photos)
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "coded"), "-o", str(link), "--weights", weights]) == 1
    err = capsys.readouterr().err
    assert err.count("a different file is already there; left as it is") == 2 and "2 of 2 files failed" in err
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == originals

    restored = tmp_path / "restored"
    assert main(["decompress", str(tmp_path / "coded"), "-o", str(restored), "--weights", weights]) == 0
    first = {p.name: (p.read_bytes(), p.stat().st_ino) for p in restored.iterdir()}
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "coded"), "-o", str(restored), "--weights", weights]) == 0
    assert capsys.readouterr().out.count("(already there, the same bytes)") == 2
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in restored.iterdir()} == first  # not even rewritten

    assert main(["decompress", str(tmp_path / "coded"), "-o", str(link), "--weights", weights, "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == {n: b for n, (b, _) in first.items()}


def test_an_output_that_is_an_input_through_a_bind_mount_or_hard_link_is_refused(tmp_path, weights, bind_mount, capsys):
    """Paths are compared by identity, not spelling: the same file seen through a bind mount of its
    folder (which a rename would replace) or a hard link is an input, and never written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    src = photos / "a.png"
    _png(src, natural_image(32, 40))
    original = src.read_bytes()
    view = bind_mount(photos)
    os.link(src, tmp_path / "hard.png")
    for out in (view / "a.png", tmp_path / "hard.png"):
        assert main(["compress", str(src), "-o", str(out), "--weights", weights]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is also an input" in err
        assert src.read_bytes() == original
    coded = tmp_path / "a.oml"
    assert main(["compress", str(src), "-o", str(coded), "--weights", weights]) == 0
    data = coded.read_bytes()
    os.link(coded, photos / "a-copy.oml")
    assert main(["decompress", str(coded), "-o", str(view / "a-copy.oml"), "--weights", weights]) == 2
    assert "is also an input" in capsys.readouterr().err and coded.read_bytes() == data


def test_the_longest_file_names_compress_and_decompress(tmp_path, weights):
    """A 255-byte name (the file system's limit) whose outputs keep 255 bytes: the temporaries are
    short names of their own (``NAME.part`` was 5 bytes over)."""
    name = "p" * 251
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / f"{name}.png", natural_image(32, 48))
    assert main(["compress", str(tmp_path / "in"), "-o", str(tmp_path / "coded"), "--weights", weights]) == 0
    assert [p.name for p in (tmp_path / "coded").iterdir()] == [f"{name}.oml"]
    assert main(["decompress", str(tmp_path / "coded"), "-o", str(tmp_path / "png"), "--weights", weights]) == 0
    assert np.asarray(Image.open(tmp_path / "png" / f"{name}.png")).shape == (32, 48, 3)


def test_a_disk_that_fills_up_stops_in_one_line_and_leaves_no_temporary(tmp_path, weights, small_disk, capsys):
    """A real tmpfs with room for the first output only: compress and decompress each write it,
    stop at the second with one line naming the file and the disk full (exit 1), and leave no
    temporary; the first output is whole. A killed run's temporary there is removed, a user's
    ``.part`` file is not."""
    from ..conftest import fill_disk, temporaries

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        _png(photos / name, natural_image(64, 96, i))
    assert main(["compress", str(photos), "-o", str(tmp_path / "coded"), "--weights", weights, "-q", "1"]) == 0
    assert main(["decompress", str(tmp_path / "coded"), "-o", str(tmp_path / "png"), "--weights", weights]) == 0
    capsys.readouterr()
    for command, inputs, made in (("compress", photos, tmp_path / "coded"), ("decompress", tmp_path / "coded", tmp_path / "png")):
        disk = small_disk(256)
        out = disk / "out"
        out.mkdir()
        (out / ".oml-0123abcd.part").write_bytes(b"a killed run's")
        (out / "download.png.part").write_bytes(b"the user's")
        first = (made / ("a.oml" if command == "compress" else "a.png")).read_bytes()
        fill_disk(disk, -(-len(first) // 4096) * 4096 - 4096)  # and the killed run's page, freed when it is removed
        assert main([command, str(inputs), "-o", str(out), "--weights", weights, *(["-q", "1"] if command == "compress" else [])]) == 1
        err = capsys.readouterr().err  # the progress bar's line, then the error
        suffix = ".oml" if command == "compress" else ".png"
        assert err.splitlines()[-1] == f"oml: error: no space left on device: {out / ('b' + suffix)}; stopped after 1 of 2 files, nothing partial left"
        assert err.count("error") == 1 and "Traceback" not in err
        assert temporaries(disk) == ["out/download.png.part"]
        assert sorted(p.name for p in out.iterdir()) == ["a" + suffix, "download.png.part"]
        assert (out / ("a" + suffix)).read_bytes() == first


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["archive", "--input", "{photos}", "--output", ""], "--output"),
        (["archive", "--input", "", "--output", "{out}"], "--input"),
        (["restore", "--input", "{photos}", "--output", ""], "--output"),
        (["restore", "--input", "", "--output", "{out}"], "--input"),
        (["restore", "--input", "{photos}", "--output", "{out}", "--verify", "--sources", ""], "--sources"),
    ],
)
def test_an_empty_location_for_the_archive_jobs_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, flag):
    """`oml archive --output ''` archived into the current folder; `--sources ''` was taken as no sources."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "a.png", natural_image(32, 32))
    work = tmp_path / "cwd"
    work.mkdir()
    _png(work / "c.png", natural_image(32, 32, 1))
    monkeypatch.chdir(work)
    argv = [a.format(photos=photos, out=tmp_path / "out") for a in argv]
    assert main([*argv, "--no-progress", *(["--random-weights"] if argv[0] == "archive" else [])]) == 2
    err = capsys.readouterr().err
    assert err == f"oml {argv[0]}: error: {flag} is empty (''): name a folder or URI\n"
    assert [p.name for p in work.iterdir()] == ["c.png"] and not (tmp_path / "out").exists()
