"""How right are the descriptions? The final-layer protocol (docs/method.md §9).

Classifier units have ground truth: unit ``k`` should be described as class ``k``. From a
dissection of the classifier layer, :func:`evaluate_descriptions` reports top-1 / top-5
description accuracy, mean and median rank of the true class among each unit's scores, the
AUC of a unit's best score against top-1 correctness, and the **matched-pair** cosine
between each description and its class name, in the embedder's text space and in a
sentence-model space (all-mpnet-base-v2 when installed, else all-MiniLM-L6-v2). For hidden
layers without ground truth, see the simulation score (:mod:`discover.evaluation.simulation`).

Every figure is reported next to two baselines, each as mean ± std over ``null_repeats``
seeded draws:

* **random concept**: every unit gets a concept drawn uniformly from the concept set (for the
  rank figures: a uniformly random rank of the true class);
* **shuffled neurons**: the units' descriptions are kept but matched to a random
  permutation of the classes (final layer) or of the units' labels (simulation); this keeps
  the descriptions' overall quality and removes only the unit-to-class correspondence.

Ranks are 1-based and pessimistic: a concept tied with the true class counts as ranked above
it, so a dead unit whose scores are all equal gets rank ``M``, never 1.

Example:
    >>> from discover.evaluation.descriptions import evaluate_descriptions
    >>> scores = evaluate_descriptions("runs/u8/dissection", "shapes_classes")  # doctest: +SKIP
    >>> print(scores.summary())  # doctest: +SKIP
    >>> scores.save("runs/u8/dissection")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import (
    SENTENCE_MODELS,
    AnnotationEmbedder,
    Embedder,
    build_embedder,
    load_sentence_model,
)
from discover.dissection.records import UnitDescription
from discover.dissection.result import Dissection
from discover.errors import InputError
from discover.evaluation.metrics import Metric, NullStats, SaveableScores, metrics_table
from discover.evaluation.ranks import RANK_METRICS, rank_figures, ranks_from_scores, ranks_from_top

__all__ = [
    "DescriptionScores",
    "evaluate_descriptions",
    "resolve_class_names",
    "text_encoder",
]

TextEncoder = Callable[[Sequence[str]], Tensor]
"""``texts -> (len(texts), D)`` L2-normalised vectors."""

_LOWER_IS_BETTER = ("mean_rank", "median_rank")


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass
class DescriptionScores(SaveableScores):
    """The final-layer protocol's figures for one layer (see :func:`evaluate_descriptions`).

    Attributes:
        layer: the evaluated layer.
        units: its unit count (= the number of classes).
        scored_units: units whose class name is in the concept set (the rank figures cover
            only these; the cosine figures cover every unit).
        concepts: size ``M`` of the concept set the units were matched against.
        missing_classes: class names absent from the concept set.
        metrics: ``top1``, ``top5``, ``mean_rank``, ``median_rank``, ``auc``,
            ``embedder_cos``, ``sentence_cos``, each a :class:`Metric` with both baselines.
        per_unit: ``unit, class, label, score, rank, correct, embedder_cos, sentence_cos``.
        settings: how the figures were obtained (seed, repeats, encoders, rank source, ...).
    """

    layer: str
    units: int
    scored_units: int
    concepts: int
    missing_classes: list[str]
    metrics: dict[str, Metric]
    per_unit: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    _stem = "description_scores"

    def summary(self) -> str:
        """A printable table of every figure with its baselines."""
        head = (
            f"final-layer protocol: layer {self.layer}, {self.units} units, "
            f"{self.scored_units} with their class in the concept set "
            f"({self.settings.get('concept_set')}, {self.concepts} concepts; similarity "
            f"{self.settings.get('similarity')}; ranks {self.settings.get('ranks')})"
        )
        lines = [head, metrics_table(self.metrics)]
        if self.missing_classes:
            lines.append(
                f"class names not in the concept set ({len(self.missing_classes)}): "
                + ", ".join(self.missing_classes)
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def resolve_class_names(classes: str | os.PathLike[str] | Sequence[str] | ConceptSet) -> list[str]:
    """Class names in class-index order from a list, a concept set, a file or a data set name.

    A string is tried as a registered data set (its ``class_names``, e.g. ``fashion-mnist``
    or ``shapes``), then as a registered concept set (``shapes_classes``; ``-`` and ``_``
    are interchangeable), then as a text file with one class per line.

    Raises:
        ValueError: unknown name, an empty list, or a file with repeated lines (the class
            index would shift).

    Example:
        >>> resolve_class_names("shapes-classes")[:3]
        ['circle', 'square', 'triangle']
    """
    if isinstance(classes, ConceptSet):
        names = list(classes.concepts)
    elif isinstance(classes, (str, os.PathLike)):
        names = _class_names_from_spec(os.fspath(classes))
    else:
        names = list(classes)
        if not all(isinstance(c, str) for c in names):
            raise InputError("class names must be strings")
    if not names:
        raise InputError("the class name list is empty")
    return names


def _class_names_from_spec(spec: str) -> list[str]:
    from discover.data.registry import DATASETS, build_dataset
    from discover.dissection.concepts import CONCEPT_SETS

    key = spec.lower().replace("_", "-")
    if key in DATASETS:  # before concept sets: "shapes" or "cifar100" name a vocabulary too
        return list(build_dataset(key, "test").class_names)
    for name in dict.fromkeys([spec, spec.replace("-", "_")]):
        if name in CONCEPT_SETS:
            return list(load_concepts(name).concepts)
    path = Path(spec).expanduser()
    if path.is_file():
        cs = load_concepts(path)
        if cs.dropped_duplicates:
            raise InputError(
                f"class file {path} repeats {cs.dropped_duplicates} line(s) "
                f"({', '.join(cs.duplicates[:5])}): class k must be line k, so names must be "
                "unique"
            )
        return list(cs.concepts)
    if path.suffix or "/" in spec or os.sep in spec:
        raise FileNotFoundError(f"class name file not found: {path}")
    raise InputError(
        f"unknown class list {spec!r}: expected a concept set name (e.g. shapes_classes, "
        "imagenet_labels), a text file with one class name per line, or a data set name "
        f"({', '.join(sorted(DATASETS))})"
    )


def text_encoder(spec: Any) -> tuple[str, TextEncoder] | None:
    """A text encoder from a sentence-model spec: ``(name, texts -> normalised vectors)``.

    ``"auto"``: all-mpnet-base-v2 when its pip pieces are installed, else all-MiniLM-L6-v2;
    ``"mpnet"``, ``"minilm"`` or a sentence-transformers folder; an object with
    ``encode(texts, normalize_embeddings=True)`` (a ``SentenceTransformer``); an
    :class:`~discover.dissection.embedders.Embedder` (its text tower); a callable ``texts -> Tensor``;
    a ``(name, encoder)`` pair as returned here (reused as is); ``None`` or ``"none"``: no
    encoder (returns ``None``).

    Example:
        >>> name, encode = text_encoder("minilm")  # doctest: +SKIP
        >>> encode(["a cat"]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1]):
        return str(spec[0]), spec[1]
    if isinstance(spec, Embedder):
        return spec.name, lambda texts: torch.nn.functional.normalize(
            spec.encode_texts(list(texts)).float(), dim=-1
        )
    if isinstance(spec, str):
        if spec == "auto":
            try:
                model, name = load_sentence_model("mpnet"), SENTENCE_MODELS["mpnet"]
            except (FileNotFoundError, ImportError):
                model, name = load_sentence_model("minilm"), SENTENCE_MODELS["minilm"]
        else:
            model = load_sentence_model(spec)
            name = SENTENCE_MODELS.get(spec, Path(spec).name)
        return name, _sentence_encoder(model)
    if hasattr(spec, "encode"):
        return type(spec).__name__, _sentence_encoder(spec)
    if callable(spec):
        return getattr(
            spec, "__name__", type(spec).__name__
        ), lambda texts: torch.nn.functional.normalize(
            torch.as_tensor(spec(list(texts))).float(), dim=-1
        )
    raise InputError(
        f"sentence_model: expected 'auto', 'mpnet', 'minilm', a folder, a SentenceTransformer "
        f"or a callable, got {type(spec).__name__}"
    )


