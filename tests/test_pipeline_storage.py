"""Local storage through fsspec: listing, atomic writes, URI spelling."""

from __future__ import annotations

import os

import pytest

storage = pytest.importorskip("pipeline.storage")


def test_listing_is_recursive_filtered_and_sorted(tmp_path):
    for name in ["b.png", "A/z.JPG", "A/a.png", "c.txt", "A/B/deep.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * len(name))
    files = storage.list_files(f"file://{tmp_path}", (".png", ".jpg", ".webp"))
    assert [f.relative_path for f in files] == ["A/B/deep.webp", "A/a.png", "A/z.JPG", "b.png"]
    assert files[1] == storage.SourceFile(str(tmp_path / "A" / "a.png"), "A/a.png", len("A/a.png"))
    single = storage.list_files(str(tmp_path / "c.txt"), (".png",))
    assert [f.relative_path for f in single] == ["c.txt"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        storage.list_files(str(tmp_path / "missing"), (".png",))


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "deep" / "dir" / "f.bin"
    storage.write_bytes(str(target), b"old")
    storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["f.bin"]
    storage.write_json(str(tmp_path / "x.json"), {"b": 1, "a": [1.5]})
    assert storage.read_json(str(tmp_path / "x.json")) == {"a": [1.5], "b": 1}
    assert storage.exists(str(tmp_path / "x.json")) and not storage.exists(str(tmp_path / "y.json"))


def test_uri_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("rel/dir/") == str(tmp_path / "rel" / "dir")
    assert storage.normalize("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert storage.join("s3://bucket/prefix/", "shards", "a.parquet") == "s3://bucket/prefix/shards/a.parquet"
    assert storage.join(str(tmp_path), "shards", "a.parquet") == str(tmp_path / "shards" / "a.parquet")
    assert storage.redact("s3://key:secret@bucket/p") == "s3://bucket/p"
    assert storage.redact("s3://bucket/p") == "s3://bucket/p"


def test_listing_follows_symbolic_links_and_ends_on_loops(tmp_path):
    """The Ray job lists what the oml command takes: linked files and folders, each real folder once."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    (elsewhere / "inner" / "x.png").write_bytes(b"x")
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(b"a")
    os.symlink(elsewhere / "inner" / "x.png", root / "linked.png")
    os.symlink(elsewhere, root / "linked-folder")
    os.symlink(root, root / "loop")  # a folder that contains itself
    os.symlink(tmp_path / "gone.png", root / "broken.png")
    files = storage.list_files(str(root), (".png",))
    assert [f.relative_path for f in files] == ["a.png", "linked-folder/inner/x.png", "linked.png"]
