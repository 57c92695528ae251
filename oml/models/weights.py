"""Weights files and training state: their only reader and writer, and where released weights are found.

Every project file is a ``torch.save`` dict, read here with ``weights_only=True`` (loading runs no
code) and written atomically (:func:`save_atomic`):

============== ========================= ==========================================================
state          read / written by         holds
============== ========================= ==========================================================
weights        load_weights/save_weights ``format`` oml-weights/1, model ``name``, ``encoders``,
                                         ``state_dict``, ``architecture``, ``config`` (N, M),
                                         ``trained_steps``
overlay        load_weights/save_overlay oml-weights-overlay/1: the tensors that differ from a
                                         whole file (``base``: its name and SHA-256), same metadata
checkpoint     load_training_state /     base training's ``last.pt``: ``model``, ``ema``,
               save_training_state       ``optimizer``, ``aux_optimizer``, ``step``, ``config``;
                                         a data-parallel run's also ``rng`` (generator states)
resume point   the same                  ``compact``: the float16 weight average, ``step``, ``config``
meta state     load_meta_state /         a meta-training checkpoint: ``synthesis``, ``optimizer``,
               save_meta_state           ``step``, ``log``, ``config``
============== ========================= ==========================================================

:func:`load_state` tells them apart and returns a typed object. A weights file says what to build
in ``architecture`` (latent kind, widths N and M, checkerboard context, λ-offset branches); files
written before it was recorded are read by their tensor names (:func:`architecture_of`).

Released weights. ``manifest.json`` beside the shipped files lists every release of the default
model: version, file name, SHA-256, size, the base of an overlay, the URL it is published at, and
the weights fingerprints (:meth:`VariableRateModel.fingerprint`, one per byte format) that the
``.oml`` files it coded carry in their header. A decoder finds a file's release by its fingerprint
(:meth:`Manifest.find`) and then the release's file by name on the weights path
(:func:`weights_path`), checked by size and SHA-256 (:func:`locate`): the package's folder (the
current release), the caller's folders (an archive's own copies), ``$OML_WEIGHTS_PATH``, the user's
cache (``$XDG_CACHE_HOME/oml/weights``, else ``~/.cache/oml/weights``) and, in a checkout of the
repository, its ``weights/`` folder beside the package, which holds every older release
(``OML_WEIGHTS_NO_CHECKOUT=1`` leaves it out). Nothing is fetched unless the caller or the user
allows it (``download=True`` or ``OML_WEIGHTS_DOWNLOAD=1``): :func:`download_release` then fetches
the manifest's URL (or the same file name under ``$OML_WEIGHTS_URL``, a mirror) into the cache and
keeps it only if its size and SHA-256 are the manifest's. A file can only select a release of the
package's own manifest, never a URL of its choosing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from oml.models.latent import LATENT_KINDS
from oml.models.variable_rate import is_table
from oml.names import DEFAULT_MODEL, ModelUnavailableError

WEIGHTS_FORMAT = "oml-weights/1"
OVERLAY_FORMAT = "oml-weights-overlay/1"  # the tensors that differ from a whole file beside it
MANIFEST_FORMAT = "oml-weights-manifest/1"

PATH_ENV = "OML_WEIGHTS_PATH"  # folders searched for released weights, os.pathsep-separated
DOWNLOAD_ENV = "OML_WEIGHTS_DOWNLOAD"  # 1: a missing release may be downloaded from its URL
URL_ENV = "OML_WEIGHTS_URL"  # a mirror: releases are fetched as URL/FILE instead
NO_CHECKOUT_ENV = "OML_WEIGHTS_NO_CHECKOUT"  # 1: leave a checkout's weights/ folder off the path

_WIDTH_RANGE = (8, 1024)

# Constants that the architecture sets when it is built (GDN's reparametrisation pedestal and
# bounds, the entropy models' lower bounds): never stored, and ignored in files that have them.
# (Stored as float16 they would round: the likelihood bound 1e-9 becomes 0.)
_CONSTANT_BUFFERS = ("pedestal", "bound")


def is_constant(key: str) -> bool:
    """Whether ``key`` names a constant the architecture sets when it is built (never trained)."""
    return key.rsplit(".", 1)[-1] in _CONSTANT_BUFFERS


def is_derived_buffer(key: str) -> bool:
    """Whether ``key`` names a buffer that is not a trained tensor: an entropy-coder table
    (which ``update()`` derives from the weights) or a constant of the architecture."""
    return is_table(key) or is_constant(key)


# ---------------------------------------------------------------------------------------------
# Bytes ⇄ dicts


def _unpickle(source: bytes | Path, origin: str, what: str = "an oml weights file", error: type[Exception] = ModelUnavailableError, **kw) -> object:
    """``torch.load`` with ``weights_only`` (the project's only reader of its files), any failure one ``error``."""
    try:
        return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, weights_only=True, **{"map_location": "cpu", **kw})
    except Exception as exc:  # torch.load raises many types for foreign bytes; all mean the same here
        raise error(f"{origin} is not {what} (unreadable: {type(exc).__name__})") from None