def _sentence_encoder(model: Any) -> TextEncoder:
    def encode(texts: Sequence[str]) -> Tensor:
        vectors = model.encode(
            list(texts),
            batch_size=64,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return torch.nn.functional.normalize(torch.as_tensor(vectors).float().cpu(), dim=-1)

    return encode


def _encode(encode: TextEncoder, texts: Sequence[str]) -> Tensor:
    """Encode each distinct string once; rows follow ``texts``."""
    unique = list(dict.fromkeys(texts))
    vectors = encode(unique)
    if vectors.shape[0] != len(unique):
        raise InputError(
            f"text encoder returned {vectors.shape[0]} vectors for {len(unique)} texts"
        )
    where = {t: i for i, t in enumerate(unique)}
    return vectors[[where[t] for t in texts]]


def _concept_list(dissection: Dissection) -> list[str]:
    if dissection.concepts is not None:
        return list(dissection.concepts)
    name = dissection.config.concepts
    try:
        concept_set = load_concepts(name)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(
            f"cannot recover the dissection's concept set {name!r} ({err}); rerun the "
            "dissection with keep_scores=True, which stores the concept list"
        ) from None
    recorded = dissection.about.concept_set
    if recorded is not None and concept_set.sha256[:12] not in recorded:
        raise InputError(
            f"the concept set {name!r} has changed since the dissection (it recorded "
            f"{recorded!r}, now sha256 {concept_set.sha256[:12]}); rerun the dissection"
        )
    return list(concept_set.concepts)


# --------------------------------------------------------------------------------------------
# The final-layer protocol
# --------------------------------------------------------------------------------------------


def evaluate_descriptions(
    dissection: Dissection | str | os.PathLike[str],
    class_names: str | os.PathLike[str] | Sequence[str] | ConceptSet,
    *,
    layer: str | None = None,
    embedder: str | Embedder | None = None,
    sentence_model: Any = "auto",
    seed: int = 0,
    null_repeats: int = 200,
    max_random_concepts: int = 2000,
    model: nn.Module | None = None,
    allow_mismatch: bool = False,
) -> DescriptionScores:
    """Score a classifier layer's descriptions against its class names (docs/method.md §9).

    Unit ``k`` of ``layer`` should be described as ``class_names[k]``. The rank figures
    (top-1/top-5, mean/median rank, AUC) need each unit's score for its class: exact when
    the dissection kept its score matrices (``dissect(..., keep_scores=True)``), otherwise
    taken from the stored top-n lists, where a class beyond a unit's top-n has an unknown
    rank (top-k for ``k <= n`` stays exact; a mean rank is then reported as missing). Class
    names missing from the concept set are listed in ``missing_classes`` and warned about;
    the rank figures cover the other units only.

    Args:
        dissection: a :class:`~discover.dissection.result.Dissection` or its saved directory.
        class_names: class names in class-index order, or a spec for
            :func:`resolve_class_names` (``shapes_classes``, a file, ``fashion-mnist``).
        layer: the classifier layer; default: the dissection's last layer.
        embedder: an embedder (or spec) whose text tower gives the ``embedder_cos`` figure;
            use the one the dissection used. ``None``: that figure is reported as missing,
            as it is for ``annotations`` (no text space).
        sentence_model: text encoder of the ``sentence_cos`` figure (see
            :func:`text_encoder`); ``"auto"``: mpnet when installed, else MiniLM.
        seed: seeds both baselines.
        null_repeats: draws per baseline.
        max_random_concepts: at most this many concepts (a seeded sample) are encoded for the
            random-concept baseline of the cosine figures.
        model: the model the figures are reported for; when given, the dissection must
            describe it (see :meth:`~discover.dissection.result.Dissection.check_model`).
        allow_mismatch: with ``model``, warn instead of refusing a dissection of other
            weights, layers or ``U``.

    Raises:
        ValueError: the layer's unit count differs from the number of class names, an
            unknown layer, or a concept set that cannot be recovered.
        StaleDissectionError: ``model`` is not the dissected model.

    Example:
        >>> d = dissect(model, ["fc"], probe, "shapes_classes", AnnotationEmbedder(),
        ...             keep_scores=True)  # doctest: +SKIP
        >>> scores = evaluate_descriptions(d, "shapes_classes")  # doctest: +SKIP
        >>> scores.metrics["top1"].value, scores.metrics["top1"].shuffled_neurons.mean  # doctest: +SKIP
        (0.9, 0.1)
    """
    dissection = _checked_dissection(dissection, model, allow_mismatch)
    _check_at_least_one(null_repeats=null_repeats, max_random_concepts=max_random_concepts)
    classes = resolve_class_names(class_names)
    layer = layer or dissection.config.layers[-1]
    rows = _classifier_units(dissection, layer, classes)
    concepts = _concept_list(dissection)
    present, missing = _classes_in_concepts(classes, concepts, dissection)
    generator = torch.Generator().manual_seed(seed)
    R, rank_source = _class_ranks(dissection, layer, classes, concepts, present)
    best = torch.tensor([rows[k].score for k in present], dtype=torch.float64)
    metrics, ranks = _rank_metrics(R, best, len(concepts), null_repeats, generator)
    pool_size = min(len(concepts), max_random_concepts)
    encoders = [
        ("embedder_cos", *_embedder_text(embedder, dissection)),
        ("sentence_cos", text_encoder(sentence_model), "no sentence model (sentence_model=None)"),
    ]
    cosines, matched, encoder_names = _cosine_metrics(
        [r.label for r in rows], classes, concepts, encoders, pool_size, null_repeats, generator
    )
    metrics.update(cosines)
    per_unit = _unit_rows(rows, classes, dict(zip(present, ranks, strict=True)), matched)
    settings = _protocol_settings(
        dissection, layer, classes, rank_source, encoder_names,
        seed=seed, null_repeats=null_repeats, pool_size=pool_size,
    )  # fmt: skip
    scores = DescriptionScores(
        layer, len(rows), len(present), len(concepts), missing, metrics, per_unit, settings
    )
    scores.dissection_folder = dissection.folder
    return scores


def _checked_dissection(
    dissection: Dissection | str | os.PathLike[str], model: nn.Module | None, allow_mismatch: bool
) -> Dissection:
    """The dissection (loaded from its folder), checked against ``model`` when given."""
    if not isinstance(dissection, Dissection):
        dissection = Dissection.load(dissection)
    if model is not None:
        dissection.check_model(model, allow_mismatch=allow_mismatch)
    return dissection


def _check_at_least_one(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")


def _classifier_units(
    dissection: Dissection, layer: str, classes: Sequence[str]
) -> list[UnitDescription]:
    """The layer's units, one per class (unit ``k`` is class ``k``)."""
    rows = dissection.layer(layer)
    if len(rows) != len(classes):
        raise InputError(
            f"layer {layer!r} has {len(rows)} units but {len(classes)} class names were given: "
            "the final-layer protocol needs one class per unit (unit k is class k). Pick the "
            f"classifier layer (layers here: {', '.join(dissection.config.layers)}) and the "
            "model's own class list."
        )
    return rows


def _classes_in_concepts(
    classes: Sequence[str], concepts: Sequence[str], dissection: Dissection
) -> tuple[list[int], list[str]]:
    """The units whose class is in the concept set, and the class names that are not (with
    a warning)."""
    known = set(concepts)
    present = [k for k, name in enumerate(classes) if name in known]
    missing = [name for name in classes if name not in known]
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(classes)} class names are not in the concept set "
            f"{dissection.config.concepts!r} ({', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}); the rank figures cover the other "
            f"{len(present)} units only",
            stacklevel=3,
        )
    return present, missing


