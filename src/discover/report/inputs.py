"""What a report is written from: :class:`ReportSection` (one model), :class:`ReportConfig`
(how much it shows) and the explanation dictionaries, checked before anything is written."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from discover.dissection.result import Dissection
from discover.dissection.spatial import GALLERY_SIZE
from discover.errors import InputError
from discover.evaluation.explanations import ExplanationScores
from discover.evaluation.groundtruth import GroundTruthReport

__all__ = ["ReportConfig", "ReportSection", "check_explanations", "check_sections"]

_EXPLANATION_KEYS = ("image", "model", "prediction", "layers")
_PREDICTION_KEYS = ("index", "label", "probability")
_LAYER_KEYS = ("layer", "kind", "units", "active", "active_fraction", "winners")
_WINNER_KEYS = ("unit", "activation")
_CONTRIBUTION_KEYS = ("layer", "class_label", "logit", "bias", "explained_share", "units")


@dataclass
class ReportSection:
    """One model of the report, with its dissection and what was measured on it.

    The report is written from saved results: the probe activations come from the dissection
    (or ``activations``), the layers' ``U`` and the model's description from its metadata.
    No model runs.

    Args:
        name: shown as the section title, e.g. ``"CVN (U=4)"`` or ``"dense twin"``.
        model: the dissected model, if at hand: the dissection is then checked against it
            (weights, layers, ``U``); ``None`` trusts the saved dissection.
        dissection: its :class:`~discover.dissection.result.Dissection`.
        probe: the dissection's probe set of raw ``(image, label, ...)`` items; an image is a
            PIL image, a ``uint8`` tensor or a float ``(C, H, W)`` tensor in ``[0, 1]``.
        accuracy: fractions in ``[0, 1]``, e.g. ``{"top1": 0.83, "top5": 0.99}``.
        sparsity: measured active fraction per layer.
        settings: model, training and dissection settings shown on the overview.
        description_scores: final-layer description figures shown on the overview.
        activations: ``{layer: (N, K)}`` pooled probe activations to show instead of the
            dissection's own.
        groundtruth: ground-truth scores of the dissection's labels to show on the layer
            pages; default: the ones saved in the dissection's folder by
            :func:`~discover.evaluation.groundtruth.evaluate_groundtruth`, if any (a saved
            report of another dissection is ignored with a warning).
        explanation_scores: how often the explanations' labels were true of held-out images
            (:func:`~discover.evaluation.explanations.score_explanations`), shown on the
            overview with chance and the shuffled-labels baseline.
    """

    name: str
    model: nn.Module | None
    dissection: Dissection
    probe: Dataset
    accuracy: dict[str, float] | None = None
    sparsity: dict[str, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    description_scores: dict[str, Any] | None = None
    activations: dict[str, torch.Tensor] | None = None
    groundtruth: GroundTruthReport | None = None
    explanation_scores: ExplanationScores | None = None


@dataclass
class ReportConfig:
    """How much the report shows; saved in ``report.json``.

    Args:
        top_images: top activating probe images per unit.
        max_units: units shown per layer gallery, best scores first (``None``: all of them);
            the page says how many it leaves out.
        max_winners: winners listed per layer on an explanation page.
        histogram_bins: bins of each unit's activation histogram.
        thumbnail_size: probe images larger than this (pixels) are downscaled to fit.
        title: the report's title.
    """

    top_images: int = GALLERY_SIZE
    max_units: int | None = 128
    max_winners: int = 64
    histogram_bins: int = 40
    thumbnail_size: int = 128
    title: str = "DISCOVER report"

    def __post_init__(self) -> None:
        checks = {
            "top_images": self.top_images >= 1,
            "max_units": self.max_units is None or self.max_units >= 1,
            "max_winners": self.max_winners >= 1,
            "histogram_bins": self.histogram_bins >= 2,
            "thumbnail_size": self.thumbnail_size >= 8,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(
                    f"ReportConfig: {name}={getattr(self, name)!r} is out of range "
                    "(top_images, max_units, max_winners >= 1; "
                    "histogram_bins >= 2; thumbnail_size >= 8)"
                )


# -- checks ------------------------------------------------------------------------------------
def check_sections(sections: Sequence[ReportSection]) -> list[ReportSection]:
    """The sections as a list, each checked; a problem is an error naming the section."""
    sections = list(sections)
    if not sections:
        raise InputError("write_report: no sections given (need at least one ReportSection)")
    for i, section in enumerate(sections):
        if not isinstance(section, ReportSection):
            raise InputError(
                f"write_report: section {i} is a {type(section).__name__}, expected a "
                "discover.report.ReportSection"
            )
        if not isinstance(section.dissection, Dissection):
            raise InputError(
                f"section {section.name!r}: dissection is a {type(section.dissection).__name__}, "
                "expected a discover.dissection.Dissection"
            )
        if len(section.probe) == 0:
            raise InputError(f"section {section.name!r}: the probe set is empty")
        if not section.dissection.units:
            raise InputError(f"section {section.name!r}: the dissection has no units")
        truth = section.groundtruth
        if truth is not None:
            if not isinstance(truth, GroundTruthReport):
                raise InputError(
                    f"section {section.name!r}: groundtruth is a {type(truth).__name__}, "
                    "expected a discover.evaluation.groundtruth.GroundTruthReport"
                )
            for name, layer in truth.layers.items():
                units = len(section.dissection.layer(name))  # an unknown layer is named
                if len(layer.units) != units:
                    raise InputError(
                        f"section {section.name!r}: groundtruth of layer {name!r} has "
                        f"{len(layer.units)} units, the dissection {units}"
                    )
        for field_name in ("accuracy", "sparsity"):
            values = getattr(section, field_name) or {}
            bad = [k for k, v in values.items() if not _is_number(v)]
            if bad:
                raise InputError(
                    f"section {section.name!r}: {field_name} values must be numbers; "
                    f"{', '.join(map(repr, bad))} are not"
                )
    return sections


def check_explanations(
    explanations: Iterable[tuple[Mapping[str, Any], Any]],
) -> list[tuple[dict[str, Any], Any]]:
    """The ``(explanation dict, image)`` pairs, each checked for the keys the pages show and
    completed with the optional ones (``to_dict`` is called on an ``Explanation``)."""
    checked = []
    for i, pair in enumerate(explanations):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(
                f"explanation {i}: expected an (explanation_dict, image) pair, got "
                f"{type(pair).__name__}"
            )
        data, image = pair
        if callable(getattr(data, "to_dict", None)):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise InputError(
                f"explanation {i}: expected a dict from Explanation.to_dict(), got "
                f"{type(data).__name__}"
            )
        missing = _missing_keys(data)
        if missing:
            raise InputError(
                f"explanation {i} ({data.get('image', '?')}): missing {', '.join(missing)}; "
                "see discover.explanation.Explanation.to_dict for the expected keys"
            )
        checked.append((_with_defaults(data), image))
    return checked


def _missing_keys(data: Mapping[str, Any]) -> list[str]:
    """The required keys an explanation dictionary lacks, as dotted paths."""
    missing = [k for k in _EXPLANATION_KEYS if k not in data]
    missing += [
        f"prediction.{k}"
        for k in _PREDICTION_KEYS
        if isinstance(data.get("prediction"), Mapping) and k not in data["prediction"]
    ]
    if not isinstance(data.get("prediction", {}), Mapping):
        missing.append("prediction (a dict)")
    for j, layer in enumerate(data.get("layers") or []):
        if not isinstance(layer, Mapping):
            missing.append(f"layers[{j}] (a dict)")
            continue
        missing += [f"layers[{j}].{k}" for k in _LAYER_KEYS if k not in layer]
        for w, winner in enumerate(layer.get("winners") or []):
            if not isinstance(winner, Mapping) or not all(k in winner for k in _WINNER_KEYS):
                missing.append(f"layers[{j}].winners[{w}].unit/activation")
                break
    contributions = data.get("contributions")
    if contributions is not None:
        if not isinstance(contributions, Mapping):
            missing.append("contributions (a dict or None)")
        else:
            missing += [f"contributions.{k}" for k in _CONTRIBUTION_KEYS if k not in contributions]
            if not all(
                isinstance(u, Mapping) and "unit" in u and "contribution" in u
                for u in contributions.get("units") or []
            ):
                missing.append("contributions.units[].unit/contribution")
    return missing


def _with_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with every optional key the pages read (``None`` where absent)."""
    data = {"target": None, "policy": None, "contributions": None, **data}
    data["layers"] = [
        {
            "threshold": None,
            **layer,
            "winners": [
                {"block": None, "label": None, "score": None, **w}
                for w in layer.get("winners") or []
            ],
        }
        for layer in data["layers"]
    ]
    return data


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
