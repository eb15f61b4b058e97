"""How right are the descriptions? The final-layer protocol and the simulation score.

Two measurements, each reported next to two baselines (method.md §9):

* **Final-layer protocol** (:func:`evaluate_descriptions`). Classifier units have ground
  truth: unit ``k`` should be described as class ``k``. From a dissection of the classifier
  layer it reports top-1 / top-5 description accuracy, mean and median rank of the true class
  among each unit's scores, the AUC of a unit's best score against top-1 correctness, and the
  **matched-pair** cosine between each description and its class name, in the embedder's
  text space and in a sentence-model space (all-mpnet-base-v2 when installed, else
  all-MiniLM-L6-v2).
* **Simulation score** (:func:`simulation_score`), for hidden layers without ground truth:
  label every unit on one half of the probe set, then correlate the unit's activations on the
  *other* half with its label's column of the concept matrix ``P``. A good label predicts
  when its unit fires.

Baselines, each as mean ± std over ``null_repeats`` seeded draws:

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

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from discover._utils import csv_text, write_files
from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.core import Dissection, UnitDescription
from discover.dissection.embedders import (
    SENTENCE_MODELS,
    AnnotationEmbedder,
    Embedder,
    build_embedder,
    load_sentence_model,
)
from discover.dissection.similarity import DEFAULT_SIMILARITY, get_similarity
from discover.errors import InputError

__all__ = [
    "NullStats",
    "Metric",
    "DescriptionScores",
    "SimulationScores",
    "evaluate_descriptions",
    "simulation_score",
    "evaluate_simulation",
    "resolve_class_names",
    "text_encoder",
]

TextEncoder = Callable[[Sequence[str]], Tensor]
"""``texts -> (len(texts), D)`` L2-normalised vectors."""

RANK_METRICS = ("top1", "top5", "mean_rank", "median_rank", "auc")
METRIC_TITLES = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "mean_rank": "mean rank",
    "median_rank": "median rank",
    "auc": "AUC (best score vs top-1 correct)",
    "embedder_cos": "matched cosine, embedder text space",
    "sentence_cos": "matched cosine, sentence model",
    "correlation": "held-out correlation (label column vs activation)",
    "oracle_correlation": "ceiling: best concept chosen on the held-out half",
}


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass
class NullStats:
    """A baseline over repeated draws: mean and standard deviation of the figure.

    ``repeats`` counts the draws in which the figure was defined (an AUC needs both correct
    and incorrect units); ``None`` when it never was.
    """

    mean: float | None
    std: float | None
    repeats: int

    @classmethod
    def of(cls, values: Tensor) -> NullStats:
        """Summarise one figure per draw, skipping undefined (non-finite) draws."""
        v = values.double()
        v = v[torch.isfinite(v)]
        if v.numel() == 0:
            return cls(None, None, 0)
        std = float(v.std(correction=1)) if v.numel() > 1 else 0.0
        return cls(float(v.mean()), std, int(v.numel()))

    def __str__(self) -> str:
        return "n/a" if self.mean is None else f"{_fmt(self.mean)} ± {_fmt(self.std)}"


@dataclass
class Metric:
    """One figure with its two baselines; ``note`` says why a figure is missing (``None``)."""

    value: float | None
    random_concept: NullStats | None = None
    shuffled_neurons: NullStats | None = None
    higher_is_better: bool = True
    note: str = ""


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def _metrics_table(metrics: dict[str, Metric]) -> str:
    lines = [f"{'metric':<52} {'value':>9}  {'random concept':>18}  {'shuffled neurons':>18}"]
    for name, m in metrics.items():
        line = (
            f"{METRIC_TITLES.get(name, name):<52} {_fmt(m.value):>9}  "
            f"{str(m.random_concept or 'n/a'):>18}  {str(m.shuffled_neurons or 'n/a'):>18}"
        )
        if m.note:
            line += f"  ({m.note})"
        lines.append(line)
    return "\n".join(lines)


def _metrics_csv(metrics: dict[str, Metric]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "metric",
            "value",
            "random_concept_mean",
            "random_concept_std",
            "shuffled_neurons_mean",
            "shuffled_neurons_std",
            "higher_is_better",
            "note",
        ]
    )
    for name, m in metrics.items():
        row: list[Any] = [name, "" if m.value is None else f"{m.value:.6g}"]
        for null in (m.random_concept, m.shuffled_neurons):
            row += (
                ["", ""]
                if null is None or null.mean is None
                else [
                    f"{null.mean:.6g}",
                    f"{null.std:.6g}",
                ]
            )
        writer.writerow([*row, m.higher_is_better, m.note])
    return buffer.getvalue()


class _Saveable:
    """``to_dict`` / ``save`` shared by the result types (JSON + two CSV tables)."""

    _stem: str
    dissection_folder: ClassVar[Path | None] = None
    """The folder of the saved dissection the figures come from (where :meth:`save` writes
    by default); set per result, not saved."""

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (``float('inf')`` ranks become ``null``)."""
        return _json_safe(asdict(self))  # type: ignore[call-overload]

    def save(self, out: str | Path | None = None) -> Path:
        """Write ``<stem>.json`` (everything), ``<stem>.csv`` (one row per figure, with both
        baselines) and ``<stem>_units.csv`` (one row per unit) into ``out``, by default the
        folder of the dissection they were computed from; returns the JSON path. The three
        are written as one unit (all in full under temporary names, then renamed) and
        overwritten, never appended; a failure leaves the old ones unchanged.

        Example:
            >>> evaluate_descriptions("runs/u8/fc", "shapes_classes").save()  # doctest: +SKIP
            PosixPath('runs/u8/fc/description_scores.json')
        """
        if out is None:
            if self.dissection_folder is None:
                raise InputError(
                    "out: these figures come from a dissection that was never saved; "
                    "give the folder to write them to"
                )
            out = self.dissection_folder
        out = Path(out)
        files = {
            f"{self._stem}.csv": _metrics_csv(self.metrics),  # type: ignore[attr-defined]
            f"{self._stem}_units.csv": csv_text(self.per_unit),  # type: ignore[attr-defined]
            f"{self._stem}.json": json.dumps(self.to_dict(), indent=2),
        }
        write_files(out, files)
        return out / f"{self._stem}.json"