def _class_ranks(
    dissection: Dissection,
    layer: str,
    classes: Sequence[str],
    concepts: Sequence[str],
    present: Sequence[int],
) -> tuple[Tensor, str]:
    """``R[i, j]``: the rank of the class of unit ``present[j]`` among the scores of unit
    ``present[i]``, from the stored score matrix or else the top-n lists; and which it was."""
    K, M = len(classes), len(concepts)
    S = dissection.scores.get(layer)
    if S is not None:
        if tuple(S.shape) != (K, M):
            raise InputError(
                f"the stored score matrix of {layer!r} is {tuple(S.shape)}, expected ({K}, {M})"
            )
        index: dict[str, int] = {}
        for i, c in enumerate(concepts):
            index.setdefault(c, i)
        columns = torch.tensor([index[classes[k]] for k in present], dtype=torch.long)
        R = ranks_from_scores(S[present], columns) if present else torch.empty(0, 0)
        return R, "exact (full score matrix)"
    rows = dissection.layer(layer)
    R = ranks_from_top([rows[k] for k in present], [classes[k] for k in present])
    depth = min((len(r.top) for r in rows), default=0)
    if depth >= M:
        return R, "exact (top lists cover every concept)"
    return R, f"from the stored top-{depth} lists (deeper ranks unknown)"