def read_stored(path: str | Path) -> dict:
    """A project file's dict exactly as stored (an overlay unmerged), read with ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"{path} does not exist")
    state = _unpickle(path.read_bytes(), str(path), "an oml weights or training-state file")
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{path} is not an oml weights or training-state file")
    return state


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


# ---------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class Architecture:
    """What a weights file builds: the latent ``kind`` (:data:`oml.models.latent.LATENT_KINDS`), the
    default model's widths ``N`` and ``M`` (None for CompressAI bases, whose quality sets them),
    whether it has a checkerboard ``context`` and λ-offset branches (``offsets``)."""

    kind: str
    N: int | None = None
    M: int | None = None
    context: bool = False
    offsets: bool = False

    def as_dict(self) -> dict:
        stored = {"kind": self.kind, "context": self.context, "offsets": self.offsets}
        if self.N is not None:
            stored.update(N=self.N, M=self.M)
        return stored

    @property
    def widths(self) -> dict[str, int] | None:
        return None if self.N is None else {"N": self.N, "M": self.M}


def has_context(state_dict: dict) -> bool:
    """Whether a default-model state holds a checkerboard context (v3 on), by its tensor names."""
    return any(k.startswith("encoders.0.context.") for k in state_dict)


def has_offsets(state_dict: dict) -> bool:
    """Whether a state's tensors include λ-offset branches (meta mode ``offset``), by their names."""
    return any(".offsets." in k or k.startswith("offsets.") for k in state_dict)


def _widths(config: object, origin: str) -> dict[str, int] | None:
    if config is None:
        return None
    low, high = _WIDTH_RANGE
    if not isinstance(config, dict) or set(config) != {"N", "M"} or not all(type(v) is int and low <= v <= high for v in config.values()):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights file (architecture {config!r})")
    return dict(config)


def architecture_of(state: dict, origin: str) -> Architecture:
    """The architecture a whole weights state (``name``, ``state_dict``, ...) builds, checked.

    Read from its ``architecture`` entry; files written before it was recorded are read by their
    tensor names (a context under ``encoders.0.context.``, branches under ``offsets.``) and
    ``config`` widths (none: N = 64, M = 128, v1's)."""
    name, tensors = state["name"], state["state_dict"]
    widths = _widths(state.get("config"), origin)
    stored = state.get("architecture")
    if stored is None:
        default = name == DEFAULT_MODEL
        widths = widths or ({"N": 64, "M": 128} if default else None)
        context = default and has_context(tensors)
        kind = ("checkerboard" if context else "mean_scale") if default else None
        return Architecture(kind or "", **(widths or {}), context=context, offsets=has_offsets(tensors))
    if (
        not isinstance(stored, dict)
        or not set(stored) <= {"kind", "N", "M", "context", "offsets"}
        or stored.get("kind") not in LATENT_KINDS
        or not all(type(stored.get(k)) is bool for k in ("context", "offsets"))
    ):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights file (architecture {stored!r})")
    stored_widths = _widths({k: stored[k] for k in ("N", "M") if k in stored} or None, origin)
    if widths is not None and stored_widths != widths:
        raise ModelUnavailableError(f"{origin} is a damaged oml weights file (architecture {stored!r}, widths {widths!r})")
    if name == DEFAULT_MODEL and (stored_widths is None or stored["kind"] != ("checkerboard" if stored["context"] else "mean_scale")):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights file (architecture {stored!r} for {name})")
    return Architecture(stored["kind"], **(stored_widths or {}), context=stored["context"], offsets=stored["offsets"])


