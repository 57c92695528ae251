"""Base training: resumable from its own checkpoint and from a committed resume point."""

import json
from pathlib import Path

import pytest

import torch
from PIL import Image

from oml.models.weights import load_training_state, load_weights, save_training_state
from oml.models.zoo import is_constant, is_table, load_model, save_weights
from oml.names import ModelUnavailableError
from pipeline.training.base import BaseTrainConfig, export_default_weights, run_base_training, save_resume_point

from ..conftest import natural_image


def _config(tmp_path, out, steps, init="", **kw):
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for i in range(3):
            Image.fromarray(natural_image(80, 96, seed=i).permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    settings = dict(batch=2, crop=64, N=16, M=24, warmup=2, decay_start=3, decay_end=6, holdout_every=0, log_every=1, eval_every=100, ckpt_every=2, threads=1)
    return BaseTrainConfig(data_dir=str(data), out_dir=str(out), steps=steps, init=init, **{**settings, **kw})


def _starts(log):
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if '"event": "start"' in line]


def test_training_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    run_base_training(_config(tmp_path, out, steps=4))
    first = load_training_state(out / "last.pt")
    assert first.step == 4 and first.ema is not None and first.optimizer is not None
    run_base_training(_config(tmp_path, out, steps=6))
    assert _starts(out / "train_log.jsonl") == [0, 4]
    assert load_training_state(out / "last.pt").step == 6


def test_committed_resume_point_continues_the_step_count(tmp_path):
    run_base_training(_config(tmp_path, tmp_path / "a", steps=2))
    point = save_resume_point(tmp_path / "a" / "last.pt", tmp_path / "resume.pt")
    compact = load_training_state(point)
    assert compact.compact and compact.optimizer is None and compact.ema is None
    average = load_training_state(tmp_path / "a" / "last.pt").ema
    constants = {k for k in compact.model if is_constant(k)}  # bounds, GDN's pedestal
    weights = {k: v for k, v in compact.model.items() if v.is_floating_point() and k not in constants}
    assert weights and all(v.dtype == torch.float16 and torch.equal(v, average[k].half()) for k, v in weights.items())
    assert constants and all(torch.equal(compact.model[k], average[k]) for k in constants)
    bound = compact.model["gaussian_conditional.likelihood_lower_bound.bound"]
    assert bound.dtype == torch.float32 and float(bound) == pytest.approx(1e-9)  # float16 would make it 0
    run_base_training(_config(tmp_path, tmp_path / "b", steps=3, init=str(point)))
    assert _starts(tmp_path / "b" / "train_log.jsonl") == [2]
    assert load_training_state(tmp_path / "b" / "last.pt").step == 3


def test_the_shipped_weights_file_resumes_training_exactly_as_the_resume_point(tmp_path):
    """A shipped oml-default file holds the training model whole and its step, so it is itself
    the point the next run resumes from: the same weights, step and crops as the compact point."""
    from oml.models.zoo import is_derived_buffer

    run_base_training(_config(tmp_path, tmp_path / "a", steps=2))
    shipped = export_default_weights(tmp_path / "a" / "last.pt", tmp_path / "shipped.pt")
    point = save_resume_point(tmp_path / "a" / "last.pt", tmp_path / "resume.pt")
    assert load_weights(shipped).trained_steps == 2
    for name, init in (("from_point", point), ("from_shipped", shipped)):
        torch.manual_seed(0)  # the training noise (mixed quantisation) draws from torch's own generator
        run_base_training(_config(tmp_path, tmp_path / name, steps=3, init=str(init)))
    assert _starts(tmp_path / "from_shipped" / "train_log.jsonl") == [2]
    a, b = (load_training_state(tmp_path / name / "last.pt") for name in ("from_point", "from_shipped"))
    assert a.step == b.step == 3
    for part in ("model", "ema"):
        x, y = getattr(a, part), getattr(b, part)
        trained = [k for k in x if not is_derived_buffer(k)]
        assert trained and x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in trained), part
    with pytest.raises(ModelUnavailableError, match="N=8, M=24"):
        run_base_training(_config(tmp_path, tmp_path / "narrow", steps=3, init=str(shipped), N=8))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a training checkpoint"):
        run_base_training(_config(tmp_path, tmp_path / "junk", steps=3, init=str(tmp_path / "junk.pt")))