def _rank_metrics(
    R: Tensor, best: Tensor, M: int, null_repeats: int, generator: torch.Generator
) -> tuple[dict[str, Metric], list[float]]:
    """Each rank figure of the units whose class is in the concept set (``best``: their best
    scores), with both baselines; and each such unit's rank."""
    n = len(best)
    if not n:
        note = "no class name is in the concept set"
        metrics = {
            name: Metric(None, higher_is_better=name not in _LOWER_IS_BETTER, note=note)
            for name in RANK_METRICS
        }
        return metrics, []
    ranks = R.diagonal()
    observed = rank_figures(ranks[None], best)
    uniform = torch.randint(1, M + 1, (null_repeats, n), generator=generator).double()
    randoms = rank_figures(uniform, best)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(null_repeats)])
    shuffled = rank_figures(R[torch.arange(n)[None], perms], best)
    metrics = {}
    for name in RANK_METRICS:
        value = _value(observed[name][0])
        note = ""
        if value is None:
            note = (
                "undefined: every scored unit is correct, or none is"
                if name == "auc"
                else "some ranks lie beyond the stored top lists; dissect with keep_scores=True"
            )
        metrics[name] = Metric(
            value,
            NullStats.of(randoms[name]),
            NullStats.of(shuffled[name]),
            higher_is_better=name not in _LOWER_IS_BETTER,
            note=note,
        )
    return metrics, ranks.tolist()


