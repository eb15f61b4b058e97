"""Neuron dissection: a text label for every unit of any layer (CLIP-Dissect, LWTA-aware).

For a probe set of ``N`` raw images and ``M`` concept strings, the embedder gives the
image-concept matrix ``P`` (``N x M``); recording gives each layer's pooled activations ``Q``
(``N x K``, post-competition for LWTA layers); a similarity function scores ``S = sim(P, Q)``
(``K x M``) and unit ``k`` is described by ``argmax_m S[k, m]`` (method.md §6).

The target model sees the probe through its own evaluation transform (from the training
run's ``data_config`` when it has one); the embedder applies its own preprocessing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from discover._utils import (
    atomic_path,
    cache_warning,
    check_options,
    resolve_device,
    staged_dir,
    write_files,
)
from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import Embedder, build_embedder
from discover.dissection.recording import (
    dataset_fingerprint,
    model_fingerprint,
    record,
    resolve_layers,
)
from discover.dissection.similarity import DEFAULT_SIMILARITY, get_similarity
from discover.nn.lwta import LWTA

__all__ = [
    "UnitDescription",
    "Dissection",
    "DissectConfig",
    "StaleDissectionError",
    "cached_concept_matrix",
    "dissect",
    "model_view",
]

CSV_COLUMNS = ("layer", "unit", "block", "position", "label", "score", "top5")
SCORES_FILE = "scores.pt"  # optional: the full score matrices (dissect(..., keep_scores=True))
DISSECTION_FILES = ("descriptions.csv", "dissection.json", SCORES_FILE)
# Results computed from a dissection and saved beside it: they go when it is replaced.
_DERIVED_PREFIXES = ("description_scores", "simulation_scores-")


class StaleDissectionError(ValueError):
    """A dissection is used with a model it does not describe (other weights, layers or U)."""


@dataclass
class UnitDescription:
    """The description of one unit; ``block``/``position`` are set for LWTA layers."""

    layer: str
    unit: int
    label: str
    score: float
    top: list[tuple[str, float]]
    block: int | None = None
    position: int | None = None
    active_fraction: float | None = None  # LWTA: how often the unit won on the probe set


@dataclass
class DissectConfig:
    """Every setting of a dissection; saved as ``dissection.json``."""

    layers: list[str]
    concepts: str
    embedder: str
    similarity: str = DEFAULT_SIMILARITY
    similarity_params: dict[str, Any] = field(default_factory=dict)
    pooling: str | dict[str, str] = "auto"
    policy: str = "argmax"
    seed: int = 0
    batch_size: int = 64
    top_k: int = 5


@dataclass
class Dissection:
    """One row per (layer, unit), plus the configuration and metadata that produced it."""

    units: list[UnitDescription]
    config: DissectConfig
    meta: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """``{layer: S}``, the full ``K x M`` similarity matrix per layer (``keep_scores=True``)."""
    concepts: list[str] | None = field(default=None, repr=False)
    """The ``M`` concept strings, the columns of :attr:`scores` (``keep_scores=True``)."""
    folder: Path | None = field(default=None, repr=False, compare=False)
    """The folder it was saved to or loaded from, if any."""

    def layer(self, name: str) -> list[UnitDescription]:
        """The rows of one layer, in unit order."""
        rows = [u for u in self.units if u.layer == name]
        if not rows:
            raise ValueError(
                f"no layer {name!r} in this dissection; it has "
                f"{', '.join(dict.fromkeys(u.layer for u in self.units))}"
            )
        return rows

    def pooling(self, name: str) -> str | None:
        """The pooling used for layer ``name``: as recorded, else as configured (``None``
        when neither says, e.g. ``"auto"`` for a layer this dissection does not cover)."""
        recorded = self.meta.get("layers", {}).get(name, {}).get("pooling")
        if recorded:
            return recorded
        configured = self.config.pooling
        if isinstance(configured, dict):
            configured = configured.get(name, "auto")
        return None if configured == "auto" else configured

    def labels(self, name: str) -> list[str]:
        """The label of every unit of layer ``name``."""
        return [u.label for u in self.layer(name)]

    def to_csv(self) -> str:
        """``layer,unit,block,position,label,score,top5`` with ``top5`` as a JSON list."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for u in self.units:
            writer.writerow(
                [
                    u.layer,
                    u.unit,
                    "" if u.block is None else u.block,
                    "" if u.position is None else u.position,
                    u.label,
                    f"{u.score:.6g}",
                    json.dumps([[c, round(s, 6)] for c, s in u.top]),
                ]
            )
        return buffer.getvalue()

    def save(self, out: str | Path) -> Path:
        """Write ``descriptions.csv`` and ``dissection.json`` (and ``scores.pt`` when the
        scores were kept) into ``out``, as one unit.

        A new folder, or one that holds only an earlier dissection (and results computed from
        it, which no longer apply), is written beside ``out`` and swapped in whole. In a folder
        that holds other files, every file is first written in full under a temporary name and
        then renamed into place. Either way a rerun overwrites, never appends, and a failure
        (disk full included) leaves the previous result unchanged and no temporary file.
        """
        out = Path(out)
        stamp = uuid.uuid4().hex  # pairs scores.pt with its dissection.json
        payload = {
            "id": stamp,
            "config": asdict(self.config),
            "meta": self.meta,
            "units": [asdict(u) for u in self.units],
        }
        files: dict[str, Any] = {}
        if self.scores:
            saved = {"id": stamp, "concepts": self.concepts, "scores": self.scores}
            files[SCORES_FILE] = lambda path: _torch_save(saved, path)
        files["descriptions.csv"] = self.to_csv()
        files["dissection.json"] = json.dumps(payload, indent=2, default=str)  # last: the index
        try:
            if _replaceable(out):
                with staged_dir(out) as staging:
                    write_files(staging, files)
            else:
                write_files(out, files)
                if not self.scores:  # never leave another run's matrix beside ours
                    (out / SCORES_FILE).unlink(missing_ok=True)
        except OSError as error:
            raise OSError(
                error.errno,
                f"could not write the dissection to {out} ({error.strerror or error}); "
                "the previous result there is unchanged",
            ) from error
        self.folder = out
        return out

    @classmethod
    def load(cls, out: str | Path) -> Dissection:
        """Read a saved dissection directory back.

        A ``scores.pt`` that cannot be read or belongs to another ``dissection.json`` is
        ignored with a warning (the ranks then come from the top-5 lists).
        """
        out = Path(out)
        path = out / "dissection.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no dissection in {out} (looked for {path}); create one "
                "with `discover dissect ... --out DIR`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            units = [
                UnitDescription(**{**u, "top": [tuple(t) for t in u["top"]]}) for u in data["units"]
            ]
            config = DissectConfig(**data["config"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"dissection {path} cannot be read ({type(error).__name__}: {error}): the file "
                f"is damaged or not a dissection; redissect with `discover dissect ... --out {out}`"
            ) from None
        result = cls(units, config, data.get("meta") or {}, folder=out)
        scores_file = out / SCORES_FILE
        if scores_file.is_file():
            try:
                saved = torch.load(scores_file, map_location="cpu", weights_only=True)
                problem = None if saved.get("id") == data.get("id") else "another dissection's"
            except Exception as error:  # noqa: BLE001  (torch.load raises many types)
                problem = f"unreadable ({type(error).__name__}: {error})"
            if problem is None:
                result.scores, result.concepts = dict(saved["scores"]), saved["concepts"]
            else:
                warnings.warn(
                    f"ignoring {scores_file}: {problem} score matrices; redissect with "
                    "--keep-scores for exact ranks",
                    UserWarning,
                    stacklevel=2,
                )
        return result

    def check_model(
        self, model: nn.Module, *, allow_mismatch: bool = False, run: str | None = None
    ) -> list[str]:
        """Check that this dissection describes ``model``; returns what differs.

        Compares the weights hash recorded at dissection time (older dissections without one
        skip that check), that every dissected layer exists, and each layer's ``U``.

        Args:
            model: the model the dissection is about to be used with.
            allow_mismatch: warn instead of raising.
            run: the model's training run, for the redissect command in the message.

        Raises:
            StaleDissectionError: something differs and ``allow_mismatch`` is false.
        """
        problems = []
        recorded = self.meta.get("model_sha256") or (self.meta.get("recording") or {}).get(
            "model_sha256"
        )
        if recorded:
            current = model_fingerprint(model)
            if current != recorded:
                problems.append(
                    f"the weights differ (dissected sha256 {recorded[:12]}, this model "
                    f"{current[:12]}: retrained or replaced since?)"
                )
        modules = dict(model.named_modules())
        layer_meta = self.meta.get("layers") or {}
        for name in dict.fromkeys([*self.config.layers, *(u.layer for u in self.units)]):
            if name not in modules:
                problems.append(f"it has no layer {name!r}")
            elif "U" in layer_meta.get(name, {}):
                was = layer_meta[name]["U"]
                now = modules[name].U if isinstance(modules[name], LWTA) else None
                if was != now:
                    problems.append(f"layer {name!r} has U={now}, the dissection U={was}")
        if not problems:
            return []
        where = f" in {self.folder}" if self.folder else ""
        message = (
            f"the dissection{where} does not describe this model: {'; '.join(problems)}. "
            f"Redissect it: `discover dissect --run {run or 'RUN'} --layers "
            f"{' '.join(self.config.layers)} --out {self.folder or 'DIR'}` with the probe, "
            "--concepts and --embedder used before (see its dissection.json), or "
            "discover.dissect(model, ...); --allow-stale-dissection (allow_mismatch=True) "
            "uses it anyway"
        )
        if not allow_mismatch:
            raise StaleDissectionError(message)
        warned = self.__dict__.setdefault("_warned", set())
        if tuple(problems) not in warned:  # once per dissection and mismatch
            warned.add(tuple(problems))
            warnings.warn(message, UserWarning, stacklevel=2)
        return problems


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so a full disk is an ``OSError``."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _replaceable(out: Path) -> bool:
    """Whether ``out`` is missing or holds nothing but a dissection and its derived results."""
    if not out.exists():
        return True
    if not out.is_dir():
        raise ValueError(f"dissection destination {out} is a file, expected a folder")
    return all(
        entry.is_file()
        and (
            entry.name in DISSECTION_FILES
            or entry.name.startswith(_DERIVED_PREFIXES)
            or (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        )
        for entry in out.iterdir()
    )


class _ModelView(Dataset):
    """The raw probe set through the target model's evaluation transform."""

    def __init__(self, probe: Dataset, transform) -> None:
        self.probe, self.transform = probe, transform

    def __len__(self) -> int:
        return len(self.probe)

    def __getitem__(self, index: int):
        item = self.probe[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return self.transform(image), 0

    def fingerprint(self) -> str | None:
        inner = dataset_fingerprint(self.probe)
        if inner is None:
            return None
        return hashlib.sha256(f"{inner}|{self.transform!r}".encode()).hexdigest()


def model_view(model: nn.Module, probe: Dataset, transform: Callable | None = None) -> Dataset:
    """``probe`` (raw images) as the model sees it: with its evaluation transform.

    The transform is ``transform`` when given, else it comes from ``model.data_config`` (set
    by training runs and kept in their checkpoints) or the model's ``pretrained_cfg``.
    """
    from discover.data.transforms import eval_transform

    return _ModelView(probe, transform or eval_transform(model))


def cached_concept_matrix(
    embedder: Embedder,
    probe: Dataset,
    concepts: ConceptSet,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, dict]:
    """``P`` for the probe and concepts, from the content-keyed cache when it is there.

    The key hashes the embedder's id, the probe set's content and the concept set. An entry
    that cannot be read, or holds another key or shape, is a miss: it warns once, naming the
    file, and is recomputed and replaced. A write that fails (disk full, read-only) warns and
    carries on without caching. Returns ``P`` and ``{"file": ..., "hit": ...}``.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
    probe_id = dataset_fingerprint(probe)
    shape = (len(probe), len(concepts))
    key = hashlib.sha256(
        json.dumps([embedder.id, probe_id, len(probe), concepts.sha256, 2]).encode()
    ).hexdigest()
    path = cache_dir / "concepts" / f"{key}.pt" if cache_dir is not None and probe_id else None
    if path is not None and path.is_file():
        P = _read_concept_matrix(path, key, shape)
        if P is not None:
            return P, {"file": str(path), "hit": True}
    P = embedder.concept_matrix(probe, concepts.concepts, batch_size=batch_size, progress=progress)
    if P.shape != shape:
        raise ValueError(
            f"embedder {embedder.id!r} returned P of shape {tuple(P.shape)}, expected {shape}"
        )
    if path is None:
        return P, {"file": None, "hit": False}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            _torch_save({"key": key, "P": P}, tmp)
    except (OSError, RuntimeError) as error:
        cache_warning(
            f"could not write concept-matrix cache entry {path} ({type(error).__name__}: "
            f"{error}); carrying on without caching"
        )
        return P, {"file": None, "hit": False}
    return P, {"file": str(path), "hit": False}


_concept_matrix = cached_concept_matrix  # the old name


def _read_concept_matrix(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached ``P`` at ``path``, or ``None`` (a miss, with a warning naming the file)."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        P = entry.get("P") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("key") != key:
            problem = "it holds another key"
        elif not isinstance(P, torch.Tensor) or tuple(P.shape) != shape:
            found = tuple(P.shape) if isinstance(P, torch.Tensor) else type(P).__name__
            problem = f"it holds {found}, expected shape {shape}"
        else:
            return P
    except Exception as error:  # noqa: BLE001  (torch.load raises many types on damaged files)
        problem = f"{type(error).__name__}: {error}"
    cache_warning(f"concept-matrix cache entry {path} cannot be used ({problem}); recomputing it")
    return None


def _skipped(probe: Dataset) -> dict[str, str]:
    """Probe files that could not be decoded and were skipped (path -> reason)."""
    while isinstance(probe, torch.utils.data.Subset):
        probe = probe.dataset
    return {str(k): str(v) for k, v in (getattr(probe, "skipped", None) or {}).items()}


def dissect(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    concepts: str | ConceptSet = "20k",
    embedder: str | Embedder = "conse",
    similarity: str = DEFAULT_SIMILARITY,
    *,
    similarity_params: dict[str, Any] | None = None,
    pooling: str | dict[str, str] = "auto",
    policy: str = "argmax",
    seed: int = 0,
    batch_size: int = 64,
    top_k: int = 5,
    device: str = "cpu",
    transform: Callable | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    keep_scores: bool = False,
) -> Dissection:
    """Describe every unit of ``layers`` with a concept (CLIP-Dissect, method.md §6-7).

    Args:
        model: any model; LWTA layers are recorded after competition.
        layers: dotted layer names (see :func:`discover.dissection.recording.list_layers`).
        probe: raw probe images (a dataset of ``(image, ...)`` items, images not normalised).
        concepts: a concept-set name (``20k``, ``broden``, ``shapes``, ...) or a file path.
        embedder: ``conse`` (offline default), ``annotations`` (ground truth),
            ``open_clip:<arch>:<weights>``, ``hf:<dir>``, or an :class:`Embedder`.
        similarity: a name in :data:`discover.dissection.similarity.SIMILARITIES`.
        similarity_params: keyword arguments for the similarity function.
        pooling: ``auto``, one pooling for all layers, or ``{layer: pooling}``.
        policy: LWTA eval policy while recording (``argmax`` or ``sample``, seeded).
        top_k: runner-up concepts kept per unit.
        transform: the target model's preprocessing of a raw probe image (default: the
            model's evaluation transform, see :func:`model_view`).
        cache_dir: content-keyed cache of activations and of ``P``; ``None`` switches it off.
        keep_scores: also keep every layer's full ``K x M`` score matrix (and the concept
            list) as :attr:`Dissection.scores` / :attr:`Dissection.concepts`; ``save`` then
            writes ``scores.pt``. Needed for exact ranks in
            :func:`discover.evaluation.descriptions.evaluate_descriptions`.

    Example:
        >>> from discover.data import ShapesWorld
        >>> d = dissect(model, ["fc"], ShapesWorld(n=2000, split="val"),
        ...             concepts="shapes_classes", embedder="annotations")  # doctest: +SKIP
        >>> d.labels("fc")[:3]  # doctest: +SKIP
        ['circle', 'square', 'triangle']
    """
    t0 = time.time()
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    score_fn = get_similarity(similarity)
    # checked before the (long) recording, not after it
    check_options(score_fn, dict(similarity_params or {}), f"similarity {similarity!r}")
    resolve_device(device)
    modules = resolve_layers(model, layers)
    cache = Path(cache_dir) if cache_dir is not None else None  # P and record expand "~"
    config = DissectConfig(
        layers=list(modules),
        concepts=concept_set.name,
        embedder=emb.id,
        similarity=similarity,
        similarity_params=dict(similarity_params or {}),
        pooling=pooling,
        policy=policy,
        seed=seed,
        batch_size=batch_size,
        top_k=top_k,
    )
    recording = record(
        model,
        list(modules),
        model_view(model, probe, transform),
        pooling,
        batch_size=batch_size,
        device=device,
        policy=policy,
        seed=seed,
        cache_dir=cache,
        progress=progress,
    )
    P, p_cache = cached_concept_matrix(emb, probe, concept_set, batch_size, cache, progress)
    k = min(top_k, len(concept_set))
    units: list[UnitDescription] = []
    layer_meta: dict[str, Any] = {}
    scores: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        Q = recording.activations[name]
        info: dict[str, Any] = {}
        S = score_fn(P, Q, **config.similarity_params, info=info)
        if keep_scores:
            scores[name] = S.detach().float().cpu()
        top_scores, top_idx = S.float().topk(k, dim=1)
        U = module.U if isinstance(module, LWTA) else None
        wins = recording.wins.get(name)
        active = wins.mean(0) if wins is not None else None
        for unit in range(S.shape[0]):
            top = [
                (concept_set.concepts[j], float(s))
                for s, j in zip(top_scores[unit], top_idx[unit], strict=True)
            ]
            units.append(
                UnitDescription(
                    layer=name,
                    unit=unit,
                    label=top[0][0],
                    score=top[0][1],
                    top=top,
                    block=unit // U if U else None,
                    position=unit % U if U else None,
                    active_fraction=float(active[unit]) if active is not None else None,
                )
            )
        dead = int((Q.abs().sum(0) == 0).sum())
        layer_meta[name] = {
            "units": int(S.shape[0]),
            "pooling": recording.pooling[name],
            "U": U,
            "dead_units": dead,
            "similarity_info": info,
        }
    meta = {
        "layers": layer_meta,
        "concept_set": concept_set.summary(),
        "embedder": emb.metadata(),
        "probe": {
            "images": len(probe),
            "skipped_unreadable": _skipped(probe),
            "fingerprint": dataset_fingerprint(probe),
            "type": type(probe).__name__,
        },
        "recording": recording.meta,
        "concept_matrix_cache": p_cache,
        "model": getattr(getattr(model, "cvn_config", None), "to_dict", dict)(),
        "model_sha256": recording.meta.get("model_sha256") or model_fingerprint(model),
        "seconds": time.time() - t0,
    }
    return Dissection(
        units, config, meta, scores, list(concept_set.concepts) if keep_scores else None
    )