def _json_safe(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


@dataclass
class DescriptionScores(_Saveable):
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
        lines = [head, _metrics_table(self.metrics)]
        if self.missing_classes:
            lines.append(
                f"class names not in the concept set ({len(self.missing_classes)}): "
                + ", ".join(self.missing_classes)
            )
        return "\n".join(lines)


@dataclass
class SimulationScores(_Saveable):
    """Simulation score of one layer's labels (see :func:`simulation_score`).

    Attributes:
        layer: the layer.
        similarity: the similarity function that chose the labels on the fitting half.
        units: unit count.
        scored_units: units active (non-constant) on both halves.
        fit_images, heldout_images: sizes of the two halves.
        metrics: ``correlation`` (mean held-out Pearson r, with both baselines) and
            ``oracle_correlation`` (a ceiling: the best concept picked on the held-out half).
        per_unit: ``unit, label, correlation, best_heldout_concept, best_heldout_correlation``.
        settings: seed, fit fraction, repeats, similarity parameters.
    """

    layer: str
    similarity: str
    units: int
    scored_units: int
    fit_images: int
    heldout_images: int
    metrics: dict[str, Metric]
    per_unit: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def _stem(self) -> str:
        return f"simulation_scores-{self.layer}"

    def summary(self) -> str:
        """A printable table of every figure with its baselines."""
        head = (
            f"simulation score: layer {self.layer}, {self.scored_units}/{self.units} units "
            f"active on both halves; labels by {self.similarity} on {self.fit_images} images, "
            f"scored on {self.heldout_images} held-out images"
        )
        return "\n".join([head, _metrics_table(self.metrics)])


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
# Rank figures
# --------------------------------------------------------------------------------------------


def ranks_from_scores(S: Tensor, columns: Tensor) -> Tensor:
    """``R[k, j]``: pessimistic 1-based rank of concept ``columns[j]`` among ``S[k, :]``."""
    if not torch.isfinite(S).all():
        raise InputError("the dissection's score matrix holds NaN or Inf values")
    ascending = S.double().sort(dim=1).values
    values = S.double()[:, columns].contiguous()
    below = torch.searchsorted(ascending, values, side="left")
    return (S.shape[1] - below).double()


def _ranks_from_top(rows: Sequence[UnitDescription], classes: Sequence[str]) -> Tensor:
    """Ranks from the stored top-n lists; ``inf`` where a class is beyond a unit's top-n."""
    ranks = torch.full((len(rows), len(classes)), math.inf, dtype=torch.float64)
    for k, row in enumerate(rows):
        position = {}
        for r, (concept, _) in enumerate(row.top, start=1):
            position.setdefault(concept, r)
        for j, name in enumerate(classes):
            if name in position:
                ranks[k, j] = position[name]
    return ranks


def _average_ranks(x: Tensor) -> Tensor:
    from scipy.stats import rankdata

    return torch.as_tensor(rankdata(x.double().numpy()), dtype=torch.float64)


def _auc(scores: Tensor, positive: Tensor) -> Tensor:
    """ROC AUC of ``scores`` ``[n]`` for each row of labels ``positive`` ``[R, n]`` (ties 1/2).

    ``nan`` for a row whose labels are all equal (the AUC is undefined there).
    """
    ranks = _average_ranks(scores)
    pos = positive.double()
    n_pos = pos.sum(-1)
    n_neg = pos.shape[-1] - n_pos
    u = (pos * ranks).sum(-1) - n_pos * (n_pos + 1) / 2
    auc = u / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, math.nan))


