"""Neuron dissection: a text label for every unit of any layer (CLIP-Dissect, LWTA-aware).

For a probe set of ``N`` raw images and ``M`` concept strings, the embedder gives the
image-concept matrix ``P`` (``N x M``); recording gives each layer's pooled activations ``Q``
(``N x K``, post-competition for LWTA layers); a similarity function scores ``S = sim(P, Q)``
(``K x M``) and unit ``k`` is described by ``argmax_m S[k, m]`` (docs/method.md §6).

The target model sees the probe through its own evaluation transform (from the training
run's ``data_config`` when it has one); the embedder applies its own preprocessing.

This module is the pipeline (:func:`dissect`, :func:`label_layers`); the result type is in
:mod:`~discover.dissection.result` (its records in :mod:`~discover.dissection.records`, its
files in :mod:`~discover.dissection.storage`) and ``P`` in
:mod:`~discover.dissection.probe_concepts`.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from discover._utils import cache_root, check_options, resolve_device
from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import Embedder, build_embedder
from discover.dissection.labels import (
    MATCH_SIMILARITY,
    TIE_BREAK_SIMILARITY,
    LabelChoice,
    abstentions,
    choose_labels,
    column_flags,
    label_defaults,
)
from discover.dissection.layers import resolve_layers
from discover.dissection.probe_concepts import concept_matrix, concept_rows
from discover.dissection.recording import (
    dataset_fingerprint,
    model_fingerprint,
    model_view,
    record,
    record_rows,
)
from discover.dissection.records import (
    ConceptStats,
    DissectConfig,
    UnitDescription,
)
from discover.dissection.result import Dissection
from discover.dissection.rows import TensorRows
from discover.dissection.sae import SAE, as_sae, record_latents
from discover.dissection.significance import SIGNIFICANCE_SIMILARITY, label_significance
from discover.dissection.similarity import get_similarity
from discover.dissection.streaming import column_stats, streamed_significance, streamed_similarity
from discover.errors import InputError
from discover.nn.checkpoints import count_parameters
from discover.nn.lwta import LWTA

__all__ = [
    "label_layers",
    "model_about",
    "probe_about",
    "dissect_config",
    "STREAM_ENTRIES",
    "dissect",
]

STREAM_ENTRIES = 2**30
"""``dissect(stream="auto")`` streams ``P`` when it would hold at least this many entries
(``N x M``; 2**30 float32 values are 4 GiB). Below it the in-memory path is faster: a
streamed significance draw recomputes ``P``'s blocks from the image vectors (the scale
benchmark of issue 25 is to set this threshold by measurement)."""


def dissect_config(
    model: nn.Module,
    layers: Sequence[str],
    concepts: str | ConceptSet,
    embedder: str | Embedder,
    similarity: str | None,
    *,
    similarity_params: dict[str, Any] | None = None,
    pooling: str | dict[str, str] = "auto",
    policy: str = "argmax",
    seed: int = 0,
    batch_size: int = 64,
    top_k: int = 5,
    null_repeats: int = 16,
    significance_similarity: str | None = SIGNIFICANCE_SIMILARITY,
    abstain_p: float | str | None = "default",
    min_match: float | str | None = "default",
) -> tuple[DissectConfig, ConceptSet, Embedder, dict[str, nn.Module]]:
    """:func:`dissect`'s options checked and resolved (the embedder kind's defaults filled
    in) before anything is recorded: the configuration, the concept set, the embedder and
    the layers. Shared with the sharded dissection (:mod:`discover.dissection.shards`)."""
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    defaults = label_defaults(emb.kind)
    if similarity is None:
        similarity = defaults.similarity
        if similarity_params is None:
            similarity_params = dict(defaults.similarity_params)
    if isinstance(abstain_p, str):
        if abstain_p != "default":
            raise InputError(f"abstain_p must be a number, None or 'default', got {abstain_p!r}")
        abstain_p = defaults.abstain_p if null_repeats else None
    elif abstain_p is not None and not 0 < abstain_p <= 1:
        raise InputError(f"abstain_p must be in (0, 1] or None, got {abstain_p!r}")
    if isinstance(min_match, str):
        if min_match != "default":
            raise InputError(f"min_match must be a number, None or 'default', got {min_match!r}")
        min_match = defaults.min_match
    elif min_match is not None and not -1 <= min_match <= 1:
        raise InputError(f"min_match must be in [-1, 1] or None, got {min_match!r}")
    if abstain_p is not None and not null_repeats:
        raise InputError(
            f"abstain_p={abstain_p} judges labels by their significance, which needs "
            "null_repeats >= 2 (shuffled-image draws); pass abstain_p=None to skip it"
        )
    score_fn = get_similarity(similarity)
    judge = significance_similarity or similarity
    get_similarity(judge)  # an unknown name fails now
    # checked before the (long) recording, not after it
    check_options(
        score_fn, dict(similarity_params or {}), f"similarity_params: similarity {similarity!r}"
    )
    modules = resolve_layers(model, layers)
    if null_repeats and null_repeats < 2:
        raise InputError(f"null_repeats must be 0 or >= 2, got {null_repeats}")
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
        null_repeats=null_repeats,
        significance_similarity=judge if null_repeats else None,
        abstain_p=abstain_p,
        min_match=min_match,
    )
    return config, concept_set, emb, modules


def dissect(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    concepts: str | ConceptSet = "20k",
    embedder: str | Embedder = "conse",
    similarity: str | None = None,
    *,
    similarity_params: dict[str, Any] | None = None,
    pooling: str | dict[str, str] = "auto",
    policy: str = "argmax",
    seed: int = 0,
    batch_size: int = 64,
    top_k: int = 5,
    device: str = "cpu",
    transform: Callable | None = None,
    cache_dir: str | Path | None = "auto",
    progress: bool = True,
    keep_scores: bool = False,
    sae: SAE | str | Path | None = None,
    null_repeats: int = 16,
    significance_similarity: str | None = SIGNIFICANCE_SIMILARITY,
    abstain_p: float | str | None = "default",
    min_match: float | str | None = "default",
    allow_nonfinite: bool = False,
    stream: bool | str = "auto",
) -> Dissection:
    """Describe every unit of ``layers`` with a concept (CLIP-Dissect, docs/method.md §6-7).

    Args:
        model: any model; LWTA layers are recorded after competition.
        layers: dotted layer names (see :func:`discover.dissection.layers.list_layers`).
        probe: raw probe images (a dataset of ``(image, ...)`` items, images not normalised).
        concepts: a concept-set name (``20k``, ``broden``, ``shapes``, ...) or a file path.
        embedder: ``conse`` (offline default), ``annotations`` (ground truth),
            ``open_clip:<arch>:<weights>``, ``hf:<dir>``, or an :class:`Embedder`.
        similarity: a name in :data:`discover.dissection.similarity.SIMILARITIES`; ``None``:
            the embedder kind's default (:data:`~discover.dissection.labels.LABEL_DEFAULTS`).
        similarity_params: keyword arguments for it (default: the kind's, for its default).
        pooling: ``auto``, one pooling for all layers, or ``{layer: pooling}``.
        policy: LWTA eval policy while recording (``argmax`` or ``sample``, seeded).
        top_k: runner-up concepts kept per unit.
        transform: the model's preprocessing of a raw probe image (default: :func:`model_view`).
        cache_dir: content-keyed cache of activations and of ``P``: ``"auto"`` (under
            :func:`discover._utils.cache_root`), a folder, or ``None`` (no cache).
        keep_scores: also keep every layer's ``K x M`` scores (:attr:`Dissection.scores`),
            for exact ranks in :func:`discover.evaluation.descriptions.evaluate_descriptions`.
        sae: a :class:`~discover.dissection.sae.SAE` of the one layer in ``layers`` (or its
            folder): its latents are the units, one label per latent.
        null_repeats: shuffled-image draws behind each label's significance (``z``,
            ``p_null``; :mod:`discover.dissection.significance`); 0 skips it.
        significance_similarity: the function that judges each label for that significance
            (``None``: ``similarity``); the label is always ``similarity``'s choice.
        abstain_p, min_match: a unit whose label's ``p_null`` is above ``abstain_p`` (which
            needs ``null_repeats``) or whose ``match`` is below ``min_match`` is shown
            *unlabelled*, as are dead, non-finite and tied units (see
            :mod:`discover.dissection.labels`); ``"default"``: the embedder kind's value.
        allow_nonfinite: record NaN or infinite activations (their units stay unlabelled)
            instead of raising :class:`~discover.errors.NonFiniteError`.
        stream: compute ``P`` and every score row block by row block
            (:mod:`discover.dissection.streaming`); ``"auto"``: from :data:`STREAM_ENTRIES`.

    Example:
        >>> d = dissect(model, ["fc"], ShapesWorld(n=2000, split="val"),
        ...             concepts="shapes_classes", embedder="annotations")  # doctest: +SKIP
    """
    t0 = time.time()
    config, concept_set, emb, modules = dissect_config(
        model, layers, concepts, embedder, similarity, similarity_params=similarity_params,
        pooling=pooling, policy=policy, seed=seed, batch_size=batch_size, top_k=top_k,
        null_repeats=null_repeats, significance_similarity=significance_similarity,
        abstain_p=abstain_p, min_match=min_match,
    )  # fmt: skip
    resolve_device(device)
    sae = as_sae(sae) if sae is not None else None
    cache = _cache_folder(cache_dir)
    stream = _streams(stream, probe, concept_set)
    recording = _record(
        model, list(modules), model_view(model, probe, transform), pooling, sae, stream, cache,
        batch_size=batch_size, device=device, policy=policy, seed=seed, progress=progress,
        allow_nonfinite=allow_nonfinite,
    )  # fmt: skip
    return _label(
        recording, model, modules, probe, concept_set, emb, config, sae=sae, stream=stream,
        cache=cache, batch_size=batch_size, progress=progress, keep_scores=keep_scores, t0=t0,
    )  # fmt: skip


def _cache_folder(cache_dir: str | Path | None) -> Path | None:
    """The cache of ``dissect(cache_dir=...)``: ``"auto"`` is :func:`cache_root`."""
    # P and record expand "~"; only the string "auto" means the cache root
    auto = isinstance(cache_dir, str) and cache_dir == "auto"
    return cache_root() if auto else Path(cache_dir) if cache_dir is not None else None


def _streams(stream: bool | str, probe: Dataset, concept_set: ConceptSet) -> bool | str:
    """Whether ``dissect(stream=...)`` streams: ``"auto"`` when ``P`` would hold
    :data:`STREAM_ENTRIES` or more values."""
    if stream not in (True, False, "auto"):
        raise InputError(f"stream must be True, False or 'auto', got {stream!r}")
    if stream == "auto":
        return len(probe) * len(concept_set) >= STREAM_ENTRIES
    return stream


def _record(
    model: nn.Module, layers: list[str], view: Dataset, pooling: str | dict[str, str],
    sae: SAE | None, stream: bool | str, cache: Path | None, **options: Any,
) -> Any:  # fmt: skip
    """``Q``: streamed to row files as it is recorded (never ``N x K`` in memory), or in
    memory (an SAE's latents with ``sae``)."""
    if stream and sae is None:
        return record_rows(model, layers, view, _rows_folder(cache), pooling, **options)
    recorder = record if sae is None else partial(record_latents, sae=sae)
    return recorder(model, layers, view, pooling, cache_dir=cache, **options)


def _label(
    recording: Any, model: nn.Module, modules: dict[str, nn.Module], probe: Dataset,
    concept_set: ConceptSet, emb: Embedder, config: DissectConfig, *, sae: SAE | None,
    stream: bool | str, cache: Path | None, batch_size: int, progress: bool,
    keep_scores: bool, t0: float,
) -> Dissection:  # fmt: skip
    """``P`` of the probe (when streamed, in files removed afterwards), then every recorded
    layer labelled (:func:`label_layers`)."""
    p_cache: dict[str, Any] = {}
    with contextlib.ExitStack() as scratch:
        P = _probe_concepts(
            probe, concept_set, emb, stream, cache, batch_size, progress, p_cache, scratch
        )
        units_per_block = {n: m.U if isinstance(m, LWTA) else None for n, m in modules.items()}
        return label_layers(
            recording, P, concept_set, emb.metadata(), config, units_per_block,
            model_about(model, recording.meta.get("model_sha256")), probe_about(probe),
            sae=sae, keep_scores=keep_scores, p_cache=p_cache, t0=t0,
        )  # fmt: skip


def _probe_concepts(
    probe: Dataset, concept_set: ConceptSet, emb: Embedder, stream: bool | str,
    cache: Path | None, batch_size: int, progress: bool, info: dict[str, Any],
    scratch: contextlib.ExitStack,
) -> Any:  # fmt: skip
    """``P``: when streaming, a row source of the image vectors (or annotations) in a
    temporary folder that ``scratch`` removes, never ``N x M`` in memory; else the matrix."""
    if stream:
        folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="discover-P-"))
        return concept_rows(
            probe, concept_set, emb, folder, batch_size=batch_size, cache_dir=cache,
            progress=progress, info=info,
        )  # fmt: skip
    return concept_matrix(
        probe, concept_set, emb, batch_size=batch_size, cache_dir=cache, progress=progress,
        info=info,
    )  # fmt: skip


