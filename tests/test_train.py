"""Base training: resumable from its own checkpoint and from a committed resume point."""

import json

import pytest

import torch
from PIL import Image

from oml.models.zoo import is_table, load_model, save_weights
from pipeline.train import BaseTrainConfig, export_default_weights, run_base_training, save_resume_point

from .conftest import natural_image


def _config(tmp_path, out, steps, init=""):
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for i in range(3):
            Image.fromarray(natural_image(80, 96, seed=i).permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    return BaseTrainConfig(
        data_dir=str(data), out_dir=str(out), steps=steps, batch=2, crop=64, N=16, M=24, warmup=2,
        decay_start=3, decay_end=6, holdout_every=0, log_every=1, eval_every=100, ckpt_every=2, threads=1, init=init,
    )


def _starts(log):
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if '"event": "start"' in line]


def test_training_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    run_base_training(_config(tmp_path, out, steps=4))
    first = torch.load(out / "last.pt", weights_only=True)
    assert first["step"] == 4 and "ema" in first and "optimizer" in first
    run_base_training(_config(tmp_path, out, steps=6))
    assert _starts(out / "train_log.jsonl") == [0, 4]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 6


def test_committed_resume_point_continues_the_step_count(tmp_path):
    run_base_training(_config(tmp_path, tmp_path / "a", steps=2))
    point = save_resume_point(tmp_path / "a" / "last.pt", tmp_path / "resume.pt")
    compact = torch.load(point, weights_only=True)
    assert "optimizer" not in compact and "ema" not in compact
    average = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["ema"]
    assert all(v.dtype == torch.float16 and torch.equal(v, average[k].half()) for k, v in compact["model"].items() if v.is_floating_point())
    run_base_training(_config(tmp_path, tmp_path / "b", steps=3, init=str(point)))
    assert _starts(tmp_path / "b" / "train_log.jsonl") == [2]
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3


def test_a_float32_weights_file_exports_back_to_the_shipped_float16(tmp_path):
    """jobs/metatrain.py writes float32 weights files; exporting one gives float16 tensors equal to
    the model's own, rounded (here: the shipped float16 model, round-tripped through float32)."""
    shipped = load_model("oml-default")
    wide = tmp_path / "wide.pt"
    save_weights(shipped, wide)
    out = export_default_weights(wide, tmp_path / "narrow.pt")
    saved = torch.load(out, weights_only=True)["state_dict"]
    reference = torch.load(wide, weights_only=True)["state_dict"]
    assert saved.keys() == reference.keys()
    floats = [k for k, v in saved.items() if v.is_floating_point() and not is_table(k)]
    assert floats and all(saved[k].dtype == torch.float16 for k in floats)
    assert all(torch.equal(saved[k].float(), reference[k]) for k in floats)
    tables = [k for k in saved if is_table(k)]
    assert len(tables) == 7 and all(torch.equal(saved[k], reference[k]) for k in tables)  # kept exactly, never rebuilt
    with pytest.raises(ValueError, match="not a base-training checkpoint"):
        save_resume_point(wide, tmp_path / "resume.pt")
