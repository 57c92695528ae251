"""The archive as a dataset: WebDataset shards archived (keys, order, sidecars, bad samples in the
manifest), read back from Python (oml ls, the reader, ArchiveDataset in a DataLoader with two
workers, read_archive on Ray Data), a window read, a damaged unit named, the images table queried
with pyarrow.dataset."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from oml.imageio import decode_image

from ..conftest import natural_image, start_local_ray

pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pds = pytest.importorskip("pyarrow.dataset")
from torch.utils.data import DataLoader  # noqa: E402

from pipeline.archive.reader import ArchiveError, open_archive  # noqa: E402
from pipeline.cli.command import main  # noqa: E402
from pipeline.dataset import ArchiveDataset, collate, read_archive  # noqa: E402

KEYS = [f"{i:06d}" for i in range(6)]  # three samples in each of two shards
BAD = {"bad000": "no image", "bad001": "2 images (jpg, png)", "bad002.jpg": "not a supported image format"}


def _jpeg(seed: int, h: int = 80, w: int = 96) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(natural_image(h, w, seed).permute(1, 2, 0).numpy()).save(out, "JPEG", quality=90)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path) -> dict[str, dict[str, bytes]]:
    """shard-000.tar and shard-001.tar, three samples each (JPEG, JSON caption, class), members in
    an order that is not sorted; shard-001 ends with three bad samples. Returns each key's members."""
    root.mkdir(parents=True, exist_ok=True)
    members: dict[str, dict[str, bytes]] = {}
    for s in range(2):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for k in (2, 0, 1):  # tar order, not sorted: the archive keeps it
                key = KEYS[3 * s + k]
                fields = {"json": json.dumps({"caption": f"a photo number {key}"}).encode(), "jpg": _jpeg(3 * s + k), "cls": str(k).encode()}
                for field, data in fields.items():
                    _add(tar, f"{key}.{field}", data)
                members[key] = fields
            if s == 1:
                _add(tar, "bad000.json", b"{}")
                _add(tar, "bad001.jpg", _jpeg(20))
                _add(tar, "bad001.png", _jpeg(21))
                _add(tar, "bad002.jpg", b"\xff\xd8\xff not a jpeg")
    return members


def tar_order() -> list[str]:
    return [KEYS[3 * s + k] for s in range(2) for k in (2, 0, 1)]


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    """The shards, archived with `oml archive` (random weights, 64² tiles, units of 2 tiles: 6 units)
    and restored with `oml restore`; each restored PNG's pixels by key."""
    root = tmp_path_factory.mktemp("wds")
    members = make_shards(root / "shards")
    out, restored = root / "archive", root / "restored"
    flags = ["--num-cpus", "2", "--no-progress"]
    code = main(["archive", "--input", str(root / "shards"), "--output", str(out), "--random-weights", "--tile", "64", "-q", "2",
                 "--steps", "0", "--unit-tiles", "2", *flags])
    assert code == 1  # the bad samples failed
    assert main(["restore", "--input", str(out), "--output", str(restored), *flags]) == 0
    pixels = {key: decode_image((restored / f"shard-{int(key) // 3:03d}" / f"{key}.png").read_bytes()) for key in KEYS}
    return out, members, pixels