def model_about(model: nn.Module, sha256: str | None = None) -> dict[str, Any]:
    """What a dissection records about its model (``sha256``: its fingerprint if known)."""
    return {
        "model": getattr(getattr(model, "cvn_config", None), "to_dict", dict)(),
        "model_class": type(model).__name__,
        "parameters": count_parameters(model),
        "model_sha256": sha256 or model_fingerprint(model),
    }


def probe_about(probe: Dataset) -> dict[str, Any]:
    """What a dissection records about its probe set."""
    return {
        "images": len(probe),
        "skipped_unreadable": _skipped(probe),
        "fingerprint": dataset_fingerprint(probe),
        "type": type(probe).__name__,
    }


def _skipped(probe: Dataset) -> dict[str, str]:
    """Probe files that could not be decoded and were skipped (path -> reason)."""
    while isinstance(probe, torch.utils.data.Subset):
        probe = probe.dataset
    return {str(k): str(v) for k, v in (getattr(probe, "skipped", None) or {}).items()}


def _rows_folder(cache: Path | None) -> Path:
    """Where a streamed dissection's ``Q`` rows go while the process runs: a temporary folder
    (on the cache's disk when there is a cache), removed when the process exits;
    :meth:`Dissection.save` copies them into the dissection."""
    parent = None
    if cache is not None:
        parent = cache.expanduser() / "tmp"
        parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="discover-Q-", dir=parent))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _rows(Q: Any) -> Any:
    return TensorRows(Q) if isinstance(Q, torch.Tensor) else Q


