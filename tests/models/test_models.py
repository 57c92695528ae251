"""Zoo, modulators and the variable-rate decoder."""

import sys

import pytest
import torch

from oml import codec
from oml.models.modulator import Modulator, encode_lambda
from oml.models.zoo import ZOO, ModelUnavailableError, load_model, quality_group, save_weights
from oml.models.weights import read_stored

from ..conftest import natural_image


PIPELINE_MODULES = ("ray", "fsspec", "s3fs", "pyarrow")


def _loaded_after(statement: str) -> list[str]:
    import subprocess

    code = f"import sys; {statement}; print(sorted(m for m in {PIPELINE_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip())


def test_import_oml_loads_no_pipeline_modules():
    assert _loaded_after("import oml") == []


def test_oml_adds_no_pipeline_modules_beyond_compressai():
    """CompressAI 1.2.8 itself imports fsspec and pyarrow (through torch_geometric); oml adds nothing."""
    baseline = set(_loaded_after("import compressai, compressai.zoo, PIL.Image"))
    full = set(_loaded_after("import oml.codec, oml.adapt, oml.models.zoo, oml.metrics, oml.imageio, oml.train"))
    assert full <= baseline
    assert "ray" not in full and "s3fs" not in full


def test_oml_sources_never_import_pipeline_libraries():
    import ast
    from pathlib import Path

    import oml

    for path in Path(oml.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in PIPELINE_MODULES, f"{path} imports {name}"


def test_lambda_encoding_is_log_scale():
    lam = torch.tensor([0.0018, 0.018, 0.18])
    assert torch.allclose(encode_lambda(lam), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)


def test_fresh_modulator_is_identity_and_positive():
    mod = Modulator(8)
    y = torch.randn(2, 8, 4, 4)
    assert torch.allclose(mod(y, torch.tensor([0.002, 0.1])), y, atol=1e-6)
    with torch.no_grad():
        mod.fc2.weight.normal_()
    assert (mod.scales(torch.tensor([0.002, 0.05])) > 0).all()


def test_the_decoder_scales_each_block_output_by_its_own_modulator(random_default_model):
    """Y' = s(λ^k)·Y after decoding block k (paper Fig. 2), composed here by hand from the parts:
    the rate gain r(λ_t), then block k followed by modulator k with λ^k, for k = 1 … 4."""
    model = random_default_model
    syn = model.synthesis
    y = torch.randn(1, model.latent_channels, 4, 4)
    lam = torch.tensor([[0.002, 0.004, 0.008, 0.016]])
    with torch.no_grad():
        h = syn.rate_gain(y, torch.tensor([0.005]))
        for k, block in enumerate(syn.blocks):
            h = block(h) * syn.modulators[k].scales(lam[:, k])[:, :, None, None]
        assert len(syn.blocks) == len(syn.modulators) == 4
        assert torch.equal(model.synthesize(y, lam, 0.005), h)
    other = model.synthesize(y, torch.tensor([[0.0018, 0.01, 0.05, 0.1]]), 0.005)
    assert not torch.equal(other, model.synthesize(y, torch.full((1, 4), 0.005), 0.005))


@pytest.mark.parametrize("name", [n for n in ZOO if n != "oml-default"])
def test_identity_modulators_reproduce_the_base_decoder(name):
    """For a CompressAI base, untrained modulators leave its top-quality g_s unchanged exactly."""
    from compressai.zoo import image_models

    group = ZOO[name].groups[0]
    torch.manual_seed(1)
    base = image_models[name](quality=max(group), pretrained=False).eval()
    model = load_model(name, group[0], pretrained=False)
    reference = base.g_s.state_dict()
    names = [n for block in model.synthesis.blocks for n in block._modules]
    assert names == list(base.g_s._modules), "the blocks must cover g_s in order"
    for block in model.synthesis.blocks:
        block.load_state_dict({k: v for k, v in reference.items() if k.split(".")[0] in block._modules})
    y = torch.randn(1, base.M, 2, 2)
    lam = model.lambdas[group[0]]
    with torch.no_grad():
        assert torch.equal(model.synthesize(y, torch.full((1, 4), lam), lam), base.g_s(y))
    assert type(model.encoders[str(group[0])]) is type(base)


@pytest.mark.parametrize("name", list(ZOO))
def test_each_architecture_round_trips_a_small_image(name):
    torch.manual_seed(0)
    model = load_model(name, ZOO[name].groups[0][0], pretrained=False)
    image = natural_image(40, 72)
    enc = codec.encode(model, image, quality=ZOO[name].groups[0][0])
    assert torch.equal(codec.decode(model, enc.data), enc.reconstruction)
    assert enc.reconstruction.shape == image.shape


def test_quality_groups_and_bad_ids():
    assert quality_group("mbt2018-mean", 6) == (5, 6, 7, 8)
    assert quality_group("cheng2020-attn", 2) == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown model"):
        load_model("mbt2019")
    with pytest.raises(ValueError, match="no quality 7"):
        quality_group("cheng2020-anchor", 7)


def test_offline_download_fails_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("compressai.zoo.image.load_state_dict_from_url", no_network)
    with pytest.raises(ModelUnavailableError, match=r"mbt2018-mean quality 3.*checkpoints"):
        load_model("mbt2018-mean", 3)


def test_weights_file_round_trip(tmp_path, random_default_model):
    path = tmp_path / "w.pt"
    save_weights(random_default_model, path)
    loaded = load_model("oml-default", weights=path)
    assert loaded.fingerprint(1) == random_default_model.fingerprint(1)
    with pytest.raises(ModelUnavailableError, match="holds weights of oml-default"):
        load_model("mbt2018-mean", 1, weights=path)
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ModelUnavailableError, match="not an oml weights file"):
        load_model("oml-default", weights=bad)


