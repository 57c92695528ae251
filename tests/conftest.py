"""Shared fixtures: small random-weight models (the codec's invariants do not depend on training)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OML_TEST_THREADS", "1")))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KODAK = SHARED_DATA / "kodak"


def kodak_image(name: str) -> Path:
    """A Kodak file from ../shared beside the repository: skipped where it is absent, except in
    CI (``CI`` set), where ../shared must be there and a missing file is a failure."""
    path = KODAK / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI runs with ../shared beside the repository")
        pytest.skip(f"{path} not available (../shared/data/kodak beside the repository)")
    return path


def start_local_ray():
    """A local Ray on 2 CPUs with a small object store, for the pipeline tests (the caller shuts it down)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def random_default_model():
    """The default architecture with seeded random weights and non-trivial modulators."""
    from oml.models.zoo import load_model

    torch.manual_seed(0)
    model = load_model("oml-default", pretrained=False)
    with torch.no_grad():
        for mod in model.synthesis.modulators:
            mod.fc2.weight.normal_(0, 0.3)
    model.update_entropy_models()
    return model


def natural_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth synthetic RGB image (uint8, (3,H,W)) with edges, cheap to code."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    phases = torch.rand(3, generator=g) * 6.28
    img = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + 4 * yy * (c + 1) + phases[c]) for c in range(3)])
    img = img + 0.05 * torch.randn(3, height, width, generator=g)
    img[:, : height // 3, : width // 4] = 0.9
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def png_folder(folder: Path, count: int, height: int, width: int) -> Path:
    """``folder`` made with ``count`` PNGs ``0.png`` … of :func:`natural_image` (seeds 0 …)."""
    from oml.imageio import encode_png

    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"{i}.png").write_bytes(encode_png(natural_image(height, width, seed=i)))
    return folder


@contextmanager
def _mounts(tmp_path: Path, name: str, why: str):
    """``mount(*argv)``: runs ``mount *argv POINT`` on a fresh folder ``tmp_path/NAMEi`` and returns
    it (the test is skipped when mounting fails); every point is unmounted on leaving, whatever
    happens. Needs root (skipped with ``why`` otherwise)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip(why)
    mounted: list[Path] = []

    def mount(*argv: str) -> Path:
        point = tmp_path / f"{name}{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", *argv, str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount here ({' '.join(argv)}): {done.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """``mount(kib)``: a real tmpfs of ``kib`` KiB on a fresh folder under ``tmp_path`` (its path),
    unmounted when the test ends whatever happens. Needs root (tests run as root in CI)."""
    with _mounts(tmp_path, "disk", "mounting a small tmpfs to fill needs root") as mount:
        yield lambda kib: mount("-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs")


@pytest.fixture
def bind_mount(tmp_path):
    """``bind(folder)``: ``folder`` mounted again on a fresh folder (``mount --bind``), which it
    returns; unmounted when the test ends. Needs root."""
    with _mounts(tmp_path, "bound", "a bind mount needs root") as mount:
        yield lambda folder: mount("--bind", str(folder))


def fill_disk(disk: Path, leave: int) -> Path:
    """A ballast file on ``disk`` that leaves ``leave`` bytes free (a multiple of the block size);
    delete it to free the space again."""
    st = os.statvfs(disk)
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
    assert os.statvfs(disk).f_bavail * st.f_frsize == leave
    return ballast


def temporaries(folder: Path) -> list[str]:
    """Every writer's temporary under ``folder`` (this version's names and earlier ones')."""
    from pipeline.files import TEMPORARY

    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if TEMPORARY.match(p.name) or p.name.endswith((".part", ".tmp")))