def _score(name: str, P: Any, Q: Any, params: dict[str, Any], info=None) -> torch.Tensor:
    """``S`` of one similarity function: in memory, or from row sources when ``P`` or ``Q``
    is one."""
    if isinstance(P, torch.Tensor) and isinstance(Q, torch.Tensor):
        return get_similarity(name)(P, Q, **params, info=info)
    return streamed_similarity(name, _rows(P), _rows(Q), info=info, **params)


def _significance(
    name: str, P: Any, Q: torch.Tensor, judged: torch.Tensor, params: dict[str, Any],
    repeats: int, seed: int,
) -> Any:  # fmt: skip
    """The labels' significance: in memory, or from row sources when ``P`` or ``Q`` is one."""
    if isinstance(P, torch.Tensor) and isinstance(Q, torch.Tensor):
        return label_significance(
            P, Q, judged, get_similarity(name), params, repeats=repeats, seed=seed
        )
    return streamed_significance(
        name, _rows(P), _rows(Q), judged, repeats=repeats, seed=seed, **params
    )


class _LayerLabels(NamedTuple):
    """One layer's scores ``S``, its labels (:class:`~discover.dissection.labels.LabelChoice`),
    each label's match and significance (``None``: not drawn), why units abstain (``None``:
    labelled) and the similarity function's ``info``."""

    S: torch.Tensor
    choice: LabelChoice
    match: torch.Tensor
    sig: Any
    reasons: list[str | None]
    info: dict[str, Any]


