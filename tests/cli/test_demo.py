"""The demo picks Kodak when it is there and scikit-image's photographs otherwise."""

import importlib.util
from pathlib import Path

from oml.imageio import decode_image

ROOT = Path(__file__).resolve().parents[2]


def _demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "jobs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fallback_photographs_without_shared_data(tmp_path, monkeypatch):
    demo = _demo()
    monkeypatch.setattr(demo, "KODAK", tmp_path / "missing")
    folder = demo.demo_inputs(tmp_path / "out")
    photos = sorted(folder.iterdir())
    assert len(photos) >= 4
    assert all(decode_image(p.read_bytes(), to_srgb=True).shape[0] == 3 for p in photos)  # as the demo archives them


def test_kodak_when_present(tmp_path, monkeypatch):
    demo = _demo()
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    (kodak / "kodim01.png").write_bytes(b"")
    monkeypatch.setattr(demo, "KODAK", kodak)
    assert demo.demo_inputs(tmp_path / "out") == kodak
