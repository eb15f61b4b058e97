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

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from discover.dissection.core import Dissection

__all__ = ["TableScores", "ExplanationScores", "score_explanations"]


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


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _shown(unit: Any, abstain_p: float | None) -> bool:
    """Whether a dissected unit's label is shown, with an optional stricter threshold."""
    if unit.abstained is not None:
        return False
    return abstain_p is None or (unit.p_null is not None and unit.p_null <= abstain_p)


@torch.no_grad()
def score_explanations(
    explanations: Sequence[Any],
    dissection: Dissection,
    truth: Tensor,
    concept_names: Sequence[str],
    *,
    image_scores: Tensor | None = None,
    abstain_p: float | None = None,
    min_percentile: float | None = None,
    candidates: int = 5,
    seed: int = 0,
) -> ExplanationScores:
    """Precision of the labels in ``explanations`` against the images' true concepts.

    Args:
        explanations: one :class:`~discover.explanation.Explanation` per image, made with
            ``dissection``.
        dissection: the dissection whose labels the explanations show.
        truth: ``(N, C)`` binary concepts of the explained images, in explanation order.
        concept_names: the ``C`` column names of ``truth``; every label must be one.
        image_scores: ``(N, C)`` the embedder's (standardised) score of every concept in
            every image, for the conditioned-label controls (``None``: no controls).
        abstain_p: also treat labels with ``p_null`` above this as unlabelled (a stricter
            threshold than the dissection's own, to compare thresholds without redissecting).
        min_percentile: also treat rows whose unit fires below this probe percentile as
            unlabelled (as ``explain(min_percentile=)`` does, without explaining again).
        candidates: candidates per unit in the controls (as ``explain(candidates=)``).
        seed: the random-concepts control's draws.

    Raises:
        ValueError: shapes or names that do not fit, or a label that is not a concept.
    """
    if len(explanations) != truth.shape[0] or truth.shape[1] != len(concept_names):
        raise ValueError(
            f"score_explanations: {len(explanations)} explanations, truth of shape "
            f"{tuple(truth.shape)} and {len(concept_names)} concept names do not fit"
        )
    if image_scores is not None and image_scores.shape != truth.shape:
        raise ValueError(
            f"score_explanations: image_scores {tuple(image_scores.shape)} must have the "
            f"shape of truth {tuple(truth.shape)}"
        )
    column = {c: j for j, c in enumerate(concept_names)}
    unknown = sorted({u.label for u in dissection.units if u.label not in column})
    if unknown:
        raise ValueError(
            f"score_explanations: labels that are not ground-truth concepts: {unknown[:5]}"
        )
    truth = truth.bool()
    generator = torch.Generator().manual_seed(seed)
    per_layer: dict[str, dict[str, Any]] = {}
    for layer in dissection.layers:
        units = dissection.layer(layer)
        shown = [_shown(u, abstain_p) for u in units]
        labels = torch.tensor([column[u.label] for u, s in zip(units, shown, strict=True) if s])
        info: dict[str, Any] = {"units": units, "shown": shown}
        info["shuffled"] = truth[:, labels].float().mean(dim=1) if len(labels) else None
        if image_scores is not None:
            info.update(_controls(units, shown, column, truth, image_scores, candidates, generator))
        per_layer[layer] = info

    def table(rows_of: Any, layer: str) -> TableScores:
        info = per_layer.get(layer)
        hits, shuffled, cond, c_units, c_random, listed = [], [], [], [], [], 0
        for i, explanation in enumerate(explanations):
            for entry in rows_of(explanation):
                listed += 1
                if info is None or not info["shown"][entry.unit] or entry.abstained is not None:
                    continue
                weak = entry.probe_percentile is not None and min_percentile is not None
                if weak and entry.probe_percentile < min_percentile:
                    continue
                unit = info["units"][entry.unit]
                hits.append(float(truth[i, column[unit.label]]))
                if info["shuffled"] is not None:
                    shuffled.append(float(info["shuffled"][i]))
                if entry.seen:
                    cond.append(float(truth[i, column[entry.seen[0][0]]]))
                    if "random_units" in info:
                        c_units.append(float(info["random_units"][i]))
                    if "random_concepts" in info:
                        c_random.append(float(info["random_concepts"][i]))
        return TableScores(
            listed=listed,
            shown=len(hits),
            precision=_mean(hits),
            shuffled=_mean(shuffled),
            conditioned=_mean(cond),
            control_random_units=_mean(c_units),
            control_random_concepts=_mean(c_random),
        )

    first = explanations[0] if explanations else None
    contributions = None
    if first is not None and first.contributions is not None:
        layer = first.contributions.layer
        contributions = table(
            lambda e: e.contributions.units if e.contributions is not None else [], layer
        )
    winners = {
        row.layer: table(lambda e, name=row.layer: e.layer(name).winners, row.layer)
        for row in (first.layers if first is not None else [])
        if row.layer in per_layer
    }
    chance = float(truth.float().mean()) if truth.numel() else 0.0
    return ExplanationScores(len(explanations), chance, contributions, winners)


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