def label_layers(
    recording: Any,
    P: Any,
    concept_set: ConceptSet,
    embedder_info: dict[str, Any],
    config: DissectConfig,
    units_per_block: dict[str, int | None],
    model_info: dict[str, Any],
    probe_info: dict[str, Any],
    *,
    sae: Any = None,
    keep_scores: bool = False,
    p_cache: dict[str, Any] | None = None,
    t0: float | None = None,
) -> Dissection:
    """Score, label and judge every layer of a recording: the second half of :func:`dissect`
    (which records first), also used to merge the shards of a sharded dissection
    (:mod:`discover.dissection.shards`).

    Args:
        recording: a :class:`~discover.dissection.recording.Recording` or
            :class:`~discover.dissection.recording.RowsRecording` (``activations``,
            ``wins``, ``pooling``, ``maps``, ``meta``).
        P: ``N x M`` concept matrix, a tensor or a row source.
        embedder_info: the embedder's ``metadata()``.
        units_per_block: each layer's competition block size ``U`` (``None``: not LWTA).
        model_info, probe_info: :func:`model_about` and :func:`probe_about` of what was
            recorded.
    """
    t0 = time.time() if t0 is None else t0
    p_cache = {} if p_cache is None else p_cache
    k = min(config.top_k, len(concept_set))
    names = list(concept_set.concepts)
    units: list[UnitDescription] = []
    layer_meta: dict[str, Any] = {}
    scores: dict[str, torch.Tensor] = {}
    fractions: dict[str, torch.Tensor] = {}
    for name in config.layers:
        Q = recording.activations[name]
        labels = _label_layer(P, Q, names, k, config)
        if keep_scores:
            scores[name] = labels.S.detach().float().cpu()
        active = _active_fraction(recording.wins.get(name))
        if active is not None:
            fractions[name] = active.cpu()
        U = units_per_block.get(name)
        units += _unit_rows(name, labels, names, U if sae is None else None, active)
        layer_meta[name] = _layer_meta(labels, Q, recording.pooling[name], U)
    meta = {
        "layers": layer_meta,
        "concept_set": concept_set.summary(),
        "embedder": embedder_info,
        "probe": probe_info,
        "recording": recording.meta,
        "concept_matrix_cache": p_cache,
        **model_info,
        "seconds": time.time() - t0,
        **({"sae": sae.provenance()} if sae is not None else {}),
    }
    return Dissection(
        units,
        config,
        meta,
        scores,
        list(concept_set.concepts) if keep_scores else None,
        activations={
            name: recording.activations[name].float().cpu()
            if isinstance(recording.activations[name], torch.Tensor)
            else recording.activations[name]  # row files (a streamed dissection)
            for name in config.layers
        },
        winner_fractions=fractions,
        concept_stats=ConceptStats.of(P, names)
        if isinstance(P, torch.Tensor)
        else ConceptStats(names, *column_stats(P)),
        maps={name: recording.maps[name] for name in config.layers if name in recording.maps},
    )