SHIPPED_N = 128  # the shipped model's transform width (v9 on)


def test_the_packaged_default_weights_are_the_next_runs_resume_point():
    """No separate resume point is committed: the packaged oml-default must carry its training
    step and a training model (transforms, entropy models, context) that base training loads."""
    from oml.models.default import OMLHyperprior
    from oml.models.zoo import default_training_weights, default_weights_path, is_derived_buffer

    shipped = load_weights(default_weights_path()).architecture
    assert (shipped.N, shipped.M, shipped.context) == (128, 128, True)  # v9 on: v8 widened (jobs/widen_weights.py)
    weights, steps = default_training_weights(default_weights_path(), shipped.N, shipped.M)
    assert steps >= 117_923  # v9's last step: a later version only adds steps
    model = OMLHyperprior(shipped.N, shipped.M, context=True)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    assert not unexpected and not [k for k in missing if not is_derived_buffer(k)]


def test_a_float32_weights_file_exports_back_to_the_shipped_float16(tmp_path):
    """jobs/metatrain.py writes float32 weights files; exporting one gives float16 tensors equal to
    the model's own, rounded (here: the shipped float16 model, round-tripped through float32)."""
    shipped = load_model("oml-default")
    wide = tmp_path / "wide.pt"
    save_weights(shipped, wide)
    out = export_default_weights(wide, tmp_path / "narrow.pt")
    saved = load_weights(out).state_dict
    reference = load_weights(wide).state_dict
    assert saved.keys() == reference.keys()
    floats = [k for k, v in saved.items() if v.is_floating_point() and not is_table(k)]
    assert floats and all(saved[k].dtype == torch.float16 for k in floats)
    assert all(torch.equal(saved[k].float(), reference[k]) for k in floats)
    tables = [k for k in saved if is_table(k)]
    assert len(tables) == 7 and all(torch.equal(saved[k], reference[k]) for k in tables)  # kept exactly, never rebuilt
    with pytest.raises(ValueError, match="not a base-training checkpoint"):
        save_resume_point(wide, tmp_path / "resume.pt")


def test_a_resume_point_with_a_zero_likelihood_bound_trains_with_the_models_own(tmp_path):
    """Resume points committed before the fix hold the 1e-9 likelihood bound in float16, i.e. 0;
    with it, one likelihood that underflows makes log2(0) and the run NaN from there on."""
    run_base_training(_config(tmp_path, tmp_path / "a", steps=2))
    point = save_resume_point(tmp_path / "a" / "last.pt", tmp_path / "resume.pt")
    state = load_training_state(point)
    for key in [k for k in state.model if k.endswith("likelihood_lower_bound.bound")]:
        state.model[key] = state.model[key].half()
    assert float(state.model["gaussian_conditional.likelihood_lower_bound.bound"]) == 0
    save_training_state(state, point)
    run_base_training(_config(tmp_path, tmp_path / "b", steps=3, init=str(point)))
    resumed = load_training_state(tmp_path / "b" / "last.pt")
    for part in (resumed.model, resumed.ema):
        assert float(part["gaussian_conditional.likelihood_lower_bound.bound"]) == pytest.approx(1e-9)
        assert float(part["entropy_bottleneck.likelihood_lower_bound.bound"]) == pytest.approx(1e-9)


