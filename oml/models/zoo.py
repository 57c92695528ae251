"""One table-driven model zoo: model id → architecture, quality groups, λ, weights.

==================== ============ ============== ===================== ===================
model id             latent kind  quality groups g_s block starts      weights
==================== ============ ============== ===================== ===================
oml-default          checkerboard (1–6)          built-in              shipped in the repo
bmshj2018-hyperprior scale        (1–4), (5–8)   0, 2, 4, 6            CompressAI zoo
mbt2018-mean         mean_scale   (1–4), (5–8)   0, 2, 4, 6            CompressAI zoo
mbt2018              autoregressive (1–4), (5–8) 0, 2, 4, 6            CompressAI zoo
cheng2020-anchor     autoregressive (1–3), (4–6) 0, 2, 4, 6            CompressAI zoo
cheng2020-attn       autoregressive (1–3), (4–6) 0, 3, 5, 8            CompressAI zoo
==================== ============ ============== ===================== ===================

The default model's kind follows its weights: v1 and v2 are mean-scale hyperpriors,
v3 adds a checkerboard context (``encoders.0.context.*``) to v2's unchanged weights.

For CompressAI bases each quality keeps its own pretrained encoder and entropy
models; the group shares the decoder ``g_s`` of its highest quality, cut at the
block starts into K = 4 decoding blocks with a modulator after each (paper Fig. 2). The
modulators come from a meta-training checkpoint (``modulators=``); without one
they are the identity, which decodes the group's top quality exactly as the base
model does.
"""

from __future__ import annotations

import copy
import hashlib
import io
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from oml.models.default import OMLHyperprior
from oml.models.synthesis import ModulatedSynthesis, split_sequential
from oml.models.variable_rate import VariableRateModel, is_table
from oml.names import DEFAULT_MODEL, ModelUnavailableError

# CompressAI's MSE-trained λ for qualities 1–8.
MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}