def test_webdataset_shards_are_archived_with_keys_order_sidecars_and_bad_samples_named(wds, capsys):
    out, members, _ = wds
    archive = open_archive(str(out))
    assert [e.key for e in archive] == tar_order()
    for e in archive:
        assert e.path == f"shard-{int(e.key) // 3:03d}/{e.key}.jpg"
        assert e.sidecars == {"json": members[e.key]["json"], "cls": members[e.key]["cls"]}  # verbatim, in member order
        assert e.source_bytes == len(members[e.key]["jpg"]) and e.source_format == "JPEG"
    failed = {f["path"]: f["reason"] for f in json.loads((out / "manifest.json").read_text())["failed"]}
    assert set(failed) == {"shard-001/bad000", "shard-001/bad001", "shard-001/bad002.jpg"}
    for name, why in BAD.items():
        assert why in failed[f"shard-001/{name}"]
    assert main(["ls", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == tar_order() and "sidecars json:" in lines[0]
    assert main(["ls", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["json"] == {"caption": f"a photo number {tar_order()[0]}"}


def test_archive_dataset_reads_every_key_once_with_restores_pixels_over_two_workers(wds):
    out, members, pixels = wds
    data = ArchiveDataset(str(out))
    seen = list(DataLoader(data, num_workers=2, batch_size=None))
    assert sorted(s["key"] for s in seen) == KEYS  # every key exactly once
    for s in seen:
        assert json.loads(s["json"])["caption"] == f"a photo number {s['key']}" and s["cls"] == members[s["key"]]["cls"]
        assert s["image"].dtype == torch.uint8 and torch.equal(s["image"], pixels[s["key"]])
    # ranks: each reads its own part, together every key once; a seeded shuffle is a permutation
    parts = [[s["key"] for s in DataLoader(ArchiveDataset(str(out), rank=r, world_size=2), num_workers=2, batch_size=None)] for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == KEYS and not set(parts[0]) & set(parts[1])
    shuffled = ArchiveDataset(str(out), shuffle=True, seed=3)
    orders = []
    for epoch in range(3):
        shuffled.set_epoch(epoch)
        orders.append([s["key"] for s in DataLoader(shuffled, num_workers=2, batch_size=None)])
        assert sorted(orders[-1]) == KEYS
    assert len({tuple(o) for o in orders}) > 1
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, 80, 96) and len(batch["json"]) == 4


def test_a_window_of_every_image_is_the_window_of_the_restored_image(wds):
    out, _, pixels = wds
    seen = list(DataLoader(ArchiveDataset(str(out), region=(70, 10, 20, 60)), num_workers=2, batch_size=None))
    assert sorted(s["key"] for s in seen) == KEYS
    for s in seen:
        assert torch.equal(s["image"], pixels[s["key"]][:, 10:70, 70:90])
    with pytest.raises(ArchiveError, match="not inside the 96x80 image"):
        next(iter(ArchiveDataset(str(out), region=(90, 0, 20, 20))))


def test_a_damaged_unit_is_an_error_naming_it_not_a_shorter_epoch(wds, tmp_path):
    out, _, _ = wds
    copy = shutil.copytree(out, tmp_path / "damaged")
    tiles = copy / "units" / "unit-000001.tiles.parquet"
    data = bytearray(tiles.read_bytes())
    data[len(data) // 3] ^= 0x40
    tiles.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="unit 1: its tiles Parquet file .* another hash"):
        list(DataLoader(ArchiveDataset(str(copy)), num_workers=2, batch_size=None))
    (copy / "units" / "unit-000003.done.json").unlink()  # a unit not committed: refused when opened
    with pytest.raises(ArchiveError, match="unit 3 not committed"):
        ArchiveDataset(str(copy))
    assert main(["ls", str(copy)]) == 1


def test_read_archive_gives_the_same_rows_on_ray_data(wds):
    out, members, pixels = wds
    start_local_ray()
    try:
        rows = read_archive(str(out), concurrency=1).take_all()
    finally:
        import ray

        ray.shutdown()
    assert sorted(r["key"] for r in rows) == KEYS
    for r in rows:
        assert r["json"] == members[r["key"]]["json"] and r["path"] == f"shard-{int(r['key']) // 3:03d}/{r['key']}.jpg"
        assert torch.equal(torch.tensor(r["image"]), pixels[r["key"]])


def test_the_images_table_answers_parquet_queries_by_key_and_by_a_metadata_field(wds):
    out, _, _ = wds
    table = pds.dataset(sorted(str(p) for p in (out / "units").glob("*.images.parquet")), format="parquet")
    hit = table.to_table(columns=["path", "key", "width"], filter=pds.field("key") == "000004").to_pylist()
    assert hit == [{"path": "shard-001/000004.jpg", "key": "000004", "width": 96}]
    jpegs = table.to_table(columns=["key"], filter=(pds.field("source_format") == "JPEG") & (pds.field("source_bytes") > 0))
    assert sorted(jpegs.column("key").to_pylist()) == KEYS