def _median(x: Tensor) -> Tensor:
    s = x.sort(dim=-1).values
    n = s.shape[-1]
    return (s[..., (n - 1) // 2] + s[..., n // 2]) / 2


def _rank_figures(ranks: Tensor, best: Tensor) -> dict[str, Tensor]:
    """Each rank figure for every row of ``ranks`` ``[R, n]``: ``{name: [R]}``."""
    return {
        "top1": (ranks <= 1).double().mean(-1),
        "top5": (ranks <= 5).double().mean(-1),
        "mean_rank": ranks.mean(-1),
        "median_rank": _median(ranks),
        "auc": _auc(best, ranks <= 1),
    }


def _value(x: Tensor) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


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
    """Score a classifier layer's descriptions against its class names (method.md §9).

    Unit ``k`` of ``layer`` should be described as ``class_names[k]``. The rank figures
    (top-1/top-5, mean/median rank, AUC) need each unit's score for its class: exact when
    the dissection kept its score matrices (``dissect(..., keep_scores=True)``), otherwise
    taken from the stored top-n lists, where a class beyond a unit's top-n has an unknown
    rank (top-k for ``k <= n`` stays exact; a mean rank is then reported as missing).

    Args:
        dissection: a :class:`~discover.dissection.core.Dissection` or its saved directory.
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
            describe it (see :meth:`~discover.dissection.core.Dissection.check_model`).
        allow_mismatch: with ``model``, warn instead of refusing a dissection of other
            weights, layers or ``U``.

    Raises:
        ValueError: the layer's unit count differs from the number of class names, an
            unknown layer, or a concept set that cannot be recovered.
        StaleDissectionError: ``model`` is not the dissected model.

    Class names missing from the concept set are listed in ``missing_classes`` and warned
    about; the rank figures cover the other units only.

    Example:
        >>> d = dissect(model, ["fc"], probe, "shapes_classes", AnnotationEmbedder(),
        ...             keep_scores=True)  # doctest: +SKIP
        >>> scores = evaluate_descriptions(d, "shapes_classes")  # doctest: +SKIP
        >>> scores.metrics["top1"].value, scores.metrics["top1"].shuffled_neurons.mean  # doctest: +SKIP
        (0.9, 0.1)
    """
    if not isinstance(dissection, Dissection):
        dissection = Dissection.load(dissection)
    if model is not None:
        dissection.check_model(model, allow_mismatch=allow_mismatch)
    if null_repeats < 1:
        raise InputError(f"null_repeats must be >= 1, got {null_repeats}")
    if max_random_concepts < 1:
        raise InputError(f"max_random_concepts must be >= 1, got {max_random_concepts}")
    classes = resolve_class_names(class_names)
    layer = layer or dissection.config.layers[-1]
    rows = dissection.layer(layer)
    K = len(rows)
    if K != len(classes):
        raise InputError(
            f"layer {layer!r} has {K} units but {len(classes)} class names were given: the "
            "final-layer protocol needs one class per unit (unit k is class k). Pick the "
            f"classifier layer (layers here: {', '.join(dissection.config.layers)}) and the "
            "model's own class list."
        )
    concepts = _concept_list(dissection)
    M = len(concepts)
    index: dict[str, int] = {}
    for i, c in enumerate(concepts):
        index.setdefault(c, i)
    present = [k for k in range(K) if classes[k] in index]
    missing = [classes[k] for k in range(K) if classes[k] not in index]
    if missing:
        warnings.warn(
            f"{len(missing)} of {K} class names are not in the concept set "
            f"{dissection.config.concepts!r} ({', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}); the rank figures cover the other "
            f"{len(present)} units only",
            stacklevel=2,
        )
    generator = torch.Generator().manual_seed(seed)
    labels = [r.label for r in rows]
    best = torch.tensor([r.score for r in rows], dtype=torch.float64)

    S = dissection.scores.get(layer)
    if S is not None:
        if tuple(S.shape) != (K, M):
            raise InputError(
                f"the stored score matrix of {layer!r} is {tuple(S.shape)}, expected ({K}, {M})"
            )
        columns = torch.tensor([index[classes[k]] for k in present], dtype=torch.long)
        R = ranks_from_scores(S[present], columns) if present else torch.empty(0, 0)
        rank_source = "exact (full score matrix)"
    else:
        R = _ranks_from_top([rows[k] for k in present], [classes[k] for k in present])
        depth = min((len(r.top) for r in rows), default=0)
        rank_source = (
            "exact (top lists cover every concept)"
            if depth >= M
            else f"from the stored top-{depth} lists (deeper ranks unknown)"
        )

    metrics: dict[str, Metric] = {}
    per_rank: Tensor | None = None
    n = len(present)
    if n:
        per_rank = R.diagonal()
        b = best[present]
        observed = _rank_figures(per_rank[None], b)
        uniform = torch.randint(1, M + 1, (null_repeats, n), generator=generator).double()
        randoms = _rank_figures(uniform, b)
        perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(null_repeats)])
        shuffled = _rank_figures(R[torch.arange(n)[None], perms], b)
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
                higher_is_better=name not in ("mean_rank", "median_rank"),
                note=note,
            )
    else:
        for name in RANK_METRICS:
            metrics[name] = Metric(
                None,
                higher_is_better=name not in ("mean_rank", "median_rank"),
                note="no class name is in the concept set",
            )

    pool_size = min(M, max_random_concepts)
    pool = (
        concepts
        if pool_size == M
        else [concepts[i] for i in torch.randperm(M, generator=generator)[:pool_size]]
    )
    draws = torch.randint(0, pool_size, (null_repeats, K), generator=generator)
    perms_all = torch.stack([torch.randperm(K, generator=generator) for _ in range(null_repeats)])
    cosines: dict[str, Tensor | None] = {}
    encoders: dict[str, str | None] = {}
    for key, encoder, why in (
        ("embedder_cos", *_embedder_text(embedder, dissection)),
        ("sentence_cos", text_encoder(sentence_model), "no sentence model (sentence_model=None)"),
    ):
        if encoder is None:
            metrics[key] = Metric(None, note=f"n/a: {why}")
            cosines[key], encoders[key] = None, None
            continue
        name, encode = encoder
        E_desc, E_class = _encode(encode, labels), _encode(encode, classes)
        cross = E_desc @ E_class.T  # [K, K]: description i vs class j
        matched = cross.diagonal()
        E_pool = _encode(encode, pool)
        pool_cos = E_pool @ E_class.T  # [pool, K]
        random_cos = pool_cos[draws, torch.arange(K)[None]].mean(-1)
        shuffled_cos = cross[torch.arange(K)[None], perms_all].mean(-1)
        metrics[key] = Metric(
            float(matched.mean()), NullStats.of(random_cos), NullStats.of(shuffled_cos)
        )
        cosines[key], encoders[key] = matched, name

    rank_of = dict(zip(present, per_rank.tolist() if per_rank is not None else [], strict=True))
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
                "embedder_cos": None
                if cosines["embedder_cos"] is None
                else float(cosines["embedder_cos"][k]),
                "sentence_cos": None
                if cosines["sentence_cos"] is None
                else float(cosines["sentence_cos"][k]),
            }
        )
    settings = {
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
    scores = DescriptionScores(layer, K, n, M, missing, metrics, per_unit, settings)
    scores.dissection_folder = dissection.folder
    return scores


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


# --------------------------------------------------------------------------------------------
# Simulation score
# --------------------------------------------------------------------------------------------


def _zscore(x: Tensor) -> tuple[Tensor, Tensor]:
    """Column z-scores (population std) and a mask of non-constant columns."""
    std, mean = torch.std_mean(x, dim=0, correction=0)
    active = std > 1e-12 * (1 + mean.abs())
    return (x - mean) / torch.where(active, std, torch.ones_like(std)) * active, active


def simulation_score(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    concepts: Sequence[str] | ConceptSet,
    *,
    layer: str = "layer",
    similarity: str = DEFAULT_SIMILARITY,
    similarity_params: dict[str, Any] | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    null_repeats: int = 200,
) -> SimulationScores:
    """How well each unit's label predicts its activations on held-out images.

    The probe images are split at random (seeded) into a fitting part (``fit_fraction``) and
    a held-out part. Labels are chosen on the fitting part exactly as a dissection would
    (``similarity`` on ``P`` and ``Q`` restricted to it); on the held-out part, the score of
    unit ``k`` is the Pearson correlation between ``Q[:, k]`` and ``P[:, label_k]``. Units
    constant on either part (e.g. LWTA units that never win) are left out and counted; a
    concept constant on the held-out part correlates 0.

    Args:
        concept_acts: ``P`` ``(N, M)``.
        neuron_acts: ``Q`` ``(N, K)``, the layer's pooled activations on the same images.
        concepts: the ``M`` concept strings.
        layer: name for the report.
        similarity: a name in :data:`discover.dissection.similarity.SIMILARITIES`.
        similarity_params: its keyword arguments.
        fit_fraction: share of images used to choose labels.
        seed: seeds the split and both baselines.
        null_repeats: draws per baseline.

    Example:
        >>> P = torch.rand(400, 6); Q = P[:, [2, 4]] + 0.1 * torch.randn(400, 2)
        >>> s = simulation_score(P, Q, list("abcdef"), similarity="cos3")
        >>> [u["label"] for u in s.per_unit], s.metrics["correlation"].value > 0.9
        (['c', 'e'], True)
    """
    names = list(concepts.concepts if isinstance(concepts, ConceptSet) else concepts)
    P, Q = torch.as_tensor(concept_acts), torch.as_tensor(neuron_acts)
    if P.ndim != 2 or Q.ndim != 2 or P.shape[0] != Q.shape[0]:
        raise InputError(
            f"simulation_score: P must be (N, M) and Q (N, K) over the same images, got "
            f"{tuple(P.shape)} and {tuple(Q.shape)}"
        )
    if P.shape[1] != len(names):
        raise InputError(f"simulation_score: P has {P.shape[1]} columns for {len(names)} concepts")
    if not 0 < fit_fraction < 1:
        raise InputError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    if null_repeats < 1:
        raise InputError(f"null_repeats must be >= 1, got {null_repeats}")
    N, K = Q.shape
    M = P.shape[1]
    n_fit = round(fit_fraction * N)
    if n_fit < 2 or N - n_fit < 2:
        raise InputError(f"simulation_score: {N} images cannot be split {fit_fraction}:rest")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(N, generator=generator)
    fit, held = order[:n_fit], order[n_fit:]
    params = dict(similarity_params or {})
    S = get_similarity(similarity)(P[fit], Q[fit], **params)
    labels = S.argmax(dim=1)
    Pz, _ = _zscore(P[held].double())
    Qz, active_held = _zscore(Q[held].double())
    _, active_fit = _zscore(Q[fit].double())
    C = Qz.T @ Pz / len(held)  # [K, M] held-out Pearson correlations
    scored = torch.nonzero(active_fit & active_held).flatten()
    n = len(scored)
    own = C[torch.arange(K), labels]
    best = C.max(dim=1)
    metrics: dict[str, Metric] = {}
    if n:
        Cs, ls = C[scored], labels[scored]
        draws = torch.randint(0, M, (null_repeats, n), generator=generator)
        perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(null_repeats)])
        rows = torch.arange(n)[None]
        metrics["correlation"] = Metric(
            float(own[scored].mean()),
            NullStats.of(Cs[rows, draws].mean(-1)),
            NullStats.of(Cs[rows, ls[perms]].mean(-1)),
        )
        metrics["oracle_correlation"] = Metric(
            float(best.values[scored].mean()),
            note="ceiling, not a description: the best concept picked on the held-out half",
        )
    else:
        note = "no unit is active on both halves"
        metrics["correlation"] = Metric(None, note=note)
        metrics["oracle_correlation"] = Metric(None, note=note)
    is_scored = torch.zeros(K, dtype=torch.bool)
    is_scored[scored] = True
    per_unit = [
        {
            "unit": k,
            "label": names[int(labels[k])],
            "active": bool(is_scored[k]),
            "correlation": float(own[k]) if is_scored[k] else None,
            "best_heldout_concept": names[int(best.indices[k])] if is_scored[k] else None,
            "best_heldout_correlation": float(best.values[k]) if is_scored[k] else None,
        }
        for k in range(K)
    ]
    settings = {
        "layer": layer,
        "similarity": similarity,
        "similarity_params": params,
        "fit_fraction": fit_fraction,
        "seed": seed,
        "null_repeats": null_repeats,
        "concepts": M,
        "correlation": "Pearson, on the held-out images",
        "baselines": {
            "random_concept": "each unit's label replaced by a uniformly random concept",
            "shuffled_neurons": "labels permuted across the scored units",
        },
    }
    return SimulationScores(
        layer, similarity, K, n, len(fit), len(held), metrics, per_unit, settings
    )


