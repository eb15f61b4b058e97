"""The explanation pages: one explained image with its winners, contributions and maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from discover.report.figures import draw_heatmap, heat_legend_png, to_pil
from discover.report.rendering import PageWriter

__all__ = ["write_explanations"]


def write_explanations(
    pages: PageWriter, explanations: list[tuple[dict[str, Any], Any]]
) -> list[dict[str, Any]]:
    """Write ``explanations/<i>.html`` for each checked ``(explanation dict, image)`` pair;
    returns their overview entries."""
    if not explanations:
        return []
    folder = pages.root / "explanations"
    folder.mkdir()
    heat_legend_png(folder / "heat-legend.png")
    return [
        _write_page(pages, folder, i, data, image, len(explanations))
        for i, (data, image) in enumerate(pages.bar(explanations, "explanations"))
    ]


class _Heat:
    """Draws maps over the explained image ``base`` into ``folder`` (each map to its own peak)."""

    def __init__(self, folder: Path, base: Any) -> None:
        self.folder, self.base = folder, base

    def __call__(self, grid: Any, stem: str) -> str | None:
        """The file of ``grid`` drawn over the image; ``None`` without an image or a peak."""
        if self.base is None or not grid:
            return None
        values = np.asarray(grid, dtype=np.float32)
        peak = float(values.max())
        if not np.isfinite(peak) or peak <= 0:
            return None
        draw_heatmap(self.base, values / peak).save(self.folder / f"{stem}.png")
        return f"{stem}.png"


def _write_page(
    pages: PageWriter, folder: Path, i: int, data: dict[str, Any], image: Any, total: int
) -> dict[str, Any]:
    """Write explanation ``i``'s page (and its image and maps); returns its overview entry."""
    src = None
    base = None
    if image is not None:
        src = f"{i}.png"
        base = to_pil(image, f"explanation {i}: image")
        base.save(folder / src)
    heat = _Heat(folder, base)
    evidence = dict(data.get("class_evidence") or {})
    if evidence.get("map"):
        evidence["heat"] = heat(evidence["map"], f"{i}-evidence")
    layers = [
        _layer(layer, heat, f"{i}-l{j}", pages.config.max_winners)
        for j, layer in enumerate(data["layers"])
    ]
    contributions = data.get("contributions")
    if contributions:
        contributions = _contributions(contributions, heat, f"{i}-c")
    pages.render(
        "explanation.html",
        folder / f"{i}.html",
        1,
        data=data,
        src=src,
        layers=layers,
        contributions=contributions,
        evidence=evidence,
        number=i,
        total=total,
    )
    return {
        "page": f"explanations/{i}.html",
        "src": f"explanations/{src}" if src else None,
        "data": data,
    }


def _layer(layer: dict[str, Any], heat: _Heat, stem: str, max_winners: int) -> dict[str, Any]:
    """A layer of the page: its first ``max_winners`` winners, each with its map."""
    winners = [
        {**w, "heat": heat(w.get("map"), f"{stem}-u{w['unit']}")}
        for w in list(layer.get("winners") or [])[:max_winners]
    ]
    return {**layer, "winners": winners, "total_winners": len(layer.get("winners") or [])}


def _contributions(contributions: dict[str, Any], heat: _Heat, stem: str) -> dict[str, Any]:
    """The logit contributions with a bar length (percent of the largest) and a map each."""
    units = list(contributions.get("units") or [])
    peak = max((abs(float(u.get("contribution", 0.0))) for u in units), default=0.0)
    return {
        **contributions,
        "units": [
            {
                "label": None,
                "activation": None,
                "weight": None,
                **u,
                "bar": 100 * abs(float(u.get("contribution", 0.0))) / peak if peak else 0,
                "heat": heat(u.get("map"), f"{stem}{u.get('unit')}"),
            }
            for u in units
        ],
    }