WEIGHTS_FORMAT = "oml-weights/1"
OVERLAY_FORMAT = "oml-weights-overlay/1"  # the tensors that differ from a whole file beside it


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo."""

    kind: str
    groups: tuple[tuple[int, ...], ...]
    splits: tuple[int, ...] = ()
    source: str = "compressai"


ZOO: dict[str, ZooEntry] = {
    "oml-default": ZooEntry("mean_scale", ((1, 2, 3, 4, 5, 6),), source="package"),
    "bmshj2018-hyperprior": ZooEntry("scale", ((1, 2, 3, 4), (5, 6, 7, 8)), (0, 2, 4, 6)),
    "mbt2018-mean": ZooEntry("mean_scale", ((1, 2, 3, 4), (5, 6, 7, 8)), (0, 2, 4, 6)),
    "mbt2018": ZooEntry("autoregressive", ((1, 2, 3, 4), (5, 6, 7, 8)), (0, 2, 4, 6)),
    "cheng2020-anchor": ZooEntry("autoregressive", ((1, 2, 3), (4, 5, 6)), (0, 2, 4, 6)),
    "cheng2020-attn": ZooEntry("autoregressive", ((1, 2, 3), (4, 5, 6)), (0, 3, 5, 8)),
}


def model_ids() -> list[str]:
    return list(ZOO)


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ZOO)}")
    return ZOO[name]


def quality_group(name: str, quality: int) -> tuple[int, ...]:
    """The quality group of ``name`` that contains ``quality``."""
    for group in _entry(name).groups:
        if quality in group:
            return group
    valid = [q for g in _entry(name).groups for q in g]
    raise ValueError(f"{name} has no quality {quality}; valid qualities: {valid}")


def _weights_folder() -> Path:
    return Path(str(resources.files("oml") / "weights"))


def default_weights_path() -> Path:
    return _weights_folder() / f"{DEFAULT_MODEL}.pt"


def packaged_weights(name: str = DEFAULT_MODEL) -> list[Path]:
    """Every weights file the package ships for ``name``, newest first: ``NAME.pt`` (what encoding
    uses), then earlier versions kept so their files still decode, ``NAME-vK.pt`` by falling K."""
    folder = _weights_folder()
    older = []
    for path in folder.glob(f"{name}-v*.pt"):
        version = path.stem[len(name) + 2 :]
        if version.isdigit():
            older.append((int(version), path))
    current = folder / f"{name}.pt"
    return ([current] if current.is_file() else []) + [p for _, p in sorted(older, reverse=True)]


def load_decoder(
    name: str, quality: int, fingerprint: bytes, version: int = 2, *, weights: str | Path | None = None, candidates: list[Path] | None = None
) -> VariableRateModel:
    """The model that decodes a file coded by ``name`` at ``quality`` with weights ``fingerprint``.

    A model whose weights ship in the package may have shipped several versions; a file names
    its weights by fingerprint, so each packaged version (``candidates``, default
    :func:`packaged_weights`) is tried, newest first, until one matches. ``weights`` (a user's
    file) is the only candidate when given. When none matches, the newest is returned and the
    codec's check names the mismatch. Never downloads: the model id comes from the file.
    """
    paths: list[Path | None]
    if weights is not None:
        paths = [Path(weights)]
    elif _entry(name).source == "package":
        paths = list(candidates if candidates is not None else packaged_weights(name)) or [None]
    else:
        paths = [None]
    first = None
    for path in paths:
        model = load_model(name, quality, weights=path, download=False)
        if model.fingerprint(quality, version) == fingerprint:
            return model
        first = first or model
    return first


def _read_weights_object(path: Path) -> tuple[dict, str]:
    """The raw dict of an oml weights or overlay file and the SHA-256 of its bytes."""
    if not path.is_file():
        raise ModelUnavailableError(f"weights file {path} does not exist")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for foreign bytes; all mean the same here
        raise ModelUnavailableError(f"{path} is not an oml weights file (unreadable: {type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") not in (WEIGHTS_FORMAT, OVERLAY_FORMAT) or not isinstance(state.get("state_dict"), dict):
        raise ModelUnavailableError(f"{path} is not an oml weights file (expected format {WEIGHTS_FORMAT})")
    return state, hashlib.sha256(data).hexdigest()


def _check_weights_meta(state: dict, path: Path) -> dict:
    if not isinstance(state.get("name"), str) or not isinstance(state.get("encoders"), list | tuple) or not all(isinstance(q, int) for q in state["encoders"]):
        raise ModelUnavailableError(f"{path} is a damaged oml weights file (no model name or encoder list)")
    return state


def _overlay_base(overlay: dict, path: Path) -> tuple[dict, Path]:
    """The whole weights file an overlay names, found beside it by SHA-256 (its recorded name first)."""
    base = overlay.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("name"), str) or not isinstance(base.get("sha256"), str):
        raise ModelUnavailableError(f"{path} is a damaged oml weights overlay (no base)")
    name, sha = base["name"], base["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelUnavailableError(f"{path} is a damaged oml weights overlay (base digest {sha[:80]!r})")
    named = path.parent / name if name and Path(name).name == name and name not in (".", "..") else None
    candidates = ([named] if named is not None and named.is_file() else []) + sorted(q for q in path.parent.glob("*.pt") if q not in (named, path))
    for candidate in candidates:
        try:
            state, digest = _read_weights_object(candidate)
        except ModelUnavailableError:
            continue
        if digest == sha:
            if state["format"] != WEIGHTS_FORMAT:
                raise ModelUnavailableError(f"{path} is an overlay of {candidate}, itself an overlay: one level only")
            return _check_weights_meta(state, candidate), candidate
    raise ModelUnavailableError(
        f"{path} holds only the tensors that differ from {name!r} (sha256 {sha[:16]}…), which is not in {path.parent}: "
        f"put that weights file beside it"
    )


def read_weights(path: str | Path) -> dict:
    """An oml weights file as a whole state (``format``, ``name``, ``encoders``, ``state_dict``,
    ``config``, ``trained_steps``): an overlay (:func:`save_overlay`) comes back merged with the
    base it names, so every reader sees whole weights."""
    path = Path(path)
    state, _ = _read_weights_object(path)
    state = _check_weights_meta(state, path)
    if state["format"] == WEIGHTS_FORMAT:
        return state
    base, base_path = _overlay_base(state, path)
    if base["name"] != state["name"] or list(base["encoders"]) != list(state["encoders"]) or base.get("config") != state.get("config"):
        raise ModelUnavailableError(f"{path} is an overlay for another architecture than its base {base_path}")
    merged = {k: v for k, v in base.items() if k != "trained_steps"}
    merged["state_dict"] = {**base["state_dict"], **state["state_dict"]}
    if "trained_steps" in state:
        merged["trained_steps"] = state["trained_steps"]
    return merged


_load_weights_file = read_weights


def save_overlay(whole: str | Path, base: str | Path, path: str | Path) -> list[str]:
    """Write ``whole`` (an oml weights file) as an overlay of ``base``: the tensors that differ
    from it, the base's file name and SHA-256, and the metadata a reader needs without loading
    it (name, encoders, widths, ``trained_steps``). A meta-training run that changes only the
    λ-offset branches then adds kilobytes to the repository, not a second copy of the model.
    The overlay loads when the base lies beside it. Returns the names of the stored tensors."""
    whole_state = _check_weights_meta(_read_weights_object(Path(whole))[0], Path(whole))
    base_state, sha = _read_weights_object(Path(base))
    if whole_state["format"] != WEIGHTS_FORMAT or base_state["format"] != WEIGHTS_FORMAT:
        raise ValueError("an overlay is made from two whole weights files")
    if (whole_state["name"], list(whole_state["encoders"]), whole_state.get("config")) != (base_state["name"], list(base_state["encoders"]), base_state.get("config")):
        raise ValueError(f"{whole} and {base} are not the same architecture")
    ours, theirs = whole_state["state_dict"], base_state["state_dict"]
    if set(theirs) - set(ours):
        raise ValueError(f"{whole} lacks tensors of {base} (e.g. {sorted(set(theirs) - set(ours))[:3]}): an overlay only replaces or adds")
    changed = {k: v for k, v in ours.items() if k not in theirs or v.dtype != theirs[k].dtype or not torch.equal(v, theirs[k])}
    saved = {key: whole_state[key] for key in ("name", "encoders", "config", "trained_steps") if key in whole_state}
    saved.update(format=OVERLAY_FORMAT, base={"name": Path(base).name, "sha256": sha}, state_dict=changed)
    save_atomic(saved, path)
    return sorted(changed)


# Constants that the architecture sets when it is built (GDN's reparametrisation pedestal and
# bounds, the entropy models' lower bounds): never stored, and ignored in files that have them.
# (Stored as float16 they would round: the likelihood bound 1e-9 becomes 0.)
_CONSTANT_BUFFERS = ("pedestal", "bound")


def is_constant(key: str) -> bool:
    """Whether ``key`` names a constant the architecture sets when it is built (never trained)."""
    return key.rsplit(".", 1)[-1] in _CONSTANT_BUFFERS


def weights_under(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of an oml weights file whose names start with ``prefix``, without it, as float32
    (a part of a model to load into another: its decoder, context or λ-offset branches)."""
    state = _load_weights_file(path)["state_dict"]
    return {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}


