"""pipeline.training.meta without a Ray cluster: config, base model sources, data shards, resume guard, all-reduce."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oml.models.weights import TrainingState, load_weights, save_training_state
from pipeline.training.meta import (
    MetaTrainConfig,
    _check_resumable,
    _resolve_paths,
    _write_outputs,
    base_trained_steps,
    load_base_model,
    load_shard,
)
from pipeline.training.raytrain import average_across_workers

from ..conftest import natural_image

REPO = Path(__file__).resolve().parents[2]


def test_job_imports_without_side_effects_and_has_help():
    code = (
        "import contextlib, io, runpy, sys\n"
        "job = runpy.run_path('jobs/metatrain.py', run_name='not_main')\n"
        "print('ray' in sys.modules)\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    job['main'](['--help'])\n"
        "print(out.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "False"
    assert "{maml2,maml1,multi,online,offset}" in out and "--storage-path" in out and "--num-workers" in out


@pytest.mark.parametrize(
    "bad,message",
    [({"crop": 100}, "multiple of 64"), ({"mode": "maml3"}, "not a valid MetaMode"), ({"steps": 0}, "steps must be >= 1"), ({"num_workers": 0}, "num_workers")],
)
def test_config_refuses_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(**bad)


def test_local_paths_become_absolute_and_output_defaults_under_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _resolve_paths(MetaTrainConfig(data_dir="data", storage_path="store", name="r", mode="maml1", weights="w.pt"))
    assert cfg.data_dir == str(tmp_path / "data") and cfg.weights == str(tmp_path / "w.pt")
    assert cfg.output == f"{tmp_path}/store/r/oml-default-meta-maml1.pt"
    remote = _resolve_paths(MetaTrainConfig(storage_path="s3://bucket/meta", name="r"))
    assert remote.output == "s3://bucket/meta/r/oml-default-meta-maml2.pt"


def test_base_training_checkpoint_and_weights_file_load_the_same_model(tmp_path):
    from oml.models.default import OMLHyperprior
    from oml.models.zoo import is_derived_buffer, load_model, save_weights

    torch.manual_seed(3)
    net = OMLHyperprior()
    ckpt = tmp_path / "last.pt"
    save_training_state(TrainingState(net.state_dict(), 7), ckpt)
    from_ckpt = load_base_model(MetaTrainConfig(weights=str(ckpt)))
    for name, p in net.state_dict().items():
        if not is_derived_buffer(name):
            torch.testing.assert_close(from_ckpt.encoders["0"].state_dict()[name], p)
    weights = tmp_path / "w.pt"
    save_weights(from_ckpt, weights)
    from_file = load_base_model(MetaTrainConfig(weights=str(weights)))
    for name, p in from_ckpt.state_dict().items():
        torch.testing.assert_close(from_file.state_dict()[name], p)
    with pytest.raises(ValueError, match="base-training checkpoint"):
        load_base_model(MetaTrainConfig(model="mbt2018-mean", weights=str(ckpt)))
    # Random weights are seeded, so every worker builds the same base.
    a, b = (load_base_model(MetaTrainConfig(pretrained=False, seed=5)) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert load_model("oml-default", pretrained=False).name == a.name


def test_workers_get_disjoint_shards_without_small_images(tmp_path):
    from oml.imageio import encode_png

    sizes = [(128, 128), (64, 200), (96, 96), (130, 140), (128, 256)]
    for i, (h, w) in enumerate(sizes):
        (tmp_path / f"{i}.png").write_bytes(encode_png(natural_image(h, w, seed=i)))
    (tmp_path / "notes.md").write_text("not an image")
    shard0 = load_shard(str(tmp_path), 128, 0, 2)  # files 0, 2, 4: 2 is too small
    shard1 = load_shard(str(tmp_path), 128, 1, 2)  # files 1, 3: 1 is too small
    assert [tuple(img.shape[1:]) for img in shard0] == [(128, 128), (128, 256)]
    assert [tuple(img.shape[1:]) for img in shard1] == [(130, 140)]
    with pytest.raises(ValueError, match="at least"):
        load_shard(str(tmp_path), 256, 1, 2)


def test_resume_keeps_what_is_trained_but_allows_more_steps():
    cfg = MetaTrainConfig()
    saved = dataclasses.asdict(cfg)
    _check_resumable(saved, dataclasses.replace(cfg, steps=10_000, num_workers=4, use_gpu=True, data_dir="/elsewhere"))
    for change in ({"mode": "multi"}, {"inner_lr": 0.5}, {"weights": "other.pt"}):
        with pytest.raises(ValueError, match="other settings"):
            _check_resumable(saved, dataclasses.replace(cfg, **change))


def _average_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tensors = [torch.full((2, 3), float(rank)), torch.arange(4.0) * (rank + 1)]
    average_across_workers(tensors)
    torch.save(tensors, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_gradients_are_averaged_across_gloo_workers(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_average_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        first, second = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        torch.testing.assert_close(first, torch.full((2, 3), 0.5))
        torch.testing.assert_close(second, torch.arange(4.0) * 1.5)
    alone = [torch.ones(3)]
    average_across_workers(alone)  # no process group: unchanged
    assert torch.equal(alone[0], torch.ones(3))


def test_offset_mode_base_model_gets_branches_once(tmp_path):
    """In offset mode the base model gets fresh λ-offset branches, identical on every worker; a
    weights file that has branches already (a shipped model) keeps its own."""
    from oml.models.zoo import save_weights

    a, b = (load_base_model(MetaTrainConfig(pretrained=False, seed=3, mode="offset")) for _ in range(2))
    assert a.synthesis.offsets is not None
    for (name, p), q in zip(a.synthesis.offsets.named_parameters(), b.synthesis.offsets.parameters()):
        assert torch.equal(p, q), name
    assert load_base_model(MetaTrainConfig(pretrained=False, seed=3, mode="maml2")).synthesis.offsets is None
    with torch.no_grad():
        a.synthesis.offsets[0].fc2.weight.fill_(0.25)
    path = tmp_path / "with_offsets.pt"
    save_weights(a, path)
    again = load_base_model(MetaTrainConfig(weights=str(path), mode="offset"))
    assert torch.equal(again.synthesis.offsets[0].fc2.weight, a.synthesis.offsets[0].fc2.weight)


def test_meta_trained_file_keeps_the_base_training_step(tmp_path):
    """The weights file a run writes records its base's training step, so base training can resume
    from it; a training checkpoint's ``step`` counts too, and random weights have none."""
    from oml.models.default import OMLHyperprior
    from oml.models.zoo import save_weights

    base = load_base_model(MetaTrainConfig(pretrained=False, seed=3, mode="offset"))
    path = tmp_path / "base.pt"
    save_weights(base, path, trained_steps=123)
    cfg = MetaTrainConfig(weights=str(path), mode="offset")
    assert base_trained_steps(cfg) == 123
    out = tmp_path / "meta.pt"
    _write_outputs(load_base_model(cfg), {"synthesis": base.synthesis.state_dict(), "log": [{"step": 1}]}, str(out), base_trained_steps(cfg))
    assert load_weights(out).trained_steps == 123
    ckpt = tmp_path / "last.pt"
    save_training_state(TrainingState(OMLHyperprior().state_dict(), 7), ckpt)
    assert base_trained_steps(MetaTrainConfig(weights=str(ckpt))) == 7
    assert base_trained_steps(MetaTrainConfig(pretrained=False)) is None
