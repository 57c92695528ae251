"""What a listing cannot read is named, never left out without a word: a folder that cannot be
listed, a folder that can be read but not entered, a broken link; `oml compress` and `oml archive`
report each one and exit 1, and still do the rest.

A real unlistable folder: ``chmod 000``. Root reads through that, so when the tests run as root
the command under test runs in a child process whose capability bounding set lacks
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (the same uid, so it still reaches everything it owns),
where ``chmod 000`` stops it as it stops any user."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ..conftest import natural_image

ROOT = Path(__file__).resolve().parents[2]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_dac_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability")


def run_unprivileged(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``args`` in a child that file permissions stop (as root: without the capabilities that override them)."""
    preexec = _without_dac_override if os.geteuid() == 0 else None
    return subprocess.run(args, preexec_fn=preexec, capture_output=True, text=True, cwd=ROOT, timeout=600, **kwargs)


@pytest.fixture
def tree(tmp_path):
    """in/a.png, in/ok/b.png; in/locked/c.png in a folder that cannot be listed, in/noenter/d.png in
    one that can be read but not entered; in/gone.png and in/photos, broken links. Permissions are
    given back afterwards so that the folder can be removed."""
    inp = tmp_path / "in"
    for name, seed in (("a.png", 0), ("ok/b.png", 1), ("locked/c.png", 2), ("noenter/d.png", 3)):
        (inp / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(natural_image(64, 64, seed).permute(1, 2, 0).numpy()).save(inp / name)
    (inp / "gone.png").symlink_to(tmp_path / "deleted.png")
    (inp / "photos").symlink_to(tmp_path / "unmounted")
    probe = run_unprivileged([sys.executable, "-c", f"import os; os.chmod({str(inp / 'locked')!r}, 0); os.listdir({str(inp / 'locked')!r})"])
    (inp / "locked").chmod(0o755)
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"cannot make a folder this test's child cannot list: {probe.stderr.strip()[-200:]}")
    (inp / "locked").chmod(0)
    (inp / "noenter").chmod(0o444)
    yield inp
    (inp / "locked").chmod(0o755)
    (inp / "noenter").chmod(0o755)


def _named(err: str, inp: Path) -> dict[str, str]:
    """``error: PATH: reason`` lines by path relative to ``inp``."""
    lines = [line.split(": ", 2) for line in err.splitlines() if line.startswith("error: ")]
    return {os.path.relpath(path, inp) + ("/" if path.endswith("/") else ""): reason for _, path, reason in lines}


def test_oml_compress_names_what_it_cannot_list_and_does_the_rest(tree, tmp_path, random_default_model):
    from oml.models.zoo import save_weights

    weights = tmp_path / "w.pt"
    save_weights(random_default_model, weights)
    out = tmp_path / "out"
    run = run_unprivileged([sys.executable, "-m", "pipeline.cli", "compress", str(tree), "-o", str(out), "--weights", str(weights)])
    assert run.returncode == 1, run.stderr
    named = _named(run.stderr, tree)
    assert named.keys() == {"locked/", "noenter/d.png", "gone.png", "photos"}, run.stderr
    assert named["locked/"].startswith("cannot list this folder (PermissionError: Permission denied)")
    assert named["noenter/d.png"] == "cannot read (PermissionError: Permission denied)"
    assert named["gone.png"] == f"broken symbolic link (its target {tmp_path / 'deleted.png'} does not exist)"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.oml")) == ["a.oml", "ok/b.oml"]
    assert "Traceback" not in run.stderr


def test_oml_archive_lists_what_it_cannot_list_in_the_manifest(tree, tmp_path):
    """The same tree through the Ray job (a local Ray of one CPU started by the child): every
    unlisted folder or link is a manifest entry with its reason and a line on stderr; the listed
    images are archived; exit 1."""
    out = tmp_path / "archive"
    env = {**os.environ, "RAY_ADDRESS": ""}
    args = ["archive", "--input", str(tree), "--output", str(out), "--random-weights", "--tile", "64", "--num-cpus", "1", "--no-progress"]
    run = run_unprivileged([sys.executable, "-m", "pipeline.cli", *args], env=env)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "archived 2 of 2 images" in run.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    failed = {f["path"]: f for f in manifest["failed"]}
    assert failed.keys() == {"locked/", "noenter/d.png", "gone.png", "photos"}
    assert failed["locked/"]["unit"] is None and failed["locked/"]["source"] == str(tree / "locked")
    assert failed["locked/"]["reason"].startswith("cannot list this folder (PermissionError: Permission denied)")
    lines = [line for line in run.stderr.splitlines() if line.startswith("not listed: ")]
    assert sorted(line.split(": ", 2)[1] for line in lines) == ["gone.png", "locked/", "noenter/d.png", "photos"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["archived"], summary["failed"]) == (2, 4)