def default_training_weights(path: str | Path, n: int, m: int) -> tuple[dict[str, torch.Tensor], int]:
    """The base-training state in an oml-default weights file, and the step it was taken at.

    The file holds the training model whole under ``encoders.0.`` (the float16 weight average a
    compact resume point holds, with the checkerboard context) plus the λ-offset branches, which
    base training does not train and leaves out; ``trained_steps`` is 0 in files written before
    it was recorded. So a shipped file is itself the point the next training run resumes from.
    """
    state = _load_weights_file(path)
    widths = state.get("config", {})
    if state["name"] != DEFAULT_MODEL or (widths.get("N", 64), widths.get("M", 128)) != (n, m):
        raise ModelUnavailableError(f"{path} is not an {DEFAULT_MODEL} weights file of N={n}, M={m} (it holds {state['name']} {widths}): nothing to resume")
    prefix = "encoders.0."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix) and not k.startswith(prefix + "g_s.offsets.")}
    return weights, int(state.get("trained_steps", 0))


def is_derived_buffer(key: str) -> bool:
    """Whether ``key`` names a buffer that is not a trained tensor: an entropy-coder table
    (which ``update()`` derives from the weights) or a constant of the architecture."""
    return is_table(key) or is_constant(key)


def save_weights(model: VariableRateModel, path: str | Path, dtype: torch.dtype = torch.float32, trained_steps: int | None = None) -> None:
    """Save a model's weights as an oml weights file: floating tensors as ``dtype``, the entropy
    coder's tables exactly as they are (int32 CDFs, float32 scale table), architecture constants
    left out. The tables are built here if missing, so the file decodes alike on every machine.
    ``trained_steps``: the base-training step the weights were taken at (recorded so that a run
    can resume from the shipped file itself, :func:`pipeline.train.run_base_training`)."""
    model.update_entropy_models(force=False)
    state = {}
    for k, v in model.state_dict().items():
        if is_constant(k):
            continue
        state[k] = v if is_table(k) or not v.is_floating_point() else v.to(dtype)
    encoders = sorted(int(q) for q in model.encoders)
    saved = {"format": WEIGHTS_FORMAT, "name": model.name, "encoders": encoders, "state_dict": state}
    net = model.encoders["0"] if model.name == DEFAULT_MODEL else None
    if isinstance(net, OMLHyperprior):
        saved["config"] = {"N": net.N, "M": net.M}
    if trained_steps is not None:
        saved["trained_steps"] = int(trained_steps)
    save_atomic(saved, path)


