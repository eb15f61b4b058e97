"""The probe's image-concept matrix ``P`` (``N x M``) from an embedder and a concept set: in
memory with a content-keyed cache (:func:`concept_matrix`), or as a row source computed
block by block, never held whole (:func:`concept_rows`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from discover._utils import atomic_path, cache_warning, staged_dir
from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import Embedder, build_embedder
from discover.dissection.recording import dataset_fingerprint
from discover.dissection.rows import FileRows, ProductRows, RowWriter, TensorRows
from discover.dissection.storage import save_tensors
from discover.errors import InputError

__all__ = ["concept_matrix", "concept_rows"]


def concept_matrix(
    probe: Dataset,
    concepts: str | ConceptSet = "20k",
    embedder: str | Embedder = "conse",
    *,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``P`` (``N x M``): the image-concept similarities of the probe set, the one way to get
    them (used by :func:`dissect`, the simulation score, planted recovery and the benchmarks).

    With ``cache_dir``, ``P`` comes from a content-keyed cache when it is there: the key hashes
    the embedder's id, the probe set's content and the concept set. An entry that cannot be
    read, or holds another key or shape, is a miss: it warns, naming the file, and is
    recomputed and replaced. A write that fails (disk full, read-only) warns and carries on
    without caching. The result always has shape ``(len(probe), len(concepts))``.

    Args:
        probe: raw probe images.
        concepts: a concept-set name, a file path or a :class:`ConceptSet`.
        embedder: an embedder name (see :func:`discover.build_embedder`) or an
            :class:`Embedder`.
        cache_dir: the cache root (``None``: no cache).
        info: filled with ``{"file": cache entry or None, "hit": bool}``.

    Example:
        >>> from discover.data import ShapesWorld
        >>> P = concept_matrix(ShapesWorld(n=64, image_size=32), "shapes",
        ...                    "annotations", progress=False)
        >>> tuple(P.shape)
        (64, 46)
    """
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    path, key = _cache_entry(cache_dir, emb, probe, concept_set)
    shape = (len(probe), len(concept_set))
    found = {"file": None, "hit": False}
    if info is not None:
        info.update(found)
    if path is not None and path.is_file():
        P = _read_concept_matrix(path, key, shape)
        if P is not None:
            if info is not None:
                info.update(file=str(path), hit=True)
            return P
    P = emb.concept_matrix(probe, concept_set.concepts, batch_size=batch_size, progress=progress)
    if tuple(P.shape) != shape:
        raise InputError(
            f"embedder {emb.id!r} returned P of shape {tuple(P.shape)}, expected {shape} "
            "(probe images, concepts)"
        )
    if path is None:
        return P
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_tensors({"P": P.detach().float().contiguous()}, tmp, {"key": key})
    except (OSError, RuntimeError) as error:
        cache_warning(
            f"could not write concept-matrix cache entry {path} ({type(error).__name__}: "
            f"{error}); carrying on without caching"
        )
        return P
    if info is not None:
        info["file"] = str(path)
    return P


def _cache_entry(
    cache_dir: str | Path | None, emb: Embedder, probe: Dataset, concept_set: ConceptSet
) -> tuple[Path | None, str]:
    """The cache file of ``P`` (``None``: no cache, or a probe without a content fingerprint)
    and its key, a hash of the embedder's id, the probe's content and the concept set."""
    probe_id = dataset_fingerprint(probe)
    key = hashlib.sha256(
        json.dumps([emb.id, probe_id, len(probe), concept_set.sha256, 3]).encode()
    ).hexdigest()
    if cache_dir is None or not probe_id:
        return None, key
    return Path(cache_dir).expanduser() / "concepts" / f"{key}.safetensors", key


def concept_rows(
    probe: Dataset,
    concepts: str | ConceptSet,
    embedder: str | Embedder,
    folder: str | Path,
    *,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> Any:
    """``P`` as a row source (:mod:`discover.dissection.streaming`), never held whole: the
    probe's image vectors are written to row files and each row of ``P`` is computed when it
    is read (annotations: their columns). With ``cache_dir`` the image vectors are cached
    under a key of the embedder's id and the probe's content (not the concepts: every
    concept set reuses them); without, they go to ``folder``.

    Example:
        >>> P = concept_rows(probe, "20k", "conse", "tmp/vectors")  # doctest: +SKIP
    """
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    texts = list(concept_set.concepts)
    if info is not None:
        info.update(file=None, hit=False, streamed=True)
    own = type(emb).concept_rows is not Embedder.concept_rows  # e.g. annotations
    if own:
        return emb.concept_rows(probe, texts, folder, batch_size=batch_size, progress=progress)
    if type(emb).concept_matrix is not Embedder.concept_matrix:  # P its own way, in memory
        return TensorRows(
            emb.concept_matrix(probe, texts, batch_size=batch_size, progress=progress)
        )
    probe_id = dataset_fingerprint(probe)
    if cache_dir is None or not probe_id:
        return emb.concept_rows(probe, texts, folder, batch_size=batch_size, progress=progress)
    key = hashlib.sha256(json.dumps([emb.id, probe_id, len(probe), 1]).encode()).hexdigest()
    cached = Path(cache_dir).expanduser() / "image-vectors" / key
    hit = (cached / "rows.json").is_file() and FileRows(cached).shape[0] == len(probe)
    if not hit:
        with staged_dir(cached) as staging:
            with RowWriter(staging) as writer:
                for vectors in emb.image_vectors(probe, batch_size, progress=progress):
                    writer.append(vectors)
    if info is not None:
        info.update(file=str(cached), hit=hit)
    return ProductRows(FileRows(cached), emb.text_vectors(texts, batch_size, progress))


def _read_concept_matrix(path: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached ``P`` at ``path``, or ``None`` (a miss, with a warning naming the file)."""
    try:
        with safe_open(path, framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
            P = f.get_tensor("P") if "P" in f.keys() else None  # noqa: SIM118
        if stored != key:
            problem = "it holds another key"
        elif P is None or tuple(P.shape) != shape:
            found = tuple(P.shape) if P is not None else "no matrix"
            problem = f"it holds {found}, expected shape {shape}"
        else:
            return P
    except Exception as error:  # noqa: BLE001  (damaged files raise several types)
        problem = f"{type(error).__name__}: {error}"
    cache_warning(f"concept-matrix cache entry {path} cannot be used ({problem}); recomputing it")
    return None