def test_joint_context_training_starts_from_the_given_context_and_exports_a_checkerboard_model(tmp_path):
    """--context-from: the checkerboard context joins base training from a weights file's context,
    trains with the transforms, is resumed with them, and is exported (v4's recipe)."""
    from pipeline.training.base import context_weights

    shipped_path = str(tmp_path / "shipped.pt")
    save_weights(load_model("oml-default"), shipped_path)
    given = context_weights(shipped_path)
    assert given and all(k.startswith("context.") for k in given)
    out = tmp_path / "run"
    run_base_training(_config(tmp_path, out, steps=2, N=SHIPPED_N, M=128, context_from=shipped_path, lr=1e-3, warmup=1))
    first = load_training_state(out / "last.pt")
    assert all(k in first.model and k in first.ema for k in given)
    moved = [k for k in given if not torch.equal(first.model[k], given[k])]
    assert moved, "the context did not train"
    run_base_training(_config(tmp_path, out, steps=3, N=SHIPPED_N, M=128, context_from=shipped_path, lr=1e-3, warmup=1))
    second = load_training_state(out / "last.pt")
    assert second.step == 3 and not torch.equal(second.model[moved[0]], given[moved[0]])
    exported = load_model("oml-default", 1, weights=export_default_weights(out / "last.pt", tmp_path / "v4.pt"))
    assert exported.kind == "checkerboard"
    assert torch.equal(exported.encoders["0"].context.entropy_parameters[0].weight, second.ema["context.entropy_parameters.0.weight"].half().float())
    v2 = Path(__file__).resolve().parents[2] / "weights" / "oml-default-v2.pt"  # the last release without a context
    with pytest.raises(ValueError, match="no checkerboard context"):
        context_weights(v2)
    assert exported.synthesis.offsets is None
    with_branches = load_model("oml-default", 1, weights=export_default_weights(out / "last.pt", tmp_path / "v4o.pt", offsets_from=shipped_path))
    branches = dict(load_model("oml-default").synthesis.offsets.named_parameters())
    assert branches and all(torch.equal(v, branches[k]) for k, v in with_branches.synthesis.offsets.named_parameters())
    assert torch.equal(with_branches.encoders["0"].context.entropy_parameters[0].weight, exported.encoders["0"].context.entropy_parameters[0].weight)
    with pytest.raises(ValueError, match="no λ-offset branches"):
        export_default_weights(out / "last.pt", tmp_path / "x.pt", offsets_from=tmp_path / "v4.pt")
    # the shipped file (context and branches in it) is where the next run starts: its context
    # comes with it, without --context-from, and the branches stay out of base training
    run_base_training(_config(tmp_path, tmp_path / "next", steps=4, N=SHIPPED_N, M=128, init=str(tmp_path / "v4o.pt")))
    resumed = load_training_state(tmp_path / "next" / "last.pt")
    assert _starts(tmp_path / "next" / "train_log.jsonl") == [3] and resumed.step == 4
    assert "context.entropy_parameters.0.weight" in resumed.model and not any(".offsets." in k for k in resumed.model)


def test_a_wider_run_exports_a_weights_file_that_codes_and_decodes_at_its_widths(tmp_path):
    """A run at other widths (the GPU recipe's N = 128, M = 192; here 16, 24) exports without a
    code change: the weights file records N and M, loads at them and codes an image."""
    from oml import codec

    out = tmp_path / "run"
    run_base_training(_config(tmp_path, out, steps=2))
    model = load_model("oml-default", 3, weights=export_default_weights(out / "last.pt", tmp_path / "wide.pt"))
    assert (model.encoders["0"].N, model.encoders["0"].M, model.latent_channels) == (16, 24, 24)
    assert load_weights(tmp_path / "wide.pt").architecture.widths == {"N": 16, "M": 24}
    image = natural_image(64, 96, seed=5)
    enc = codec.encode(model, image, quality=3)
    assert torch.equal(codec.decode(load_model("oml-default", 3, weights=tmp_path / "wide.pt"), enc.data), enc.reconstruction)


def test_amp_runs_the_transforms_in_bfloat16_and_the_entropy_models_in_float32(tmp_path):
    """--amp: under autocast the likelihoods (and so the rate) stay float32; a step trains."""
    from oml.models.default import OMLHyperprior
    from oml.train import configure_optimizers, train_step

    torch.manual_seed(0)
    net = OMLHyperprior(16, 24, context=True)
    x, lm = torch.rand(2, 3, 64, 64), torch.tensor([0.002, 0.04])
    seen = {}
    for name in ("entropy_bottleneck", "gaussian_conditional"):
        getattr(net, name).register_forward_hook(lambda m, args, kwargs, out, name=name: seen.update({name: (args, kwargs, out[1])}), with_kwargs=True)
    net.eval()  # deterministic rounding, so the float32 recomputation below is the same function
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, lm)
    assert out["x_hat"].dtype == torch.bfloat16
    for name, (args, kwargs, likelihoods) in seen.items():
        assert likelihoods.dtype == torch.float32 and all(a.dtype == torch.float32 for a in (*args, *kwargs.values()))
        assert torch.equal(likelihoods, getattr(net, name)(*args, **kwargs)[1]), f"{name} ran in bfloat16"
    before = {k: v.clone() for k, v in net.state_dict().items()}
    metrics = train_step(net, *configure_optimizers(net, 1e-3, 1e-3), x, lm, amp=True)
    assert all(map(torch.isfinite, map(torch.tensor, metrics)))
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items() if v.is_floating_point())
    run_base_training(_config(tmp_path, tmp_path / "amp", steps=2, amp=True))
    assert load_training_state(tmp_path / "amp" / "last.pt").step == 2


