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
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .concepts import ConceptSet, load_concepts
from .embedders import Embedder, build_embedder
from .lwta import LWTA
from .recording import dataset_fingerprint, record, resolve_layers
from .similarity import DEFAULT_SIMILARITY, get_similarity

__all__ = ["UnitDescription", "Dissection", "DissectConfig", "dissect", "model_view"]

CSV_COLUMNS = ("layer", "unit", "block", "position", "label", "score", "top5")
SCORES_FILE = "scores.pt"  # optional: the full score matrices (dissect(..., keep_scores=True))


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
        """Write ``descriptions.csv`` and ``dissection.json`` into ``out`` (overwriting both).

        Each file is written to a temporary name and renamed, so a rerun never appends and
        an interrupted write never leaves half a file.
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "descriptions.csv", self.to_csv())
        payload = {
            "config": asdict(self.config),
            "meta": self.meta,
            "units": [asdict(u) for u in self.units],
        }
        _atomic_write(out / "dissection.json", json.dumps(payload, indent=2, default=str))
        scores_file = out / SCORES_FILE
        if self.scores:
            tmp = scores_file.with_name(f".{scores_file.name}.{os.getpid()}.tmp")
            torch.save({"concepts": self.concepts, "scores": self.scores}, tmp)
            tmp.replace(scores_file)
        else:
            scores_file.unlink(missing_ok=True)  # never leave another run's matrix beside ours
        return out

    @classmethod
    def load(cls, out: str | Path) -> Dissection:
        """Read a saved dissection directory back."""
        path = Path(out) / "dissection.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no dissection in {out} (looked for {path}); create one "
                "with `discover dissect ... --out DIR`"
            )
        data = json.loads(path.read_text())
        units = [
            UnitDescription(**{**u, "top": [tuple(t) for t in u["top"]]}) for u in data["units"]
        ]
        result = cls(units, DissectConfig(**data["config"]), data["meta"])
        scores_file = Path(out) / SCORES_FILE
        if scores_file.is_file():
            saved = torch.load(scores_file, map_location="cpu", weights_only=True)
            result.scores, result.concepts = dict(saved["scores"]), saved["concepts"]
        return result


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
    from .data import eval_transform

    return _ModelView(probe, transform or eval_transform(model))


def _concept_matrix(
    embedder: Embedder,
    probe: Dataset,
    concepts: ConceptSet,
    batch_size: int,
    cache_dir: str | Path | None,
    progress: bool,
) -> tuple[torch.Tensor, dict]:
    """``P`` for the probe and concepts, from the content-keyed cache when it is there."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
    probe_id = dataset_fingerprint(probe)
    key = hashlib.sha256(
        json.dumps([embedder.id, probe_id, len(probe), concepts.sha256]).encode()
    ).hexdigest()
    path = cache_dir / "concepts" / f"{key}.pt" if cache_dir is not None and probe_id else None
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu"), {"file": str(path), "hit": True}
    P = embedder.concept_matrix(probe, concepts.concepts, batch_size=batch_size, progress=progress)
    if P.shape != (len(probe), len(concepts)):
        raise ValueError(
            f"embedder {embedder.id!r} returned P of shape {tuple(P.shape)}, "
            f"expected ({len(probe)}, {len(concepts)})"
        )
    if path is None:
        return P, {"file": None, "hit": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(P, tmp)
    tmp.replace(path)
    return P, {"file": str(path), "hit": False}


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
        layers: dotted layer names (see :func:`discover.recording.list_layers`).
        probe: raw probe images (a dataset of ``(image, ...)`` items, images not normalised).
        concepts: a concept-set name (``20k``, ``broden``, ``shapes``, ...) or a file path.
        embedder: ``conse`` (offline default), ``annotations`` (ground truth),
            ``open_clip:<arch>:<weights>``, ``hf:<dir>``, or an :class:`Embedder`.
        similarity: a name in :data:`discover.similarity.SIMILARITIES`.
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
            :func:`discover.description_eval.evaluate_descriptions`.

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
    P, p_cache = _concept_matrix(emb, probe, concept_set, batch_size, cache, progress)
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
        "seconds": time.time() - t0,
    }
    return Dissection(
        units, config, meta, scores, list(concept_set.concepts) if keep_scores else None
    )
