"""Figures reported next to their baselines, and how they are printed and saved.

A :class:`Metric` is one figure with its two baselines (random concept, shuffled neurons),
each a :class:`NullStats` over repeated seeded draws. :class:`SaveableScores` gives the
result types of :mod:`~discover.evaluation.descriptions` and
:mod:`~discover.evaluation.simulation` their ``to_dict`` and ``save``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from discover._utils import csv_text, write_files
from discover.errors import InputError

__all__ = ["NullStats", "Metric"]

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


def metrics_table(metrics: dict[str, Metric]) -> str:
    """One line per figure: its title, value and both baselines (and why it is missing)."""
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


class SaveableScores:
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