def test_an_unusable_device_is_one_clear_error_before_any_work(tmp_path):
    from pipeline.training.base import training_device

    assert training_device("cpu").type == "cpu"
    for name, message in (("tpu", "unsupported device|unknown device"), ("nonsense:x", "unknown device")):
        with pytest.raises(ValueError, match=message):
            training_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            run_base_training(_config(tmp_path, tmp_path / "gpu", steps=1, device="cuda"))
        assert not (tmp_path / "gpu" / "last.pt").exists()


def test_photos_smaller_than_the_crop_are_left_out_and_counted(tmp_path):
    """A 512×213 photo in the training set stopped a 256² run at its first draw of it."""
    cfg = _config(tmp_path, tmp_path / "run", steps=2)
    Image.fromarray(natural_image(40, 120, seed=9).permute(1, 2, 0).numpy()).save(Path(cfg.data_dir) / "small.png")
    run_base_training(cfg)
    start = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[0])
    assert (start["train_images"], start["too_small_for_crop"]) == (3, 1)
    with pytest.raises(ValueError, match="no training image .* at least 128x128"):
        run_base_training(_config(tmp_path, tmp_path / "none", steps=1, crop=128))


def test_a_time_budget_stops_with_a_checkpoint_after_a_decay_to_the_final_rate(tmp_path):
    """--seconds (a wall-clock budget): the run stops when the time is up, not at --steps, writes its
    checkpoint there, and its learning rate has decayed to --final-lr by the end."""
    from oml.train import lr_by_time

    assert lr_by_time(0.5, 1e-3, 0.25, 1e-5) == 1e-3
    assert lr_by_time(0.875, 1e-3, 0.25, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_by_time(1.0, 1e-3, 0.25, 1e-5) == pytest.approx(1e-5)
    out = tmp_path / "run"
    run_base_training(_config(tmp_path, out, steps=10**6, seconds=6.0, decay_share=0.5, lr=1e-3, final_lr=1e-5, warmup=1, ckpt_every=10**6))
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    stop = [e for e in lines if e.get("event") == "time_up"]
    steps = [e for e in lines if "lr" in e]
    assert len(stop) == 1 and 1 < stop[0]["step"] < 10**6
    assert load_training_state(out / "last.pt").step == stop[0]["step"]
    assert steps[0]["lr"] == pytest.approx(1e-3) and steps[-1]["lr"] < 2e-4


def test_widths_left_unset_come_from_what_the_run_starts_from(tmp_path):
    """--N/--M 0 (the job's default): a run from a weights file trains at the file's widths, a
    resumed run at its checkpoint's, a fresh run at 64 and 128; given widths that do not match
    the file stay a one-line error."""
    from pipeline.training.base import resolve_widths, widen_default_weights

    torch.manual_seed(0)
    narrow = tmp_path / "narrow.pt"
    model = load_model("oml-default", 1, weights=export_default_weights(
        run_base_training(_config(tmp_path, tmp_path / "a", steps=2)), tmp_path / "a.pt"))
    save_weights(model, narrow, torch.float16, trained_steps=2)
    wide = widen_default_weights(narrow, tmp_path / "wide.pt", N=20)
    out = tmp_path / "from-wide"
    run_base_training(_config(tmp_path, out, steps=3, init=str(wide), N=0, M=0))
    state = load_training_state(out / "last.pt")
    assert (state.config["N"], state.config["M"]) == (20, 24) and state.step == 3
    assert resolve_widths(_config(tmp_path, out, steps=4, N=0, M=0)).N == 20  # its own last.pt
    fresh = resolve_widths(_config(tmp_path, tmp_path / "fresh", steps=1, N=0, M=0))
    assert (fresh.N, fresh.M) == (64, 128)
    with pytest.raises(ModelUnavailableError, match="N=16"):
        run_base_training(_config(tmp_path, tmp_path / "mismatch", steps=3, init=str(wide)))
