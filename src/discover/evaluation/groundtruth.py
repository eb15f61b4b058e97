"""Ground-truth scores for dissected units.

Where the probe images carry exact concept annotations (ShapesWorld's ``concepts_table()``,
or any binary ``N x C`` table ``A``), a unit's label can be checked against the truth
instead of against an image-text model: :func:`groundtruth_scores`,
:func:`groundtruth_dissection`, and :func:`evaluate_groundtruth`, which takes a dissection
and its annotated probe set. For every unit ``k`` (a column of ``Q``, ``N x K``) and every
ground-truth concept ``c`` (a column of ``A``), the unit's activation is treated as a
detector of the concept (higher activation = more likely present; signed values are used
as they are):

* **AUPRC** (average precision) and **IoU and F1 at a fitted threshold** (fitted on a seeded
  random half of the probe, measured on the other half; NaN, ``None`` in the saved files,
  when the concept has no positive image in one of the halves), as defined in
  :mod:`discover.evaluation.detection`.
* **Best concept**: the concept of highest AUPRC (the first, in column order, of equal
  ones). ``label_is_best`` is true when the label's AUPRC equals the best AUPRC (a tie with
  the best counts as best).
* **Monosemanticity** of a layer: the fraction of units whose best AUPRC is above
  :data:`MONOSEMANTIC_BAR`, reported with the mean best AUPRC. The bar is 0.75: averaged
  over the concept's positive images, three quarters of the images that activate the unit
  at least as strongly carry the concept. It has to clear chance for every concept, since
  an unrelated unit scores about the concept's base rate and the best of ``C`` such scores
  is at least the largest base rate: ShapesWorld's base rates run from about 0.1 (one of
  ten shapes or colours) to about 0.5 (one of two sizes), so the 0.5 one might first
  think of would call a random unit monosemantic. Pass ``bar`` to choose another.

A unit's label is matched to a concept name exactly, else ignoring case and surrounding
space, else through ``label_map``. **A label that is no ground-truth concept** (e.g. a CLIP
concept outside the annotation vocabulary) cannot be checked: its ``label_concept`` is
``None``, ``label_known`` false, its AUPRC, IoU and F1 are 0 and it is never the best
concept, so layer means count it as a miss rather than dropping it (a labeller cannot gain
by answering outside the vocabulary). ``labels_known`` in the summary says how many labels
were checkable.

The sanity tests of the similarity functions live in :mod:`discover.evaluation.sanity`.

Example:
    >>> import torch
    >>> from discover.evaluation.groundtruth import groundtruth_scores
    >>> A = (torch.rand(1000, 4) < 0.3).float()
    >>> Q = torch.cat([A[:, :1], torch.randn(1000, 1)], dim=1)  # unit 0 is concept "a"
    >>> result = groundtruth_scores(Q, A, ["a", "b", "c", "d"], ["a", "b"])
    >>> result.units[0].label_auprc, result.units[0].label_iou, result.units[0].label_is_best
    (1.0, 1.0, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from discover.dissection.embedders.annotations import probe_annotations
from discover.dissection.result import Dissection
from discover.errors import InputError
from discover.evaluation.detection import (
    average_precision,
    binary_table,
    check_detector_inputs,
    probe_split,
    threshold_metrics,
)
from discover.evaluation.layered import LayeredReport

__all__ = [
    "MONOSEMANTIC_BAR",
    "UnitGroundTruth",
    "LayerGroundTruth",
    "GroundTruthReport",
    "groundtruth_scores",
    "groundtruth_dissection",
    "evaluate_groundtruth",
    "saved_groundtruth",
]

MONOSEMANTIC_BAR = 0.75
"""A unit is monosemantic when the AUPRC of its best ground-truth concept is above this."""

REPORT_JSON = "groundtruth.json"
REPORT_CSV = "groundtruth_units.csv"


# --------------------------------------------------------------------------- results


def _number(x: float | None, digits: int | None = None) -> float | None:
    """A JSON-safe float: NaN and None become None, others kept (or rounded to ``digits``
    significant digits)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(f"{x:.{digits}g}") if digits else float(x)