def _label_layer(P: Any, Q: Any, names: list[str], k: int, config: DissectConfig) -> _LayerLabels:
    """Score one layer's units against every concept, choose their labels (``k`` concepts
    each) and judge them."""
    similarity = config.similarity
    info: dict[str, Any] = {}
    S = _score(similarity, P, Q, config.similarity_params, info)
    computed = {similarity: S}  # each score matrix once (the tie-break and match: corr)
    for extra in (TIE_BREAK_SIMILARITY, MATCH_SIMILARITY):
        if extra not in computed:
            computed[extra] = _score(extra, P, Q, {})
    choice = choose_labels(S, computed[TIE_BREAK_SIMILARITY], names, k)
    match = computed[MATCH_SIMILARITY].float().cpu().gather(1, choice.top[:, :1]).squeeze(1)
    sig = _judge(P, Q, choice, computed, config) if config.null_repeats else None
    reasons = abstentions(
        Q, choice.tie, sig.p if sig is not None else None, config.abstain_p, match,
        config.min_match,
    )  # fmt: skip
    return _LayerLabels(S, choice, match, sig, reasons, info)


def _judge(
    P: Any, Q: Any, choice: LabelChoice, computed: dict[str, torch.Tensor], config: DissectConfig
) -> Any:
    """The labels' significance under the judging function (``significance_similarity``)."""
    similarity = config.similarity
    judge = config.significance_similarity or similarity
    if judge == similarity:
        params, judged = config.similarity_params, choice.scores[:, 0]
    else:  # the label's score under the judge, against the judge's best by chance
        params = {}
        judging = computed[judge] if judge in computed else _score(judge, P, Q, {})
        judged = judging.float().cpu().gather(1, choice.top[:, :1]).squeeze(1)
    return _significance(judge, P, Q, judged, params, config.null_repeats, config.seed)


