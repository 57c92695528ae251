"""One table-driven model zoo: model id → architecture, quality groups, λ, weights.

==================== ============ ============== ===================== ===================
model id             latent kind  quality groups g_s block starts      weights
==================== ============ ============== ===================== ===================
oml-default          per file     (1–6)          built-in              released files (manifest)
bmshj2018-hyperprior scale        (1–4), (5–8)   0, 2, 4, 6            CompressAI zoo
mbt2018-mean         mean_scale   (1–4), (5–8)   0, 2, 4, 6            CompressAI zoo
mbt2018              autoregressive (1–4), (5–8) 0, 2, 4, 6            CompressAI zoo
cheng2020-anchor     autoregressive (1–3), (4–6) 0, 2, 4, 6            CompressAI zoo
cheng2020-attn       autoregressive (1–3), (4–6) 0, 3, 5, 8            CompressAI zoo
==================== ============ ============== ===================== ===================

The default model's architecture is written in its weights file (:mod:`oml.models.weights`):
v1 and v2 are mean-scale hyperpriors, v3 on add a checkerboard context (latent kind
``checkerboard``), widths N, M and λ-offset branches vary by release. Built without a file
(random weights) it is a mean-scale hyperprior.

For CompressAI bases each quality keeps its own pretrained encoder and entropy
models; the group shares the decoder ``g_s`` of its highest quality, cut at the
block starts into K = 4 decoding blocks with a modulator after each (paper Fig. 2). The
modulators come from a meta-training checkpoint (``modulators=``); without one
they are the identity, which decodes the group's top quality exactly as the base
model does.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from oml.models import weights as _weights
from oml.models.default import OMLHyperprior
from oml.models.synthesis import ModulatedSynthesis, split_sequential
from oml.models.variable_rate import VariableRateModel, is_table
from oml.models.weights import (  # also the names callers import from here
    Weights,
    default_training_weights,
    is_constant,
    is_derived_buffer,
    read_weights,
    save_overlay,
    save_weights,
    weights_under,
)
from oml.names import DEFAULT_MODEL, ModelUnavailableError

# CompressAI's MSE-trained λ for qualities 1–8.
MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo."""

    kind: str
    groups: tuple[tuple[int, ...], ...]
    splits: tuple[int, ...] = ()
    source: str = "compressai"


ZOO: dict[str, ZooEntry] = {
    "oml-default": ZooEntry("mean_scale", ((1, 2, 3, 4, 5, 6),), source="package"),  # built without a file; a file names its own kind
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


def default_weights_path(name: str = DEFAULT_MODEL) -> Path:
    """The weights file encoding uses: the current release, shipped in the package."""
    current = _weights.manifest().current_release(name)
    return _weights.package_folder() / (current.file if current is not None else f"{name}.pt")


def packaged_weights(name: str = DEFAULT_MODEL, folders: Sequence[str | Path] = ()) -> list[Path]:
    """Every released weights file of ``name`` found on the weights path (current first, then newest
    first; :func:`oml.models.weights.weights_path`). Nothing is downloaded."""
    return [path for _, path in _weights.available_releases(name, folders)]


def load_decoder(
    name: str,
    quality: int,
    fingerprint: bytes,
    version: int = 2,
    *,
    weights: str | Path | None = None,
    candidates: list[Path] | None = None,
    folders: Sequence[str | Path] = (),
    download: bool | None = None,
) -> VariableRateModel:
    """The model that decodes a file coded by ``name`` at ``quality`` with weights ``fingerprint``
    in byte format ``version``.

    ``weights`` (a user's file) is the only candidate when given; ``candidates``, files tried in
    turn until one's fingerprint matches. Otherwise the package's manifest names the release
    that coded the file, and only that release is loaded, from the weights path (``folders``
    first: an archive's own copies) or, where ``download`` (default ``OML_WEIGHTS_DOWNLOAD=1``)
    allows, fetched from its URL and checked against its SHA-256. A fingerprint no release has
    gets the current weights, and the codec's check names the mismatch.

    Raises:
        MissingWeightsError: the release is known but its file is not here; the message says
            which and where to put it.
    """
    if weights is not None or candidates is not None:
        paths = [Path(weights)] if weights is not None else list(candidates) or [None]
        first = None
        for path in paths:
            model = load_model(name, quality, weights=path, download=False)
            if model.fingerprint(quality, version) == fingerprint:
                return model
            first = first or model
        return first
    if _entry(name).source != "package":
        return load_model(name, quality, download=False)
    release = _weights.manifest().find(name, fingerprint, version)
    if release is None:
        return load_model(name, quality, download=False)
    path = _weights.locate(release, folders, download=download, fingerprint=fingerprint)
    return load_model(name, quality, weights=path, download=False)


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
    weights: str | Path | Weights | None = None,
    modulators: str | Path | None = None,
    pretrained: bool = True,
    all_qualities: bool = False,
    download: bool = True,
) -> VariableRateModel:
    """Build the quality group of ``name`` that contains ``quality``, with its weights.

    Args:
        name: a model id of :data:`ZOO`.
        quality: the quality to code; its group's decoder comes with it.
        weights: an oml weights file holding the whole group, or one already read
            (:func:`oml.models.weights.load_weights`); overrides every other source. The file
            says which architecture to build (:func:`oml.models.weights.architecture_of`).
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
        stored = weights if isinstance(weights, Weights) else _weights.load_weights(weights if weights is not None else default_weights_path())
        arch = stored.architecture
        if stored.name != name:
            raise ModelUnavailableError(f"{stored.origin} holds weights of {stored.name}, not {name}")
        if name != DEFAULT_MODEL and arch.kind and arch.kind != _entry(name).kind:
            raise ModelUnavailableError(f"{stored.origin} holds a {arch.kind} model; {name} is {_entry(name).kind}")
        qualities = tuple(q for q in stored.encoders if q in group) or qualities
    model = _build(
        name,
        group,
        qualities,
        pretrained=pretrained and not from_file,
        offsets=from_file and arch.offsets,
        download=download,
        config=arch.widths if from_file else None,
        context=from_file and arch.context,
    )
    if from_file:
        _load_state(model, stored.state_dict, stored.origin)
    if modulators is not None:
        synth = weights_under(modulators, "synthesis.")
        if _weights.has_offsets(synth) and model.synthesis.offsets is None:
            model.synthesis.add_offsets()
        model.synthesis.load_state_dict(synth)
    elif pretrained and not from_file and len(group) > 1:
        warnings.warn(f"{name}: no meta-trained modulators given; qualities below {max(group)} decode with the top quality's plain decoder", stacklevel=2)
    model.update_entropy_models(force=False)
    if name == DEFAULT_MODEL:  # CompressAI's bases keep their layout: identity modulators decode exactly as they do
        use_channels_last(model)
    return model.eval()