def model_architecture(model: torch.nn.Module) -> Architecture:
    """The architecture of a built :class:`~oml.models.variable_rate.VariableRateModel`."""
    from oml.models.default import OMLHyperprior

    net = model.encoders["0"] if "0" in model.encoders else None
    offsets = model.synthesis.offsets is not None
    if model.name == DEFAULT_MODEL and isinstance(net, OMLHyperprior):  # its kind follows the context it has
        context = net.context is not None
        return Architecture("checkerboard" if context else "mean_scale", net.N, net.M, context=context, offsets=offsets)
    return Architecture(model.kind, offsets=offsets)


# ---------------------------------------------------------------------------------------------
# Weights files and overlays


@dataclass(frozen=True)
class Weights:
    """A whole weights file (an overlay comes merged with its base)."""

    name: str
    encoders: tuple[int, ...]
    state_dict: dict[str, Tensor]
    architecture: Architecture
    trained_steps: int | None
    origin: str


def _weights_object(data: bytes | dict, origin: str) -> dict:
    state = _unpickle(data, origin) if isinstance(data, bytes) else data
    if not isinstance(state, dict) or state.get("format") not in (WEIGHTS_FORMAT, OVERLAY_FORMAT) or not isinstance(state.get("state_dict"), dict):
        raise ModelUnavailableError(f"{origin} is not an oml weights file (expected format {WEIGHTS_FORMAT})")
    return state


def _read_weights_object(path: Path) -> tuple[dict, str]:
    """The raw dict of an oml weights or overlay file and the SHA-256 of its bytes."""
    if not path.is_file():
        raise ModelUnavailableError(f"weights file {path} does not exist")
    data = path.read_bytes()
    return _weights_object(data, str(path)), hashlib.sha256(data).hexdigest()


def _check_weights_meta(state: dict, origin: str) -> dict:
    if not isinstance(state.get("name"), str) or not isinstance(state.get("encoders"), list | tuple) or not all(isinstance(q, int) for q in state["encoders"]):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights file (no model name or encoder list)")
    return state