def _value(x: Tensor) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _cosine_metrics(
    labels: Sequence[str],
    classes: Sequence[str],
    concepts: Sequence[str],
    encoders: Sequence[tuple[str, tuple[str, TextEncoder] | None, str]],
    pool_size: int,
    null_repeats: int,
    generator: torch.Generator,
) -> tuple[dict[str, Metric], dict[str, Tensor | None], dict[str, str | None]]:
    """For each ``(figure, encoder or None, why none)``: the mean cosine of every unit's
    description with its class name, with both baselines (a random concept of a seeded pool
    of ``pool_size``, the classes permuted); each unit's cosine; the encoder's name."""
    M, K = len(concepts), len(classes)
    pool = (
        concepts
        if pool_size == M
        else [concepts[i] for i in torch.randperm(M, generator=generator)[:pool_size]]
    )
    draws = torch.randint(0, pool_size, (null_repeats, K), generator=generator)
    perms = torch.stack([torch.randperm(K, generator=generator) for _ in range(null_repeats)])
    metrics: dict[str, Metric] = {}
    matched: dict[str, Tensor | None] = {}
    names: dict[str, str | None] = {}
    for key, encoder, why in encoders:
        if encoder is None:
            metrics[key] = Metric(None, note=f"n/a: {why}")
            matched[key], names[key] = None, None
            continue
        name, encode = encoder
        E_desc, E_class = _encode(encode, labels), _encode(encode, classes)
        cross = E_desc @ E_class.T  # [K, K]: description i vs class j
        pool_cos = _encode(encode, pool) @ E_class.T  # [pool, K]
        metrics[key] = Metric(
            float(cross.diagonal().mean()),
            NullStats.of(pool_cos[draws, torch.arange(K)[None]].mean(-1)),
            NullStats.of(cross[torch.arange(K)[None], perms].mean(-1)),
        )
        matched[key], names[key] = cross.diagonal(), name
    return metrics, matched, names


