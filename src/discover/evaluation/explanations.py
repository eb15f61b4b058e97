"""How often an explanation's words are true of the explained image.

Given explanations (:func:`discover.explain`) of images whose concepts are known (a
binary table, e.g. ``ShapesWorld.concepts_table()``), :func:`score_explanations` counts,
for every table an explanation shows (the logit contributions and each layer's winners),
the share of its *shown* labels that are concepts of the image: its **precision**. A unit
shown unlabelled (``abstained``) counts neither way; how many were is reported. Beside each
figure:

* ``chance``: the precision of a label drawn uniformly from the concept vocabulary (the
  mean share of concepts an image has);
* ``shuffled``: the same rows with each label replaced by the label of a random shown unit
  of the same layer (the exact expectation over such draws), so a layer gets no credit for
  labels that are merely frequent;
* for image-conditioned labels (``explain(..., embedder=)``), ``conditioned`` is their
  precision, and two controls show how much of it the embedder achieves alone: it picks
  among ``candidates`` random concepts (``control_random_concepts``), or among the
  candidates of a random shown unit of the same layer (``control_random_units``). Only the
  margin over the latter is what the unit adds.

Example:
    >>> scores = score_explanations(explanations, dissection, table, names)  # doctest: +SKIP
    >>> scores.contributions.precision, scores.chance  # doctest: +SKIP
    (0.71, 0.13)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from discover.dissection.result import Dissection
from discover.errors import InputError

__all__ = [
    "TableScores",
    "ExplanationScores",
    "ExplanationRows",
    "label_shown",
    "score_explanations",
]


@dataclass
class TableScores:
    """The precision of one kind of table (contributions, or one layer's winners)."""

    listed: int  # rows listed over all images
    shown: int  # rows with a shown label (not abstained)
    precision: float | None  # shown labels true of the image
    shuffled: float | None  # the same rows with labels of random shown units of the layer
    conditioned: float | None = None  # image-conditioned labels true of the image
    control_random_units: float | None = None
    control_random_concepts: float | None = None

    @property
    def abstained(self) -> float | None:
        """The share of listed rows shown unlabelled."""
        return None if not self.listed else 1 - self.shown / self.listed


@dataclass
class ExplanationScores:
    """What :func:`score_explanations` measured."""

    images: int
    chance: float
    contributions: TableScores | None  # None: the explanations list no contributions
    winners: dict[str, TableScores] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for table in [data["contributions"], *data["winners"].values()]:
            if table is not None:
                table["abstained"] = (
                    None if not table["listed"] else 1 - table["shown"] / table["listed"]
                )
        return data

    def summary(self) -> str:
        """One line per table: precision against chance and the shuffled-labels baseline."""

        def line(name: str, t: TableScores) -> str:
            text = (
                f"{name}: {_pct(t.precision)} of {t.shown} shown labels true of the image "
                f"(shuffled labels {_pct(t.shuffled)}, chance {_pct(self.chance)}; "
                f"{_pct(t.abstained)} of {t.listed} rows unlabelled)"
            )
            if t.conditioned is not None:
                text += (
                    f"; conditioned on the image {_pct(t.conditioned)} (embedder alone: "
                    f"random units' candidates {_pct(t.control_random_units)}, random "
                    f"concepts {_pct(t.control_random_concepts)})"
                )
            return text

        lines = [f"{self.images} explained images"]
        if self.contributions is not None:
            lines.append(line("contributions", self.contributions))
        lines += [line(f"winners of {layer}", t) for layer, t in self.winners.items()]
        return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


@dataclass
class ExplanationRows:
    """The rows of a batch of explanations as arrays, one entry per listed row of each table
    (``"contributions"`` and each layer's winners): image index, unit, probe percentile
    (NaN: unknown), whether the explanation shows it unlabelled, and the column of its
    image-conditioned label (-1: none; ``len(concept_names)``: not a concept). Scoring many
    settings of the same explanations reads them once (:meth:`of`)."""

    images: int
    contribution_layer: str | None
    tables: dict[str, dict[str, np.ndarray]]

    @classmethod
    def of(cls, explanations: Sequence[Any], concept_names: Sequence[str]) -> ExplanationRows:
        column = {c: j for j, c in enumerate(concept_names)}
        unknown = len(concept_names)
        first = explanations[0] if explanations else None
        sources: dict[str, Any] = {}
        contribution_layer = None
        if first is not None and first.contributions is not None:
            contribution_layer = first.contributions.layer
            sources["contributions"] = lambda e: e.contributions.units if e.contributions else []
        for row in first.layers if first is not None else []:
            sources[row.layer] = lambda e, name=row.layer: e.layer(name).winners
        tables = {}
        for name, rows_of in sources.items():
            image, unit, percentile, abstained, seen = [], [], [], [], []
            for i, explanation in enumerate(explanations):
                for entry in rows_of(explanation):
                    image.append(i)
                    unit.append(entry.unit)
                    pct = entry.probe_percentile
                    percentile.append(math.nan if pct is None else pct)
                    abstained.append(entry.abstained is not None)
                    seen.append(column.get(entry.seen[0][0], unknown) if entry.seen else -1)
            tables[name] = {
                "image": np.array(image, dtype=np.int64),
                "unit": np.array(unit, dtype=np.int64),
                "percentile": np.array(percentile, dtype=np.float64),
                "abstained": np.array(abstained, dtype=bool),
                "seen": np.array(seen, dtype=np.int64),
            }
        return cls(len(explanations), contribution_layer, tables)


def label_shown(unit: Any, abstain_p: float | None = None, min_match: float | None = None) -> bool:
    """Whether a dissected unit's label is shown: the dissection did not abstain, and it
    passes the optional stricter thresholds (as ``dissect(abstain_p=, min_match=)`` would).

    Example:
        >>> from discover.dissection.core import UnitDescription
        >>> unit = UnitDescription("fc", 0, "red", 0.9, [("red", 0.9)], match=0.25)
        >>> label_shown(unit), label_shown(unit, min_match=0.3)
        (True, False)
    """
    if unit.abstained is not None:
        return False
    if abstain_p is not None and not (unit.p_null is not None and unit.p_null <= abstain_p):
        return False
    return min_match is None or (unit.match is not None and unit.match >= min_match)


@torch.no_grad()
def score_explanations(
    explanations: Sequence[Any] | ExplanationRows,
    dissection: Dissection,
    truth: Tensor,
    concept_names: Sequence[str],
    *,
    image_scores: Tensor | None = None,
    abstain_p: float | None = None,
    min_match: float | None = None,
    min_percentile: float | None = None,
    candidates: int = 5,
    seed: int = 0,
) -> ExplanationScores:
    """Precision of the labels in ``explanations`` against the images' true concepts.

    Args:
        explanations: one :class:`~discover.explanation.Explanation` per image, made with
            ``dissection`` (or their :class:`ExplanationRows`, to score several settings).
        dissection: the dissection whose labels the explanations show.
        truth: ``(N, C)`` binary concepts of the explained images, in explanation order.
        concept_names: the ``C`` column names of ``truth``; every label must be one.
        image_scores: ``(N, C)`` the embedder's (standardised) score of every concept in
            every image, for the conditioned-label controls (``None``: no controls).
        abstain_p: also treat labels with ``p_null`` above this as unlabelled (a stricter
            threshold than the dissection's own, to compare thresholds without redissecting).
        min_match: also treat labels whose ``match`` is below this as unlabelled (likewise).
        min_percentile: also treat rows whose unit fires below this probe percentile as
            unlabelled (as ``explain(min_percentile=)`` does, without explaining again).
        candidates: candidates per unit in the controls (as ``explain(candidates=)``).
        seed: the random-concepts control's draws.

    Raises:
        ValueError: shapes or names that do not fit, or a label that is not a concept.
    """
    rows = (
        explanations
        if isinstance(explanations, ExplanationRows)
        else ExplanationRows.of(explanations, concept_names)
    )
    _check_shapes(rows.images, truth, concept_names, image_scores)
    column = _label_columns(dissection, concept_names)
    truth = truth.bool()
    generator = torch.Generator().manual_seed(seed)
    # one more column, always false: an image-conditioned label outside the vocabulary
    truth_np = np.concatenate([truth.numpy(), np.zeros((len(truth), 1), bool)], axis=1)
    per_layer: dict[str, dict[str, Any]] = {}
    for layer in dissection.layers:
        units = dissection.layer(layer)
        shown = [label_shown(u, abstain_p, min_match) for u in units]
        per_layer[layer] = _layer_labels(
            units, shown, column, truth, image_scores, candidates, generator
        )

    def table(name: str, layer: str | None) -> TableScores:
        info = per_layer.get(layer) if layer is not None else None
        return _table_scores(rows.tables.get(name), info, truth_np, min_percentile)

    contributions = (
        table("contributions", rows.contribution_layer) if "contributions" in rows.tables else None
    )
    winners = {
        name: table(name, name)
        for name in rows.tables
        if name != "contributions" and name in per_layer
    }
    chance = float(truth.float().mean()) if truth.numel() else 0.0
    return ExplanationScores(rows.images, chance, contributions, winners)


def _check_shapes(
    images: int, truth: Tensor, concept_names: Sequence[str], image_scores: Tensor | None
) -> None:
    if images != truth.shape[0] or truth.shape[1] != len(concept_names):
        raise InputError(
            f"score_explanations: {images} explanations, truth of shape "
            f"{tuple(truth.shape)} and {len(concept_names)} concept names do not fit"
        )
    if image_scores is not None and image_scores.shape != truth.shape:
        raise InputError(
            f"score_explanations: image_scores {tuple(image_scores.shape)} must have the "
            f"shape of truth {tuple(truth.shape)}"
        )


def _label_columns(dissection: Dissection, concept_names: Sequence[str]) -> dict[str, int]:
    """``{concept: column of truth}``; every label of the dissection must be one."""
    column = {c: j for j, c in enumerate(concept_names)}
    unknown = sorted({u.label for u in dissection.units if u.label not in column})
    if unknown:
        raise InputError(
            f"score_explanations: labels that are not ground-truth concepts: {unknown[:5]}"
        )
    return column


def _layer_labels(
    units: Sequence[Any],
    shown: Sequence[bool],
    column: dict[str, int],
    truth: Tensor,
    image_scores: Tensor | None,
    candidates: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """What scoring a layer's rows needs: which units are shown, each unit's label column,
    the shuffled-labels precision per image and, with ``image_scores``, the controls."""
    labels = torch.tensor([column[u.label] for u, s in zip(units, shown, strict=True) if s])
    info: dict[str, Any] = {
        "shown": np.array(shown, dtype=bool),
        "label": np.array([column[u.label] for u in units], dtype=np.int64),
        "shuffled": truth[:, labels].float().mean(dim=1).numpy() if len(labels) else None,
    }
    if image_scores is not None:
        controls = _controls(units, shown, column, truth, image_scores, candidates, generator)
        info.update({k: v.numpy() for k, v in controls.items()})
    return info


def _mean(values: np.ndarray | None) -> float | None:
    return float(values.mean()) if values is not None and len(values) else None


def _table_scores(
    data: dict[str, np.ndarray] | None,
    info: dict[str, Any] | None,
    truth: np.ndarray,
    min_percentile: float | None,
) -> TableScores:
    """The precision of one table's rows (``data``) with the labels of their layer (``info``)
    against ``truth`` (with its always-false last column), and the baselines."""
    listed = 0 if data is None else len(data["image"])
    if data is None or info is None or not listed:
        return TableScores(listed=listed, shown=0, precision=None, shuffled=None)
    unit = data["unit"]
    keep = info["shown"][unit] & ~data["abstained"]
    if min_percentile is not None:
        keep &= ~(data["percentile"] < min_percentile)  # an unknown percentile is kept
    image = data["image"][keep]
    seen = data["seen"][keep]
    conditioned = seen >= 0
    return TableScores(
        listed=listed,
        shown=int(keep.sum()),
        precision=_mean(truth[image, info["label"][unit[keep]]]),
        shuffled=_mean(info["shuffled"][image] if info["shuffled"] is not None else None),
        conditioned=_mean(truth[image[conditioned], seen[conditioned]]),
        control_random_units=_mean(
            info["random_units"][image[conditioned]] if "random_units" in info else None
        ),
        control_random_concepts=_mean(
            info["random_concepts"][image[conditioned]] if "random_concepts" in info else None
        ),
    )


def _controls(
    units: Sequence[Any],
    shown: Sequence[bool],
    column: dict[str, int],
    truth: Tensor,
    scores: Tensor,
    candidates: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Per image: the precision of the embedder's pick among the candidates of a random
    shown unit of the layer (exact mean over the units), and among random concepts."""
    out: dict[str, Tensor] = {}
    sets = [
        [column[c] for c in u.candidates[:candidates] if c in column]
        for u, s in zip(units, shown, strict=True)
        if s
    ]
    sets = [s for s in sets if s]
    if sets:
        width = max(map(len, sets))
        padded = torch.tensor([s + [s[0]] * (width - len(s)) for s in sets])  # (V, m)
        picks = padded[torch.arange(len(sets))[None, :], scores[:, padded].argmax(dim=2)]
        out["random_units"] = truth.gather(1, picks).float().mean(dim=1)
    draws, C = 64, truth.shape[1]
    random_sets = torch.stack(
        [torch.randperm(C, generator=generator)[: min(candidates, C)] for _ in range(draws)]
    )
    picks = random_sets[torch.arange(draws)[None, :], scores[:, random_sets].argmax(dim=2)]
    out["random_concepts"] = truth.gather(1, picks).float().mean(dim=1)
    return out