def evaluate_simulation(
    dissection: Dissection,
    probe: Dataset,
    embedder: str | Embedder | None = None,
    *,
    layers: Sequence[str] | None = None,
    P: Tensor | None = None,
    similarity: str | None = None,
    similarity_params: dict[str, Any] | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    null_repeats: int = 200,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, SimulationScores]:
    """:func:`simulation_score` for the layers of a dissection, from what it saved.

    ``Q`` comes from the dissection (its probe activations), ``P`` from
    :func:`discover.dissection.concept_matrix` on the same probe set, concept set and embedder
    (cached with ``cache_dir``), or is passed in. Nothing runs the model again.

    Args:
        dissection: the dissection (it must hold its probe activations).
        probe: the raw probe set the dissection was made on (checked by fingerprint).
        embedder: the dissection's embedder (name or instance; its id must match); not needed
            with ``P``.
        layers: the layers to score (default: all of the dissection's).
        P: a concept matrix already computed for this probe set and concept set.
        similarity, similarity_params: default: the dissection's.

    Example:
        >>> d = discover.dissect(model, ["layer3"], probe, "shapes", "annotations")  # doctest: +SKIP
        >>> sims = evaluate_simulation(d, probe, "annotations")  # doctest: +SKIP
        >>> print(sims["layer3"].summary())  # doctest: +SKIP
    """
    from discover.dissection.core import concept_matrix

    names = list(layers) if layers is not None else dissection.layers
    Qs = {name: dissection.probe_activations(name) for name in names}
    dissection.check_probe(probe, "evaluate_simulation: probe")
    concept_set = load_concepts(dissection.config.concepts)
    if P is None:
        if embedder is None:
            raise InputError(
                "evaluate_simulation: pass the dissection's embedder (or P, the concept matrix)"
            )
        emb = build_embedder(embedder)
        if emb.id != dissection.config.embedder:
            raise InputError(
                f"evaluate_simulation: embedder {emb.id!r} is not the dissection's "
                f"({dissection.config.embedder!r})"
            )
        P = concept_matrix(
            probe,
            concept_set,
            emb,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )
    return {
        name: simulation_score(
            P,
            Q,
            concept_set,
            layer=name,
            similarity=similarity or dissection.config.similarity,
            similarity_params=dissection.config.similarity_params
            if similarity_params is None and similarity is None
            else similarity_params,
            fit_fraction=fit_fraction,
            seed=seed,
            null_repeats=null_repeats,
        )
        for name, Q in Qs.items()
    }