def save_atomic(obj: dict, path: str | Path) -> None:
    """``torch.save`` through a temporary file beside ``path``: a killed write never leaves half a
    weights file or checkpoint where a whole one was."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        torch.save(obj, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def use_channels_last(model: VariableRateModel, memory_format: torch.memory_format = torch.channels_last) -> VariableRateModel:
    """Put the default model's analysis and synthesis transforms in ``memory_format`` (channels-last
    by default: oneDNN's preferred layout, 1.4-1.5× faster coding on a CPU, bench/channels_last.py).
    Values are unchanged; only the order of summation inside the convolutions may differ."""
    for encoder in model.encoders.values():
        encoder.g_a.to(memory_format=memory_format)
    model.synthesis.to(memory_format=memory_format)
    return model


def _compressai_base(name: str, quality: int, pretrained: bool, download: bool = True) -> torch.nn.Module:
    from compressai.zoo import image_models
    from compressai.zoo.image import model_urls

    if not pretrained:
        return image_models[name](quality=quality, metric="mse", pretrained=False)
    if not download:
        url = model_urls.get(name, {}).get("mse", {}).get(quality, "")
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not cached.is_file():
            raise ModelUnavailableError(
                f"{name} quality {quality} is not in the local cache ({cached}); decoding never downloads "
                f"(a file names its model, so a download would let any file make the decoder fetch a URL): "
                f"get {url} yourself, or pass --weights"
            )
    try:
        return image_models[name](quality=quality, metric="mse", pretrained=True, progress=False)
    except (OSError, RuntimeError, ValueError) as exc:
        url = model_urls.get(name, {}).get("mse", {}).get(quality, "")
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ModelUnavailableError(
            f"cannot fetch CompressAI's pretrained {name} quality {quality} ({type(exc).__name__}: {exc}). "
            f"Offline, download {url} elsewhere and put it in {cache}/, "
            f"or pass a local oml weights file (--weights)."
        ) from None


def _architecture(state: dict, origin: str) -> dict | None:
    """The default model's widths stored in a weights file (``{"N": 64, "M": 128}``; files without
    them are N = 64, M = 128), checked before anything is built from them."""
    config = state.get("config")
    if config is None:
        return None
    if not isinstance(config, dict) or set(config) != {"N", "M"} or not all(isinstance(v, int) and 8 <= v <= 1024 for v in config.values()):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights file (architecture {config!r})")
    return dict(config)


def _has_context(state: dict) -> bool:
    """Whether a default-model weights file holds a checkerboard context (v3 on)."""
    return any(k.startswith("encoders.0.context.") for k in state)


def _has_offsets(state: dict) -> bool:
    """Whether a weights file's tensors include λ-offset branches (meta mode ``offset``)."""
    return any(".offsets." in k or k.startswith("offsets.") for k in state)