def _float(x: Any) -> float:
    return math.nan if x is None or x == "" else float(x)


@dataclass
class UnitGroundTruth:
    """The ground-truth scores of one unit.

    Attributes:
        unit: the unit's column in ``Q``.
        label: its label as given.
        label_concept: the ground-truth concept the label names, ``None`` if it names none.
        label_auprc, label_iou, label_f1: the unit as a detector of ``label_concept``
            (0 when ``label_concept`` is ``None``; IoU and F1 NaN when undefined).
        threshold: the fitted threshold behind ``label_iou`` / ``label_f1`` (``None`` when
            ``label_concept`` is ``None``).
        label_base_rate: the share of probe images with ``label_concept`` (AUPRC of chance).
        best_concept, best_auprc, best_iou, best_f1: the concept of highest AUPRC.
        label_is_best: the label's AUPRC equals the best AUPRC.
    """

    unit: int
    label: str
    label_concept: str | None
    label_auprc: float
    label_iou: float
    label_f1: float
    threshold: float | None
    label_base_rate: float | None
    best_concept: str
    best_auprc: float
    best_iou: float
    best_f1: float
    label_is_best: bool

    @property
    def label_known(self) -> bool:
        """Whether the label names a ground-truth concept."""
        return self.label_concept is not None

    def row(self) -> dict[str, Any]:
        """A flat, JSON-safe dict (NaN as ``None``)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = _number(value)
        return out

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> UnitGroundTruth:
        """Inverse of :meth:`row`, also from CSV strings."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = row[f.name]
            if f.name == "unit":
                values[f.name] = int(v)
            elif f.name in ("label", "best_concept"):
                values[f.name] = str(v)
            elif f.name == "label_concept":
                values[f.name] = None if v in (None, "") else str(v)
            elif f.name in ("threshold", "label_base_rate"):
                values[f.name] = None if v in (None, "") else float(v)
            elif f.name == "label_is_best":
                values[f.name] = v if isinstance(v, bool) else str(v) == "True"
            else:
                values[f.name] = _float(v)
        return cls(**values)


def _nanmean(xs: Sequence[float]) -> float | None:
    kept = [x for x in xs if not math.isnan(x)]
    return sum(kept) / len(kept) if kept else None