def _active_fraction(wins: Any) -> torch.Tensor | None:
    """How often each unit of an LWTA layer won on the probe (``None``: not LWTA)."""
    if wins is None:
        return None
    return wins.float().mean(0) if isinstance(wins, torch.Tensor) else column_stats(wins)[0]


def _unit_rows(
    name: str, labels: _LayerLabels, names: list[str], U: int | None,
    active: torch.Tensor | None,
) -> list[UnitDescription]:  # fmt: skip
    """One :class:`UnitDescription` per unit of layer ``name`` (``U``: its competition block
    size, for each unit's block and position)."""
    top_scores, top_idx, sig = labels.choice.scores, labels.choice.top, labels.sig
    rows = []
    for unit in range(labels.S.shape[0]):
        top = [(names[j], float(s)) for s, j in zip(top_scores[unit], top_idx[unit], strict=True)]
        rows.append(
            UnitDescription(
                layer=name,
                unit=unit,
                label=top[0][0],
                score=top[0][1],
                top=top,
                block=unit // U if U else None,
                position=unit % U if U else None,
                active_fraction=float(active[unit]) if active is not None else None,
                z=float(sig.z[unit]) if sig is not None else None,
                p_null=float(sig.p[unit]) if sig is not None else None,
                abstained=labels.reasons[unit],
                match=float(labels.match[unit]),
            )
        )
    return rows


def _layer_meta(labels: _LayerLabels, Q: Any, pooling: str, U: int | None) -> dict[str, Any]:
    """What a dissection records about one layer."""
    reasons, sig = labels.reasons, labels.sig
    return {
        "units": int(labels.S.shape[0]),
        "pooling": pooling,
        "U": U,
        "dead_units": int(column_flags(Q)[0].sum()),
        "similarity_info": labels.info,
        "above_chance": int(sig.above_chance.sum()) if sig is not None else None,
        "abstained": {reason: reasons.count(reason) for reason in dict.fromkeys(reasons) if reason},
    }