def _build(
    name: str,
    group: tuple[int, ...],
    qualities: tuple[int, ...],
    pretrained: bool,
    offsets: bool = False,
    download: bool = True,
    config: dict | None = None,
    context: bool = False,
) -> VariableRateModel:
    entry = _entry(name)
    lambdas = {q: MSE_LAMBDAS[q] for q in group}
    if name == "oml-default":
        net = OMLHyperprior(**(config or {}), offsets=offsets, context=context)
        return VariableRateModel(name, "checkerboard" if context else entry.kind, lambdas, {0: net}, net.g_s, net.M)
    bases = {q: _compressai_base(name, q, pretrained, download) for q in sorted(set(qualities) | {max(group)})}
    top = bases[max(group)]
    stages = split_sequential(copy.deepcopy(top.g_s), entry.splits)
    channels = [top.N] * (len(stages) - 1) + [3]
    for base in bases.values():
        del base.g_s  # only the group's shared, modulated decoder decodes
    return VariableRateModel(name, entry.kind, lambdas, bases, ModulatedSynthesis(stages, channels, offsets=offsets), top.M)


def untrained_default_model(N: int = 64, M: int = 128) -> VariableRateModel:
    """The default model's architecture at widths N, M with fresh weights (what a trained
    checkpoint is exported into; a weights file records N and M, and loads at those widths)."""
    group = _entry("oml-default").groups[0]
    return _build("oml-default", group, group, pretrained=False, config={"N": int(N), "M": int(M)})