@dataclass
class LayerGroundTruth:
    """Ground-truth scores of one layer's units; see the module docstring for definitions.

    Attributes:
        layer: the layer's name.
        units: one :class:`UnitGroundTruth` per unit, in unit order.
        concepts: the ground-truth concept names (columns of ``auprc``).
        base_rates: the share of probe images with each concept.
        auprc: ``(K, C)`` AUPRC of every unit for every concept.
        bar: the monosemanticity bar on the best AUPRC.
        seed: the seed of the fit / held-out split.
        images: probe images, ``(all, fit, held_out)``.
    """

    layer: str
    units: list[UnitGroundTruth]
    concepts: list[str]
    base_rates: list[float]
    auprc: Tensor = field(repr=False)
    bar: float = MONOSEMANTIC_BAR
    seed: int = 0
    images: tuple[int, int, int] = (0, 0, 0)

    def summary(self) -> dict[str, Any]:
        """Layer figures: ``units``, ``labels_known``, ``label_is_best`` (share of units),
        the mean label ``auprc`` / ``iou`` / ``f1`` and ``base_rate`` (unknown labels count
        as 0, NaN IoU/F1 are skipped), ``monosemantic`` (share of units whose best AUPRC is
        above ``bar``), ``mean_best_auprc`` and ``bar``.

        Example:
            >>> result.summary()["monosemantic"]  # doctest: +SKIP
            0.75
        """
        units = self.units
        n = len(units)
        known = [u for u in units if u.label_known]
        return {
            "layer": self.layer,
            "units": n,
            "labels_known": len(known),
            "label_is_best": sum(u.label_is_best for u in units) / n,
            "mean_label_auprc": sum(u.label_auprc for u in units) / n,
            "mean_label_iou": _nanmean([u.label_iou for u in units]),
            "mean_label_f1": _nanmean([u.label_f1 for u in units]),
            "mean_label_base_rate": _nanmean([u.label_base_rate or 0.0 for u in known]),
            "monosemantic": sum(u.best_auprc > self.bar for u in units) / n,
            "mean_best_auprc": sum(u.best_auprc for u in units) / n,
            "bar": self.bar,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per unit, with the layer name first."""
        return [{"layer": self.layer, **u.row()} for u in self.units]

    def table(self, limit: int | None = 20) -> str:
        """The summary line and the first ``limit`` units (all when ``None``) as text."""
        s = self.summary()
        lines = [_summary_line(s)]
        lines.append(
            f"{'unit':>5}  {'label':<24} {'AUPRC':>6} {'IoU':>6} {'F1':>6}  "
            f"{'best concept':<24} {'AUPRC':>6}"
        )
        for u in self.units[: limit if limit is not None else len(self.units)]:
            mark = "" if u.label_is_best else " *"
            label = u.label if u.label_known else f"{u.label} (not a concept)"
            lines.append(
                f"{u.unit:>5}  {label[:24]:<24} {u.label_auprc:>6.3f} {_fmt(u.label_iou):>6} "
                f"{_fmt(u.label_f1):>6}  {u.best_concept[:24]:<24} {u.best_auprc:>6.3f}{mark}"
            )
        if limit is not None and len(self.units) > limit:
            lines.append(f"... {len(self.units) - limit} more units")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: settings, summary, units (full precision) and the AUPRC matrix (6
        significant digits)."""
        return {
            "layer": self.layer,
            "bar": self.bar,
            "seed": self.seed,
            "images": list(self.images),
            "concepts": self.concepts,
            "base_rates": [_number(x) for x in self.base_rates],
            "summary": {
                k: _number(v) if isinstance(v, float) else v for k, v in self.summary().items()
            },
            "units": [u.row() for u in self.units],
            "auprc": [[_number(x, 6) for x in row] for row in self.auprc.tolist()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerGroundTruth:
        """Inverse of :meth:`to_dict`."""
        return cls(
            layer=data["layer"],
            units=[UnitGroundTruth.from_row(r) for r in data["units"]],
            concepts=list(data["concepts"]),
            base_rates=[float(x) for x in data["base_rates"]],
            auprc=torch.tensor(data["auprc"], dtype=torch.float64).reshape(
                len(data["units"]), len(data["concepts"])
            ),
            bar=float(data["bar"]),
            seed=int(data["seed"]),
            images=tuple(int(x) for x in data["images"]),  # type: ignore[arg-type]
        )

    def save(self, out: str | Path) -> Path:
        """Write this layer as a one-layer :class:`GroundTruthReport` into folder ``out``."""
        return GroundTruthReport({self.layer: self}).save(out)

    @classmethod
    def load(cls, out: str | Path, layer: str | None = None) -> LayerGroundTruth:
        """Read one layer (the only one, or ``layer``) from a saved report folder."""
        report = GroundTruthReport.load(out)
        if layer is None:
            if len(report.layers) != 1:
                raise InputError(
                    f"{out} holds layers {', '.join(report.layers)}; pass layer= to pick one"
                )
            return next(iter(report.layers.values()))
        return report.layer(layer)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _summary_line(s: Mapping[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (
        f"{s['layer']}: {s['units']} units, {s['labels_known']} labels are ground-truth "
        f"concepts; label is best concept {pct(s['label_is_best'])}; label AUPRC "
        f"{num(s['mean_label_auprc'])} (base rate {num(s['mean_label_base_rate'])}), IoU "
        f"{num(s['mean_label_iou'])}, F1 {num(s['mean_label_f1'])}; monosemantic (best AUPRC > "
        f"{s['bar']:g}) {pct(s['monosemantic'])}, mean best AUPRC {num(s['mean_best_auprc'])}"
    )


@dataclass
class GroundTruthReport(
    LayeredReport,
    files=(REPORT_JSON, REPORT_CSV),
    what="ground-truth report",
    redo="discover eval-descriptions DISSECTION --ground-truth",
    layer_type=LayerGroundTruth,
):
    """Ground-truth scores of several layers, with how they were computed; saved as
    ``groundtruth.json`` (everything) and ``groundtruth_units.csv`` (one row per unit).

    Attributes:
        layers: ``{layer: LayerGroundTruth}`` in layer order.
        meta: provenance: the dissection folder, similarity and concept set, the digest of
            the dissection it scores (``dissection_digest``) and, from
            :func:`evaluate_groundtruth`, the probe and the concepts it dropped.
        folder: the folder it was saved to or loaded from, if any (not saved).

    Example:
        >>> GroundTruthReport.load(report.save("out")).table()  # doctest: +SKIP
    """

    layers: dict[str, LayerGroundTruth]

    def table(self) -> str:
        """One summary line per layer."""
        return "\n".join(_summary_line(s) for s in self.summary())


# --------------------------------------------------------------------------- scoring


def _match_labels(
    labels: Sequence[str], concepts: Sequence[str], label_map: Mapping[str, str] | None
) -> list[int]:
    """The concept column each label names, or -1."""
    exact = {c: i for i, c in enumerate(concepts)}
    loose: dict[str, int] = {}
    for i, c in enumerate(concepts):
        loose.setdefault(c.strip().lower(), i)
    if label_map:
        unknown = sorted(set(label_map.values()) - set(exact))
        if unknown:
            raise InputError(
                f"label_map maps to names that are not concepts: {', '.join(map(repr, unknown[:5]))}"
            )
    out = []
    for label in labels:
        if label_map and label in label_map:
            out.append(exact[label_map[label]])
        elif label in exact:
            out.append(exact[label])
        else:
            out.append(loose.get(str(label).strip().lower(), -1))
    return out


@torch.no_grad()
def groundtruth_scores(
    activations: Tensor,
    annotations: Tensor,
    concepts: Sequence[str],
    labels: Sequence[str],
    *,
    layer: str = "layer",
    bar: float = MONOSEMANTIC_BAR,
    seed: int = 0,
    label_map: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
) -> LayerGroundTruth:
    """Score every unit's label against ground-truth annotations (module docstring, part A).

    Args:
        activations: ``Q``, ``(N, K)``: one column per unit (or any unit-like column).
        annotations: ``A``, ``(N, C)``, binary: ground-truth concepts of the same images.
        concepts: the ``C`` concept names.
        labels: the ``K`` unit labels.
        layer: the layer's name, for the report.
        bar: the monosemanticity bar on the best AUPRC, in ``[0, 1)``.
        seed: seeds the fit / held-out split of the probe.
        label_map: ``{label: concept name}`` for labels that name a concept differently.
        chunk_size: units per chunk (default: about ``2**23`` unit-image entries).

    Raises:
        ValueError: shapes that do not match (naming the parameter), non-binary annotations,
            an empty (or all-positive) concept, a bad ``bar``.

    Example:
        >>> A = (torch.rand(500, 3) < 0.3).float()
        >>> r = groundtruth_scores(A[:, [2, 0]], A, ["x", "y", "z"], ["z", "y"])
        >>> [u.label_is_best for u in r.units], r.summary()["monosemantic"]
        ([True, False], 1.0)
    """
    Q, A = check_detector_inputs(activations, annotations, concepts)
    N, K = Q.shape
    concepts = [str(c) for c in concepts]
    labels = [str(label) for label in labels]
    if len(labels) != K:
        raise InputError(f"labels: {len(labels)} labels for {K} units (columns of activations)")
    if not 0.0 <= bar < 1.0:
        raise InputError(f"bar must be in [0, 1), got {bar!r}")
    column = torch.tensor(_match_labels(labels, concepts, label_map), dtype=torch.long)
    ap = average_precision(Q, A, chunk_size=chunk_size)
    fit, held_out = probe_split(N, seed=seed)
    threshold, iou, f1 = threshold_metrics(Q, A, fit=fit, held_out=held_out, chunk_size=chunk_size)
    base = (A.sum(dim=0).double() / N).tolist()
    best = ap.argmax(dim=1)
    units = []
    for k in range(K):
        b, c = int(best[k]), int(column[k])
        known = c >= 0
        units.append(
            UnitGroundTruth(
                unit=k,
                label=labels[k],
                label_concept=concepts[c] if known else None,
                label_auprc=float(ap[k, c]) if known else 0.0,
                label_iou=float(iou[k, c]) if known else 0.0,
                label_f1=float(f1[k, c]) if known else 0.0,
                threshold=float(threshold[k, c]) if known else None,
                label_base_rate=base[c] if known else None,
                best_concept=concepts[b],
                best_auprc=float(ap[k, b]),
                best_iou=float(iou[k, b]),
                best_f1=float(f1[k, b]),
                label_is_best=known and bool(ap[k, c] >= ap[k, b]),
            )
        )
    return LayerGroundTruth(
        layer=layer,
        units=units,
        concepts=concepts,
        base_rates=base,
        auprc=ap,
        bar=float(bar),
        seed=seed,
        images=(N, len(fit), len(held_out)),
    )


def groundtruth_dissection(
    dissection: Dissection,
    annotations: Tensor,
    concepts: Sequence[str],
    *,
    layers: Sequence[str] | None = None,
    bar: float = MONOSEMANTIC_BAR,
    seed: int = 0,
    label_map: Mapping[str, str] | None = None,
) -> GroundTruthReport:
    """:func:`groundtruth_scores` for every layer (or ``layers``) of a dissection, from the
    ``Q`` it carries and its labels. ``annotations`` must describe the dissection's probe
    images, in probe order.

    Example:
        >>> probe = ShapesWorld(n=2000, split="val")  # doctest: +SKIP
        >>> dissection = discover.dissect(model, probe=probe, ...)  # doctest: +SKIP
        >>> report = groundtruth_dissection(dissection, probe.concepts_table(),
        ...                                 probe.concept_names)  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    names = list(layers) if layers is not None else dissection.layers
    out = {}
    for name in names:
        Q = dissection.probe_activations(name)
        if Q.shape[0] != annotations.shape[0]:
            raise InputError(
                f"annotations has {annotations.shape[0]} rows but the dissection's probe has "
                f"{Q.shape[0]} images (layer {name!r}); annotate the same probe, in order"
            )
        out[name] = groundtruth_scores(
            Q,
            annotations,
            concepts,
            dissection.labels(name),
            layer=name,
            bar=bar,
            seed=seed,
            label_map=label_map,
        )
    meta = {
        "dissection": str(dissection.folder) if dissection.folder else None,
        "similarity": dissection.config.similarity,
        "concepts": dissection.config.concepts,
        "dissection_digest": _dissection_digest(dissection, names),
    }
    return GroundTruthReport(out, meta)


def _dissection_digest(dissection: Dissection, layers: Sequence[str]) -> str:
    """SHA-256 of what ground-truth scores depend on: each layer's name, labels and probe
    activations ``Q`` (as float32, the way a dissection saves them)."""
    digest = hashlib.sha256()
    for name in layers:
        Q = dissection.probe_activations(name).detach().float().cpu().contiguous()
        digest.update(json.dumps([name, dissection.labels(name), list(Q.shape)]).encode())
        digest.update(Q.numpy().tobytes())
    return digest.hexdigest()


def _as_dissection(
    dissection: Dissection | str | os.PathLike[str],
) -> tuple[Dissection, Path | None]:
    """The dissection, and the folder it was loaded from (``None`` when given in memory)."""
    if isinstance(dissection, (str, os.PathLike)):
        folder = Path(dissection)
        return Dissection.load(folder), folder
    if not isinstance(dissection, Dissection):
        raise InputError(
            f"dissection: expected a Dissection or its saved folder, got "
            f"{type(dissection).__name__}"
        )
    return dissection, None


def _scorable_concepts(table: Tensor, names: Sequence[str]) -> Tensor:
    """Which annotated concepts have both positive and negative probe images."""
    counts = table.sum(dim=0)
    keep = (counts > 0) & (counts < table.shape[0])
    if not keep.any():
        raise InputError(
            f"probe: none of its {len(names)} annotated concepts has both positive and "
            f"negative images among its {table.shape[0]} images; nothing can be scored"
        )
    return keep


def evaluate_groundtruth(
    dissection: Dissection | str | os.PathLike[str],
    probe: Dataset,
    *,
    layers: Sequence[str] | None = None,
    bar: float = MONOSEMANTIC_BAR,
    seed: int = 0,
    label_map: Mapping[str, str] | None = None,
    save: bool = True,
) -> GroundTruthReport:
    """Ground-truth scores of a dissection's labels on its own annotated probe set.

    Checks that ``probe`` is the set the dissection was made on (its content fingerprint, or
    its size), takes its annotation table (:func:`probe_annotations`), drops the concepts
    with no positive image (or only positives) on it, which cannot be scored (listed in
    ``meta["dropped_concepts"]``; a label naming one counts as not a concept), and runs
    :func:`groundtruth_dissection`. Nothing runs the model: ``Q`` comes from the dissection.

    Args:
        dissection: a :class:`~discover.dissection.result.Dissection` or its saved folder.
        probe: the raw probe set the dissection was made on, with annotations
            (``concepts_table()`` and ``concept_names``, like ShapesWorld).
        layers: the layers to score (default: all of the dissection's).
        bar: the monosemanticity bar on the best AUPRC.
        seed: seeds the fit / held-out split of the probe.
        label_map: ``{label: concept name}`` for labels that name a concept differently.
        save: when ``dissection`` is a folder, write the report into it
            (``groundtruth.json``, ``groundtruth_units.csv``), where the HTML report reads it.

    Raises:
        ValueError: a probe without annotations, a probe that is not the dissection's, an
            unknown layer, no scorable concept.

    Example:
        >>> probe = ShapesWorld(n=2000, image_size=32, split="val")  # doctest: +SKIP
        >>> report = evaluate_groundtruth("runs/shapes-u8/dissection", probe)  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    dissection, folder = _as_dissection(dissection)
    table, names = probe_annotations(probe)
    table = binary_table("probe.concepts_table()", table)
    fingerprint = dissection.check_probe(probe)
    keep = _scorable_concepts(table, names)
    kept = [name for name, k in zip(names, keep.tolist(), strict=True) if k]
    dropped = [name for name, k in zip(names, keep.tolist(), strict=True) if not k]
    report = groundtruth_dissection(
        dissection,
        table[:, keep],
        kept,
        layers=layers,
        bar=bar,
        seed=seed,
        label_map=label_map,
    )
    about = dissection.about
    report.meta.update(
        probe={
            "type": type(probe).__name__,
            "images": len(probe),
            "fingerprint": fingerprint or about.probe_fingerprint,
            "concepts": len(names),
        },
        dropped_concepts=dropped,
    )
    if save and folder is not None:
        report.save(folder)
    return report


def saved_groundtruth(dissection: Dissection) -> GroundTruthReport | None:
    """The ground-truth report saved in ``dissection``'s folder by :func:`evaluate_groundtruth`,
    or ``None`` when there is none. A report that no longer describes the dissection (its
    labels or probe activations changed since) or cannot be read is ignored with a warning.

    Example:
        >>> report = saved_groundtruth(Dissection.load("runs/shapes-u8/dissection"))  # doctest: +SKIP
    """
    if dissection.folder is None or not (Path(dissection.folder) / REPORT_JSON).is_file():
        return None
    rerun = f"`discover eval-descriptions {dissection.folder} --ground-truth` with its probe"
    try:
        report = GroundTruthReport.load(dissection.folder)
    except ValueError as error:
        warnings.warn(f"{error}; ignoring it", UserWarning, stacklevel=2)
        return None
    layers = list(report.layers)
    stale = any(name not in dissection.layers for name in layers)
    if not stale:
        digest = report.meta.get("dissection_digest")
        if digest:
            try:
                stale = digest != _dissection_digest(dissection, layers)
            except ValueError:  # the dissection holds no activations: compare the labels
                digest = None
        if not digest:
            stale = any(
                [u.label for u in report.layers[name].units] != dissection.labels(name)
                for name in layers
            )
    if stale:
        warnings.warn(
            f"the ground-truth report in {dissection.folder} was computed from another "
            f"dissection (labels or activations differ); ignoring it. Compute it again: {rerun}",
            UserWarning,
            stacklevel=2,
        )
        return None
    return report