def _overlay_base(overlay: dict, folder: Path | None, origin: str) -> tuple[dict, str]:
    """The whole weights file an overlay names: beside it under its recorded name, else the release
    of that SHA-256 on the weights path, else any ``.pt`` beside it of that SHA-256 (a renamed
    base of a user's own overlay)."""
    base = overlay.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("name"), str) or not isinstance(base.get("sha256"), str):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights overlay (no base)")
    name, sha = base["name"], base["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelUnavailableError(f"{origin} is a damaged oml weights overlay (base digest {sha[:80]!r})")
    safe = bool(name) and Path(name).name == name and name not in (".", "..")
    named = folder / name if folder is not None and safe else None

    def candidates():
        if named is not None and named.is_file():
            yield named
        release = manifest().by_sha256(sha)
        found = find_release(release) if release is not None else None
        if found is not None:
            yield found
        if folder is not None:
            yield from sorted(q for q in folder.glob("*.pt") if q not in (named, found, Path(origin)))

    for candidate in candidates():
        try:
            state, digest = _read_weights_object(candidate)
        except ModelUnavailableError:
            continue
        if digest == sha:
            if state["format"] != WEIGHTS_FORMAT:
                raise ModelUnavailableError(f"{origin} is an overlay of {candidate}, itself an overlay: one level only")
            return _check_weights_meta(state, str(candidate)), str(candidate)
    where = folder if folder is not None else "the weights path"
    raise ModelUnavailableError(
        f"{origin} holds only the tensors that differ from {name!r} (sha256 {sha[:16]}…), which is not in {where}: "
        f"put that weights file beside it"
    )


def _same_model(a: dict, b: dict, origin_a: str, origin_b: str) -> bool:
    """Whether two weights states are the same model, encoders and widths (what an overlay keeps)."""
    same = (a["name"], list(a["encoders"])) == (b["name"], list(b["encoders"]))
    return same and architecture_of(a, origin_a).widths == architecture_of(b, origin_b).widths


def _merge(state: dict, folder: Path | None, origin: str) -> dict:
    state = _check_weights_meta(state, origin)
    if state["format"] == WEIGHTS_FORMAT:
        return state
    base, base_origin = _overlay_base(state, folder, origin)
    if not _same_model(base, state, base_origin, origin):
        raise ModelUnavailableError(f"{origin} is an overlay for another architecture than its base {base_origin}")
    merged = {k: v for k, v in base.items() if k not in ("trained_steps", "architecture")}
    merged["state_dict"] = {**base["state_dict"], **state["state_dict"]}
    for key in ("trained_steps", "architecture"):  # the overlay's own (it may add branches)
        if key in state:
            merged[key] = state[key]
    merged["format"] = WEIGHTS_FORMAT
    return merged


def read_weights(path: str | Path) -> dict:
    """An oml weights file as a whole state dict (``format``, ``name``, ``encoders``,
    ``state_dict``, ``architecture``, ``config``, ``trained_steps``): an overlay
    (:func:`save_overlay`) comes back merged with the base it names."""
    path = Path(path)
    state, _ = _read_weights_object(path)
    return _merge(state, path.parent, str(path))


def _typed(state: dict, origin: str) -> Weights:
    steps = state.get("trained_steps")
    return Weights(state["name"], tuple(state["encoders"]), state["state_dict"], architecture_of(state, origin), None if steps is None else int(steps), origin)


def load_weights(source: str | Path | bytes, origin: str | None = None) -> Weights:
    """An oml weights file (a path, or its bytes read from elsewhere) as :class:`Weights`. An
    overlay's base is looked for beside a path, and on the weights path by its SHA-256."""
    if isinstance(source, bytes):
        origin = origin or "weights bytes"
        return _typed(_merge(_weights_object(source, origin), None, origin), origin)
    return _typed(read_weights(source), str(source))


def weights_under(path: str | Path, prefix: str) -> dict[str, Tensor]:
    """The tensors of an oml weights file whose names start with ``prefix``, without it, as float32
    (a part of a model to load into another: its decoder, context or λ-offset branches)."""
    state = read_weights(path)["state_dict"]
    return {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}


def default_training_weights(path: str | Path | Weights, n: int, m: int) -> tuple[dict[str, Tensor], int]:
    """The base-training state in an oml-default weights file, and the step it was taken at.

    The file holds the training model whole under ``encoders.0.`` (the float16 weight average a
    compact resume point holds, with the checkerboard context) plus the λ-offset branches, which
    base training does not train and leaves out; ``trained_steps`` is 0 in files written before
    it was recorded. So a shipped file is itself the point the next training run resumes from.
    """
    state = path if isinstance(path, Weights) else load_weights(path)
    arch = state.architecture
    if state.name != DEFAULT_MODEL or (arch.N, arch.M) != (n, m):
        raise ModelUnavailableError(f"{state.origin} is not an {DEFAULT_MODEL} weights file of N={n}, M={m} (it holds {state.name} {arch.widths}): nothing to resume")
    prefix = "encoders.0."
    weights = {k[len(prefix) :]: v for k, v in state.state_dict.items() if k.startswith(prefix) and not k.startswith(prefix + "g_s.offsets.")}
    return weights, int(state.trained_steps or 0)


def save_weights(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.float32, trained_steps: int | None = None) -> None:
    """Save a model's weights as an oml weights file: floating tensors as ``dtype``, the entropy
    coder's tables exactly as they are (int32 CDFs, float32 scale table), architecture constants
    left out, and the architecture it builds. The tables are built here if missing, so the file
    decodes alike on every machine. ``trained_steps``: the base-training step the weights were
    taken at (recorded so that a run can resume from the shipped file itself)."""
    model.update_entropy_models(force=False)
    state = {}
    for k, v in model.state_dict().items():
        if is_constant(k):
            continue
        state[k] = v if is_table(k) or not v.is_floating_point() else v.to(dtype)
    architecture = model_architecture(model)
    saved = {"format": WEIGHTS_FORMAT, "name": model.name, "encoders": sorted(int(q) for q in model.encoders), "state_dict": state}
    saved["architecture"] = architecture.as_dict()
    if architecture.widths is not None:
        saved["config"] = architecture.widths  # the widths as readers before ``architecture`` look for them
    if trained_steps is not None:
        saved["trained_steps"] = int(trained_steps)
    save_atomic(saved, path)


def save_overlay(whole: str | Path, base: str | Path, path: str | Path) -> list[str]:
    """Write ``whole`` (an oml weights file) as an overlay of ``base``: the tensors that differ
    from it, the base's file name and SHA-256, and the metadata a reader needs without loading
    it (name, encoders, architecture, widths, ``trained_steps``). A meta-training run that changes
    only the λ-offset branches then adds kilobytes to the repository, not a second copy of the
    model. The overlay loads when the base lies beside it or is a release on the weights path.
    Returns the names of the stored tensors."""
    whole_state = _check_weights_meta(_read_weights_object(Path(whole))[0], str(whole))
    base_state, sha = _read_weights_object(Path(base))
    if whole_state["format"] != WEIGHTS_FORMAT or base_state["format"] != WEIGHTS_FORMAT:
        raise ValueError("an overlay is made from two whole weights files")
    if not _same_model(whole_state, _check_weights_meta(base_state, str(base)), str(whole), str(base)):
        raise ValueError(f"{whole} and {base} are not the same architecture")
    ours, theirs = whole_state["state_dict"], base_state["state_dict"]
    if set(theirs) - set(ours):
        raise ValueError(f"{whole} lacks tensors of {base} (e.g. {sorted(set(theirs) - set(ours))[:3]}): an overlay only replaces or adds")
    changed = {k: v for k, v in ours.items() if k not in theirs or v.dtype != theirs[k].dtype or not torch.equal(v, theirs[k])}
    saved = {key: whole_state[key] for key in ("name", "encoders", "config", "trained_steps") if key in whole_state}
    saved["architecture"] = architecture_of(whole_state, str(whole)).as_dict()
    saved.update(format=OVERLAY_FORMAT, base={"name": Path(base).name, "sha256": sha}, state_dict=changed)
    save_atomic(saved, path)
    return sorted(changed)


# ---------------------------------------------------------------------------------------------
# Training state


@dataclass(frozen=True)
class TrainingState:
    """Base training's ``last.pt`` (weights, their moving average, both optimisers, step, config),
    or a compact resume point (``compact``: the float16 average as ``model``, step and config).
    ``rng``: the states of the random generators (a data-parallel run's checkpoint), so that the
    run resumed from it draws what the uninterrupted run would have drawn."""

    model: dict[str, Tensor]
    step: int
    config: dict = field(default_factory=dict)
    ema: dict[str, Tensor] | None = None
    optimizer: dict | None = None
    aux_optimizer: dict | None = None
    compact: bool = False
    rng: dict[str, Tensor] | None = None

    def as_dict(self) -> dict:
        stored = {"model": self.model, "step": int(self.step), "config": self.config}
        for key in ("ema", "optimizer", "aux_optimizer", "rng"):
            if getattr(self, key) is not None:
                stored[key] = getattr(self, key)
        if self.compact:
            stored["compact"] = True
        return stored


@dataclass(frozen=True)
class MetaState:
    """A meta-training checkpoint: the decoder's state Ψ lives in (``synthesis``), the optimiser,
    the step, one metric row per step done (``log``) and the run's settings (``config``)."""

    synthesis: dict[str, Tensor]
    optimizer: dict
    step: int
    log: list[dict]
    config: dict

    def as_dict(self) -> dict:
        return {"synthesis": self.synthesis, "optimizer": self.optimizer, "step": int(self.step), "log": self.log, "config": self.config}


class StateError(ValueError):
    """A file that is not the training state asked for; the message names it."""


def _training_state(state: dict, origin: str) -> TrainingState:
    if not isinstance(state.get("model"), dict):
        raise StateError(f"{origin} is not a base-training checkpoint (no model state)")
    return TrainingState(
        model=state["model"],
        step=int(state.get("step", 0)),
        config=state.get("config") or {},
        ema=state.get("ema"),
        optimizer=state.get("optimizer"),
        aux_optimizer=state.get("aux_optimizer"),
        compact=bool(state.get("compact", False)),
        rng=state.get("rng"),
    )


def _meta_state(state: dict, origin: str) -> MetaState:
    if not all(key in state for key in ("synthesis", "optimizer", "step", "log", "config")):
        raise StateError(f"{origin} is not a meta-training checkpoint")
    return MetaState(state["synthesis"], state["optimizer"], int(state["step"]), list(state["log"]), state["config"])


def load_state(source: str | Path | bytes, origin: str | None = None) -> Weights | TrainingState | MetaState:
    """Any project file, typed: :class:`Weights` (an overlay merged), :class:`TrainingState`
    (``last.pt`` or a compact resume point) or :class:`MetaState`. ``source`` is a path or the
    bytes of one read from elsewhere (``origin`` names them in errors).

    Raises:
        StateError: the file is none of them.
        ModelUnavailableError: a weights file that is damaged or whose overlay base is missing.
    """
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise StateError(f"{source} does not exist")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    origin = origin or (str(source) if not isinstance(source, bytes) else "state bytes")
    what = "a training checkpoint, resume point or oml weights file"
    state = _unpickle(data, origin, what, StateError)
    if not isinstance(state, dict):
        raise StateError(f"{origin} is not {what}")
    if "format" in state:
        folder = None if isinstance(source, bytes) else Path(source).parent
        return _typed(_merge(_weights_object(state, origin), folder, origin), origin)
    if "model" in state:
        return _training_state(state, origin)
    if "synthesis" in state:
        return _meta_state(state, origin)
    raise StateError(f"{origin} is not {what}")


def load_training_state(path: str | Path) -> TrainingState:
    """Base training's ``last.pt`` or a compact resume point."""
    state = _unpickle(Path(path), str(path), "a training checkpoint", StateError)
    if not isinstance(state, dict):
        raise StateError(f"{path} is not a training checkpoint")
    return _training_state(state, str(path))


def save_training_state(state: TrainingState, path: str | Path) -> None:
    save_atomic(state.as_dict(), path)


def load_meta_state(path: str | Path, map_location: str | torch.device = "cpu") -> MetaState:
    state = _unpickle(Path(path), str(path), "a meta-training checkpoint", StateError, map_location=map_location)
    if not isinstance(state, dict):
        raise StateError(f"{path} is not a meta-training checkpoint")
    return _meta_state(state, str(path))


def save_meta_state(state: MetaState, path: str | Path) -> None:
    save_atomic(state.as_dict(), path)


def stored_config(path: str | Path) -> dict:
    """The ``config`` a checkpoint or weights file records (a weights file's widths N, M; a
    checkpoint's run settings), read from a memory map without loading the tensors; ``{}`` when it
    has none or cannot be read (the reader that loads the file reports that)."""
    try:
        state = _unpickle(Path(path), str(path), mmap=True)
    except ModelUnavailableError:
        return {}
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else {}


# ---------------------------------------------------------------------------------------------
# Released weights: the manifest and the weights path


@dataclass(frozen=True)
class Release:
    """One released weights file of a model (an entry of ``manifest.json``)."""

    model: str
    version: str
    file: str
    sha256: str
    size: int
    url: str
    fingerprints: dict[int, bytes]  # byte-format version → the weights fingerprint a file carries
    base: str | None = None  # the version an overlay is made over


class Manifest:
    """Every released weights file, by model; looked up by fingerprint or by SHA-256."""

    def __init__(self, data: dict, origin: str = "manifest") -> None:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), dict):
            raise ModelUnavailableError(f"{origin} is not a weights manifest ({MANIFEST_FORMAT})")
        self.current: dict[str, str] = {}
        self.releases: dict[str, list[Release]] = {}
        for model, entry in data["models"].items():
            releases = [
                Release(model, r["version"], r["file"], r["sha256"], int(r["size"]), r["url"], {int(k): bytes.fromhex(v) for k, v in r["fingerprints"].items()}, r.get("base"))
                for r in entry["releases"]
            ]
            self.releases[model] = releases
            self.current[model] = entry["current"]
            versions = {r.version for r in releases}
            if entry["current"] not in versions or any(r.base is not None and r.base not in versions for r in releases):
                raise ModelUnavailableError(f"{origin}: {model}'s current release or an overlay's base is not listed")

    def release(self, model: str, version: str) -> Release:
        return next(r for r in self.releases[model] if r.version == version)

    def current_release(self, model: str) -> Release | None:
        return self.release(model, self.current[model]) if model in self.current else None

    def newest_first(self, model: str) -> list[Release]:
        """The current release, then the others from the newest."""
        current = self.current_release(model)
        return ([current] if current else []) + [r for r in reversed(self.releases.get(model, [])) if r is not current]

    def find(self, model: str, fingerprint: bytes, format_version: int) -> Release | None:
        """The release whose weights coded a file of byte-format ``format_version`` with ``fingerprint``."""
        key = min(format_version, 2)  # format 3 adds a source section to format 2: the same weights fingerprint
        return next((r for r in self.releases.get(model, []) if r.fingerprints.get(key) == fingerprint), None)

    def by_sha256(self, sha: str) -> Release | None:
        return next((r for rs in self.releases.values() for r in rs if r.sha256 == sha), None)


