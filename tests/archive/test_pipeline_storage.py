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
    os.symlink(tmp_path / "unmounted", root / "photos")  # a link to a folder that is gone
    os.symlink(tmp_path / "gone.txt", root / "notes.txt")  # not wanted: ignored like any such file
    unlisted = []
    files = storage.list_files(str(root), (".png",), unlisted)
    assert [f.relative_path for f in files] == ["a.png", "linked-folder/inner/x.png", "linked.png"]
    # A broken link is named, never left out without a word; without a list to name it in, it raises.
    assert [(u.path, u.reason) for u in sorted(unlisted)] == [
        ("broken.png", f"broken symbolic link (its target {tmp_path / 'gone.png'} does not exist)"),
        ("photos", f"broken symbolic link (its target {tmp_path / 'unmounted'} does not exist)"),
    ]
    with pytest.raises(OSError, match="broken symbolic link"):
        storage.list_files(str(root), (".png",))


# --------------------------------------------------------------------------- nothing lost


def test_an_empty_location_is_refused():
    """'' is no place: normalised, it used to be the current folder."""
    with pytest.raises(ValueError, match="empty path"):
        storage.normalize("")


def test_temporary_names_fit_whatever_the_target_is_called(tmp_path):
    """A target name of 255 bytes (the limit) is written: the temporary beside it has a short name
    of its own (NAME.<32 hex>.tmp was 37 bytes longer than NAME)."""
    target = tmp_path / ("n" * 250 + ".json")
    storage.write_json(str(target), {"k": 1})
    assert storage.read_json(str(target)) == {"k": 1} and os.listdir(tmp_path) == [target.name]
    writer = storage.Writer(str(tmp_path / ("w" * 255)))
    [tmp] = [n for n in os.listdir(tmp_path) if n != target.name]
    assert len(tmp) < 20
    writer.write(b"x")
    writer.commit()
    assert sorted(os.listdir(tmp_path)) == sorted([target.name, "w" * 255])


def test_a_write_onto_a_full_disk_leaves_no_temporary_and_says_so(small_disk):
    """A real tmpfs, full: the write fails naming the target and the cause, and its temporary is
    gone (its close after the failed flush failed again, which kept it before), whole or streamed."""
    from ..conftest import fill_disk, temporaries

    disk = small_disk(64)
    fill_disk(disk, 0)
    with pytest.raises(OSError) as caught:
        storage.write_json(str(disk / "manifest.json"), {"images": 1})
    assert storage.explain(caught.value) == f"no space left on device: {disk / 'manifest.json'}"
    writer = storage.Writer(str(disk / "big.png"))
    with pytest.raises(OSError, match="No space left on device"):
        writer.write(b"\0" * (1 << 20))
    writer.abort()
    assert temporaries(disk) == [] and sorted(os.listdir(disk)) == ["ballast"]


def test_a_write_that_must_not_replace_keeps_a_different_file_and_skips_the_same_one(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"the user's own")
    inode = target.stat().st_ino
    for write in (lambda: storage.write_bytes(str(target), b"restored", replace=False), lambda: _stream(target, b"restored")):
        with pytest.raises(FileExistsError, match="a different file is already there"):
            write()
        assert target.read_bytes() == b"the user's own" and os.listdir(tmp_path) == ["a.png"]
    target.write_bytes(b"restored")
    inode = target.stat().st_ino
    assert storage.write_bytes(str(target), b"restored", replace=False) is False
    _stream(target, b"restored")
    assert target.stat().st_ino == inode and os.listdir(tmp_path) == ["a.png"]  # left as it was
    assert storage.write_bytes(str(target), b"other", replace=True) and target.read_bytes() == b"other"
    assert _stream(tmp_path / "new.png", b"new") is None and (tmp_path / "new.png").read_bytes() == b"new"


def _stream(target, data: bytes) -> None:
    writer = storage.Writer(str(target), replace=False)
    writer.write(data[:3])
    writer.write(data[3:])
    writer.commit()


def test_only_recognisable_temporaries_are_removed(tmp_path):
    """What killed writers leave (this version's short names, earlier ones' NAME.<hex>.tmp) goes;
    a user's .part or .tmp file stays."""
    ours = [".oml-0123abcd.part", "manifest.json.0123456789abcdef0123456789abcdef.tmp", "unit-000001.images.parquet.0123abcd.tmp"]
    theirs = ["film.mkv.part", "notes.tmp", "a.png", ".oml-xyz.part"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    assert storage.remove_stale_temporaries(str(tmp_path)) == 3
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)


def test_places_are_compared_by_identity_not_spelling(tmp_path, bind_mount):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(b"a")
    link = tmp_path / "link"
    link.symlink_to(photos)
    view = bind_mount(photos)
    for other in (link, view, f"{photos}/sub/..", f"file://{photos}"):
        assert storage.same_place(str(other), str(photos))
    assert not storage.same_place(str(photos / "sub"), str(photos))
    inside = storage.place(str(photos))
    assert all(inside(str(p)) for p in (view / "a.png", link / "sub" / "new.png", view / "new" / "deeper.png", photos))
    assert not any(inside(str(p)) for p in (tmp_path / "a.png", tmp_path / "photos-2" / "a.png", "s3://bucket/photos/a.png"))