def test_half_precision_weights_keep_the_architecture_constants(random_default_model, tmp_path):
    """A float16 weights file leaves out the constants the architecture sets (GDN's pedestal and
    bounds, the likelihood bound 1e-9, which float16 would round to 0): loading keeps them exact,
    so rate estimates stay finite."""
    path = tmp_path / "half.pt"
    save_weights(random_default_model, path, torch.float16)
    stored = read_stored(path)["state_dict"]
    assert not [k for k in stored if k.endswith((".pedestal", ".bound"))]
    loaded = load_model("oml-default", weights=path)
    fresh = load_model("oml-default", pretrained=False)
    constants = {k: v for k, v in fresh.state_dict().items() if k.endswith((".pedestal", ".bound"))}
    assert any(k.endswith("likelihood_lower_bound.bound") for k in constants)
    for key, value in constants.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    net = loaded.encoders["0"]
    y = torch.randn(1, net.M, 4, 4) * 50
    _, likelihoods = net.gaussian_conditional(y, torch.full_like(y, 0.11), means=torch.zeros_like(y))
    assert torch.isfinite(-torch.log2(likelihoods)).all()


def test_lambda_offset_is_zero_exactly_at_the_float16_coded_lambda():
    from oml.models.modulator import LambdaOffset

    off = LambdaOffset(8)
    with torch.no_grad():
        off.fc2.weight.normal_()
    coded = torch.tensor([0.0018, 0.00512, 0.013])  # 0.00512 is not a float16 value
    at_t = off(coded.half().float(), coded)
    assert torch.equal(at_t, torch.zeros_like(at_t))
    moved = off(coded * 1.5, coded)
    assert moved.abs().min() > 0


def test_offset_branches_leave_plain_decoding_unchanged():
    """With λ-offset branches of any weights, λ^k = λ_t (as float16) decodes exactly as without them;
    moved λ^k decode differently, and the branches need λ_t."""
    from oml.models.synthesis import ModulatedSynthesis

    torch.manual_seed(0)
    blocks = [torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)]
    plain = ModulatedSynthesis(blocks, (4, 4, 4))
    with_offsets = ModulatedSynthesis(blocks, (4, 4, 4), offsets=True)
    with_offsets.modulators.load_state_dict(plain.modulators.state_dict())
    with torch.no_grad():
        for mod in plain.modulators:
            mod.fc2.weight.normal_(0, 0.3)
        with_offsets.modulators.load_state_dict(plain.modulators.state_dict())
        for off in with_offsets.offsets:
            off.fc2.weight.normal_()
    y, coded = torch.randn(2, 4, 8, 8), torch.tensor([0.0031, 0.0089])
    lam = coded.half().float()[:, None].expand(-1, 3)
    assert torch.equal(with_offsets(y, lam, coded), plain(y, lam, coded))
    moved = lam * torch.tensor([1.0, 2.0, 0.5])
    assert not torch.allclose(with_offsets(y, moved, coded), plain(y, moved, coded))
    with pytest.raises(ValueError, match="lmbda_t"):
        with_offsets.suffix(y, lam)


def test_weights_with_offset_branches_load_with_them(tmp_path):
    """A weights file holding λ-offset branches builds a decoder with them (and decodes as saved);
    one without them keeps the paper's architecture."""
    torch.manual_seed(1)
    model = load_model("oml-default", pretrained=False)
    assert model.synthesis.offsets is None
    model.synthesis.add_offsets()
    with torch.no_grad():
        for off in model.synthesis.offsets:
            off.fc2.weight.normal_(0, 0.3)
    path = tmp_path / "offsets.pt"
    save_weights(model, path)
    loaded = load_model("oml-default", weights=path)
    assert loaded.synthesis.offsets is not None
    y, moved = torch.randn(1, 128, 2, 2), torch.tensor([[0.002, 0.004, 0.008, 0.001]])
    assert torch.equal(loaded.synthesize(y, moved, 0.0035), model.synthesize(y, moved, 0.0035))
    plain = tmp_path / "plain.pt"
    save_weights(load_model("oml-default", pretrained=False), plain)
    assert load_model("oml-default", weights=plain).synthesis.offsets is None


def test_the_default_models_transforms_run_channels_last_and_code_alike():
    """load_model puts the default model's g_a and synthesis in channels-last memory (faster on a
    CPU, bench/channels_last.py); the bytes of a coded image are those of the contiguous layout and
    the decoded pixels within one grey level."""
    from oml import codec
    from oml.models.zoo import use_channels_last
    from tests.conftest import natural_image

    model = load_model("oml-default", 2)
    conv = model.encoders["0"].g_a.stages[1][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    image = natural_image(96, 128)
    fast = codec.encode(model, image, quality=2)
    fast_pixels = codec.decode(model, fast.data)
    use_channels_last(model, torch.contiguous_format)
    plain = codec.encode(model, image, quality=2)
    assert plain.data == fast.data
    assert int((codec.decode(model, plain.data).int() - fast_pixels.int()).abs().max()) <= 1