def package_folder() -> Path:
    """The folder of the weights the package ships (the current release)."""
    return Path(str(resources.files("oml") / "weights"))


def manifest() -> Manifest:
    """The package's manifest of released weights."""
    return _read_manifest(package_folder() / "manifest.json")


@lru_cache(maxsize=4)
def _read_manifest(path: Path) -> Manifest:
    try:
        return Manifest(json.loads(path.read_text()), str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailableError(f"{path} is missing or damaged ({type(exc).__name__}: {exc}); reinstall the package") from None


def cache_folder() -> Path:
    """Where downloaded releases go and are found: ``$XDG_CACHE_HOME/oml/weights``, else
    ``~/.cache/oml/weights``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "oml" / "weights"


def checkout_folder() -> Path | None:
    """A repository checkout's ``weights/`` folder (every older release), beside the package; None
    in an installed package or with ``OML_WEIGHTS_NO_CHECKOUT=1``."""
    if os.environ.get(NO_CHECKOUT_ENV, "") not in ("", "0"):
        return None
    folder = Path(__file__).resolve().parents[2] / "weights"
    return folder if folder.is_dir() else None


def weights_path(folders: Iterable[str | Path] = ()) -> list[Path]:
    """The folders searched for a release's file, in order: the package's, ``folders`` (the
    caller's: an archive's own copies), ``$OML_WEIGHTS_PATH`` (os.pathsep-separated), the user's
    cache, and a checkout's ``weights/``."""
    found = [package_folder(), *(Path(f) for f in folders)]
    found += [Path(p) for p in os.environ.get(PATH_ENV, "").split(os.pathsep) if p]
    found.append(cache_folder())
    checkout = checkout_folder()
    if checkout is not None:
        found.append(checkout)
    return list(dict.fromkeys(found))


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → SHA-256, so a file is hashed once


def _sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def _is_release(path: Path, release: Release) -> bool:
    try:
        return path.is_file() and path.stat().st_size == release.size and _sha256_of(path) == release.sha256
    except OSError:
        return False


def find_release(release: Release, folders: Iterable[str | Path] = ()) -> Path | None:
    """The first file on the weights path named as ``release`` (or ``<sha256>.pt``, as an archive's
    ``models/`` folder holds it) whose size and SHA-256 are its own."""
    names = (release.file, f"{release.sha256}.pt")
    return next((f / n for f in weights_path(folders) for n in names if _is_release(f / n, release)), None)


class MissingWeightsError(ModelUnavailableError):
    """A released weights file that is on none of the weights path's folders."""


def download_allowed() -> bool:
    return os.environ.get(DOWNLOAD_ENV, "").lower() in ("1", "yes", "true")


def release_url(release: Release) -> str:
    """Where ``release`` is fetched from: the manifest's URL, or the same file name under
    ``$OML_WEIGHTS_URL`` (a mirror of the release folder)."""
    mirror = os.environ.get(URL_ENV, "")
    return f"{mirror.rstrip('/')}/{release.file}" if mirror else release.url


def missing_message(release: Release, fingerprint: bytes | None = None) -> str:
    """One line: which release is missing, by what fingerprint, and where to put its file."""
    named = f" (weights fingerprint {fingerprint.hex()})" if fingerprint else ""
    return (
        f"{release.model} {release.version}{named} is needed and not found: put {release.file} "
        f"(sha256 {release.sha256[:16]}…{', ' + release.url if release.url else ''}) in {cache_folder()} or a folder on {PATH_ENV}, "
        f"or set {DOWNLOAD_ENV}=1 and {URL_ENV} to a folder that serves the release files"
    )


def locate(release: Release, folders: Iterable[str | Path] = (), *, download: bool | None = None, fingerprint: bytes | None = None) -> Path:
    """The file of ``release`` (and, for an overlay, its base) on the weights path; fetched into the
    cache when missing and ``download`` (default: ``OML_WEIGHTS_DOWNLOAD=1``) allows it.

    Raises:
        MissingWeightsError: not found and not allowed (or not able) to download; one line.
    """
    folders = list(folders)
    allowed = download_allowed() if download is None else download
    if release.base is not None:  # the overlay reads its base by SHA-256 from the weights path
        locate(manifest().release(release.model, release.base), folders, download=allowed, fingerprint=fingerprint)
    found = find_release(release, folders)
    if found is not None:
        return found
    if not allowed:
        raise MissingWeightsError(missing_message(release, fingerprint))
    return download_release(release)


def download_release(release: Release, folder: str | Path | None = None, url: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``release`` over HTTP(S) into ``folder`` (default: the user's cache) and return its path.

    The bytes are streamed to a temporary file beside the target and kept only when their size and
    SHA-256 are the manifest's; anything else is deleted and refused.

    Raises:
        MissingWeightsError: the fetch failed or the bytes are not the release's; one line.
    """
    import http.client
    import urllib.request

    folder = Path(folder) if folder is not None else cache_folder()
    url = url or release_url(release)
    if not url:
        raise MissingWeightsError(f"cannot download {release.file}: no release URL is configured; set {URL_ENV} to a folder that serves the release files")
    if not url.startswith(("https://", "http://")):
        raise MissingWeightsError(f"cannot download {release.file}: {url!r} is not an http(s) URL")
    target = folder / release.file
    partial = folder / f".{release.file}.{os.getpid()}.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > release.size:
                    break
                digest.update(chunk)
                out.write(chunk)
        if size != release.size or digest.hexdigest() != release.sha256:
            raise MissingWeightsError(
                f"the download of {release.file} from {url} is not {release.model} {release.version} "
                f"({size} bytes, sha256 {digest.hexdigest()[:16]}…; expected {release.size} bytes, {release.sha256[:16]}…): refused"
            )
        partial.replace(target)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise MissingWeightsError(f"cannot download {release.file} from {url}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def available_releases(model: str = DEFAULT_MODEL, folders: Sequence[str | Path] = ()) -> list[tuple[Release, Path]]:
    """Every release of ``model`` whose file is on the weights path (current first, then newest
    first); nothing is downloaded."""
    found = ((r, find_release(r, folders)) for r in manifest().newest_first(model))
    return [(r, p) for r, p in found if p is not None]