def _unit_rows(
    rows: Sequence[UnitDescription],
    classes: Sequence[str],
    rank_of: dict[int, float],
    matched: dict[str, Tensor | None],
) -> list[dict[str, Any]]:
    """One row per unit: its class, label, best score, rank of its class and cosines."""

    def cosine(key: str, k: int) -> float | None:
        values = matched[key]
        return None if values is None else float(values[k])

    per_unit = []
    for k, row in enumerate(rows):
        rank = rank_of.get(k)
        per_unit.append(
            {
                "unit": k,
                "class": classes[k],
                "label": row.label,
                "score": row.score,
                "rank": None if rank is None or math.isinf(rank) else int(rank),
                "correct": None if rank is None else bool(rank <= 1),
                "embedder_cos": cosine("embedder_cos", k),
                "sentence_cos": cosine("sentence_cos", k),
            }
        )
    return per_unit


def _protocol_settings(
    dissection: Dissection,
    layer: str,
    classes: Sequence[str],
    rank_source: str,
    encoders: dict[str, str | None],
    *,
    seed: int,
    null_repeats: int,
    pool_size: int,
) -> dict[str, Any]:
    """How the figures were obtained: the dissection's settings, the rank source and rule,
    the text encoders and the baselines' draws."""
    return {
        "layer": layer,
        "class_names": classes,
        "concept_set": dissection.config.concepts,
        "similarity": dissection.config.similarity,
        "dissection_embedder": dissection.config.embedder,
        "policy": dissection.config.policy,
        "ranks": rank_source,
        "tie_rule": "pessimistic: concepts tied with the true class rank above it",
        "auc_score": "each unit's best score (its description's score)",
        "embedder_text_space": encoders["embedder_cos"],
        "sentence_model": encoders["sentence_cos"],
        "seed": seed,
        "null_repeats": null_repeats,
        "random_concept_pool": pool_size,
        "baselines": {
            "random_concept": "each unit gets a uniformly random concept of the concept set "
            "(rank figures: a uniformly random rank in 1..M)",
            "shuffled_neurons": "descriptions kept, classes permuted across units "
            "(rank figures: among units whose class is in the concept set)",
        },
    }


def _embedder_text(
    embedder: str | Embedder | None, dissection: Dissection
) -> tuple[tuple[str, TextEncoder] | None, str]:
    """The embedder's text encoder, or ``None`` with the reason."""
    if embedder is None:
        if str(dissection.config.embedder).startswith("annotations"):
            return None, "the annotations embedder has no text space"
        return None, "no embedder given (pass embedder= to score in its text space)"
    emb = build_embedder(embedder)
    if isinstance(emb, AnnotationEmbedder):
        return None, "the annotations embedder has no text space"
    if emb.id != dissection.config.embedder:
        warnings.warn(
            f"embedder {emb.id!r} is not the one the dissection used "
            f"({dissection.config.embedder!r}); the embedder cosine is in its text space",
            stacklevel=3,
        )
    return text_encoder(emb), ""