def _load_state(model: torch.nn.Module, state: dict, origin: str) -> None:
    expected = {k for k in model.state_dict() if not is_derived_buffer(k)}
    state = {k: v for k, v in state.items() if not is_constant(k)}
    tables = {k: v for k, v in state.items() if is_table(k)}
    state = {k: v for k, v in state.items() if not is_table(k)}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ModelUnavailableError(
            f"{origin} does not match the architecture: {len(missing)} missing tensors "
            f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})"
        )
    if any(not isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailableError(f"{origin} holds entries that are not tensors")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise ModelUnavailableError(f"{origin} does not match the architecture: {first.strip()}") from None
    _load_tables(model, tables, origin)


def _load_tables(model: torch.nn.Module, tables: dict, origin: str) -> None:
    """Install stored entropy-coder tables exactly (older files have none: they are built at load)."""
    buffers = dict(model.named_buffers())
    unknown = set(tables) - {k for k in buffers if is_table(k)}
    if unknown:
        raise ModelUnavailableError(f"{origin} has entropy tables this architecture lacks (e.g. {sorted(unknown)[:3]})")
    for key, value in tables.items():
        if key.endswith("scale_table") != value.is_floating_point():
            raise ModelUnavailableError(f"{origin}: entropy table {key} has the wrong type {value.dtype}")
        owner, name = key.rsplit(".", 1)
        model.get_submodule(owner).register_buffer(name, value.to(buffers[key].dtype).clone())
    for owner in {k.rsplit(".", 1)[0] for k in tables}:
        _check_tables(model.get_submodule(owner), f"{origin}: {owner}")


def _check_tables(em: torch.nn.Module, origin: str) -> None:
    """Stored CDF tables are trusted by a C++ range coder: check them as it needs them."""
    cdf, lengths, offsets = em._quantized_cdf, em._cdf_length, em._offset
    if cdf.numel() == 0:
        return
    top = 1 << int(em.entropy_coder_precision)
    rows = cdf.shape[0] if cdf.dim() == 2 else -1
    if rows < 1 or lengths.shape != (rows,) or offsets.shape != (rows,):
        raise ModelUnavailableError(f"{origin}: entropy tables of inconsistent shapes {tuple(cdf.shape)}, {tuple(lengths.shape)}, {tuple(offsets.shape)}")
    if hasattr(em, "scale_table") and em.scale_table.shape != (rows,):
        raise ModelUnavailableError(f"{origin}: {rows} CDFs for {em.scale_table.numel()} scales")
    if hasattr(em, "quantiles") and em.quantiles.shape[0] != rows:
        raise ModelUnavailableError(f"{origin}: {rows} CDFs for {em.quantiles.shape[0]} channels")
    for i, n in enumerate(lengths.tolist()):
        row = cdf[i, :n] if 3 <= n <= cdf.shape[1] else None
        if row is None or row[0] != 0 or row[-1] != top or not bool((row[1:] > row[:-1]).all()):
            raise ModelUnavailableError(f"{origin}: CDF {i} is not a valid table (length {n})")


def load_model(
    name: str = DEFAULT_MODEL,
    quality: int = 1,
    *,
    weights: str | Path | None = None,
    modulators: str | Path | None = None,
    pretrained: bool = True,
    all_qualities: bool = False,
    download: bool = True,
) -> VariableRateModel:
    """Build the quality group of ``name`` that contains ``quality``, with its weights.

    Args:
        name: a model id of :data:`ZOO`.
        quality: the quality to code; its group's decoder comes with it.
        weights: an oml weights file holding the whole group (overrides every other source).
        modulators: an oml weights file whose ``synthesis.*`` tensors replace the
            decoder's (a meta-training result for a CompressAI base).
        pretrained: ``False`` builds random weights (tests, training from scratch).
        all_qualities: load every encoder of the group (meta-training), not just
            ``quality``'s (CompressAI bases keep one encoder per quality).
        download: let CompressAI fetch missing pretrained weights. Decoders pass ``False``:
            the model id comes from the file being decoded.

    Raises:
        ModelUnavailableError: weights are missing or cannot be downloaded.
    """
    group = quality_group(name, quality)
    from_file = weights is not None or (pretrained and _entry(name).source == "package")
    qualities = group if all_qualities else (quality,)
    if from_file:
        path = weights if weights is not None else default_weights_path()
        state = _load_weights_file(path)
        if state["name"] != name:
            raise ModelUnavailableError(f"{path} holds weights of {state['name']}, not {name}")
        qualities = tuple(q for q in state["encoders"] if q in group) or qualities
    model = _build(
        name,
        group,
        qualities,
        pretrained=pretrained and not from_file,
        offsets=from_file and _has_offsets(state["state_dict"]),
        download=download,
        config=_architecture(state, str(path)) if from_file else None,
        context=from_file and name == "oml-default" and _has_context(state["state_dict"]),
    )
    if from_file:
        _load_state(model, state["state_dict"], str(path))
    if modulators is not None:
        synth = weights_under(modulators, "synthesis.")
        if _has_offsets(synth) and model.synthesis.offsets is None:
            model.synthesis.add_offsets()
        model.synthesis.load_state_dict(synth)
    elif pretrained and not from_file and len(group) > 1:
        warnings.warn(f"{name}: no meta-trained modulators given; qualities below {max(group)} decode with the top quality's plain decoder", stacklevel=2)
    model.update_entropy_models(force=False)
    if name == DEFAULT_MODEL:  # CompressAI's bases keep their layout: identity modulators decode exactly as they do
        use_channels_last(model)
    return model.eval()
